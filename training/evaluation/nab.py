"""NAB scoring (Numenta Anomaly Benchmark v1.1 semantics), written from its documentation.

A detector emits an anomaly score per row; a row is a detection when its score
is >= the threshold. Each labelled window earns the weighted scaled sigmoid of
its earliest detection (or -A_FN when it is missed); every detection outside a
window costs A_FP times a scaled sigmoid of its distance past the previous
window (the full -A_FP before the first window). The first 15 % of the rows
(at most 750) are a probationary period and are not scored.

The implementation is validated against NAB's published per-row S(t) columns
and raw scores of Numenta HTM and Windowed Gaussian (tests/test_nab.py).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from edgewatch.core import firmware

# (A_TP, A_FN, A_FP) per NAB profile.
PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, 1.0, 0.11),
    "reward_low_FP_rate": (1.0, 1.0, 0.22),
    "reward_low_FN_rate": (1.0, 2.0, 0.11),
}
PROBATION_PERCENT = 0.15
FILES = ("machine_temperature_system_failure", "ambient_temperature_system_failure")
OUTSIDE = -1       # row index lies outside every window
PROBATION = -2     # row index lies in the probationary period (not scored)


def data_dir(repo_root: str | Path | None = None) -> Path:
    """The NAB folder of the shared data (`../shared/data/nab` beside the repo)."""
    root = Path(repo_root) if repo_root else firmware.ROOT
    return root.parent / "shared" / "data" / "nab"


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def scaled_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: ~0.987 at a window's left edge, 0 at its right edge, -1 from 3 widths past."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_length(n_rows: int) -> float:
    """Rows excluded from scoring at the start of a file."""
    return min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_PERCENT * 5000)


@dataclass
class Sweep:
    """Per-row weighted sweep score and window membership of one file under one profile."""

    weights: np.ndarray     # S(t): what a detection at this row would add (TP) or cost (FP)
    window_id: np.ndarray   # window index, OUTSIDE or PROBATION
    n_windows: int
    a_fn: float


@dataclass
class Result:
    """Raw NAB score of one file at one threshold, and the point counts NAB reports."""

    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


def window_bounds(timestamps: list[datetime], windows: list[tuple[datetime, datetime]]) -> list[tuple[int, int]]:
    """Row index of each window's first and last timestamp (both must be rows of the file)."""
    index: dict = {}
    for i, t in enumerate(timestamps):
        index.setdefault(t, i)  # NAB looks rows up with list.index: the first occurrence
    out = []
    for start, end in windows:
        if start not in index or end not in index:
            raise ValueError(f"window {start}..{end} does not start and end on rows of the file")
        out.append((index[start], index[end]))
    return sorted(out)


def sweep(timestamps: list[datetime], windows: list[tuple[datetime, datetime]],
          profile: str = "standard") -> Sweep:
    """Weighted score each row would contribute if detected, as NAB's sweeper computes it."""
    a_tp, a_fn, a_fp = PROFILES[profile]
    n = len(timestamps)
    bounds = window_bounds(timestamps, windows)
    max_tp = scaled_sigmoid(-1.0)
    weights = np.empty(n, dtype=np.float64)
    wid = np.full(n, OUTSIDE, dtype=np.int64)
    prev_right = prev_width = None
    k = 0
    for i in range(n):
        if k < len(bounds) and bounds[k][0] <= i <= bounds[k][1]:
            left, right = bounds[k]
            width = right - left + 1
            # NAB measures the position from one past the right edge, so the
            # last row of a window still scores a small positive value.
            weights[i] = scaled_sigmoid(-(right - i + 1) / width) * a_tp / max_tp
            wid[i] = k
            if i == right:
                prev_right, prev_width = right, width
                k += 1
        else:
            if prev_right is None:
                pos = 3.0
            else:
                pos = abs(prev_right - i) / float(prev_width - 1)
            weights[i] = scaled_sigmoid(pos) * a_fp
    wid[: int(math.ceil(probation_length(n)))] = PROBATION
    return Sweep(weights, wid, len(bounds), a_fn)


def score(sw: Sweep, detections: np.ndarray) -> Result:
    """Raw NAB score of a boolean detection vector against a precomputed sweep."""
    det = np.asarray(detections, dtype=bool)
    scored = sw.window_id != PROBATION
    inside = sw.window_id >= 0
    outside = sw.window_id == OUTSIDE
    total = float(np.sum(sw.weights[det & outside]))
    # Windows lying wholly inside the probationary period are not scored at all.
    live = set(np.unique(sw.window_id[inside]).tolist())
    for w in live:
        hits = det & (sw.window_id == w)
        total += float(np.max(sw.weights[hits])) if hits.any() else -sw.a_fn
    tp = int(np.sum(det & inside))
    fp = int(np.sum(det & outside))
    fn = int(np.sum(~det & inside))
    tn = int(np.sum(~det & outside))
    assert tp + fp + fn + tn == int(np.sum(scored))
    return Result(total, tp, tn, fp, fn, len(det))


