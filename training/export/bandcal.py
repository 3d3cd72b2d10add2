"""Calibration of the board's residual band, CUSUM drift and burst rules and per-channel stuck limits.

Everything is learned from the fit rows' own residuals (the int8 model's, as the
board computes them), with robust quantiles, never the maximum:

- scale s0 per channel: the mean |residual| of the residuals below their 99th
  percentile (a trimmed mean absolute error, normalised units), never below half the
  sensor's resolution (the smallest step between readings of the fit rows), so a
  quantised sensor whose residual is mostly 0 still gets a finite band;
- band k: ``K_MARGIN`` × the ``TAIL`` quantile of |residual| / s0, at least ``K_MIN``:
  a clean sample leaves the band with a probability well below 1 - TAIL; the fit rows leave the
  ``TAIL`` quantile at 1e-3 per sample by construction, the band's share of the false-alarm
  ``BUDGET`` is ~23x rarer: an exponential tail needs 1 + ln 23 / ln 1000 = 1.45x the
  quantile for that, a heavier one (real residuals: a person near the sensor, a burst of
  tweets) more; ``K_MARGIN`` 2 covers tails up to about a power law of index 10. Measured
  (make bench-detect run, CUSUM reference 1): 1.5 -> 2: fault false alarms 1.47 -> 1.18/day
  (a real 0.9 %RH humidity jump no longer flagged), drift delay 21 -> 24 min, spikes and
  noise still all caught at 0 min; NAB 52.0 -> 53.8; SKAB F1 0.803 -> 0.803 (FAR 11.60 ->
  11.58 %);
- CUSUM: reference ``REF`` (in units of s0) and limit h = ``H_MARGIN`` × the ``TAIL``
  quantile of the two-sided CUSUM statistic over the fit rows, at least ``H_MIN``:
  the ordinary autocorrelated wander of the residuals stays under it. REF = 1: s is the mean
  |residual|, so a clean residual's |z| averages 1 and a reference below it lets the
  ordinary wander of a near-persistence forecast (a room warming as people come in)
  accumulate; at 1 the sums grow only while the residuals stay above their usual size,
  which a drift of >= 2 s per sample does (Page's reference: half the shift to detect).
  Measured (make bench-detect run): REF 0.5 -> 1 fault false alarms 2.36 -> 1.47/day, drift
  delay 22 -> 21 min, NAB 46.5 -> 48.8, SKAB F1 0.800 -> 0.803 (FAR 12.65 -> 11.60 %);
  1.5 and 2 delay drifts (29.5, 87 min) for no fewer false alarms;
- CUSUM increments clipped to +-``ZCLIP`` (3 s, about 2.4 sigma for Gaussian residuals;
  was +-k): the CUSUM is for lasting small residuals, one large residual is the band's to
  flag. Clipped at k (20 and more), two outliers made an alarm and the fit rows' outlier
  excursions set h, so a slow drift needed a long climb; clipped at 3, h follows the
  ordinary wander, drifts are caught sooner, and ``H_MARGIN`` 2.5 (the CUSUM path's 0.999
  quantile is a per-sample figure: its excursions last many samples and their peaks have
  heavier tails than one residual) buys the false-alarm budget back. Measured (make
  bench-detect run): clip k, margin 1.5 -> clip 3, margin 2.5: fault false alarms 0.88 ->
  0.29 per clean day (the occupied room's humidity ramps no longer alarm), drift delay
  24 -> 21 min; NAB 55.0 -> 50.7 (files whose anomaly is a few large jumps lost the
  CUSUM's quick double-jump alarm: speed_t4013, occupancy_t4013); SKAB F1 0.803 -> 0.802.
  Margin 2 (clip 3 or 4): 0.59 false alarms per clean day. Then the board's s was found
  adapting 256 Q20 units low (firmware/residual.py floored its update; |z| read large
  against this calibration): rounded, false alarms 0.29 -> 0.00 per clean day, drift
  delay 21 -> 22.5 min, NAB 55.1 -> 54.1; with the budget back, ``H_MARGIN`` 2.5 -> 2:
  0.29 per clean day, drift delay 17.5 min, NAB 55.5 (one bench-detect run each);
- burst: a one-sided CUSUM of |z| = |residual| / s, each increment up to k, reference
  ``ZCLIP``; limit = ``H_MARGIN`` × the ``TAIL`` quantile of that path over the fit rows
  (at least ``H_MIN``), carried in the blob as an integer (rounded up). The drift CUSUM
  clipped at 3 no longer adds up a few large residuals, and with alternating signs it never
  did; this one does: several residuals well over 3 s close together (a noise burst, a
  series of jumps back and forth), none of which leaves the band alone, and only as
  many as the fit rows never produced. Its reference and margin are the drift CUSUM's
  constants, no new ones. Measured (the residuals of a make bench-detect run, numpy): NAB
  all files 50.7 -> 55.8, realTraffic 45.8 -> 65.0 (speed_t4013 0 -> 91, occupancy_t4013
  47 -> 93: their anomalies are a few jumps of 5-12 s against a k of 11-16); reference 2 or
  4 and margin 1.5 or 2 give 55.3-56.6;
- adaptation rate ``ALPHA`` of s on the board: a time constant of 512 samples (about 8.5 h at
  one a minute), four times the longest fault the rules must not learn (a 2-hour stuck
  channel; only unflagged samples adapt s), short enough to follow the day's regimes (an
  occupied room's readings move more than an empty one's). Measured (docs/benchmarks_detect.md
  run): 1/1024 -> fault false alarms 2.06/day, drift delay 32.5 min, NAB 44.1; 1/512 -> 1.77,
  25.5, 43.1; 1/256 -> 1.47, 20, 41.7;
- stuck limit per channel: the run length of equal readings that the fit rows' runs exceed
  at an extrapolated rate of ``BUDGET`` per sample (:func:`tail_level`, Pareto tail: a run
  lasts about resolution / |rate of change| and slow rates are common, so long runs have a
  polynomial tail, not an exponential one) +1, at most ``STUCK_CAP`` × the longest run seen
  (the extrapolation is trusted that far: convert warns beyond 3×), at least ``STUCK_MIN``;
  with too few runs to model the tail, ``STUCK_MARGIN`` × the longest run +1; 0 (no stuck
  rule) for a channel that never changed in the fit rows.

The false-alarm ``BUDGET`` is the issue's goal (0.5 false alarms a day at one sample a
minute) shared by the 8 rule × channel pairs of a two-channel sensor.

One set of these constants serves every file and suite (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

TAIL = 0.999
K_MIN = 4.0
K_MARGIN = 2.0  # x the fit rows' TAIL quantile of |z| (see the top)
REF = 1.0  # CUSUM reference, units of s (see the top)
H_MIN = 10.0
H_MARGIN = 2.0
# the CUSUM's increments z = r/s are clipped to +-ZCLIP (firmware/residual.py's fixed 3)
ZCLIP = 3.0
ALPHA = 1.0 / 512  # per-sample rate at which the board adapts s from unflagged residuals
BIAS_RATE = 1.0 / 128  # firmware/detector.py's: the model's slow bias, taken off each forecast
REANCHOR = 30  # flagged samples in a row after which a channel accepts the new level
STUCK_MIN = 10
MOVE_H = 60  # samples over which the move rule compares a channel's move with the others'
MOVE_MIN_SPANS = 10  # fit rows needed for the move rule, in horizons (see move_calibrate)
MOVE_MARGIN = 1.2  # x the largest net move, when the fit rows hold too few to model the tail
# the board's whole-reading stuck limit (blob `still`): this x the longest run of the whole
# reading repeated in the fit rows, +1 (training/export/shiftcal.py stuck_limit). Such runs
# need every channel flat at once: too rare in a few fit days for a tail model (the
# occupancy fit: 393 runs, longest 21; an exponential tail puts the budget level at 27, a
# Pareto one at 134, and the clean span 1.5 fit-spans long holds a run of 35). The longest
# run grows with the span watched, so 1.5x (the host's best detector) is thin for a board
# that runs for weeks: 2x. Measured (fault suite): 1.5 -> 2: false alarms 1.18 -> 0.88 per
# clean day (the clean span's 35-sample flat no longer fires), whole-reading stuck faults
# (53-109 samples) still all caught, median stuck delay 31 -> 42 min; a whole reading stuck
# for less than 2x the fit's longest flat (43 min there) is missed.
STILL_MARGIN = 2.0
STUCK_MARGIN = 1.2  # × the longest run, when the fit rows hold too few runs to model the tail
STUCK_CAP = 3  # × the longest run of the fit rows: how far the run-length tail is extrapolated
# false-alarm budget per sample, per rule and channel: 0.5 episodes a day at one sample a
# minute, shared by the 8 rule x channel pairs of a two-channel sensor (band, CUSUM and stuck
# per channel, whole-reading stuck, shift)
BUDGET = 0.5 / 1440 / 8
TOP = 0.1  # peaks over threshold: the top 10 % of the episodes model the tail
TOP_MIN = 5  # ... at least this many; fewer peaks than TOP_MIN + 1: no tail model


class MoveCal(NamedTuple):
    """The move rule's calibration the blob carries (flag MOVE, firmware/moverule.py)."""

    horizon: int          # samples
    coef: np.ndarray      # [C, C] channel j's move explained by the others' (diagonal 0)
    limit: np.ndarray     # [C] net move that fires, normalised units


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
    burst: int = 0       # the burst CUSUM's limit (units of s; 0: no burst rule)
    # per channel, the fit residuals' TAIL quantile of |r|/s that k is K_MARGIN x the largest
    # of (NaN: no residuals); convert's warnings name the channel, the blob does not carry it
    tails: list[float] = field(default_factory=list)
    move: MoveCal | None = None  # the move rule (flag MOVE), None with one channel


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


