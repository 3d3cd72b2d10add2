"""The board detector's host-side calibration (training/export/bandcal.py): stuck limits from
the run-length tail of the fit rows, extrapolated to the false-alarm budget."""

from __future__ import annotations

import numpy as np
from edgewatch.training.export import bandcal


def test_run_lengths_and_excursion_peaks():
    x = np.array([1, 1, 1, 2, 3, 3, 4, 4, 4, 4.0])
    assert bandcal.run_lengths(x).tolist() == [2, 1, 3]  # repeats of the previous reading
    assert bandcal.excursion_peaks(np.array([0, 1, 3, 0, 0, 2, 0, 5.0])).tolist() == [3, 2, 5]
    assert len(bandcal.run_lengths(np.arange(10.0))) == 0


def test_tail_level_extrapolates_a_pareto_tail_to_the_budget():
    """Runs with P(run > L) = (L / 2)^-2, one run every 4 samples: the level exceeded at
    `budget` per sample is 2 * sqrt(0.25 / budget), far beyond anything in the sample."""
    rng = np.random.default_rng(3)
    n_runs = 4000
    runs = 2.0 * (1 - rng.random(n_runs)) ** -0.5
    n = 4 * n_runs
    for budget in (1e-4, 1e-5):
        want = 2.0 * np.sqrt(0.25 / budget)
        got = bandcal.tail_level(runs, n, budget)
        assert 0.7 * want < got < 1.4 * want, (budget, want, got)
    assert bandcal.tail_level(runs, n, 1e-6) > runs.max()  # beyond the sample, not its maximum
    assert bandcal.tail_level(runs[:5], n) is None  # too few peaks to model a tail


def _room(n, seed=0, step=0.1):
    # a quantised slow random walk: a room whose sensor has a 0.1 resolution
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0, 0.02, n)) + 20.0
    return np.round(walk / step) * step


def test_stuck_limit_above_the_fit_runs_within_three_times_the_longest():
    x = _room(5000)
    longest = int(bandcal.run_lengths(x).max())
    lim = bandcal.stuck_limit(x)
    # never fires on the fit rows' own runs (a run of r repeats is r + 1 equal readings) ...
    assert lim > longest + 1
    # ... and the extrapolation stops at 3x the longest run (convert warns beyond)
    assert lim <= bandcal.STUCK_CAP * longest
    # a stricter budget never lowers it
    assert bandcal.stuck_limit(x, budget=bandcal.BUDGET / 100) >= lim


def test_stuck_limit_fallback_and_calibrate_carries_it():
    # three runs only: no tail to model, 1.2x the longest run + 1 (at least STUCK_MIN)
    x = np.repeat([1.0, 2.0, 3.0], [20, 30, 25])
    assert bandcal.stuck_limit(x) == int(np.ceil(bandcal.STUCK_MARGIN * 29)) + 1
    rows = np.stack([_room(3000, 1), _room(3000, 2, step=0.5)], axis=1)
    resid = np.random.default_rng(4).normal(0, 0.01, (3000, 2))
    cal = bandcal.calibrate(resid, rows, np.array([1.0, 1.0]))
    assert cal.stuck == [bandcal.stuck_limit(rows[:, 0]), bandcal.stuck_limit(rows[:, 1])]
    assert cal.stuck[1] > cal.stuck[0]  # the coarser sensor stays put for longer
    # a channel that never moved in the fit rows: no stuck rule (0)
    flat = np.stack([rows[:, 0], np.full(3000, 5.0)], axis=1)
    assert bandcal.calibrate(resid, flat, np.array([1.0, 1.0])).stuck[1] == 0


def test_stuck_limit_extrapolation_stops_at_three_times_the_longest_run():
    # a heavy run-length tail (index 2): the budget's level is far beyond what the fit
    # rows show; the limit stops at STUCK_CAP x the longest run, where convert would warn
    runs = np.floor(3.0 * (1 - np.random.default_rng(2).random(300)) ** -0.5).astype(int)
    x = np.repeat(np.arange(len(runs), dtype=float), runs + 1)
    longest = int(runs.max())
    assert bandcal.tail_level(bandcal.run_lengths(x), len(x)) > bandcal.STUCK_CAP * longest
    assert bandcal.stuck_limit(x) == bandcal.STUCK_CAP * longest


def test_burst_limit_stays_over_the_fit_rows_bursts_and_the_blob_carries_it():
    from edgewatch.training.export import blob

    rng = np.random.default_rng(5)
    rows = np.stack([_room(3000, 1), _room(3000, 2)], axis=1)
    resid = rng.normal(0, 0.01, (3000, 2))
    cal = bandcal.calibrate(resid, rows, np.array([1.0, 1.0]))
    assert isinstance(cal.burst, int) and cal.burst >= bandcal.H_MIN
    # fit residuals with bursts of five 6 s residuals: the limit sits above what they add up
    for at in range(200, 3000, 400):
        resid[at:at + 5, 0] = 6 * cal.scale[0] * np.where(np.arange(5) % 2, 1, -1)
    noisy = bandcal.calibrate(resid, rows, np.array([1.0, 1.0]))
    z = bandcal.debias(resid)[:, 0] / noisy.scale[0]
    assert noisy.burst > bandcal.burst_path(z, noisy.k).max() > cal.burst
    # the blob's band section keeps it (u16, rounded up)
    raw = blob.band_section(noisy, 2)
    assert blob._band_cal(raw, 2).burst == noisy.burst
    assert bandcal.burst_limit(12.2) == 13 and bandcal.burst_limit(1e9) == 65535


def test_convert_warns_in_one_line_naming_the_channel_behind_k_a_constant_one_and_a_long_limit():
    from edgewatch.training.export.convert import calibration_warnings

    rng = np.random.default_rng(0)
    n = 2000
    rows = np.c_[20 + np.round(np.cumsum(rng.normal(0, 0.05, n)), 1),
                 50 + np.round(np.cumsum(rng.normal(0, 1.0, n)), 1)]
    resid = rng.normal(0, 0.01, (n, 2))
    names = ["temperature", "humidity"]
    quiet = bandcal.calibrate(resid, rows, np.ones(2))
    assert quiet.k <= 10 and calibration_warnings(quiet, rows, names) == []
    # humidity's residuals hold outliers of 60 s: one k for both channels, named after humidity
    spiky = resid.copy()
    spiky[::97, 1] += 0.6
    cal = bandcal.calibrate(spiky, rows, np.ones(2))
    w = calibration_warnings(cal, rows, names)
    assert cal.k > 10 and len(w) == 1 and "\n" not in w[0]
    assert w[0].startswith("warning: band k = ") and "set by humidity's residuals" in w[0]
    # a channel that never changed: no noise scale, any change is flagged
    flat = rows.copy()
    flat[:, 0] = 21.0
    cal = bandcal.calibrate(resid, flat, np.ones(2))
    assert cal.stuck[0] == 0
    w = calibration_warnings(cal, flat, names)
    assert len(w) == 1 and w[0].startswith("warning: temperature never changed in the fit rows")
    # a stuck limit far over the fit rows' runs warns; at the rule's minimum it does not
    longest = bandcal.longest_runs(rows)
    assert 3 * max(longest[1], 1) < bandcal.STUCK_MIN  # humidity's limit sits at the minimum
    far = bandcal.BandCal(**{**quiet.__dict__, "stuck": [int(3 * longest[0]) + 20, bandcal.STUCK_MIN]})
    w = calibration_warnings(far, rows, names)
    assert len(w) == 1 and w[0].startswith("warning: temperature: stuck limit "), w
