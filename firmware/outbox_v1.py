"""One-time migration of the single-file outbox of older firmware (`outbox.bin`: a 32-byte
header, then fixed slots written round-robin) into the log-structured outbox (outbox.py).

Imported by outbox.Outbox only when that file exists, then dropped from sys.modules. Its
pending records (oldest first, with their seq and kind), the next seq, `dropped` and the
epoch (a new one if that firmware had none) carry over. Crash-safe: the new folder is
rebuilt from scratch on every try and the old file is removed last, so a power cut
during the migration only makes the next boot do it again.
"""

import os
import struct
from binascii import crc32

_HDR = 32
_REC = 12
PENDING = 0xA5
ACKED = 0x5A


def _slot(f, b, i, ss):
    # -> (state, kind, length, seq) of an intact slot, or None
    f.seek(_HDR + i * ss)
    if f.readinto(b) != ss or b[0] not in (PENDING, ACKED):
        return None
    kind, length, seq, crc = struct.unpack_from("<BHII", b, 1)
    if length > ss - _REC:
        return None
    mv = memoryview(b)
    if crc32(mv[_REC:_REC + length], crc32(mv[1:8])) != crc:
        return None
    return b[0], kind, length, seq


def migrate(ob, path):
    """Move the records of `path` (old format) into the empty outbox `ob`, remove `path`."""
    import outbox_boot

    f = open(path, "rb")
    hdr = f.read(_HDR)
    if len(hdr) != _HDR or hdr[0:4] != b"EWOB" or struct.unpack_from("<H", hdr, 4)[0] != 1:
        f.close()
        print("outbox: unreadable old outbox %s, starting a new queue" % path)
        os.remove(path)
        return
    _, _, ss, ns, base, dropped, epoch = struct.unpack_from("<4sHHIIII", hdr)
    b = bytearray(ss)
    best, best_i = -1, -1
    for i in range(ns):
        r = _slot(f, b, i, ss)
        if r is not None and r[3] > best:
            best, best_i = r[3], i
    next_seq = max(base, best + 1)
    head = (best_i + 1) % ns if best_i >= 0 else 0
    depth, expect = 0, best  # pending records: one run ending at head-1, consecutive seqs
    while depth < ns:
        r = _slot(f, b, (head - 1 - depth) % ns, ss)
        if r is None or r[0] != PENDING or r[3] != expect:
            break
        depth += 1
        expect -= 1
    d = ob.dir
    outbox_boot.clear(d)  # a migration cut short before: start over
    ob.epoch = epoch or outbox_boot.rand32()
    outbox_boot.write_meta(ob, ob.epoch)
    ob.dropped = dropped
    ob.tail = ob.next_seq = next_seq - depth
    ob._write_ack()
    ob._rotate()
    for k in range(depth, 0, -1):
        r = _slot(f, b, (head - k) % ns, ss)
        ob.next_seq = r[3]
        ob.append(r[1], memoryview(b)[_REC:_REC + r[2]])
    ob.next_seq = next_seq
    f.close()
    ob.close()
    ob._seg0 = ob._nseg = 0
    ob.dropped = 0
    os.remove(path)
    print("outbox: %d pending records of %s moved to %s/, next seq %d, epoch %d"
          % (depth, path, d, next_seq, ob.epoch))
