"""Sensirion SHTC3 temperature/humidity driver over machine.I2C.

One measurement = wake, measure (T first, normal mode, no clock stretching),
read 6 bytes (T msb, T lsb, CRC, RH msb, RH lsb, CRC), sleep. Every 16-bit word
is checked with the datasheet's CRC-8 (poly 0x31, init 0xFF); a mismatch raises
CRCError so the caller retries and, after its bound, reports a fault.
"""

import time

from micropython import const

ADDRESS = const(0x70)
CMD_WAKE = const(0x3517)
CMD_SLEEP = const(0xB098)
CMD_SOFT_RESET = const(0x805D)
CMD_READ_ID = const(0xEFC8)
CMD_MEASURE_T_FIRST = const(0x7866)  # normal mode, clock stretching off, T first
_WAKE_US = const(240)  # datasheet: max 240 us from wake-up to idle
_MEASURE_MS = const(13)  # datasheet: max 12.1 ms in normal mode
CRC_POLY = const(0x31)
CRC_INIT = const(0xFF)


class CRCError(OSError):
    """A word read from the SHTC3 failed its CRC-8 check."""


def crc8(buf, start=0, n=2):
    """Sensirion CRC-8 of buf[start:start+n] (datasheet: 0xBEEF -> 0x92)."""
    crc = CRC_INIT
    for i in range(start, start + n):
        crc ^= buf[i]
        for _ in range(8):
            if crc & 0x80:
                crc = ((crc << 1) ^ CRC_POLY) & 0xFF
            else:
                crc = (crc << 1) & 0xFF
    return crc


def raw_to_celsius(raw):
    """Datasheet conversion of a 16-bit temperature word."""
    return -45.0 + 175.0 * raw / 65536.0


def raw_to_rh(raw):
    """Datasheet conversion of a 16-bit humidity word."""
    return 100.0 * raw / 65536.0


class SHTC3:
    """The sensor on an I2C bus handed in by the caller (a stand-in on the host)."""

    def __init__(self, i2c, address=ADDRESS):
        self.i2c = i2c
        self.address = address
        self._cmd = bytearray(2)
        self._buf = bytearray(6)

    def _send(self, cmd):
        self._cmd[0] = cmd >> 8
        self._cmd[1] = cmd & 0xFF
        self.i2c.writeto(self.address, self._cmd)

    def wake(self):
        """Leave sleep mode (the sensor NACKs every other command while asleep)."""
        self._send(CMD_WAKE)
        time.sleep_us(_WAKE_US)

    def sleep(self):
        """Enter sleep mode (about 0.3 uA) between measurements."""
        self._send(CMD_SLEEP)

    def _check(self, n_words):
        b = self._buf
        for w in range(n_words):
            if crc8(b, 3 * w, 2) != b[3 * w + 2]:
                raise CRCError("shtc3: CRC mismatch in word %d" % w)

    def read_id(self):
        """The 16-bit ID register (CRC-checked)."""
        self.wake()
        try:
            self._send(CMD_READ_ID)
            self.i2c.readfrom_into(self.address, memoryview(self._buf)[:3])
        finally:
            self._quiet_sleep()
        self._check(1)
        return self._buf[0] << 8 | self._buf[1]

    def _quiet_sleep(self):
        # a failed sleep must not hide the error of the measurement itself
        try:
            self.sleep()
        except OSError:
            pass

    def measure(self, out):
        """Measure once; write (celsius, %RH) into out[0], out[1]. Raises OSError/CRCError."""
        self.wake()
        try:
            self._send(CMD_MEASURE_T_FIRST)
            time.sleep_ms(_MEASURE_MS)
            self.i2c.readfrom_into(self.address, self._buf)
        finally:
            self._quiet_sleep()
        self._check(2)
        b = self._buf
        out[0] = raw_to_celsius(b[0] << 8 | b[1])
        out[1] = raw_to_rh(b[3] << 8 | b[4])
