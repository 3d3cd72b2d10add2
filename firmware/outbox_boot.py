"""The outbox's boot-time code (outbox.py): find or create the outbox on flash, migrate
the single-file outbox of older firmware (outbox_v1.py), scan the segments to rebuild the
queue. Imported by Outbox.__init__ and dropped from sys.modules right after, so none of
it stays in memory on the board."""

import os
import struct
from binascii import crc32

_MAGIC = b"EWO2"
_REC = 16


def rand32():
    """31 random bits, never 0: the port's os.urandom, else a `machine.rng()` (ports or
    stand-ins without urandom, e.g. the RV32 QEMU build), else the jitter of timer reads."""
    try:
        x = struct.unpack("<I", os.urandom(4))[0]
    except (AttributeError, OSError):
        try:
            import machine

            x = machine.rng()
        except (ImportError, AttributeError):
            import time

            x = 0
            for _ in range(64):
                x = crc32(struct.pack("<I", time.ticks_us()), x)
    return (x & 0x7FFFFFFF) or 1


def folder(path):
    """The outbox's folder for the configured file name: outbox.bin -> outbox.d."""
    i = path.rfind(".")
    return (path[:i] if i > path.rfind("/") else path) + ".d"


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def clear(d):
    """Empty the folder `d` of the outbox's files (made when missing), by name: no list of
    its entries (listing's reason)."""
    segs, _ = listing(d)
    if segs is None:
        os.mkdir(d)
        return
    n, hi = segs
    miss = 0
    while n <= hi:
        try:
            os.remove("%s/%d" % (d, n))
            miss = 0
        except OSError:
            miss += 1
            if miss >= _GAP:  # a long run of missing numbers: on to the next file's
                n, miss = _next(d, n), 0
                continue
        n += 1
    for name in ("ack", "meta", "meta.new"):
        _remove(d + "/" + name)


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


def write_meta(ob, epoch):
    b = bytearray(12)
    b[0:4] = _MAGIC
    struct.pack_into("<II", b, 4, epoch, crc32(_MAGIC + struct.pack("<I", epoch)))
    f = ob.opener(ob.dir + "/meta.new", "wb")
    f.write(b)
    f.close()
    os.rename(ob.dir + "/meta.new", ob.dir + "/meta")


def read_meta(ob):
    try:
        f = ob.opener(ob.dir + "/meta", "rb")
    except OSError:
        return 0
    b = f.read(12)
    f.close()
    if len(b) == 12 and b[0:4] == _MAGIC:
        ep, c = struct.unpack_from("<II", b, 4)
        if c == crc32(b[0:8]):
            return ep
    return 0


def listing(d):
    """(lowest, highest) segment number in folder d ((0, -1) when none; None when d is
    missing) and whether it holds the ack file. One entry at a time (os.ilistdir), never
    the folder's list: a board deep in an outage has hundreds of segments, and its heap at
    boot, in pieces after the model's parse, holds no block for a list of their names
    (150 pending records: MemoryError "allocating 512 bytes" in listdir and sorted, an
    App() that failed on every restart)."""
    try:
        it = os.ilistdir(d)
    except OSError:
        return None, False
    lo = hi = -1
    ack = False
    for e in it:
        name = e[0]
        if name == "ack":
            ack = True
        elif name.isdigit() and len(name) < 10:  # (a longer one is not ours: see _next)
            n = int(name)
            if lo < 0 or n < lo:
                lo = n
            if n > hi:
                hi = n
    return ((lo, hi) if lo >= 0 else (0, -1)), ack


# Missing numbers in a row after which the scan asks the folder for the next one (_next).
# Segments are numbered one after the other, so the numbers between the lowest and the
# highest are nearly all there; a stray file with a far number (a name of digits that is
# no segment of ours) made the range to scan millions of numbers long, each an open that
# fails (a board stuck at boot), or, past a machine word, range() raised OverflowError
# (App() failed at every restart). Names of 10 digits or more are never ours.
_GAP = 32


def _next(d, n):
    # the lowest segment number above n in folder d, one entry at a time (listing's
    # reason); a number past any when there is none
    best = -1
    for e in os.ilistdir(d):
        name = e[0]
        if name.isdigit() and len(name) < 10:
            k = int(name)
            if k > n and (best < 0 or k < best):
                best = k
    return best if best >= 0 else 1000000000


def boot(ob):
    """Rebuild `ob`'s state from flash (creating the outbox, or migrating an old one)."""
    ob.dir = d = folder(ob.path)
    if exists(ob.path):  # the single-file outbox of older firmware
        import sys

        import outbox_v1

        outbox_v1.migrate(ob, ob.path)
        del sys.modules["outbox_v1"]
    segs, ack = listing(d)
    epoch = read_meta(ob) if segs is not None else 0
    if not epoch:  # a fresh outbox (or a flash erased): a new epoch, seq from 0
        clear(d)
        ob.epoch = rand32()
        write_meta(ob, ob.epoch)
        segs, ack = (0, -1), False
    else:
        ob.epoch = epoch
    tail = 0
    if ack:
        f = ob.opener(d + "/ack", "rb")
        b = f.read(12)
        f.close()
        if len(b) == 12 and struct.unpack_from("<I", b, 8)[0] == crc32(b[0:8]):
            tail, ob.dropped = struct.unpack_from("<II", b, 0)
    next_seq = tail
    n, hi = segs
    miss = 0
    while n <= hi:
        last = scan(ob, n)
        if last == -2:  # no such file
            miss += 1
            if miss >= _GAP:
                n, miss = _next(d, n), 0
            else:
                n += 1
            continue
        miss = 0
        if last < 0:  # nothing intact in it
            os.remove(ob._name(n))
            n += 1
            continue
        if not ob._nseg:
            ob._seg0 = n
        while ob._seg0 + ob._nseg < n:  # a segment removed or missing: an empty place
            ob._push(next_seq - 1)
        ob._push(last)
        if last + 1 > next_seq:
            next_seq = last + 1
        n += 1
    ob.next_seq = next_seq
    ob.tail = max(tail, next_seq - ob.slots)
    ob._rseg, ob._roff = ob._seg0, 0
    ob._rotate()  # appends go to a new segment (the newest is kept whole in RAM)
    ob._trim()


def scan(ob, n):
    """The last intact seq of segment n, -1 when it has none, -2 when there is no such file
    (a number between the lowest and the highest: deleted, or never written); a torn or
    corrupt record ends the segment."""
    try:
        f = ob.opener(ob._name(n), "rb")
    except OSError:
        return -2
    b = ob.rbuf
    mv = memoryview(b)
    last = -1
    while True:
        k = f.readinto(mv[0:_REC])
        if not k or b[0] == 0:  # the end (a 0 byte: what follows is old)
            break
        ok = k == _REC and b[0] == 0xA5
        if ok:
            kind, length, seq, dropped, crc = struct.unpack_from("<BHIII", b, 1)
            ok = length <= len(b) - _REC and f.readinto(mv[_REC:_REC + length]) == length \
                and crc32(mv[_REC:_REC + length], crc32(mv[0:12])) == crc
        if not ok:
            ob.skipped += 1
            break
        if seq > last:
            last = seq
        if dropped > ob.dropped:
            ob.dropped = dropped
    f.close()
    return last


def erase(path):
    """Remove the outbox (both formats), as erasing the flash does (tests, benchmarks)."""
    d = folder(path)
    try:
        for name in os.listdir(d):
            os.remove(d + "/" + name)
        os.rmdir(d)
    except OSError:
        pass
    if exists(path):
        os.remove(path)
