"""Flash-backed store-and-forward queue: every message is written here before it is sent.

One file of fixed size: a 32-byte header, then `slots` slots of `slot_size` bytes
written round-robin, so the file never grows and writes spread over the whole
file (littlefs wear-levels the blocks under it). A slot holds one record:

    0  state  0xA5 pending, 0x5A acknowledged (sent and PUBACKed), else empty
    1  kind   0 telemetry, 1 alert
    2  length of the payload (u16, little-endian)
    4  seq (u32)
    8  CRC32 of bytes 1..7 and the payload
    12 payload (JSON, UTF-8)

A record torn by a power cut fails its CRC and is skipped; it never reached the
broker, because sending starts only after the append returned. The next seq is
one past the highest seq found in any intact slot (acknowledged slots keep their
seq), so it survives reboots. When every slot is pending the oldest is overwritten
and counted in `dropped` (kept in the header: written only when a drop happens).

The header also holds the outbox's `epoch`: 31 random bits drawn when the file is
created (or found 0 in a file of older firmware), never changed after. Erasing the
flash restarts `seq` at 0 under a new epoch, so the host keys records by
(device, epoch, seq) and never takes a re-flashed board's records for replays.
"""

import struct
from binascii import crc32

from micropython import const

_MAGIC = b"EWOB"
_VERSION = const(1)
_HDR = const(32)  # magic, version u16, slot_size u16, slots u32, base_seq u32, dropped u32,
#                  epoch u32
_REC = const(12)
PENDING = const(0xA5)
ACKED = const(0x5A)
TELEMETRY = const(0)
ALERT = const(1)


def rand32():
    """31 random bits, never 0: the port's os.urandom, else a `machine.rng()` (ports or
    stand-ins without urandom, e.g. the RV32 QEMU build), else the jitter of timer reads."""
    try:
        import os

        x = struct.unpack("<I", os.urandom(4))[0]
    except (ImportError, AttributeError, OSError):
        try:
            import machine

            x = machine.rng()
        except (ImportError, AttributeError):
            import time

            x = 0
            for _ in range(64):
                x = crc32(struct.pack("<I", time.ticks_us()), x)
    return (x & 0x7FFFFFFF) or 1


