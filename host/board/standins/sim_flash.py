"""A flash file that loses power in the middle of a record write (machine.flash_open uses it
when simboard's "torn_write" is set): the N-th record write stops after `bytes` bytes,
then the process waits to be killed (-9) by the test."""

import sys
import time


class TornFile:
    """An outbox file whose N-th record write stops after `bytes` bytes: a power cut.

    Record writes are those that start with the record marker 0xA5 (firmware/outbox.py);
    the counter is shared by every file opened while the simulation runs."""

    count = 0

    def __init__(self, f, record, nbytes):
        self.f = f
        self.record = record
        self.nbytes = nbytes
        self.records = 0

    def write(self, b):
        if len(b) >= 12 and b[0] == 0xA5:
            TornFile.count += 1
            self.records = TornFile.count
            if self.records == self.record:
                # bytes equal to what is on flash already (a rewrite from an earlier
                # offset) stay; of what changes, only the first `bytes` arrive
                pos = self.f.tell()
                was = self.f.read(len(b))
                self.f.seek(pos)
                old = 0
                while old < len(was) and was[old] == b[old]:
                    old += 1
                self.f.write(bytes(b[:old + self.nbytes]))
                self.f.flush()
                print("simboard: power cut in record write %d after %d of %d bytes"
                      % (self.records, self.nbytes, len(b) - old))
                deadline = time.ticks_add(time.ticks_ms(), 60000)
                while time.ticks_diff(deadline, time.ticks_ms()) > 0:
                    time.sleep_ms(50)  # the test kills us here
                sys.exit(4)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)
