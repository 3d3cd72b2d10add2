"""The flash outbox inside MicroPython: order, PUBACK removal, bound, torn records, seq across reboots."""

from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy

HEAP = heap_budget("esp32-devkitc-dht22")


def _run(tmp_path, code, log=None):
    """Printed words of `code`; the outbox's own console lines go to `log` (a list)."""
    lines = mpy.run(code="import outbox\n" + code, heap=HEAP, cwd=tmp_path).stdout.splitlines()
    if log is not None:
        log.extend(line for line in lines if line.startswith("outbox:"))
    return " ".join(line for line in lines if not line.startswith("outbox:")).split()


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
# (records of 17 bytes + their 16-byte header in segment 1 of ob.d/)
f = open('ob.d/1', 'r+b')
f.seek(3 * 33 + 15)
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


def test_epoch_is_random_kept_across_reboots_new_after_erase(tmp_path):
    out = _run(tmp_path, """
import os
ob = outbox.Outbox('ob.bin', 8, 256)
e1 = ob.epoch
ob.append(outbox.TELEMETRY, 'x'); ob.close()
ob = outbox.Outbox('ob.bin', 8, 256)   # reboot: same epoch, seq goes on
print(ob.epoch == e1, ob.next_seq, e1 > 0)
ob.close(); import outbox_boot; outbox_boot.erase('ob.bin')  # flash erased
print(os.listdir())
ob = outbox.Outbox('ob.bin', 8, 256)
print(ob.epoch != e1, ob.next_seq, ob.epoch > 0)
""")
    assert out == ["True", "1", "True", "[]", "True", "0", "True"]



def _old_outbox(tmp_path, slots, slot_size, records, base=0, dropped=0, epoch=0):
    """An outbox.bin as the single-file firmware wrote it: [(state, kind, seq, payload)] from
    slot 0 on (state 0xA5 pending, 0x5A acked)."""
    import struct
    from binascii import crc32

    data = bytearray(32 + slots * slot_size)
    struct.pack_into("<4sHHIIII", data, 0, b"EWOB", 1, slot_size, slots, base, dropped, epoch)
    for i, (state, kind, seq, payload) in enumerate(records):
        at = 32 + i * slot_size
        hdr = struct.pack("<BHI", kind, len(payload), seq)
        data[at] = state
        data[at + 1:at + 8] = hdr
        data[at + 8:at + 12] = struct.pack("<I", crc32(payload, crc32(hdr)))
        data[at + 12:at + 12 + len(payload)] = payload
    (tmp_path / "outbox.bin").write_bytes(bytes(data))


def test_old_single_file_outbox_carries_over(tmp_path):
    # 5 records of the old firmware: 0 and 1 acked, 2..4 pending; 7 dropped; epoch 123
    _old_outbox(tmp_path, 8, 256, [(0x5A, 0, 0, b"a0"), (0x5A, 0, 1, b"a1"), (0xA5, 0, 2, b"t2"),
                                   (0xA5, 1, 3, b"alert3"), (0xA5, 0, 4, b"t4")],
                dropped=7, epoch=123)
    log = []
    out = _run(tmp_path, log=log, code="""
import os, sys
ob = outbox.Outbox('outbox.bin', 16, 256)
print('outbox_v1' in sys.modules, 'outbox.bin' in os.listdir(), ob.epoch, ob.next_seq, ob.depth,
      ob.dropped)
got = []
while ob.depth:
    k, s, p = ob.peek(); got.append('%d:%d:%s' % (k, s, bytes(p).decode())); ob.ack()
print(' '.join(got))
ob.append(outbox.TELEMETRY, 'next'); ob.close()
ob = outbox.Outbox('outbox.bin', 16, 256)   # reboot on the new format
print(ob.epoch, ob.next_seq, ob.depth, ob.dropped, ob.peek()[1])
""")
    assert out == ["False", "False", "123", "5", "3", "7", "0:2:t2", "1:3:alert3", "0:4:t4",
                   "123", "6", "1", "7", "5"]
    assert log == ["outbox: 3 pending records of outbox.bin moved to outbox.d/, next seq 5, "
                   "epoch 123"]


def test_old_outbox_without_epoch_gets_one_and_keeps_its_seq(tmp_path):
    # firmware before epochs: epoch 0 in the header; every record acked
    _old_outbox(tmp_path, 8, 256, [(0x5A, 0, 40, b"x"), (0x5A, 0, 41, b"y")])
    out = _run(tmp_path, """
ob = outbox.Outbox('outbox.bin', 8, 256)
e = ob.epoch
print(e > 0, ob.next_seq, ob.depth); ob.close()
ob = outbox.Outbox('outbox.bin', 8, 256)
print(ob.epoch == e, ob.next_seq, ob.depth)
""")
    assert out == ["True", "42", "0", "True", "42", "0"]


