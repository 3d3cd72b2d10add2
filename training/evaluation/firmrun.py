"""The firmware's detector over rows of readings, under MicroPython: what `edgewatch detect`,
`convert`'s load check and the board detectors of the benchmarks run (firmware/engine.py +
detector.py, as a board loads a blob and judges each sample)."""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

K, EPS = 3.0, 0.01   # the seed's is_anomalie rule


_DRIVER = r"""
import struct, sys
from array import array
import engine, detector
cfg = %r
# the detector's state first, as the app does (App.setup): its block (4.9 KB for SKAB's
# eight channels) finds no room once the model's buffers have split the heap
d = detector.Detector(cfg["names"], cfg["limits"], cfg["params"], cfg["fallback"])
m = engine.Model(open(cfg["blob"], "rb").read())
d.set_model(m)


def phys(d, c, k):
    # pred (k 0), lo (1), hi (2) of sensor channel c as a float, from the detector's
    # fixed-point state (the firmware itself takes them as integers: Detector.fixed)
    j = d._order.index(c)
    return (d._s[33 + 22 * j + k] - (1 << 29)) / 65536 * d.model.scale[j] + d.model.offset[j]


f = open(cfg["data"], "rb")
n, c = struct.unpack("<II", f.read(8))
buf = bytearray(4 * (c + 1))
fmt = "<%%df" %% (c + 1)
out = sys.stdout
for i in range(n):
    f.readinto(buf)
    row = struct.unpack(fmt, buf)
    missed = int(row[c])
    vals = None if row[0] != row[0] and all(v != v for v in row[:c]) else [
        None if v != v else v for v in row[:c]]
    al = d.step(vals, missed)
    parts = []
    for a in al:
        parts.append("%%s:%%s:%%s:%%s:%%s" %% (a[0], a[1], a[2], a[3], a[4]))
    band = ""
    if d.has_band:
        band = ",".join("%%r,%%r,%%r" %% (phys(d, j, 0), phys(d, j, 1), phys(d, j, 2))
                        for j in range(c))
    out.write("%%d|%%s|%%s|%%d\n" %% (i, ";".join(parts), band, d.send))
"""


@dataclass
class BoardVerdict:
    """What the firmware decided for each row: alert tuples and, when the band ran, pred/lo/hi."""

    alerts: list          # per row: list of (rule, channel or None, value text, lo, hi)
    pred: np.ndarray      # [N, C] physical units, NaN where the band did not run
    lo: np.ndarray
    hi: np.ndarray
    send: np.ndarray | None = None  # [N] bool: the board sends an alert message on this row


def firmware_refusal(exc: RuntimeError) -> str | None:
    """The reason the board's detector refused a blob (its ModelMismatch, firmware/detset.py),
    from the failed MicroPython run of :func:`run_firmware`; None for any other failure."""
    refused = [ln for ln in str(exc).splitlines() if ln.startswith("ModelMismatch: ")]
    return refused[-1].split(": ", 1)[1] if refused else None


def run_firmware(blob: bytes, names: list[str], values: np.ndarray, missed: np.ndarray | None = None,
                 limits=None, stuck_samples: int | None = 10 ** 9, dropout_periods: int = 1,
                 heap: str = "96K", timeout: float = 1800, still: bool = True,
                 band: str | None = None) -> BoardVerdict:
    """Feed rows through firmware/engine.py + firmware/detector.py under MicroPython.

    ``values`` [N, C] physical units (NaN = failed read), ``missed`` [N] sample
    periods skipped before each row. ``limits`` per channel (default: none). ``still``
    keeps the blob's whole-reading stuck rule (False: off, as for the model rules alone).
    ``stuck_samples`` None: the blob's per-channel stuck limits. ``band``: the config's
    detector.band (None: residual when the blob carries it, "seed").
    """
    from edgewatch.core import mpy

    v = np.asarray(values, np.float64)
    n, c = v.shape
    miss = np.zeros(n) if missed is None else np.asarray(missed, np.float64)
    lim = limits or [(-1e30, 1e30)] * c
    with tempfile.TemporaryDirectory(prefix="ew-board-") as tmp:
        bpath, dpath = Path(tmp) / "model.ewb", Path(tmp) / "rows.bin"
        bpath.write_bytes(blob)
        rows = np.concatenate([v, miss[:, None]], axis=1).astype("<f4")
        dpath.write_bytes(struct.pack("<II", n, c) + rows.tobytes())
        cfg = {"blob": str(bpath), "data": str(dpath), "names": list(names),
               "limits": [list(map(float, x)) for x in lim],
               "params": {"k": None, "eps": None, "sigma_window": None,
                          "stuck_samples": None if stuck_samples is None else int(stuck_samples),
                          "band": band,
                          "dropout_periods": int(dropout_periods),
                          # whole reading repeated: the blob's limit, or off
                          "still_samples": None if still else 0},
               # only used while no model is loaded; the blob's k, eps, sigma window win
               "fallback": {"k": K, "eps": EPS, "sigma_window": 10}}
        proc = mpy.run(code=_DRIVER % cfg, heap=heap, timeout=timeout)
    alerts: list = [[] for _ in range(n)]
    pred = np.full((n, c), np.nan)
    lo, hi = pred.copy(), pred.copy()
    send = np.zeros(n, dtype=bool)
    for line in proc.stdout.splitlines():
        i_txt, al, band, sent = line.split("|")
        i = int(i_txt)
        send[i] = sent == "1"
        if al:
            for a in al.split(";"):
                rule, ch, val, lo_txt, hi_txt = a.split(":")
                alerts[i].append((rule, None if ch == "None" else ch, val,
                                  None if lo_txt == "None" else float(lo_txt),
                                  None if hi_txt == "None" else float(hi_txt)))
        if band:
            b = np.array([float(x) for x in band.split(",")]).reshape(c, 3)
            pred[i], lo[i], hi[i] = b[:, 0], b[:, 1], b[:, 2]
    return BoardVerdict(alerts, pred, lo, hi, send)
