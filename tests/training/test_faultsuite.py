"""Fault suite: event bookkeeping, dropped rows, and the metrics on real occupancy data."""

import numpy as np
import pytest
from edgewatch.training.evaluation import detectors, faultsuite
from edgewatch.training.forecast.generate import FAULT_KINDS


def test_episodes_merge_close_alerts():
    a = np.zeros(40, bool)
    a[[3, 4, 6, 20, 30, 31]] = True
    assert faultsuite.episodes(a, merge=5) == [(3, 6), (20, 20), (30, 31)]
    assert faultsuite.episodes(np.zeros(5, bool)) == []


def test_trial_has_every_kind_and_maps_dropped_rows():
    _, test, names = faultsuite.load_occupancy_test()
    test = test[:3000]
    for seed in range(4):
        values, missed, events = faultsuite.make_trial(test, names, seed, count=2)
        assert sorted({e["kind"] for e in events}) == sorted(FAULT_KINDS)
        gone = len(test) - len(values)
        assert missed.sum() == gone          # every removed row is reported as a missed period
        for e in events:
            assert 0 <= e["start"] < e["end"] <= len(values)
            if e["kind"] == "dropout" and e["mode"] == "rows":
                assert missed[e["start"]] > 0
            if e["kind"] == "stuck":
                seg = values[e["start"]:e["end"]]
                if e["channel"] is not None:  # one channel frozen, the other moves on
                    seg = seg[:, names.index(e["channel"])]
                assert (seg == seg[0]).all()


def test_score_events_counts_hits_delays_and_precision():
    alert = np.zeros(100, bool)
    alert[[11, 50, 71, 90]] = True
    ev = [{"kind": "spike", "start": 10, "end": 11}, {"kind": "drift", "start": 60, "end": 70}]
    r = faultsuite.score_events(alert, ev, grace=5)
    # the spike is caught on the sample after it (end + 1 counts); the drift only after it
    # ended: not while present, but within the grace of the older figure
    assert (r["caught"], r["caught_grace"], r["delays"]) == (1, 2, [1])
    assert (r["episodes"], r["true_episodes"]) == (4, 2)
    assert {k: (v["present"], v["grace"]) for k, v in r["per_kind"].items()} == \
        {"spike": (1, 1), "drift": (0, 1)}


class _Never(detectors.Detector):
    def run(self, values, n_fit):
        return np.zeros(len(values), bool)


class _Always(detectors.Detector):
    def run(self, values, n_fit):
        return np.ones(len(values), bool)


def test_silent_and_always_on_detectors_bound_the_metrics():
    never = faultsuite.evaluate(_Never, trials=1, limit_rows=2500)
    assert never["recall"] == 0 and never["false_alarms_per_day"] == 0
    always = faultsuite.evaluate(_Always, trials=1, limit_rows=2500)
    assert always["recall"] == 1 and always["clean_alert_pct"] == 100.0
    assert always["precision"] == 1.0  # one endless episode: why clean_alert_pct is reported


def test_best_detector_catches_faults_without_crying_wolf():
    r = faultsuite.evaluate(lambda: detectors.make("best"), trials=1, limit_rows=2500)
    assert r["recall"] >= 0.8
    assert r["false_alarms_per_day"] <= 2 and r["clean_alert_pct"] < 1.0


def test_an_alert_on_the_jump_back_is_not_before_the_fault_ends():
    """The row after a drift or a stuck channel is where the reading jumps back to the truth:
    an alert there counts as present (the issue's definition) but not before the fault ends;
    a dropout's own rows carry no reading, so the row after it is its first chance in both."""
    alert = np.zeros(200, bool)
    alert[[70, 120, 160]] = True
    ev = [{"kind": "drift", "start": 50, "end": 70},   # alerted on the jump back only
          {"kind": "stuck", "start": 100, "end": 130},  # alerted while held
          {"kind": "dropout", "start": 150, "end": 160}]  # alerted on the row after
    r = faultsuite.score_events(alert, ev)
    assert {k: (v["present"], v["strict"]) for k, v in r["per_kind"].items()} == \
        {"drift": (1, 0), "stuck": (1, 1), "dropout": (1, 1)}


