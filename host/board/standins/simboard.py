"""Shared state of the host stand-ins: the replayed sensor data and the injected faults.

The firmware never imports this module; machine.py, dht.py and network.py do. The
simulation is described by a JSON file named in the environment variable
EDGEWATCH_SIM (absent: a built-in smooth signal, no faults):

    {"csv": "/path/datatraining.txt", "start": 2000,
     "columns": {"temperature": "Temperature", "humidity": "Humidity"},
     "faults": [
        {"kind": "fail",  "row": 50, "attempts": 2},      read attempts that time out
        {"kind": "crc",   "row": 80, "attempts": 9},      SHTC3 words with a bad CRC / DHT checksum
        {"kind": "stuck", "row": 100, "count": 40},       rows repeating row 100's values
        {"kind": "range", "row": 200, "count": 1, "channel": "temperature", "value": 150},
        {"kind": "spike", "row": 300, "count": 1, "channel": "temperature", "delta": 4.0},
        {"kind": "drift", "row": 350, "count": 60, "channel": "temperature", "delta": 3.0},
                                                          a ramp to +delta over count rows
        {"kind": "stall", "row": 400, "ms": 500}],        the read hangs (missed periods)
     "torn_write": {"record": 120, "bytes": 40},          power cut inside the 120th outbox append
     "wifi": {"fail_connects": 2, "connect_ms": 50},
     "wdt": true}                                         exit when the watchdog would bite

`row` counts the readings delivered since start (0-based); a failing attempt does
not advance it, so {"kind": "fail", "attempts": n} fails the next n attempts.
A fault that spans rows (stuck, range, spike, drift) prints ``sim: <kind> fault begins``
on the console before the reading of its first row and ``sim: <kind> fault ends`` before
the reading of the row after its last, so a console can be read as which samples it hit.
"""

import json
import os
import time

_cfg = None
_replay = None


def config():
    """The simulation description (dict), read once from $EDGEWATCH_SIM."""
    global _cfg
    if _cfg is None:
        path = os.getenv("EDGEWATCH_SIM")
        _cfg = {}
        if path:
            with open(path) as f:
                _cfg = json.load(f)
    return _cfg


def _unquote(s):
    s = s.strip()
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1]
    return s


class Replay:
    """Rows of a CSV read one at a time (the heap is the board's), with faults applied."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.path = cfg.get("csv")
        self.row = 0  # readings delivered
        self.attempts = 0  # attempts at the current row
        self.faults = cfg.get("faults", [])
        self.values = [20.0, 50.0]
        self.held = None
        self.stalled = set()
        self.f = None
        if self.path:
            self._open()
            for _ in range(cfg.get("start", 0)):
                self._next_line()

    def _open(self):
        if self.f:
            self.f.close()
        self.f = open(self.path)
        header = [_unquote(h).lower() for h in self.f.readline().strip().split(",")]
        cols = self.cfg.get("columns") or {}
        self.idx = []
        for name in ("temperature", "humidity"):
            want = cols.get(name, name).lower()
            self.idx.append(header.index(want))
        self.nhead = len(header)

    def _next_line(self):
        line = self.f.readline()
        if not line:  # wrap around: replay from the top
            self._open()
            line = self.f.readline()
        parts = line.strip().split(",")
        shift = len(parts) - self.nhead  # occupancy rows carry an unnamed row number first
        return [float(_unquote(parts[i + shift])) for i in self.idx]

    def _fault(self, kind):
        for flt in self.faults:
            if flt["kind"] != kind:
                continue
            r = flt["row"]
            if kind in ("fail", "crc", "stall"):
                if r == self.row:
                    return flt
            elif r <= self.row < r + flt.get("count", 1):
                return flt
        return None

    def attempt(self):
        """One read attempt: ('ok'|'fail'|'crc', [temperature, humidity])."""
        stall = self._fault("stall")
        if stall and self.row not in self.stalled:
            self.stalled.add(self.row)
            time.sleep_ms(stall["ms"])
        self.attempts += 1
        for kind in ("fail", "crc"):
            flt = self._fault(kind)
            if flt and self.attempts <= flt["attempts"]:
                return kind, self.values  # a corrupted frame still carries (stale) data
        if self.path:
            vals = self._next_line()
        else:
            vals = [20.0 + (self.row % 50) * 0.01, 50.0 + (self.row % 70) * 0.02]
        stuck = self._fault("stuck")
        if stuck:
            if self.held is None:
                self.held = list(vals)
            vals = list(self.held)
        else:
            self.held = None
        for kind in ("range", "spike", "drift"):
            flt = self._fault(kind)
            if flt:
                c = ("temperature", "humidity").index(flt["channel"])
                if kind == "range":
                    vals[c] = flt["value"]
                elif kind == "spike":
                    vals[c] += flt["delta"]
                else:
                    vals[c] += flt["delta"] * (self.row - flt["row"] + 1) / flt["count"]
        for flt in self.faults:
            if "count" in flt:
                if flt["row"] == self.row:
                    print("sim: %s fault begins" % flt["kind"])
                elif flt["row"] + flt["count"] == self.row:
                    print("sim: %s fault ends" % flt["kind"])
        self.row += 1
        self.attempts = 0
        self.values = vals
        return "ok", vals


def replay():
    """The one Replay of this process."""
    global _replay
    if _replay is None:
        _replay = Replay(config())
    return _replay
