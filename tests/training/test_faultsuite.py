"""Fault suite: event bookkeeping, dropped rows, and the metrics on real occupancy data."""

import numpy as np
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