class Outbox:
    """A bounded, seq-numbered queue on flash. `opener` is open() (a stand-in on the host)."""

    def __init__(self, path, slots, slot_size, opener=open):
        self.path = path
        self.opener = opener
        self.wbuf = bytearray(slot_size)
        self.rbuf = bytearray(slot_size)
        self._hdr = bytearray(_HDR)
        self._one = bytearray(1)
        self.skipped = 0  # torn or corrupt records found
        self.dropped = 0
        self.f = None
        base_seq = self._open(slots, slot_size)
        self._scan(base_seq)

    # -- file ------------------------------------------------------------------
    def _open(self, slots, slot_size):
        try:
            f = self.opener(self.path, "r+b")
        except OSError:
            f = None
        if f is not None:
            n = f.readinto(self._hdr)
            if n == _HDR and self._hdr[0:4] == _MAGIC:
                _, ver, ss, ns, base, dropped, ep = struct.unpack_from("<4sHHIIII", self._hdr)
                if ver == _VERSION:
                    if (ns, ss) != (slots, slot_size):
                        # keep the geometry on flash: pending records stay readable
                        print("outbox: keeping %d x %d slots on flash (config says %d x %d)"
                              % (ns, ss, slots, slot_size))
                        self.wbuf = bytearray(ss)
                        self.rbuf = bytearray(ss)
                    self.f, self.slots, self.slot_size, self.dropped = f, ns, ss, dropped
                    self.epoch = ep
                    if not ep:  # written by firmware without epochs: draw one now, once
                        self.epoch = rand32()
                        self._write_header()
                    return base
            f.close()
            print("outbox: unreadable header in %s, starting a new queue" % self.path)
        self.slots, self.slot_size = slots, slot_size
        self.epoch = rand32()
        self._create(0)
        return 0

    def _create(self, base_seq):
        f = self.opener(self.path, "wb")
        struct.pack_into("<4sHHIIII", self._hdr, 0, _MAGIC, _VERSION, self.slot_size,
                         self.slots, base_seq, self.dropped, self.epoch)
        f.write(self._hdr)
        zero = bytearray(self.slot_size)
        for _ in range(self.slots):
            f.write(zero)
        f.close()
        self.f = self.opener(self.path, "r+b")

    def _write_header(self):
        struct.pack_into("<II", self._hdr, 16, self.dropped, self.epoch)
        self.f.seek(16)
        self.f.write(memoryview(self._hdr)[16:24])
        self.f.flush()

    def _read_slot(self, i):
        # -> (state, kind, length, seq) of an intact record, or None
        b = self.rbuf
        self.f.seek(_HDR + i * self.slot_size)
        if self.f.readinto(b) != self.slot_size:
            return None
        state = b[0]
        if state != PENDING and state != ACKED:
            return None
        kind, length, seq, crc = struct.unpack_from("<BHII", b, 1)
        if length > self.slot_size - _REC:
            return None
        mv = memoryview(b)
        if crc32(mv[_REC:_REC + length], crc32(mv[1:8])) != crc:
            return None
        return state, kind, length, seq

    def _scan(self, base_seq):
        best, best_i = -1, -1
        for i in range(self.slots):
            r = self._read_slot(i)
            if r is None:
                if self.rbuf[0] in (PENDING, ACKED):
                    self.skipped += 1
                continue
            if r[3] > best:
                best, best_i = r[3], i
        self.next_seq = max(base_seq, best + 1)
        self.head = (best_i + 1) % self.slots if best_i >= 0 else 0
        # pending records form one run ending at head-1 with consecutive seqs
        depth, expect = 0, best
        while depth < self.slots:
            i = (self.head - 1 - depth) % self.slots
            r = self._read_slot(i)
            if r is None or r[0] != PENDING or r[3] != expect:
                break
            depth += 1
            expect -= 1
        self.depth = depth

    # -- queue -----------------------------------------------------------------
    @property
    def tail(self):
        return (self.head - self.depth) % self.slots

    @property
    def last_seq(self):
        """Seq of the last record queued (0 when none yet)."""
        return self.next_seq - 1 if self.next_seq else 0

    def append(self, kind, payload):
        """Write `payload` (str/bytes holding seq == self.next_seq) durably; return its seq."""
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload)
        if _REC + n > self.slot_size:
            raise ValueError("outbox: record of %d bytes over slot size %d" % (n, self.slot_size))
        if self.depth == self.slots:
            self.depth -= 1  # overwrite the oldest pending record
            self.dropped += 1
            self._write_header()
        seq = self.next_seq
        b = self.wbuf
        mv = memoryview(b)
        b[0] = PENDING
        struct.pack_into("<BHI", b, 1, kind, n, seq)
        b[_REC:_REC + n] = payload
        struct.pack_into("<I", b, 8, crc32(mv[_REC:_REC + n], crc32(mv[1:8])))
        self.f.seek(_HDR + self.head * self.slot_size)
        self.f.write(mv[:_REC + n])  # one write: a cut leaves a CRC mismatch, not a wrong record
        self.f.flush()
        self.head = (self.head + 1) % self.slots
        self.depth += 1
        self.next_seq = seq + 1
        return seq

    def peek(self):
        """(kind, seq, memoryview payload) of the oldest pending record, or None.

        A record that fails its check here (flash corruption) is skipped and counted."""
        while self.depth:
            r = self._read_slot(self.tail)
            if r is not None and r[0] == PENDING:
                return r[1], r[3], memoryview(self.rbuf)[_REC:_REC + r[2]]
            self.skipped += 1
            self.depth -= 1
        return None

    def ack(self):
        """Mark the oldest pending record as delivered (after the broker's PUBACK)."""
        if not self.depth:
            return
        self._one[0] = ACKED
        self.f.seek(_HDR + self.tail * self.slot_size)
        self.f.write(self._one)
        self.f.flush()
        self.depth -= 1

    def close(self):
        """Close the file (tests; the board never stops)."""
        if self.f:
            self.f.close()
            self.f = None
