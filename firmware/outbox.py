"""Flash-backed store-and-forward queue: every message is written here before it is sent.

Log-structured, in a folder of its own (`outbox.bin` in the config -> `outbox.d/`), so
its metadata commits never touch the root folder (whose compaction on littlefs costs
millions of instructions with the firmware's files in it):

    meta   magic, version, epoch (u32), CRC: written once, when the outbox is created
    ack    first unacknowledged seq (u32), dropped (u32), CRC: 12 bytes rewritten in place
           on each PUBACK (a littlefs inline file: one metadata commit, atomic)
    1, 2, 3, ...  segments: records appended to the newest one, a new one started when
           the next record would take it past SEG_BYTES (or at boot); a segment whose
           records are all acknowledged (or dropped) is deleted whole.

A record (16-byte header, then the payload):

    0  0xA5
    1  kind   0 telemetry, 1 alert
    2  length of the payload (u16, little-endian)
    4  seq (u32)
    8  dropped (u32): the count when this record was written
    12 CRC32 of bytes 0..11 and the payload

On littlefs (copy-on-write) a write in the middle of a file rewrites the rest of the
file, and even an append at its end, after a sync, copies the file's last block into
a new one byte by byte (about 225 instructions a byte on RV32). So the newest segment
is short and kept whole in RAM: an append rewrites it from offset 0 in one write (a new
block, nothing copied by littlefs) and peek reads it there. When nothing is pending
(online, each record PUBACKed before the next sample) the newest segment starts over in
place: no file is created or deleted then. The file never shrinks (that would copy its
old tail): a 0 byte after the last record ends it, the bytes after are old. A record
never spans two segments.

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
from array import array
from binascii import crc32

from micropython import const

import os

_REC = const(16)
_ENTRY = const(0xA5)
SEG_BYTES = 768  # the newest segment's size at most (RAM; or one record when bigger)
_RING = const(64)  # segments whose last seq is kept in RAM
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
        # the newest segment, whole: each append rewrites it from offset 0 (see above)
        self.seg = bytearray(max(SEG_BYTES, slot_size + _REC - 12))
        # a record read from an older segment (peek, _read_last); between peeks the app
        # writes the next telemetry in it (App.message), which append copies into seg
        self.rbuf = bytearray(slot_size + _REC - 12)
        self._ab = bytearray(12)
        self.skipped = 0  # torn or corrupt records found
        self.dropped = 0
        self.f = None  # the newest segment
        self.rf = None  # an older segment being read (peek)
        self.af = None  # the ack file
        # segments: numbers first..first+n-1; the last seq of the newest _RING in a ring
        # (16 bits of it: enough while fewer than 32,768 are pending), an older one's read
        # from its file when needed (only deep in an outage)
        self._m = 0xFFFF if slots < 30000 else 0
        self._last = array("H" if self._m else "i", bytes((2 if self._m else 4) * _RING))
        self._cn = self._cv = -1  # the older segment whose last seq was read, and that seq
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
        self._nseg += 1
        self._set_last(last)

    def _set_last(self, seq):
        # the newest segment's last seq
        i = (self._seg0 + self._nseg - 1) % _RING
        self._last[i] = seq & self._m if self._m else seq

    def _last_seq(self, n):
        # segment n's last seq, in full (the 16 bits kept, read near the tail)
        if self._seg0 + self._nseg - 1 - n >= _RING:  # out of the ring: read its file
            if self._cn != n:
                self._cn, self._cv = n, self._read_last(n)
            return self._cv
        v = self._last[n % _RING]
        if self._m:
            t = self.tail
            v = t + ((v - t + 0x8000) & 0xFFFF) - 0x8000
        return v

    def _read_last(self, n):
        # the highest seq in segment n's file (-1 when it has none)
        last = -1
        b = self.rbuf
        try:
            f = self.opener(self._name(n), "rb")
        except OSError:  # an empty place left at boot
            return last
        at = 0
        mv = memoryview(b)
        while f.readinto(mv[0:_REC]) == _REC and b[0] == _ENTRY:
            seq = struct.unpack_from("<I", b, 4)[0]
            if seq > last:
                last = seq
            at += _REC + struct.unpack_from("<H", b, 2)[0]
            f.seek(at)
        f.close()
        return last

    def _rotate(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        n = self._seg0 + self._nseg if self._nseg else self._seg0 + 1
        if not self._nseg:
            self._seg0 = n
        self.f = self.opener(self._name(n), "w+b")
        self._push(self.next_seq - 1)
        self._size = self._fsize = 0

    def _trim(self):
        # delete the oldest segments whose records are all behind the tail (never the newest)
        while self._nseg > 1 and self._last_seq(self._seg0) < self.tail:
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

    def append(self, kind, payload, more=b""):
        """Write `payload` + `more` (str/bytes holding seq == self.next_seq) durably;
        return its seq."""
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload) + len(more)
        seq = self.next_seq
        at = self._place(n)
        b = self.seg
        mv = memoryview(b)
        e = at + _REC + n
        w = e - len(more)
        struct.pack_into("<BBHII", b, at, _ENTRY, kind, n, seq, self.dropped)
        b[at + _REC:w] = payload
        if more:
            b[w:e] = more
        # the CRC of the header and the record as they lie in the segment (no slice copied)
        struct.pack_into("<I", b, at + 12, crc32(mv[at + _REC:e], crc32(mv[at:at + 12])))
        self._commit(mv, e, seq)
        return seq

    def append_tel(self, tel, tpl, lh, head, band):
        """append(TELEMETRY, ...) of a message that `tel` (ewkern.tel, C) writes straight
        into the segment, record header and CRC included: tpl's text with its "%d" filled
        from the array('i') head (in its first lh bytes), then band (App.sample on a board
        with the C module). The same bytes on flash as append's. Returns the payload's
        (start, end) in self.seg, or None, nothing queued, when the text with at most 10
        numbers of 11 characters could exceed a slot (the caller appends it another way)."""
        n = len(tpl) + 110
        if 12 + n > self.slot_size:
            return None
        seq = self.next_seq
        at = self._place(n)
        e = tel(self.seg, at, tpl, lh, head, band, TELEMETRY, seq, self.dropped)
        self._commit(memoryview(self.seg), e, seq)
        return at + _REC, e

    def _place(self, n):
        # where in the newest segment a record of n bytes goes (the oldest pending record
        # dropped when the outbox is full; a new segment when this one has no room)
        if 12 + n > self.slot_size:
            raise ValueError("outbox: record of %d bytes over slot size %d" % (n, self.slot_size))
        seq = self.next_seq
        if seq - self.tail >= self.slots:
            self.tail += 1  # drop the oldest pending record
            self.dropped += 1
        at = self._size
        if self.tail == seq and at:
            # nothing pending (the usual case online): the newest segment starts over in
            # place, the acknowledged records in it are overwritten; no new file
            at = 0
            self._rseg = self._seg0 + self._nseg - 1
            self._roff = 0
        elif at + _REC + n > len(self.seg):
            self._rotate()
            at = 0
        return at

    def _commit(self, mv, e, seq):
        # the newest segment, with record seq ending at e, written out durably
        w = e
        if self._fsize > e:  # the file is longer (records overwritten): an end mark
            mv[e] = 0
            w = self._fsize
        f = self.f
        f.seek(0)
        f.write(mv[:w])  # one write: a cut leaves a CRC mismatch, not a wrong record
        f.flush()
        self._size = e
        self._fsize = w
        self._set_last(seq)
        self.next_seq = seq + 1
        if self._nseg > 1:  # (one segment: nothing to trim)
            self._trim()

    def peek(self):
        """(kind, seq, memoryview payload) of the oldest pending record, or None.

        A record that fails its check here (flash corruption) ends its segment's reading:
        the records after it in that segment are skipped and counted."""
        while self.tail < self.next_seq:
            b = self.rbuf
            mv = memoryview(b)
            newest = self._seg0 + self._nseg - 1
            if self._rseg < self._seg0:
                self._rseg, self._roff = self._seg0, 0
            at = self._roff
            if self._rseg == newest:  # in RAM
                b = self.seg
                mv = memoryview(b)
                k = min(_REC, self._size - at)
                f = None
            else:
                if self.rf is None:
                    self.rf = self.opener(self._name(self._rseg), "rb")
                f = self.rf
                f.seek(at)
                at = 0
                k = f.readinto(mv[0:_REC])
            if k == _REC and b[at] == _ENTRY:
                kind, length, seq, _, crc = struct.unpack_from("<BHIII", b, at + 1)
                if length <= len(b) - _REC:
                    if seq < self.tail:  # acknowledged or dropped: step over it
                        self._roff += _REC + length
                        continue
                    e = at + _REC + length
                    if (f is None or f.readinto(mv[_REC:e]) == length) and \
                            crc32(mv[at + _REC:e], crc32(mv[at:at + 12])) == crc:
                        if seq > self.tail:  # records lost to corruption before it
                            self.skipped += seq - self.tail
                            self.tail = seq
                        return kind, seq, mv[at + _REC:e]
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
            lost = self._last_seq(self._rseg) + 1
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
