"""Host stand-in for MicroPython's `machine`: Pin, I2C with an emulated SHTC3, WDT, flash_open.

The I2C bus carries an SHTC3 at 0x70 (sim_i2c.py). `flash_open` is how the firmware
opens its outbox file here: with simboard's "torn_write" it stops an append half-way
and hangs (sim_flash.py), so a test can kill -9 the process at that point. The
emulators load only when used: this module's heap is the board's.
"""

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


class I2C:
    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        from sim_i2c import SHTC3Device  # loaded only by boards with an I2C sensor

        self.devices = {0x70: SHTC3Device()}  # SHTC3's fixed address

    def _dev(self, addr):
        if addr not in self.devices:
            raise OSError(19)  # ENODEV: nobody ACKs the address
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


def flash_open(path, mode="r"):
    """open() for the outbox's files, tearing a record write when the simulation asks for it."""
    f = open(path, mode)
    torn = simboard.config().get("torn_write")
    if torn and "+" in mode:
        from sim_flash import TornFile

        return TornFile(f, torn["record"], torn["bytes"])
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