def attribution(sw: Sweep, detections: np.ndarray) -> np.ndarray:
    """Per-row share of the raw score, as NAB's S(t) result column.

    A window's score (its earliest detection's weight, or -A_FN when missed) sits
    on the window's first scored row; each detection outside windows carries its
    own (negative) weight; every other row is 0. The column sums to the raw score.
    """
    det = np.asarray(detections, dtype=bool)
    out = np.where(det & (sw.window_id == OUTSIDE), sw.weights, 0.0)
    for w in np.unique(sw.window_id[sw.window_id >= 0]):
        rows = np.flatnonzero(sw.window_id == w)
        hits = det[rows]
        out[rows[0]] = float(np.max(sw.weights[rows][hits])) if hits.any() else -sw.a_fn
    return out


def score_threshold(sw: Sweep, anomaly_scores: np.ndarray, threshold: float) -> Result:
    """Raw NAB score when rows with anomaly score >= threshold are detections."""
    return score(sw, np.asarray(anomaly_scores, dtype=np.float64) >= threshold)


def null_and_perfect(sw: Sweep) -> tuple[float, float]:
    """Raw scores of the detector that never fires and of the one that fires at each window's start."""
    live = np.unique(sw.window_id[sw.window_id >= 0])
    perfect = sum(float(sw.weights[sw.window_id == w].max()) for w in live)
    return -sw.a_fn * len(live), perfect


def normalised(raw: float, null: float, perfect: float) -> float:
    """NAB's 0..100 normalisation: 0 = never fires, 100 = perfect."""
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0


def load_file(name: str, folder: str | Path | None = None) -> tuple[list[datetime], np.ndarray]:
    """Timestamps and values of one NAB data file (`timestamp,value`)."""
    folder = Path(folder) if folder else data_dir()
    path = folder / f"{name}.csv"
    ts, vals = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            ts.append(_ts(row["timestamp"]))
            vals.append(float(row["value"]))
    return ts, np.asarray(vals, dtype=np.float64)


def load_windows(name: str, folder: str | Path | None = None) -> list[tuple[datetime, datetime]]:
    """Labelled anomaly windows of one NAB file from windows.json."""
    folder = Path(folder) if folder else data_dir()
    with open(folder / "windows.json", encoding="utf-8") as fh:
        table = json.load(fh)
    key = next((k for k in table if Path(k).stem == name), None)
    if key is None:
        raise KeyError(f"{name} has no entry in {folder / 'windows.json'}")
    return [(_ts(a), _ts(b)) for a, b in table[key]]


def load_published(detector: str, name: str, folder: str | Path | None = None) -> dict:
    """A published NAB results file: anomaly scores, per-profile S(t) and the standard-profile row."""
    folder = Path(folder) if folder else data_dir()
    res = folder / "results"
    cols: dict[str, list] = {}
    with open(res / f"{detector}_{name}.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                cols.setdefault(k, []).append(v)
    out = {
        "timestamps": [_ts(t) for t in cols["timestamp"]],
        "anomaly_score": np.asarray(cols["anomaly_score"], dtype=np.float64),
        "S": {p: np.asarray(cols[f"S(t)_{p}"], dtype=np.float64) for p in PROFILES},
    }
    with open(res / f"{detector}_standard_scores.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if Path(row["File"]).stem == name:
                out["threshold"] = float(row["Threshold"])
                out["score"] = float(row["Score"])
                out["counts"] = {k: int(row[k.upper()]) for k in ("tp", "tn", "fp", "fn")}
                out["total"] = int(row["Total_Count"])
    return out


def evaluate_detections(name: str, detections: np.ndarray, folder: str | Path | None = None) -> dict:
    """Raw and normalised NAB scores of a 0/1 detection vector on one file, for every profile."""
    ts, _ = load_file(name, folder)
    wins = load_windows(name, folder)
    out = {}
    for prof in PROFILES:
        sw = sweep(ts, wins, prof)
        r = score(sw, detections)
        null, perfect = null_and_perfect(sw)
        out[prof] = {"raw": r.score, "null": null, "perfect": perfect,
                     "tp": r.tp, "fp": r.fp, "fn": r.fn, "tn": r.tn}
    return out
