"""Backtest the board's detector on any CSV: one verdict per row, offline.

    edgewatch detect --model DIR --data CSV --out FILE
    edgewatch detect --model DIR --data sqlite:///edgewatch.db --device gh-01 --out FILE

The rows go one by one through the firmware's own engine and detector
(firmware/engine.py + firmware/detector.py) inside the MicroPython unix port,
with the model blob ``DIR/model.ewb`` written by `edgewatch convert`: the
verdicts are the ones the board would have published. A failed read (an empty
cell) is a ``read`` alert; a gap in the timestamps over 1.5 sample periods is a
``dropout`` (:func:`missed_periods`: rounded timestamps get their step as slack).

The output CSV has one line per input row: ``line, t, anomaly, alert, rule, channel,
value, lo, hi, alerts`` (``t`` as the input wrote it; ``anomaly``: the row is flagged;
``alert``: the board sends an alert message on this row, one per episode, re-sent every
``resend_samples`` while it lasts; then the first alert of the row; ``alerts`` lists all
as ``rule:channel``), then for every channel its reading ``<channel>`` (``<channel>_reading``
when the name is one of those columns': NAB's ``value``) and, whenever the
band rule ran, ``<channel>_pred, <channel>_lo, <channel>_hi``. A database source
(``sqlite:///edgewatch.db``) takes ``--device``.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
from edgewatch.core import firmware
from edgewatch.core.errors import UserError

# A reading further than this many scaler spans from the model's offset is out of its range
# (the detector's fixed point clamps at 4096 spans: firmware/detk.py).
FIXED_SPAN = 4095.0


def _firmware_defaults() -> dict:
    """The detector section of firmware/config.py DEFAULTS (what a board runs unless configured)."""
    return dict(firmware.load("config").DEFAULTS["detector"])


def resolution(timestamps: np.ndarray) -> float:
    """The step the timestamps are written in (1 h, 1000 s (epoch milliseconds in whole
    seconds), 10 min, 100 s, 1 min, 10 s, 1 s, 0.1 s ... 1 ms: the largest that fits), 0 when
    finer: what a rounded clock adds to every interval, up to one step."""
    t = np.asarray(timestamps, np.float64)
    if len(t) < 2 or not np.all(np.isfinite(t)):
        return 0.0
    x = t - t[0]
    for step in (3600.0, 1000.0, 600.0, 100.0, 60.0, 10.0, 1.0, 0.1, 0.01, 0.001):
        # (1e-3: float64 noise of epoch stamps, ~1e-7 s; 99 %: a stray stamp off the grid
        # does not switch the step off for the whole file)
        if np.mean(np.abs(x / step - np.round(x / step)) < 1e-3) >= 0.99:
            return step
    return 0.0


def missed_periods(timestamps: np.ndarray) -> np.ndarray:
    """Sample periods skipped before each row, from the spacing of the timestamps.

    A gap over 1.5 sample periods is a dropout (jitter is not). When the timestamps are
    rounded to a step of at least a quarter of the period (SKAB: a 1.047 s period written
    in whole seconds, so one interval in 20 reads 2 s), rounding alone moves an interval by
    up to one step: when the mean interval of the rows without a gap is more than 1 % off
    the median (rounding, not an exact period on the step's grid), that mean is the period
    and a gap needs 1.5 periods plus that step (one missed sample at such a rate is not
    told from rounding; two are)."""
    t = np.asarray(timestamps, np.float64)
    out = np.zeros(len(t))
    if len(t) < 3:
        return out
    dt = np.diff(t)
    period = float(np.median(dt))
    if not period > 0:
        return out
    step = resolution(t)
    slack = 0.0
    if step >= period / 4:
        # rounding shows as a mean interval off the median (SKAB: 1.047 s against 1 s); an
        # exact period on the step's grid (1 s in whole seconds) keeps the plain rule, so one
        # missed sample there is still a dropout
        near = dt[(dt >= 0) & (dt <= period + step)]
        if len(near) and abs(float(np.mean(near)) - period) > 0.01 * period:
            period = float(np.mean(near))
            slack = step
    # 1.5 periods of slack: jitter is not a dropout
    gap = dt > 1.5 * period + slack
    out[1:] = np.where(gap, np.maximum(1, np.round(dt / period) - 1), 0)
    return out


def detect(model_dir, data, out, sensor: str | None = None, stuck_samples: int | None = None,
           heap: str = "96K", device: str | None = None,
           dropout_periods: int | None = None) -> dict:
    """Score ``data`` with the board detector of ``model_dir``; write ``out``; return a summary."""
    from edgewatch.training.evaluation.firmrun import firmware_refusal, run_firmware
    from edgewatch.training.export import blob as blobmod
    from edgewatch.training.forecast.data import load

    model_dir = Path(model_dir)
    out = Path(out)
    if not out.parent.exists():
        raise UserError(f"--out: folder {out.parent} does not exist")
    if out.is_dir():
        raise UserError(f"--out {out}: a folder; name the verdict CSV to write")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"--out {out}: not writable")
    if out.exists() and Path(str(data)).exists() and os.path.samefile(out, str(data)):
        # the verdicts would replace the readings they judge
        raise UserError(f"--out {out}: is the --data file; name another verdict CSV")
    bpath = model_dir / "model.ewb"
    if model_dir.exists() and not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: a file, not a model folder")
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
    if len(names) > blobmod.MAX_CHANNELS:  # (a blob from before convert refused them)
        raise UserError(f"{bpath}: {len(names)} channels; the board's detector takes at most "
                        f"{blobmod.MAX_CHANNELS}")
    series = load(data, channels=names, device=device, dropna=False)
    if len(series) <= spec.window:
        raise UserError(f"{data}: {len(series)} rows; the model needs more than its window of {spec.window}")
    limits = None
    if sensor:
        ranges = firmware.load("sensors").RANGES
        if sensor not in ranges:
            raise UserError(f"--sensor: unknown '{sensor}' (choose from {', '.join(ranges)})")
        limits = list(ranges[sensor][: len(names)])
        limits += [(-1e30, 1e30)] * (len(names) - len(limits))
    # The detector holds a reading as (value - offset) / scale in fixed point, clamped to
    # +-4096 (firmware/detk.py): beyond that its band, drift and shift rules judge the clamp,
    # not the reading (a file in millidegrees passed as 'ok' against a band of 17140 °C). Such
    # a reading is out of the model's range: a range alert, kept out of the model's window, as
    # a sensor's range makes an impossible reading on a board.
    held = [(float(o) - FIXED_SPAN * float(sc), float(o) + FIXED_SPAN * float(sc))
            for o, sc in zip(spec.offset, spec.scale, strict=True)]
    limits = held if limits is None else [(max(a, c), min(b, d))
                                          for (a, b), (c, d) in zip(limits, held, strict=False)]
    defaults = _firmware_defaults()
    stuck = stuck_samples if stuck_samples is not None else defaults["stuck_samples"]
    if stuck is not None and stuck < 2:
        raise UserError(f"--stuck-samples: must be >= 2 (got {stuck})")
    dropout = int(defaults["dropout_periods"] if dropout_periods is None else dropout_periods)
    if dropout < 1:
        raise UserError(f"--dropout-periods: must be >= 1 (got {dropout})")
    missed = missed_periods(series.timestamps)
    try:
        verdict = run_firmware(raw, names, series.values.astype(np.float64), missed, limits=limits,
                               stuck_samples=stuck, dropout_periods=dropout,
                               heap=heap)
    except RuntimeError as exc:  # the firmware's own refusal of the blob: one line, as a board's
        reason = firmware_refusal(exc)
        if reason is None:
            raise
        raise UserError(f"{bpath}: the board's detector refuses this model ({reason}); "
                        "a board would too") from None
    header = ["line", "t", "anomaly", "alert", "rule", "channel", "value", "lo", "hi", "alerts"]
    for n in names:
        # a channel named like a verdict column (NAB's 'value') would repeat that column's
        # name, and a CSV reader keyed by name would take the reading for the alert's value
        header += [f"{n}_reading" if n in header[:10] else n, f"{n}_pred", f"{n}_lo", f"{n}_hi"]
    stamps = _stamps(series)
    counts: dict[str, int] = {}
    try:
        fh = open(out, "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    try:
        with fh:
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
                row = [int(series.lines[i]), stamps[i], int(bool(alerts)),
                       int(bool(verdict.send[i])), first[0],
                       first[1] or "", _value(first[2]), lo, hi,
                       " ".join(f"{a[0]}:{a[1] or ''}" for a in alerts)]
                for j in range(len(names)):
                    v = series.values[i, j]
                    row.append(_num(v) if np.isfinite(v) else "")  # every row's reading
                    if np.isfinite(verdict.pred[i, j]):
                        row += [_num(verdict.pred[i, j]), _num(verdict.lo[i, j]), _num(verdict.hi[i, j])]
                    else:
                        row += ["", "", ""]
                w.writerow(row)
                for a in alerts:
                    counts[a[0]] = counts.get(a[0], 0) + 1
    except OSError as exc:  # the disk filled, the file went away
        raise UserError(f"--out {out}: write failed ({exc.strerror or exc})") from None
    return {"rows": len(series), "anomalous_rows": sum(1 for a in verdict.alerts if a),
            "alert_rows": int(np.sum(verdict.send)),
            "alerts": counts, "model_id": spec.model_id, "out": str(out)}


def _num(x) -> str:
    return f"{float(x):.6g}"


def _value(v) -> str:
    """An alert's value as the firmware reported it, without float32 noise (27.924999237 -> 27.925)."""
    if v in (None, "None", ""):
        return ""
    try:
        return _num(float(v))
    except (TypeError, ValueError):
        return str(v)


def _stamps(series) -> list[str]:
    """Each row's time as the input wrote it; from a database (Unix seconds), ISO 8601 UTC."""
    if series.stamps is not None and series.row_word != "row":
        return [str(x) for x in series.stamps]
    from datetime import datetime, timezone

    return [datetime.fromtimestamp(float(t), timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z") for t in series.timestamps]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `edgewatch detect`."""
    p.add_argument("--model", required=True, help="model folder holding model.ewb (edgewatch convert)")
    p.add_argument("--data", required=True, help="CSV (timestamp + the model's channels) or DB URL")
    p.add_argument("--device", help="device id when --data is a database holding several")
    p.add_argument("--out", required=True, help="verdict CSV to write, one line per input row")
    p.add_argument("--sensor", help="apply the range rule of dht22, dht11 or shtc3")
    p.add_argument("--dropout-periods", type=int, default=None,
                   help="missed sample periods that make a dropout alert (default: the firmware's "
                        "1); raise it for data that is not sampled at a fixed rate")
    p.add_argument("--stuck-samples", type=int, default=None,
                   help="one channel unchanged this many samples is stuck (default: the model's "
                        "per-channel limits)")


def run(args) -> int:
    """Score the file and print a one-line summary."""
    s = detect(args.model, args.data, args.out, sensor=args.sensor, stuck_samples=args.stuck_samples,
               device=args.device, dropout_periods=args.dropout_periods)
    rules = ", ".join(f"{k} {v}" for k, v in sorted(s["alerts"].items())) or "none"
    print(f"{s['rows']} rows, {s['anomalous_rows']} anomalous, {s['alert_rows']} alert messages "
          f"(rules: {rules}); "
          f"model {s['model_id']}; wrote {s['out']}")
    return 0
