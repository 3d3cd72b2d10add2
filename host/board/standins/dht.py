"""Host stand-in for MicroPython's `dht` module: DHT11/DHT22 replaying simboard data.

Failures behave like the real driver: a timeout raises OSError(ETIMEDOUT), a bad
checksum raises Exception("checksum error"). Readings have the parts' resolution.
"""

import errno

import simboard


class _DHT:
    def __init__(self, pin):
        self.pin = pin
        simboard.replay()  # open and position the CSV now, not inside the first reading
        self._t = None
        self._h = None

    def measure(self):
        status, vals = simboard.replay().attempt()
        if status == "fail":
            raise OSError(errno.ETIMEDOUT)
        if status == "crc":
            raise Exception("checksum error")
        self._t, self._h = self._quantise(vals[0]), self._quantise(vals[1])

    def temperature(self):
        return self._t

    def humidity(self):
        return self._h


class DHT11(_DHT):
    """1 degC / 1 %RH resolution."""

    def _quantise(self, v):
        return int(round(v))


class DHT22(_DHT):
    """0.1 degC / 0.1 %RH resolution."""

    def _quantise(self, v):
        return round(v * 10) / 10
