"""Sustained-shift calibration: the ms-ensemble detector reduced to what a board can run.

The detector (edgewatch.training.evaluation.detectors.MultiscaleEnsemble) looks at the rolling mean
of the last ``window`` samples of every channel, standardised with the fit
rows, and asks two questions: is one channel's rolling mean further from its
usual value than ``factor`` times the most unusual moment of the fit rows
(view A), and is the rolling-mean vector as a whole further than that in
Mahalanobis distance, with a Ledoit-Wolf covariance (view B)? Both must say yes.

Every constant of that test folds into physical units, so the board needs only
the rolling mean ``m`` of its raw readings and, per channel,
``u = (m - center) / spread``:

    view A   max |u|     > factor
    view B   u' M u      > factor²

``center``, ``spread`` (C each) and ``M`` (C×C) are what :func:`calibrate`
returns and what the model blob carries (docs/model_blob.md, flag SHIFT);
firmware/detector.py applies them. :func:`score` is the same arithmetic in
numpy, so the host detector and the board compute one thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW = 40    # rows in the rolling mean
FACTOR = 3.0   # × the fit rows' most unusual moment, on both views
REBASE = 512   # shifted rows in a row after which the level is accepted (firmware/detector.py's
               # fixed 512: the residual scale's adaptation time constant)


@dataclass
class ShiftCal:
    """A calibrated sustained-shift test (physical units, channel order of the fit rows)."""

    window: int
    factor: float
    center: np.ndarray   # [C]
    spread: np.ndarray   # [C]
    matrix: np.ndarray   # [C, C]


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Causal mean of the last ``w`` rows (fewer at the start), per column."""
    x = np.asarray(x, dtype=np.float64)
    c = np.cumsum(np.vstack([np.zeros((1,) + x.shape[1:]), x]), axis=0)
    i = np.arange(len(x))
    a = np.maximum(0, i - w + 1)
    n = (i + 1 - a).reshape((-1,) + (1,) * (x.ndim - 1))
    return (c[i + 1] - c[a]) / n


def calibrate(fit: np.ndarray, window: int = WINDOW, factor: float = FACTOR) -> ShiftCal:
    """Calibrate on the fit rows ``[N, C]`` (physical units, no NaN; N > window + 2)."""
    from sklearn.covariance import LedoitWolf

    fit = np.asarray(fit, np.float64)
    n = len(fit)
    if n < window + 3:
        raise ValueError(f"shift calibration needs more than {window + 2} rows, got {n}")
    mu = fit.mean(axis=0)
    sd = fit.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    m = rolling_mean((fit - mu) / sd, window)
    k = min(window, n - 2)  # skip the warm-up of the rolling mean
    ref = m[k:]
    rm = ref.mean(axis=0)
    rs = ref.std(axis=0)
    rs = np.where(rs > 1e-9, rs, 1e-9)
    a = np.max(np.abs(m - rm) / rs, axis=1)
    a_max = max(float(np.max(a[k:])), 1e-9)
    lw = LedoitWolf().fit(ref)
    b = np.sqrt(lw.mahalanobis(m))
    b_max = max(float(np.max(b[k:])), 1e-9)
    g = rs * a_max  # u = (m_z - rm) / g
    prec = lw.get_precision()
    return ShiftCal(window, float(factor), center=mu + sd * rm, spread=sd * g,
                    matrix=(g[:, None] * prec * g[None, :]) / b_max ** 2)


def views(cal: ShiftCal, values: np.ndarray) -> np.ndarray:
    """Per row, the two views ``[N, 2]``: max |u| and sqrt(u' M u) (``factor`` is the threshold)."""
    u = (rolling_mean(values, cal.window) - cal.center) / cal.spread
    a = np.max(np.abs(u), axis=1)
    q = np.einsum("ni,ij,nj->n", u, cal.matrix, u)
    return np.stack([a, np.sqrt(np.maximum(q, 0.0))], axis=1)


def score(cal: ShiftCal, values: np.ndarray, rebase: int = REBASE) -> np.ndarray:
    """Boolean verdict per row: both views above the factor (False while the mean fills).

    As the board (firmware/shift.py rebase): after ``rebase`` shifted rows in a row the level
    is accepted, the center moves to the rolling mean of that row, and later rows are judged
    against it (a lasting change is one episode, not an alarm for the rest of the series)."""
    out = np.all(views(cal, values) > cal.factor, axis=1)
    out[: min(cal.window - 1, len(out))] = False  # as the board: judged once W samples are in
    if not out.any():
        return out
    m = rolling_mean(values, cal.window)
    center = np.array(cal.center, np.float64)
    run = 0
    for i in range(min(cal.window - 1, len(out)), len(out)):
        u = (m[i] - center) / cal.spread
        out[i] = bool(np.max(np.abs(u)) > cal.factor
                      and np.sqrt(max(float(u @ cal.matrix @ u), 0.0)) > cal.factor)
        run = run + 1 if out[i] else 0
        if rebase and run >= rebase:
            center, run = m[i].copy(), 0
    return out


def longest_constant_run(values: np.ndarray) -> int:
    """Longest run of consecutive rows whose every channel repeats the previous row."""
    same = np.all(np.diff(values, axis=0) == 0, axis=1)
    best = cur = 0
    for s in same:
        cur = cur + 1 if s else 0
        best = max(best, cur)
    return best


def stuck_limit(fit_values: np.ndarray, min_stuck: int = 5, margin: float = 1.5) -> int:
    """Repeats of the whole reading that make it stuck: ``margin`` x the longest such run in
    the fit rows, at least ``min_stuck`` (the best detector's view 3 takes 1.5x; the board's
    blob carries training/export/bandcal.py STILL_MARGIN x)."""
    return max(min_stuck, int(margin * longest_constant_run(np.asarray(fit_values))) + 1)
