"""Calibration of the board's residual band, CUSUM drift rule and per-channel stuck limits.

Everything is learned from the fit rows' own residuals (the int8 model's, as the
board computes them), with robust quantiles, never the maximum:

- scale s0 per channel: the mean |residual| of the residuals below their 99th
  percentile (a trimmed mean absolute error, normalised units), never below half the
  sensor's resolution (the smallest step between readings of the fit rows), so a
  quantised sensor whose residual is mostly 0 still gets a finite band;
- band k: ``K_MARGIN`` × the ``TAIL`` quantile of |residual| / s0, at least ``K_MIN``:
  a clean sample leaves the band with a probability well below 1 - TAIL;
- CUSUM: reference ``REF`` (in units of s0) and limit h = ``H_MARGIN`` × the ``TAIL``
  quantile of the two-sided CUSUM statistic over the fit rows, at least ``H_MIN``:
  the ordinary autocorrelated wander of the residuals stays under it;
- stuck limit per channel: ``STUCK_MARGIN`` × the longest run of equal readings of that
  channel in the fit rows (+1), at least ``STUCK_MIN``; 0 (no stuck rule) for a channel
  that never changed in the fit rows.

One set of these constants serves every file and suite (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAIL = 0.999
K_MIN = 4.0
K_MARGIN = 1.5
REF = 0.5
H_MIN = 10.0
H_MARGIN = 1.5
ALPHA = 1.0 / 1024  # per-sample rate at which the board adapts s from unflagged residuals
BIAS_RATE = 1.0 / 128  # firmware/detector.py's: the model's slow bias, taken off each forecast
REANCHOR = 30  # flagged samples in a row after which a channel accepts the new level
STUCK_MIN = 10
STUCK_MARGIN = 1.2


@dataclass
class BandCal:
    """The band calibration the blob carries (flag BAND, docs/model_blob.md)."""

    k: float
    ref: float
    h: float
    alpha: float
    reanchor: int
    scale: list[float]   # per channel, normalised units
    floor: list[float]   # per channel, normalised units
    stuck: list[int]     # per channel, samples


def longest_runs(rows: np.ndarray) -> np.ndarray:
    """Per channel, the longest run of consecutive rows repeating the previous reading."""
    rows = np.asarray(rows, np.float64)
    out = np.zeros(rows.shape[1], dtype=int)
    for c in range(rows.shape[1]):
        same = np.diff(rows[:, c]) == 0
        best = cur = 0
        for s in same:
            cur = cur + 1 if s else 0
            best = max(best, cur)
        out[c] = best
    return out


def resolution(rows: np.ndarray) -> np.ndarray:
    """Per channel, the sensor's step: the 1st percentile of the non-zero |changes| (0 if none)."""
    rows = np.asarray(rows, np.float64)
    out = np.zeros(rows.shape[1])
    for c in range(rows.shape[1]):
        d = np.abs(np.diff(rows[:, c]))
        d = d[np.isfinite(d) & (d > 0)]
        out[c] = float(np.quantile(d, 0.01)) if len(d) else 0.0
    return out


def cusum(z: np.ndarray, ref: float) -> np.ndarray:
    """Two-sided CUSUM max(S+, S-) of z [N] with reference ``ref``, as the board runs it."""
    gp = gn = 0.0
    out = np.empty(len(z))
    for i, v in enumerate(z):
        gp = max(0.0, gp + v - ref)
        gn = max(0.0, gn - v - ref)
        out[i] = max(gp, gn)
    return out


def debias(resid: np.ndarray, rate: float = BIAS_RATE) -> np.ndarray:
    """Residuals less the slow bias the board tracks (EWMA of the residuals before each)."""
    out = np.empty_like(resid)
    mu = np.zeros(resid.shape[1])
    for i, r in enumerate(np.nan_to_num(resid)):
        out[i] = r - mu
        mu += rate * (r - mu)
    return out


def calibrate(resid: np.ndarray, rows: np.ndarray, scale: np.ndarray) -> BandCal:
    """Calibrate on the fit residuals ``resid`` [M, C] (normalised, in time order) and the
    physical fit rows ``rows`` [N, C]; ``scale`` is the scaler's per-channel scale."""
    resid = debias(np.asarray(resid, np.float64))
    c = resid.shape[1]
    floor = 0.5 * resolution(rows) / np.asarray(scale, np.float64)
    s0, ks, hs = np.zeros(c), [], []
    for j in range(c):
        a = np.abs(resid[:, j])
        a = a[np.isfinite(a)]
        if not len(a):
            s0[j] = max(floor[j], 1e-6)
            continue
        cut = np.quantile(a, 0.99)
        s = float(np.mean(a[a <= cut])) if np.any(a <= cut) else float(np.mean(a))
        s0[j] = max(s, floor[j], 1e-6)
        ks.append(float(np.quantile(a / s0[j], TAIL)))
    k = max(K_MIN, K_MARGIN * max(ks)) if ks else K_MIN
    for j in range(c):
        z = np.clip(np.nan_to_num(resid[:, j]) / s0[j], -k, k)
        hs.append(float(np.quantile(cusum(z, REF), TAIL)))
    h = max(H_MIN, H_MARGIN * max(hs)) if hs else H_MIN
    runs = longest_runs(rows)
    stuck = np.maximum(STUCK_MIN, np.ceil(STUCK_MARGIN * runs).astype(int) + 1)
    stuck = np.minimum(stuck, 65535)
    # a channel that never changed in the fit rows gives no evidence of what stuck is: off (0)
    stuck[runs >= len(rows) - 1] = 0
    return BandCal(float(k), REF, float(h), ALPHA, REANCHOR, [float(v) for v in s0],
                   [float(v) for v in floor], [int(v) for v in stuck])