def test_clean_reach_measures_the_clean_span_s_own_flats_and_moves():
    """A hold no longer than a flat the clean span holds, or a drift no larger than the clean
    span's own move over as many rows (net of the other channel), is within its reach."""
    t = np.arange(400, dtype=np.float64)
    test = np.c_[np.sin(t / 9.0), 0.01 * t]  # humidity: a steady ramp, temperature: a wave
    test[100:121, 0] = test[100, 0]          # temperature repeats 20 times
    test[200:213] = test[200]                # the whole reading repeats 12 times
    fit = test.copy()
    names = ["temperature", "humidity"]
    reach = faultsuite.clean_reach(fit, test, names, max_rows=50)
    assert reach["flats"] == {"temperature": 20, "humidity": 12, "whole": 12}
    # index h: the largest change over h rows (humidity: its ramp, 0.01 a row, + the 0.12 it
    # catches up after the whole reading's hold)
    move = reach["move"]["temperature"]
    assert len(move) == 51 and move[0] == 0
    for h in (1, 7, 50):
        assert move[h] == np.abs(test[h:, 0] - test[:-h, 0]).max()
    assert reach["move"]["humidity"][10] == pytest.approx(0.22)
    stuck = {"kind": "stuck", "channel": "temperature", "rows": 20}
    assert faultsuite.within_clean(stuck, reach)
    assert not faultsuite.within_clean({**stuck, "rows": 21}, reach)
    assert faultsuite.within_clean({**stuck, "channel": None, "rows": 12}, reach)
    assert not faultsuite.within_clean({**stuck, "channel": None, "rows": 13}, reach)
    net = reach["move_net"]["temperature"][30]
    drift = {"kind": "drift", "channel": "temperature", "rows": 30, "size": [net]}
    assert faultsuite.within_clean(drift, reach)
    assert not faultsuite.within_clean({**drift, "size": [net + 0.01]}, reach)
    assert faultsuite.within_clean({"kind": "spike", "channel": "temperature"}, reach) is None


def test_trial_events_say_how_far_the_fault_took_the_reading():
    _, test, names = faultsuite.load_occupancy_test()
    test = test[:3000]
    values, _, events = faultsuite.make_trial(test, names, 3, count=2)
    drifts = [e for e in events if e["kind"] == "drift"]
    stucks = [e for e in events if e["kind"] == "stuck"]
    assert drifts and stucks
    sd = test.std(axis=0)
    for e in drifts:  # a drift ramps to 1.5-3 sigma of its channel (generate.inject_faults)
        j = names.index(e["channel"])
        assert 1.5 * sd[j] - 1e-9 <= e["size"][0] <= 3 * sd[j] + 1e-9
        assert e["rows"] == e["end"] - e["start"]  # no dropped rows in this trial's span
    for e in stucks:  # the truth held back moved, and by no more than the span's range
        assert len(e["size"]) == (1 if e["channel"] else 2)
        assert all(0 <= v <= np.ptp(test, axis=0).max() for v in e["size"])


def test_score_labelled_counts_each_fault_while_present_before_it_ends_and_false_alarms(tmp_path):
    """`make bench-detect`'s greenhouse table scores detect's own output: a fault caught on
    the row after it counts as present but not before it ends; an alert away from every
    fault is a false alarm; detect's `line` column maps its rows back to the source."""
    kinds = [""] * 200
    kinds[20:30] = ["drift"] * 10   # caught on its 5th row
    kinds[60:70] = ["stuck"] * 10   # caught only on the row after
    kinds[100:101] = ["spike"]      # missed
    src = tmp_path / "week.csv"
    src.write_text("timestamp,temperature,anomaly,fault\n" + "".join(
        f"{i},20,{int(bool(k))},{k}\n" for i, k in enumerate(kinds)))
    alert = {24, 25, 70, 150}
    out = tmp_path / "v.csv"
    out.write_text("line,alert\n" + "".join(f"{i + 2},{int(i in alert)}\n" for i in range(200)))
    r = faultsuite.score_labelled(src, out, period_s=864.0)  # 200 rows = 2 days
    assert r["kinds"]["drift"] == {"n": 1, "present": 1, "strict": 1, "delay": 4.0}
    assert r["kinds"]["stuck"] == {"n": 1, "present": 1, "strict": 0, "delay": 10.0}
    assert r["kinds"]["spike"] == {"n": 1, "present": 0, "strict": 0, "delay": None}
    assert r["false_alarms_per_day"] == 0.5  # row 150: one episode in two days
