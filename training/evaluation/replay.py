"""Backtest the board's detector on any CSV: one verdict per row, offline.

    edgewatch detect --model DIR --data CSV --out FILE

The rows go one by one through the firmware's own engine and detector
(firmware/engine.py + firmware/detector.py) inside the MicroPython unix port,
with the model blob ``DIR/model.ewb`` written by `edgewatch convert`: the
verdicts are the ones the board would have published. A failed read (an empty
cell) is a ``read`` alert; a gap in the timestamps longer than the median
sample period is a ``dropout``.

The output CSV has one line per input row: ``line, t, anomaly, rule, channel,
value, lo, hi, alerts`` (the first alert of the row; ``alerts`` lists all as
``rule:channel``), then ``<channel>_pred, <channel>_lo, <channel>_hi`` for every
channel whenever the band rule ran.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from edgewatch.core import firmware
from edgewatch.core.errors import UserError


def _firmware_defaults() -> dict:
    """The detector section of firmware/config.py DEFAULTS (what a board runs unless configured)."""
    return dict(firmware.load("config").DEFAULTS["detector"])


def missed_periods(timestamps: np.ndarray) -> np.ndarray:
    """Sample periods skipped before each row, from the median spacing of the timestamps."""
    t = np.asarray(timestamps, np.float64)
    out = np.zeros(len(t))
    if len(t) < 3:
        return out
    dt = np.diff(t)
    period = float(np.median(dt))
    if period <= 0:
        return out
    # 1.5 periods of slack: jitter is not a dropout
    out[1:] = np.where(dt > 1.5 * period, np.round(dt / period) - 1, 0)
    return out


def detect(model_dir, data, out, sensor: str | None = None, stuck_samples: int | None = None,
           heap: str = "96K") -> dict:
    """Score ``data`` with the board detector of ``model_dir``; write ``out``; return a summary."""
    from edgewatch.training.evaluation.detectors import run_firmware
    from edgewatch.training.export import blob as blobmod
    from edgewatch.training.forecast.data import load

    model_dir = Path(model_dir)
    out = Path(out)
    if not out.parent.exists():
        raise UserError(f"--out: folder {out.parent} does not exist")
    bpath = model_dir / "model.ewb"
    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: no such folder")
    if not bpath.is_file():
        raise UserError(f"{bpath}: missing (run `edgewatch convert --model {model_dir}` first)")
    raw = bpath.read_bytes()
    try:
        spec = blobmod.read(raw)
    except blobmod.BlobError as exc:
        raise UserError(f"{bpath}: not a valid model blob ({exc})") from None
    names = list(spec.names)
    series = load(data, channels=names, dropna=False)
    if len(series) <= spec.window:
        raise UserError(f"{data}: {len(series)} rows; the model needs more than its window of {spec.window}")
    limits = None
    if sensor:
        ranges = firmware.load("sensors").RANGES
        if sensor not in ranges:
            raise UserError(f"--sensor: unknown '{sensor}' (choose from {', '.join(ranges)})")
        limits = list(ranges[sensor][: len(names)])
        limits += [(-1e30, 1e30)] * (len(names) - len(limits))
    defaults = _firmware_defaults()
    stuck = int(stuck_samples or defaults["stuck_samples"])
    if stuck < 2:
        raise UserError(f"--stuck-samples: must be >= 2 (got {stuck})")
    missed = missed_periods(series.timestamps)
    verdict = run_firmware(raw, names, series.values.astype(np.float64), missed, limits=limits,
                           stuck_samples=stuck, dropout_periods=int(defaults["dropout_periods"]),
                           heap=heap)
    header = ["line", "t", "anomaly", "rule", "channel", "value", "lo", "hi", "alerts"]
    for n in names:
        header += [f"{n}_pred", f"{n}_lo", f"{n}_hi"]
    counts: dict[str, int] = {}
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, alerts in enumerate(verdict.alerts):
            first = alerts[0] if alerts else ("", None, "", None, None)
            lo = hi = ""
            if first[3] is not None:  # the limits the rule itself used (band, shift, range)
                lo, hi = _num(first[3]), _num(first[4])
            elif first[1] in names:
                j = names.index(first[1])
                if np.isfinite(verdict.lo[i, j]):
                    lo, hi = _num(verdict.lo[i, j]), _num(verdict.hi[i, j])
            row = [int(series.lines[i]), f"{series.timestamps[i]:.3f}", int(bool(alerts)), first[0],
                   first[1] or "", "" if first[2] in ("None", "") else first[2], lo, hi,
                   " ".join(f"{a[0]}:{a[1] or ''}" for a in alerts)]
            for j in range(len(names)):
                if np.isfinite(verdict.pred[i, j]):
                    row += [_num(verdict.pred[i, j]), _num(verdict.lo[i, j]), _num(verdict.hi[i, j])]
                else:
                    row += ["", "", ""]
            w.writerow(row)
            for a in alerts:
                counts[a[0]] = counts.get(a[0], 0) + 1
    return {"rows": len(series), "anomalous_rows": sum(1 for a in verdict.alerts if a),
            "alerts": counts, "model_id": spec.model_id, "out": str(out)}


def _num(x) -> str:
    return f"{float(x):.6g}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `edgewatch detect`."""
    p.add_argument("--model", required=True, help="model folder holding model.ewb (edgewatch convert)")
    p.add_argument("--data", required=True, help="CSV (timestamp + the model's channels) or DB URL")
    p.add_argument("--out", required=True, help="verdict CSV to write, one line per input row")
    p.add_argument("--sensor", help="apply the range rule of dht22, dht11 or shtc3")
    p.add_argument("--stuck-samples", type=int, default=None,
                   help="stuck rule length (default: the firmware's default)")


def run(args) -> int:
    """Score the file and print a one-line summary."""
    s = detect(args.model, args.data, args.out, sensor=args.sensor, stuck_samples=args.stuck_samples)
    rules = ", ".join(f"{k} {v}" for k, v in sorted(s["alerts"].items())) or "none"
    print(f"{s['rows']} rows, {s['anomalous_rows']} anomalous (alerts: {rules}); "
          f"model {s['model_id']}; wrote {s['out']}")
    return 0
