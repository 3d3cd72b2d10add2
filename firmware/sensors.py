"""Sensor front-end: DHT11/DHT22 via MicroPython's `dht`, SHTC3 via shtc3.py, bounded retries.

A read that still fails after `retries` extra attempts is a state (values None,
`error` set) that the detector turns into a `read` alert; it is never a value.
The physical ranges per sensor kind live here, once.
"""

import time

NAMES = ("temperature", "humidity")

# (lo, hi) per channel in NAMES order: datasheet measuring ranges.
RANGES = {
    "dht22": ((-40.0, 80.0), (0.0, 100.0)),
    "dht11": ((0.0, 50.0), (20.0, 90.0)),
    "shtc3": ((-40.0, 125.0), (0.0, 100.0)),
}

# decimals of a reading (datasheet resolution): what log lines print
DECIMALS = {"dht22": 1, "dht11": 0, "shtc3": 2}

# minimum time between two reads of the part (datasheets): the default retry pause
MIN_INTERVAL_MS = {"dht22": 2000, "dht11": 1000, "shtc3": 1}


class DHTSensor:
    """A dht.DHT11/DHT22 object behind the same measure(out) call as SHTC3."""

    def __init__(self, dev):
        self.dev = dev

    def measure(self, out):
        """Read once into out[0] (celsius), out[1] (%RH); raises OSError on a failed read."""
        self.dev.measure()
        out[0] = self.dev.temperature()
        out[1] = self.dev.humidity()


def make_sensor(kind, board, machine, dht=None):
    """Build the sensor for `kind` from the board's pins; hardware modules are handed in."""
    pins = board["pins"]
    if kind in ("dht11", "dht22"):
        if dht is None:
            import dht
        cls = dht.DHT22 if kind == "dht22" else dht.DHT11
        return DHTSensor(cls(machine.Pin(pins["dht"])))
    if kind == "shtc3":
        import shtc3

        i2c_cfg = board.get("i2c") or {}
        i2c = machine.I2C(i2c_cfg.get("id", 0), scl=machine.Pin(pins["scl"]),
                          sda=machine.Pin(pins["sda"]), freq=i2c_cfg.get("freq", 100000))
        return shtc3.SHTC3(i2c)
    raise ValueError("unknown sensor kind %r" % kind)


class Reader:
    """Bounded retries around one sensor. After read(): values (list) or None, and error."""

    def __init__(self, sensor, kind, retries=3, retry_ms=None, feed=None):
        self.sensor = sensor
        self.kind = kind
        self.limits = RANGES[kind]
        self.retries = retries
        self.retry_ms = MIN_INTERVAL_MS[kind] if retry_ms is None else retry_ms
        self.feed = feed  # watchdog feed while waiting between attempts
        self._buf = [0.0, 0.0]
        self.error = None
        self.failed_attempts = 0

    def read(self):
        """Return the [temperature, humidity] list (reused) or None after the bounded retries."""
        for attempt in range(self.retries + 1):
            if attempt:
                if self.feed:
                    self.feed()
                time.sleep_ms(self.retry_ms)
            try:
                self.sensor.measure(self._buf)
                self.error = None
                return self._buf
            except Exception as e:  # dht raises OSError on timeout, Exception on checksum
                self.failed_attempts += 1
                self.error = e
        return None