def test_migration_cut_short_is_done_again(tmp_path):
    # a power cut during the migration left a partial new folder next to the old file
    _old_outbox(tmp_path, 8, 256, [(0xA5, 0, 0, b"p0"), (0xA5, 0, 1, b"p1")], epoch=9)
    (tmp_path / "outbox.d").mkdir()
    (tmp_path / "outbox.d" / "1").write_bytes(b"\xa5partial")
    out = _run(tmp_path, """
ob = outbox.Outbox('outbox.bin', 8, 256)
print(ob.epoch, ob.next_seq, ob.depth, ob.skipped, ob.peek()[1])
""")
    assert out == ["9", "2", "2", "0", "0"]


def test_acked_segments_are_deleted_and_flash_use_stays_bounded(tmp_path):
    out = _run(tmp_path, """
import os
ob = outbox.Outbox('ob.bin', 20, 512)
for i in range(300):
    ob.append(outbox.TELEMETRY, 'x' * 300)
n_full = len(os.listdir('ob.d'))
while ob.depth:
    ob.peek(); ob.ack()
ob.append(outbox.TELEMETRY, 'y')
print(ob.dropped, n_full, len(os.listdir('ob.d')))
""")
    dropped, n_full, n_after = map(int, out)
    assert dropped == 280
    assert n_full <= 20 // 2 + 4  # segments of up to 768 B: 2 records of 316 B each
    assert n_after <= 4  # meta, ack, the newest segment (and one rotated in)


def test_online_appends_reuse_one_segment_and_reboot_clean(tmp_path):
    # each record acked before the next (a board online): the newest segment starts over in
    # place (no file created or removed); records shorter than the last leave old bytes
    # after them, which a reboot must neither send nor count as torn
    out = _run(tmp_path, """
import os
ob = outbox.Outbox('ob.bin', 200, 512)
names = set()
for i in range(30):
    ob.append(outbox.TELEMETRY, 'r%d-' % i + 'x' * (200 - 5 * i))
    k, s, p = ob.peek(); ob.ack()
    for n in os.listdir('ob.d'):
        names.add(n)
ob.append(outbox.ALERT, 'pending')
ob.close()
ob = outbox.Outbox('ob.bin', 200, 512)
k, s, p = ob.peek()
print(sorted(names), ob.skipped, ob.next_seq, ob.depth, k, s, bytes(p).decode())
""")
    assert out == ["['1',", "'ack',", "'meta']", "0", "31", "1", "1", "30", "pending"]


def test_deep_backlog_beyond_the_ring_of_segments_drains_in_order(tmp_path):
    # an outage deep enough for more segments than outbox keeps seqs of in RAM (_RING):
    # the oldest are read from their files; nothing lost out of order, the drops counted,
    # every drained segment deleted; a huge `slots` costs no RAM per slot
    out = _run(tmp_path, """
import os, gc
ob = outbox.Outbox('ob.bin', 180, 512)
for i in range(230):
    ob.append(outbox.TELEMETRY, '%d:' % ob.next_seq + 'x' * 290)
n_full = len(os.listdir('ob.d'))
ob.close()
ob = outbox.Outbox('ob.bin', 180, 512)   # reboot in the middle of the outage
seqs = []
while ob.depth:
    k, s, p = ob.peek()
    assert bytes(p).decode().startswith('%d:' % s)
    seqs.append(s); ob.ack()
print(ob.dropped, seqs == list(range(50, 230)), n_full - 2 > 64, len(os.listdir('ob.d')))
gc.collect(); f0 = gc.mem_free()
big = outbox.Outbox('big.bin', 100000, 512)
gc.collect()
print(f0 - gc.mem_free() < 4000)
""")
    assert out == ["50", "True", "True", "3", "True"]


def test_a_stray_file_with_a_far_number_does_not_stop_the_boot(tmp_path):
    # files named with digits that are no segments of ours: one past any machine word (the
    # boot's range() raised OverflowError: App() failed at every restart) and one far above
    # the segments (the boot tried each number between: hundreds of millions of opens);
    # the records pending are found, in order, and a corrupt meta still empties the folder
    out = _run(tmp_path, """
import os
ob = outbox.Outbox('ob.bin', 40, 256)
for i in range(30):
    ob.append(outbox.TELEMETRY, '%d:' % ob.next_seq + 'x' * 100)
ob.peek(); ob.ack()
ob.close()
for name in ('99999999999999999999', '400000000', '0007'):
    open('ob.d/' + name, 'wb').close()
ob = outbox.Outbox('ob.bin', 40, 256)
seqs = []
while ob.depth:
    k, s, p = ob.peek()
    seqs.append(s); ob.ack()
print(seqs == list(range(1, 30)), ob.next_seq, '400000000' in os.listdir('ob.d'))
ob.close()
open('ob.d/400000000', 'wb').close()
open('ob.d/meta', 'wb').close()  # corrupt: a new outbox
ob = outbox.Outbox('ob.bin', 40, 256)
print(ob.depth, ob.next_seq, sorted(n for n in os.listdir('ob.d') if n not in ('meta', 'ack')))
""")
    assert out == ["True", "30", "False", "0", "0", "['0007',", "'1',", "'99999999999999999999']"]
