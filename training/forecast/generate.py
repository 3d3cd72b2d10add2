"""Generate physically plausible greenhouse readings, optionally with labelled faults.

The project ships no copied data; this is its own demo data. Temperature
follows a diurnal cycle (peak mid-afternoon) whose mean and amplitude change
from day to day (sunny and cloudy days) plus passing-cloud fluctuations;
relative humidity comes from a slowly varying dew point through the Magnus
formula, so it falls as the air warms (anti-correlated, as in a real
greenhouse). The sensor adds its calibration offset, noise, range limits and
resolution (DHT22: 0.1 °C/0.1 %RH, SHTC3: 0.01, DHT11: 1 °C/1 %RH).

:func:`inject_faults` adds spikes, stuck-at, drift, dropouts and noise bursts
with known start/end and works on any [N, C] array (e.g. the occupancy data).
The CSV has columns ``timestamp,temperature,humidity,anomaly,fault``: ``anomaly``
is 1 inside an injected fault, ``fault`` names its kind.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from edgewatch.core.errors import UserError
from edgewatch.training.forecast.data import Series, parse_time

FAULT_KINDS = ("spike", "stuck", "drift", "dropout", "noise")
# Length range (samples) of each fault kind; spikes are short, drifts are slow.
FAULT_LENGTHS = {"spike": (1, 3), "stuck": (30, 120), "drift": (60, 240),
                 "dropout": (5, 30), "noise": (20, 60)}
CHANNELS = ["temperature", "humidity"]
DEFAULT_START = "2026-01-01T00:00:00"


@dataclass(frozen=True)
class Sensor:
    """What a sensor does to the true value: calibration offset, noise, range, resolution."""

    resolution: tuple[float, float]  # °C, %RH
    noise: tuple[float, float]  # standard deviation of repeat readings
    offset: tuple[float, float]  # max calibration error (uniform ±) per device
    t_range: tuple[float, float]
    h_range: tuple[float, float]


# From the datasheets' accuracy/repeatability figures (typical values).
SENSORS = {
    "dht22": Sensor((0.1, 0.1), (0.1, 0.3), (0.5, 2.0), (-40.0, 80.0), (0.0, 100.0)),
    "shtc3": Sensor((0.01, 0.01), (0.05, 0.15), (0.2, 2.0), (-40.0, 125.0), (0.0, 100.0)),
    "dht11": Sensor((1.0, 1.0), (0.3, 1.0), (2.0, 5.0), (0.0, 50.0), (20.0, 90.0)),
}


def _ar1(rng: np.random.Generator, n: int, sd: float, tau_samples: float) -> np.ndarray:
    """Stationary AR(1) noise of standard deviation sd and correlation time tau."""
    phi = math.exp(-1.0 / max(tau_samples, 1e-9))
    e = rng.normal(0.0, sd * math.sqrt(1 - phi * phi), n)
    # x[i] = phi * x[i-1] + e[i] from a stationary start, in blocks of B samples:
    # within a block x = T @ e + phi^(j+1) * carry with T[j, k] = phi^(j-k) (k <= j).
    b = 256
    j = np.arange(b)
    lag = j[:, None] - j[None, :]
    tri = np.where(lag >= 0, phi ** np.maximum(lag, 0), 0.0)
    decay = phi ** (j + 1)
    pad = -n % b
    blocks = np.concatenate([e, np.zeros(pad)]).reshape(-1, b)
    out = np.empty_like(blocks)
    carry = rng.normal(0.0, sd)
    for i, blk in enumerate(blocks):
        out[i] = tri @ blk + decay * carry
        carry = out[i, -1]
    return out.reshape(-1)[:n]


def _es(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure (hPa) over water, Magnus formula (Sonntag 1990)."""
    return 6.112 * np.exp(17.62 * t / (243.12 + t))


def greenhouse(n: int, period: float, rng: np.random.Generator,
               start: float = 0.0) -> np.ndarray:
    """True air temperature (°C) and relative humidity (%RH), [n, 2] float64."""
    t = start + np.arange(n) * period
    hours = (t % 86400) / 3600.0
    days = t / 86400.0
    nd = int(days[-1] - math.floor(days[0])) + 2
    day0 = math.floor(days[0])
    # Day-to-day weather at each day's noon, interpolated so nothing jumps at midnight.
    knots = day0 + np.arange(nd) + 0.5
    mean = 20.0 + np.cumsum(rng.normal(0.0, 1.0, nd)) * 0.8
    amp = rng.uniform(3.0, 8.0, nd)  # cloudy to sunny
    dew_gap = rng.uniform(5.0, 9.0, nd)
    m, a, g = (np.interp(days, knots, k) for k in (mean, amp, dew_gap))
    phase = 2 * np.pi * (hours - 14.0) / 24.0  # warmest mid-afternoon
    shape = np.cos(phase) + 0.25 * np.cos(2 * phase)
    per_hour = 3600.0 / period
    clouds = _ar1(rng, n, 0.6, 0.75 * per_hour) * (0.5 + 0.5 * (shape > 0))
    temp = m + a * shape / 1.25 + clouds
    # The dew point drifts slowly and rises a little with transpiration in the day.
    dew = m - g + _ar1(rng, n, 0.5, 3 * per_hour) + 0.2 * (temp - m)
    dew = np.minimum(dew, temp - 0.05)  # no supersaturation
    rh = 100.0 * _es(dew) / _es(temp)
    return np.column_stack([temp, rh])


