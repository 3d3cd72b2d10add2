"""Flash-backed store-and-forward queue: every message is written here before it is sent.

Log-structured, in a folder of its own (`outbox.bin` in the config -> `outbox.d/`), so
its metadata commits never touch the root folder (whose compaction on littlefs costs
millions of instructions with the firmware's files in it):

    meta   magic, version, epoch (u32), CRC: written once, when the outbox is created
    ack    first unacknowledged seq (u32), dropped (u32), CRC: 12 bytes rewritten in place
           on each PUBACK (a littlefs inline file: one metadata commit, atomic)
    0, 1, 2, ...  segments: records appended at the end of the newest one, which is
           rotated once it holds SEG_BYTES; a segment whose records are all acknowledged
           (or dropped) is deleted whole.

A record (16-byte header, then the payload):

    0  0xA5
    1  kind   0 telemetry, 1 alert
    2  length of the payload (u16, little-endian)
    4  seq (u32)
    8  dropped (u32): the count when this record was written
    12 CRC32 of bytes 0..11 and the payload

On littlefs (copy-on-write) a write in the middle of a file rewrites the rest of the
file, and an append after a sync copies the file's last block (byte by byte) into a
new one: the cost of an append grows with the offset in the last block, so segments
stay short; a record never spans two segments.

A record torn by a power cut fails its CRC and ends the scan of its segment at boot
(counted in `skipped`); it never reached the broker, because sending starts only after
the append returned, and the next record goes to a new segment. The next seq is one
past the newest intact record (or the acknowledged seq, when every segment is gone),
so it survives reboots. At most `slots` records are pending: an append beyond that
drops the oldest, counted in `dropped` (carried by the record itself and by `ack`).

`meta` holds the outbox's `epoch`: 31 random bits drawn when the outbox is created,
never changed after. Erasing the flash restarts `seq` at 0 under a new epoch, so the
host keys records by (device, epoch, seq) and never takes a re-flashed board's records
for replays. A board updated from firmware with the single-file outbox (`outbox.bin`)
carries its pending records, seq, dropped and epoch over (outbox_v1.py, imported only
then). The code that runs only at boot (scan, creation, migration) lives in
outbox_boot.py, dropped from memory once the queue is rebuilt.
"""

import struct
from binascii import crc32

from micropython import const

import os

_REC = const(16)
_ENTRY = const(0xA5)
SEG_BYTES = 1024  # rotate the newest segment once it holds this much
TELEMETRY = const(0)
ALERT = const(1)


