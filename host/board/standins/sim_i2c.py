"""The SHTC3 emulated on the host stand-in's I2C bus (machine.I2C loads it on demand).

It answers the datasheet's commands with the bytes the real part sends (CRC-8 per
word), replaying simboard data; a `crc` fault corrupts a CRC byte, a `fail` fault
NACKs the read, and a sleeping part NACKs everything but wake-up.
"""

import errno

import shtc3  # the firmware's command codes and CRC-8: the emulator speaks its protocol
import simboard


class SHTC3Device:
    """The SHTC3 on the stand-in I2C bus, answering with the real part's bytes."""

    def __init__(self):
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