def read_sensor(true: np.ndarray, sensor: Sensor, rng: np.random.Generator) -> np.ndarray:
    """What the sensor reports before resolution: true + calibration offset + noise, clipped."""
    off = rng.uniform(-1.0, 1.0, 2) * np.asarray(sensor.offset)
    out = true + off + rng.normal(0.0, 1.0, true.shape) * np.asarray(sensor.noise)
    out[:, 0] = np.clip(out[:, 0], *sensor.t_range)
    out[:, 1] = np.clip(out[:, 1], *sensor.h_range)
    return out


def quantise(values: np.ndarray, resolution) -> np.ndarray:
    """Round each channel to the sensor's resolution (NaN stays NaN)."""
    res = np.asarray(resolution, dtype=np.float64)
    return np.round(values / res) * res


def parse_kinds(text: str | list | None) -> list[str]:
    """``"spike,stuck"``/``"all"``/``"none"`` -> a list of fault kinds (UserError if unknown)."""
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [k.strip().lower() for k in items if k.strip()]
    if items == ["none"]:
        return []
    if items == ["all"]:
        return list(FAULT_KINDS)
    bad = [k for k in items if k not in FAULT_KINDS]
    if bad:
        raise UserError(f"--faults: unknown kind '{bad[0]}' (choose from {', '.join(FAULT_KINDS)}, all)")
    return items


