"""The NAB scorer reproduces NAB's published raw scores and per-row S(t) columns."""

import numpy as np
import pytest
from edgewatch.training.evaluation import nab

CASES = [(d, f) for d in ("numenta", "windowedGaussian") for f in nab.FILES]


@pytest.fixture(scope="module")
def files():
    return {f: (nab.load_file(f)[0], nab.load_windows(f)) for f in nab.FILES}


@pytest.mark.parametrize("detector,name", CASES)
def test_raw_score_matches_published(files, detector, name):
    pub = nab.load_published(detector, name)
    ts, wins = files[name]
    assert ts == pub["timestamps"]
    sw = nab.sweep(ts, wins, "standard")
    r = nab.score_threshold(sw, pub["anomaly_score"], pub["threshold"])
    assert abs(r.score - pub["score"]) < 1e-6
    assert (r.tp, r.tn, r.fp, r.fn) == tuple(pub["counts"][k] for k in ("tp", "tn", "fp", "fn"))
    assert r.total == pub["total"]


@pytest.mark.parametrize("detector,name", CASES)
def test_per_row_scores_match_published_columns(files, detector, name):
    """Standard and reward_low_FN columns were produced at the standard threshold."""
    pub = nab.load_published(detector, name)
    ts, wins = files[name]
    det = pub["anomaly_score"] >= pub["threshold"]
    for prof in ("standard", "reward_low_FN_rate"):
        got = nab.attribution(nab.sweep(ts, wins, prof), det)
        np.testing.assert_allclose(got, pub["S"][prof], atol=1e-9)


def test_reward_low_fp_column_is_a_threshold_of_the_same_scores(files):
    """NAB chose a higher threshold for reward_low_FP; some threshold must reproduce its column."""
    for name in nab.FILES:
        pub = nab.load_published("numenta", name)
        ts, wins = files[name]
        sw = nab.sweep(ts, wins, "reward_low_FP_rate")
        s = pub["anomaly_score"]
        hits = [t for t in np.unique(s[s >= pub["threshold"]])
                if np.abs(nab.attribution(sw, s >= t) - pub["S"]["reward_low_FP_rate"]).max() < 1e-9]
        assert hits, name
        assert nab.score_threshold(sw, s, hits[0]).score == pytest.approx(
            pub["S"]["reward_low_FP_rate"].sum(), abs=1e-6)


def test_scaled_sigmoid_landmarks():
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(3.0) == -1.0
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)


def test_null_and_perfect_bound_every_detector(files):
    ts, wins = files["machine_temperature_system_failure"]
    sw = nab.sweep(ts, wins, "standard")
    null, perfect = nab.null_and_perfect(sw)
    assert null == -4.0
    assert nab.score(sw, np.zeros(len(ts), bool)).score == null
    starts = np.zeros(len(ts), bool)
    for w in range(sw.n_windows):
        starts[np.flatnonzero(sw.window_id == w)[0]] = True
    assert nab.score(sw, starts).score == pytest.approx(perfect)
    assert perfect == pytest.approx(4.0, abs=0.02)
    # Firing everywhere is worse than never firing.
    assert nab.score(sw, np.ones(len(ts), bool)).score < null
    assert nab.normalised(perfect, null, perfect) == 100.0


def test_window_off_the_rows_is_refused(files):
    ts, _ = files["ambient_temperature_system_failure"]
    bad = [(ts[10].replace(minute=7), ts[20])]
    with pytest.raises(ValueError, match="does not start and end"):
        nab.sweep(ts, bad)