def excursion_peaks(x: np.ndarray) -> np.ndarray:
    """Peaks of the excursions of a non-negative path ``x`` above 0 (one per maximal run of
    x > 0): the episodes a rule firing above some level would see, in time order."""
    x = np.asarray(x, np.float64)
    pos = x > 0
    if not pos.any():
        return np.zeros(0)
    edges = np.diff(np.concatenate([[0], pos.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return np.array([x[a:b].max() for a, b in zip(starts, ends, strict=True)])


def run_lengths(x: np.ndarray) -> np.ndarray:
    """Lengths (repeats of the previous reading) of every run of equal consecutive values."""
    return excursion_peaks(_count_up(np.diff(np.asarray(x, np.float64)) == 0))


def _count_up(flags: np.ndarray) -> np.ndarray:
    out = np.zeros(len(flags))
    cur = 0
    for i, f in enumerate(flags):
        cur = cur + 1 if f else 0
        out[i] = cur
    return out


def tail_level(peaks: np.ndarray, n: int, budget: float = BUDGET) -> float | None:
    """The level the episode ``peaks`` of a statistic (seen over ``n`` samples) exceed at an
    extrapolated rate of ``budget`` episodes per sample (peaks over threshold, Pareto tail).

    The threshold u0 is the (m+1)-th largest peak, m = the top ``TOP`` share of the peaks (at
    least ``TOP_MIN``); the m peaks above u0 arrive at rate m / n, and their tail index comes
    from Hill's estimator (the mean log excess: one outlier moves it by its log, not by its
    size). Meant for run lengths of equal readings, whose tail is polynomial: a run lasts
    about resolution / |rate of change| and slow rates are common. None when there are too
    few peaks to model the tail (the caller falls back)."""
    p = np.asarray(peaks, np.float64)
    p = np.sort(p[np.isfinite(p)])[::-1]
    m = max(TOP_MIN, int(np.ceil(TOP * len(p))))
    if len(p) <= m or n <= 0 or p[m] <= 0:
        return None
    u0 = float(p[m])
    xi = float(np.mean(np.log(p[:m] / u0)))
    return u0 * float(np.exp(xi * max(0.0, float(np.log(m / n / budget)))))


def stuck_limit(x: np.ndarray, budget: float = BUDGET) -> int:
    """Equal readings in a row (counting the first) that make channel ``x`` [N] stuck: the
    run length its runs exceed at an extrapolated ``budget`` per sample (Pareto tail), +1,
    within [STUCK_MIN, STUCK_CAP × its longest run] (at most 65535, the blob's field)."""
    x = np.asarray(x, np.float64)
    runs = run_lengths(x)
    longest = int(runs.max()) if len(runs) else 0
    lv = tail_level(runs, len(x), budget)
    if lv is None:
        lim = int(np.ceil(STUCK_MARGIN * longest)) + 1
    else:
        lim = min(int(np.ceil(lv)) + 1, STUCK_CAP * max(longest, 1))
    return int(min(max(STUCK_MIN, lim), 65535))


def cusum(z: np.ndarray, ref: float) -> np.ndarray:
    """Two-sided CUSUM max(S+, S-) of z [N] with reference ``ref``, as the board runs it."""
    gp = gn = 0.0
    out = np.empty(len(z))
    for i, v in enumerate(z):
        gp = max(0.0, gp + v - ref)
        gn = max(0.0, gn - v - ref)
        out[i] = max(gp, gn)
    return out


def burst_path(z: np.ndarray, k: float) -> np.ndarray:
    """The burst CUSUM of z [N] (one channel) as the board runs it, without its restarts:
    max(0, g + min(|z|, k) - ZCLIP)."""
    g = 0.0
    out = np.empty(len(z))
    for i, v in enumerate(np.minimum(np.abs(z), k)):
        g = max(0.0, g + v - ZCLIP)
        out[i] = g
    return out


def burst_limit(h: float) -> int:
    """The burst limit as the blob carries it: an integer (u16), rounded up."""
    return int(min(65535, np.ceil(h)))


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
    rows = np.asarray(rows, np.float64)
    floor = 0.5 * resolution(rows) / np.asarray(scale, np.float64)
    s0, ks, hs = np.zeros(c), [], []
    tails = [float("nan")] * c
    for j in range(c):
        a = np.abs(resid[:, j])
        a = a[np.isfinite(a)]
        if not len(a):
            s0[j] = max(floor[j], 1e-6)
            continue
        cut = np.quantile(a, 0.99)
        s = float(np.mean(a[a <= cut])) if np.any(a <= cut) else float(np.mean(a))
        s0[j] = max(s, floor[j], 1e-6)
        tails[j] = float(np.quantile(a / s0[j], TAIL))
        ks.append(tails[j])
    k = max(K_MIN, K_MARGIN * max(ks)) if ks else K_MIN
    for j in range(c):
        z = np.clip(np.nan_to_num(resid[:, j]) / s0[j], -ZCLIP, ZCLIP)
        hs.append(float(np.quantile(cusum(z, REF), TAIL)))
    h = max(H_MIN, H_MARGIN * max(hs)) if hs else H_MIN
    bs = [float(np.quantile(burst_path(np.nan_to_num(resid[:, j]) / s0[j], k), TAIL))
          for j in range(c) if np.isfinite(resid[:, j]).any()]
    burst = burst_limit(max(H_MIN, H_MARGIN * max(bs)) if bs else H_MIN)
    runs = longest_runs(rows)
    stuck = np.array([stuck_limit(rows[:, j]) for j in range(rows.shape[1])], dtype=int)
    # a channel that never changed in the fit rows gives no evidence of what stuck is: off (0)
    stuck[runs >= len(rows) - 1] = 0
    return BandCal(float(k), REF, float(h), ALPHA, REANCHOR, [float(v) for v in s0],
                   [float(v) for v in floor], [int(v) for v in stuck], burst, tails,
                   move_calibrate(rows, scale))


def move_calibrate(rows: np.ndarray, scale: np.ndarray, horizon: int = MOVE_H,
                   budget: float = BUDGET) -> MoveCal | None:
    """The move rule (firmware/moverule.py) from the physical fit rows ``rows`` [N, C]
    in time order: d = the rows' moves over ``horizon`` samples in normalised units (÷ ``scale``);
    per channel, the least-squares part of its move the other channels' moves explain
    (``coef``), and the limit its net move (d less that part) exceeds at ``budget``
    episodes per sample: the tail of the net moves' excursion peaks above their median,
    extrapolated as the stuck limits are (``tail_level``; too few peaks: MOVE_MARGIN x the
    largest). None with one channel (nothing to move with: the shift rule watches a lone
    channel's level) or fewer than MOVE_MIN_SPANS x horizon rows: the net moves over H
    samples of fewer rows hold too few independent excursions to say what is usual (SKAB's
    400 fit rows: 340 moves of 60 samples, limits that fired on 15.9 % of its normal rows
    where the other rules alone alarm on 11.9 %)."""
    x = np.asarray(rows, np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    c = x.shape[1] if x.ndim == 2 else 1
    if c < 2 or len(x) < MOVE_MIN_SPANS * horizon:
        return None
    d = (x[horizon:] - x[:-horizon]) / np.asarray(scale, np.float64)
    coef = np.zeros((c, c))
    for j in range(c):
        others = [k for k in range(c) if k != j]
        b, *_ = np.linalg.lstsq(d[:, others], d[:, j], rcond=None)
        coef[j, others] = b
    net = np.abs(d - d @ coef.T)
    limit = np.zeros(c)
    for j in range(c):
        a = net[:, j]
        lv = tail_level(excursion_peaks(np.where(a > np.median(a), a, 0.0)), len(a), budget)
        limit[j] = lv if lv is not None else MOVE_MARGIN * float(a.max())
    # float32 as the blob stores them; a limit of 0 (a channel that never moved): off
    limit = np.maximum(limit, 1e-6)
    return MoveCal(int(horizon), coef.astype(np.float32).astype(np.float64),
                   limit.astype(np.float32).astype(np.float64))