def inject_faults(values: np.ndarray, kinds, rng: np.random.Generator, count: int = 1,
                  names: list[str] | None = None, min_start: int = 0, margin: int = 30,
                  lengths: dict | None = None):
    """Inject ``count`` faults of each kind into a copy of ``values`` [N, C] (physical units).

    Returns ``(values, labels, events)``: ``labels`` is a str array [N] with the
    fault kind of each row ('' when normal; ``labels != ""`` is the anomaly
    mask) and ``events`` a list of dicts ``{kind, start, end, channel, mode}``
    with row indices (``end`` exclusive). Faults do not overlap and keep
    ``margin`` rows apart. Sizes follow each channel's spread: a spike is
    2–4 σ, a drift ramps to 1.5–3 σ, a noise burst adds 0.5–1 σ noise;
    stuck-at freezes every channel at its last good reading; a dropout is a
    failed read (NaN) on every channel, ``mode`` "nan" (the row is kept, empty)
    or "rows" (the writer leaves the rows out, a gap in time).
    """
    out = np.array(values, dtype=np.float64, copy=True)
    if out.ndim == 1:
        out = out[:, None]
    n, c = out.shape
    names = names or [str(i) for i in range(c)]
    kinds = parse_kinds(kinds)
    sd = np.nanstd(out, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    lengths = {**FAULT_LENGTHS, **(lengths or {})}
    labels = np.full(n, "", dtype="<U8")
    taken = np.zeros(n, dtype=bool)
    events = []
    plan = [k for k in kinds for _ in range(count)]
    rng.shuffle(plan)
    for kind in plan:
        lo, hi = lengths[kind]
        length = int(rng.integers(lo, hi + 1))
        length = max(1, min(length, (n - min_start) // 10))
        for _ in range(200):
            s = int(rng.integers(max(min_start, 1), max(n - length, 2)))
            e = s + length
            if e <= n and not taken[max(0, s - margin): e + margin].any():
                break
        else:
            raise ValueError(f"cannot place {len(plan)} faults in {n} rows; use fewer or more rows")
        taken[s:e] = True
        labels[s:e] = kind
        ch = int(rng.integers(c))
        ev = {"kind": kind, "start": s, "end": e, "channel": names[ch], "mode": None}
        sign = rng.choice([-1.0, 1.0])
        if kind == "spike":
            out[s:e, ch] += sign * rng.uniform(2.0, 4.0) * sd[ch]
        elif kind == "drift":
            out[s:e, ch] += sign * rng.uniform(1.5, 3.0) * sd[ch] * np.linspace(0, 1, length + 1)[1:]
        elif kind == "noise":
            out[s:e, ch] += rng.normal(0.0, rng.uniform(0.5, 1.0) * sd[ch], length)
        elif kind == "stuck":
            out[s:e] = out[s - 1]
            ev["channel"] = None
        elif kind == "dropout":
            out[s:e] = np.nan
            ev["channel"] = None
            ev["mode"] = "rows" if rng.random() < 0.5 else "nan"
        events.append(ev)
    events.sort(key=lambda ev: ev["start"])
    return out, labels, events


def generate(days: float = 7, period: float = 60, sensor: str = "dht22", faults=None,
             seed: int = 0, count: int = 2, start: str | float = DEFAULT_START):
    """Greenhouse readings as a :class:`Series` plus the injected fault events.

    The Series keeps NaN rows (failed reads) and carries labels ``anomaly``
    (0/1) and ``fault`` (kind); rows of "rows"-mode dropouts are marked in
    ``labels["omit"]`` so the CSV writer leaves them out.
    """
    if sensor not in SENSORS:
        raise UserError(f"--sensor: unknown sensor '{sensor}' (choose from {', '.join(SENSORS)})")
    if not (days > 0 and period > 0):
        raise UserError(f"--days and --period must be positive (got {days}, {period})")
    n = int(days * 86400 / period)
    if n < 2:
        raise UserError(f"--days {days} at --period {period} s gives {n} rows; need at least 2")
    if n > 20_000_000:
        raise UserError(f"--days {days} at --period {period} s gives {n} rows; the limit is 20 million")
    t0 = parse_time(start) if isinstance(start, str) else float(start)
    rng = np.random.default_rng(seed)
    spec = SENSORS[sensor]
    values = read_sensor(greenhouse(n, period, rng, t0), spec, rng)
    try:
        values, labels, events = inject_faults(values, faults, rng, count=count, names=CHANNELS)
    except ValueError as exc:
        raise UserError(f"--faults: {exc}") from None
    values[:, 0] = np.clip(values[:, 0], *spec.t_range)
    values[:, 1] = np.clip(values[:, 1], *spec.h_range)
    values = quantise(values, spec.resolution)
    omit = np.zeros(n, dtype=bool)
    for ev in events:
        if ev["mode"] == "rows":
            omit[ev["start"]:ev["end"]] = True
    series = Series(
        timestamps=t0 + np.arange(n) * float(period),
        values=values.astype(np.float32),
        channels=list(CHANNELS),
        source=f"generated:{sensor}:seed={seed}",
        lines=np.arange(2, n + 2),
        labels={"anomaly": (labels != "").astype(np.float64), "fault": labels.astype(object),
                "omit": omit},
    )
    return series, events


def _decimals(res: float) -> int:
    return max(0, -int(math.floor(math.log10(res) + 1e-9)))


def write_csv(series: Series, path, resolution=(0.1, 0.1)) -> int:
    """Write ``timestamp,<channels>,anomaly,fault``; NaN as an empty cell. Returns rows written."""
    dec = [_decimals(r) for r in resolution]
    omit = series.labels.get("omit", np.zeros(len(series), dtype=bool))
    whole = bool(np.all(np.mod(series.timestamps, 1) == 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", *series.channels, "anomaly", "fault"])
        for i in range(len(series)):
            if omit[i]:
                continue
            dt = datetime.fromtimestamp(float(series.timestamps[i]), tz=timezone.utc)
            stamp = dt.strftime("%Y-%m-%d %H:%M:%S") if whole else dt.isoformat(sep=" ")[:26]
            cells = ["" if math.isnan(v) else f"{v:.{d}f}"
                     for v, d in zip(series.values[i].tolist(), dec, strict=True)]
            w.writerow([stamp, *cells, int(series.labels["anomaly"][i]), series.labels["fault"][i]])
            rows += 1
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `edgewatch generate`."""
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--days", type=float, default=7.0, help="length in days (default 7)")
    p.add_argument("--period", type=float, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--sensor", default="dht22", help="dht22 | shtc3 | dht11 (default dht22)")
    p.add_argument("--faults", default="", help=f"comma list of {','.join(FAULT_KINDS)}, or all")
    p.add_argument("--count", type=int, default=2, help="faults of each kind (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--start", default=DEFAULT_START, help="first timestamp, ISO 8601 UTC")


def run(args) -> int:
    """Generate the CSV and print one summary line."""
    kinds = parse_kinds(args.faults)
    if args.count < 0:
        raise UserError(f"--count must be >= 0 (got {args.count})")
    try:
        parse_time(args.start)
    except ValueError:
        raise UserError(f"--start: {args.start!r} is not an ISO date/time") from None
    series, events = generate(args.days, args.period, args.sensor, kinds, args.seed,
                              args.count, args.start)
    try:
        rows = write_csv(series, args.out, SENSORS[args.sensor].resolution)
    except OSError as exc:
        raise UserError(f"{args.out}: cannot write ({exc.strerror})") from None
    def when(i):
        return datetime.fromtimestamp(float(series.timestamps[i]), tz=timezone.utc).strftime("%m-%d %H:%M")

    summary = ", ".join(f"{e['kind']} {when(e['start'])}" for e in events) or "no faults"
    print(f"wrote {rows} rows to {args.out} ({args.sensor}, seed {args.seed}; {summary})")
    return 0