class Outbox:
    """A bounded, seq-numbered queue on flash. `opener` is open() (a stand-in on the host)."""

    def __init__(self, path, slots, slot_size, opener=open):
        self.path = path
        self.dir = None  # outbox_boot.folder(path)
        self.opener = opener
        self.slots = slots
        self.slot_size = slot_size
        self.wbuf = bytearray(slot_size + _REC - 12)
        self.rbuf = bytearray(slot_size + _REC - 12)
        self._ab = bytearray(12)
        self.skipped = 0  # torn or corrupt records found
        self.dropped = 0
        self.f = None  # the newest segment (r+b)
        self.rf = None  # an older segment being read (peek)
        self.af = None  # the ack file
        # segments: numbers first..first+n-1, the last seq of each in a ring
        nseg = slots * (slot_size + _REC) // SEG_BYTES + 4
        self._last = [0] * nseg
        self._seg0 = 0
        self._nseg = 0
        import sys

        import outbox_boot  # the boot-time code: freed once the queue is rebuilt

        outbox_boot.boot(self)
        del sys.modules["outbox_boot"]

    # -- files -----------------------------------------------------------------
    def _name(self, n):
        return "%s/%d" % (self.dir, n)

    def _write_ack(self):
        b = self._ab
        struct.pack_into("<II", b, 0, self.tail, self.dropped)
        struct.pack_into("<I", b, 8, crc32(memoryview(b)[0:8]))
        if self.af is None:
            self.af = self.opener(self.dir + "/ack", "w+b")
        else:
            self.af.seek(0)
        self.af.write(b)
        self.af.flush()

    def _push(self, last):
        i = (self._seg0 + self._nseg) % len(self._last)
        self._last[i] = last
        self._nseg += 1

    def _rotate(self):
        if self.f is not None:
            self.f.close()
        n = self._seg0 + self._nseg if self._nseg else self._seg0 + 1
        if not self._nseg:
            self._seg0 = n
        self.f = self.opener(self._name(n), "w+b")
        self._push(self.next_seq - 1)
        self._size = 0

    def _trim(self):
        # delete the oldest segments whose records are all behind the tail (never the newest)
        while self._nseg > 1 and self._last[self._seg0 % len(self._last)] < self.tail:
            n = self._seg0
            if self._rseg == n:
                if self.rf is not None:
                    self.rf.close()
                    self.rf = None
                self._rseg, self._roff = n + 1, 0
            try:
                os.remove(self._name(n))
            except OSError:  # an empty place (see _boot)
                pass
            self._seg0 = n + 1
            self._nseg -= 1

    # -- queue -----------------------------------------------------------------
    @property
    def depth(self):
        return self.next_seq - self.tail

    @property
    def last_seq(self):
        """Seq of the last record queued (0 when none yet)."""
        return self.next_seq - 1 if self.next_seq else 0

    def append(self, kind, payload):
        """Write `payload` (str/bytes holding seq == self.next_seq) durably; return its seq."""
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload)
        if 12 + n > self.slot_size:
            raise ValueError("outbox: record of %d bytes over slot size %d" % (n, self.slot_size))
        if self.next_seq - self.tail >= self.slots:
            self.tail += 1  # drop the oldest pending record
            self.dropped += 1
        if self._size >= SEG_BYTES:
            self._rotate()
        seq = self.next_seq
        b = self.wbuf
        mv = memoryview(b)
        b[0] = _ENTRY
        struct.pack_into("<BHII", b, 1, kind, n, seq, self.dropped)
        b[_REC:_REC + n] = payload
        struct.pack_into("<I", b, 12, crc32(mv[_REC:_REC + n], crc32(mv[0:12])))
        f = self.f
        f.seek(self._size)
        f.write(mv[:_REC + n])  # one write: a cut leaves a CRC mismatch, not a wrong record
        f.flush()
        self._size += _REC + n
        self._last[(self._seg0 + self._nseg - 1) % len(self._last)] = seq
        self.next_seq = seq + 1
        self._trim()
        return seq

    def peek(self):
        """(kind, seq, memoryview payload) of the oldest pending record, or None.

        A record that fails its check here (flash corruption) ends its segment's reading:
        the records after it in that segment are skipped and counted."""
        b = self.rbuf
        mv = memoryview(b)
        while self.tail < self.next_seq:
            newest = self._seg0 + self._nseg - 1
            if self._rseg < self._seg0:
                self._rseg, self._roff = self._seg0, 0
            if self._rseg == newest:
                f = self.f
            else:
                if self.rf is None:
                    self.rf = self.opener(self._name(self._rseg), "rb")
                f = self.rf
            f.seek(self._roff)
            k = f.readinto(mv[0:_REC])
            if k == _REC and b[0] == _ENTRY:
                kind, length, seq, _, crc = struct.unpack_from("<BHIII", b, 1)
                if length <= len(b) - _REC:
                    if seq < self.tail:  # acknowledged or dropped: step over it
                        self._roff += _REC + length
                        continue
                    if f.readinto(mv[_REC:_REC + length]) == length and \
                            crc32(mv[_REC:_REC + length], crc32(mv[0:12])) == crc:
                        if seq > self.tail:  # records lost to corruption before it
                            self.skipped += seq - self.tail
                            self.tail = seq
                        return kind, seq, mv[_REC:_REC + length]
            if self._rseg == newest:
                if k:
                    self.skipped += self.next_seq - self.tail
                    self.tail = self.next_seq
                return None
            # end (or a corrupt record) of an older segment: on to the next one
            if k:
                self.skipped += 1
            if self.rf is not None:
                self.rf.close()
                self.rf = None
            lost = self._last[self._rseg % len(self._last)] + 1
            if lost > self.tail:
                self.tail = lost
            self._rseg, self._roff = self._rseg + 1, 0
        return None

    def ack(self):
        """Mark the oldest pending record as delivered (after the broker's PUBACK)."""
        if self.tail >= self.next_seq:
            return
        self.tail += 1
        self._write_ack()
        self._trim()

    def close(self):
        """Close the files (tests; the board never stops)."""
        for f in (self.f, self.rf, self.af):
            if f:
                f.close()
        self.f = self.rf = self.af = None
