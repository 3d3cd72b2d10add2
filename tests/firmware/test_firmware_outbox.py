"""The flash outbox inside MicroPython: order, PUBACK removal, bound, torn records, seq across reboots."""

from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy

HEAP = heap_budget("esp32-devkitc-dht22")


def _run(tmp_path, code):
    return mpy.run(code="import outbox\n" + code, heap=HEAP, cwd=tmp_path).stdout.split()


def test_queue_survives_reboot_and_removes_only_acked(tmp_path):
    out = _run(tmp_path, """
ob = outbox.Outbox('ob.bin', 16, 256)
for i in range(5):
    ob.append(outbox.TELEMETRY, '{"seq": %d}' % ob.next_seq)
k, s, p = ob.peek(); ob.ack()
k, s, p = ob.peek(); ob.ack()
print(ob.depth, ob.next_seq)
ob.close()
ob = outbox.Outbox('ob.bin', 16, 256)   # reboot
k, s, p = ob.peek()
print(ob.depth, ob.next_seq, s, bytes(p).decode())
""")
    assert out == ["3", "5", "3", "5", "2", '{"seq":', "2}"]


def test_full_queue_drops_oldest_and_counts_it_across_reboots(tmp_path):
    out = _run(tmp_path, """
ob = outbox.Outbox('ob.bin', 8, 256)
for i in range(11):
    ob.append(outbox.ALERT, 'x%d' % i)
print(ob.depth, ob.dropped, ob.peek()[1])
ob.close()
ob = outbox.Outbox('ob.bin', 8, 256)
print(ob.depth, ob.dropped, ob.peek()[1], ob.next_seq)
""")
    assert out == ["8", "3", "3", "8", "3", "3", "11"]


def test_seq_continues_after_wraparound_with_everything_acked(tmp_path):
    out = _run(tmp_path, """
ob = outbox.Outbox('ob.bin', 8, 256)
for i in range(21):
    ob.append(outbox.TELEMETRY, 'r')
    ob.peek(); ob.ack()
ob.close()
ob = outbox.Outbox('ob.bin', 8, 256)
print(ob.depth, ob.next_seq, ob.peek())
""")
    assert out == ["0", "21", "None"]


def test_torn_last_record_is_skipped_and_its_seq_reused(tmp_path):
    out = _run(tmp_path, """
ob = outbox.Outbox('ob.bin', 8, 256)
for i in range(4):
    ob.append(outbox.TELEMETRY, 'record-%d-payload' % i)
ob.close()
# a power cut inside the write of record 3: only its first 15 bytes reached flash
f = open('ob.bin', 'r+b')
f.seek(32 + 3 * 256 + 15)
f.write(bytes(10))
f.close()
ob = outbox.Outbox('ob.bin', 8, 256)
print(ob.depth, ob.next_seq, ob.skipped)
seqs = []
while ob.depth:
    k, s, p = ob.peek(); seqs.append(s); ob.ack()
print(seqs)
""")
    assert out == ["3", "3", "1", "[0,", "1,", "2]"]


def test_record_too_big_for_a_slot_is_refused(tmp_path):
    out = _run(tmp_path, """
ob = outbox.Outbox('ob.bin', 8, 256)
try:
    ob.append(outbox.TELEMETRY, 'x' * 250)
except ValueError as e:
    print('refused', ob.depth, ob.next_seq)
""")
    assert out == ["refused", "0", "0"]
