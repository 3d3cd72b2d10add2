"""Host stand-in for MicroPython's `machine`: Pin, I2C with an emulated SHTC3, WDT, flash_open.

The I2C bus carries an SHTC3 at 0x70 that answers the datasheet's commands with
the bytes the real part sends (CRC-8 per word), replaying simboard data; a `crc`
fault corrupts a CRC byte, a `fail` fault NACKs the read. `flash_open` is how the
firmware opens its outbox file here: with simboard's "torn_write" it stops an
append half-way and hangs, so a test can kill -9 the process at that point.
"""

import errno
import sys
import time

import simboard

IN = 1
OUT = 3


class Pin:
    IN = IN
    OUT = OUT
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=None, pull=None, value=None):
        self.id = id
        self._v = value or 0

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = 1 if v else 0
        return None

    def on(self):
        self._v = 1

    def off(self):
        self._v = 0

    def init(self, *a, **kw):
        pass


class _SHTC3Device:
    def __init__(self):
        global shtc3
        import shtc3  # the firmware's command codes and CRC-8: the emulator speaks its protocol

        self.asleep = True
        self.out = None
        simboard.replay()  # open and position the CSV now, not inside the first reading

    def _word(self, buf, i, raw, bad):
        buf[i] = raw >> 8
        buf[i + 1] = raw & 0xFF
        crc = shtc3.crc8(buf, i, 2)
        buf[i + 2] = crc ^ 0x5A if bad else crc

    def command(self, buf):
        code = buf[0] << 8 | buf[1]
        if self.asleep and code != shtc3.CMD_WAKE:
            raise OSError(errno.ENODEV)  # a sleeping SHTC3 NACKs everything but wake-up
        self.out = None
        if code == shtc3.CMD_WAKE:
            self.asleep = False
        elif code == shtc3.CMD_SLEEP:
            self.asleep = True
        elif code == shtc3.CMD_READ_ID:
            b = bytearray(3)
            self._word(b, 0, 0x0807, False)
            self.out = b
        elif code == shtc3.CMD_MEASURE_T_FIRST:
            status, vals = simboard.replay().attempt()
            if status == "fail":
                return  # no data: the read header is NACKed
            b = bytearray(6)
            rt = min(65535, max(0, int((vals[0] + 45.0) * 65536.0 / 175.0 + 0.5)))
            rh = min(65535, max(0, int(vals[1] * 65536.0 / 100.0 + 0.5)))
            self._word(b, 0, rt, status == "crc")
            self._word(b, 3, rh, False)
            self.out = b
        elif code == shtc3.CMD_SOFT_RESET:
            pass
        else:
            raise OSError(errno.EIO)

    def read_into(self, buf):
        if self.asleep or self.out is None:
            raise OSError(errno.ENODEV)
        n = min(len(buf), len(self.out))
        buf[:n] = self.out[:n]
        self.out = None


class I2C:
    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self.devices = {0x70: _SHTC3Device()}  # SHTC3's fixed address

    def _dev(self, addr):
        if addr not in self.devices:
            raise OSError(errno.ENODEV)
        return self.devices[addr]

    def scan(self):
        return list(self.devices)

    def writeto(self, addr, buf, stop=True):
        self._dev(addr).command(buf)
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        self._dev(addr).read_into(buf)

    def readfrom(self, addr, n, stop=True):
        b = bytearray(n)
        self.readfrom_into(addr, b)
        return bytes(b)


SoftI2C = I2C


class WDT:
    """Records feeds; with simboard {"wdt": true} exits (status 3) when fed too late."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.last = time.ticks_ms()
        self.enforce = simboard.config().get("wdt", True)

    def feed(self):
        now = time.ticks_ms()
        late = time.ticks_diff(now, self.last)
        self.last = now
        if self.enforce and late > self.timeout:
            print("machine.WDT: not fed for %d ms (timeout %d): the board resets" % (late, self.timeout))
            sys.exit(3)


class _TornFile:
    """An outbox file whose N-th record write stops after `bytes` bytes: a power cut."""

    def __init__(self, f, record, nbytes):
        self.f = f
        self.record = record
        self.nbytes = nbytes
        self.records = 0

    def write(self, b):
        if len(b) >= 12:
            self.records += 1
            if self.records == self.record:
                self.f.write(bytes(b[:self.nbytes]))
                self.f.flush()
                print("simboard: power cut in record write %d after %d of %d bytes"
                      % (self.records, self.nbytes, len(b)))
                deadline = time.ticks_add(time.ticks_ms(), 60000)
                while time.ticks_diff(deadline, time.ticks_ms()) > 0:
                    time.sleep_ms(50)  # the test kills us here
                sys.exit(4)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


def flash_open(path, mode="r"):
    """open() for the outbox file, tearing a write when the simulation asks for it."""
    f = open(path, mode)
    torn = simboard.config().get("torn_write")
    if torn and mode == "r+b":
        return _TornFile(f, torn["record"], torn["bytes"])
    return f


def unique_id():
    return b"\x02\x00\x00\x00\x00\x01"


def freq(hz=None):
    return 240000000


def idle():
    time.sleep_ms(1)


def reset():
    print("machine.reset()")
    sys.exit(5)


def soft_reset():
    reset()


def reset_cause():
    return 1  # PWRON_RESET


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def lightsleep(ms=None):
    time.sleep_ms(ms or 0)


def deepsleep(ms=None):
    time.sleep_ms(ms or 0)
    reset()
