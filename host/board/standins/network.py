"""Host stand-in for MicroPython's `network`: a WLAN that associates after a delay.

simboard's {"wifi": {"fail_connects": n, "connect_ms": ms}} makes the first n
connect() calls never associate, to exercise the firmware's backoff.
"""

import time

import simboard

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010


class WLAN:
    def __init__(self, interface=STA_IF):
        cfg = simboard.config().get("wifi", {})
        self._fail = cfg.get("fail_connects", 0)
        self._delay = cfg.get("connect_ms", 50)
        self._active = False
        self._up_at = None
        self.connects = 0

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        return None

    def connect(self, ssid=None, key=None, **kw):
        if not self._active:
            raise OSError("wifi not active")
        self.connects += 1
        print("network: connect #%d to %r" % (self.connects, ssid))
        if self._fail > 0:
            self._fail -= 1
            self._up_at = None
        else:
            self._up_at = time.ticks_add(time.ticks_ms(), self._delay)

    def disconnect(self):
        self._up_at = None

    def isconnected(self):
        return self._up_at is not None and time.ticks_diff(time.ticks_ms(), self._up_at) >= 0

    def status(self, param=None):
        if param == "rssi":
            return -50
        if self.isconnected():
            return STAT_GOT_IP
        return STAT_CONNECTING if self._up_at is not None else STAT_IDLE

    def ifconfig(self, conf=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kw):
        if args == ("mac",):
            return b"\x02\x00\x00\x00\x00\x01"
        return None
