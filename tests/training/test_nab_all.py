"""Every NAB file of the shared corpus loads by its key, the published per-file scores are
read for all four detectors, and the streaming baseline counts alert rows, not flagged rows."""

import math

import numpy as np
from edgewatch.training.evaluation import detectors, nab


def test_all_47_files_load_and_published_scores_cover_them():
    keys = nab.all_keys()
    assert len(keys) == 47
    assert {nab.category(k) for k in keys} >= {"realTraffic", "realTweets", "artificialNoAnomaly"}
    for d in nab.PUBLISHED:
        assert set(nab.published_raw(d)) >= set(keys), d
    ts, vals, wins = nab.load_key("realKnownCause/machine_temperature_system_failure.csv")
    assert len(ts) == len(vals) == 22695 and len(wins) == 4


def test_baseline_sends_one_alert_per_episode_and_catches_a_level_shift():
    rng = np.random.default_rng(0)
    x = 10 + rng.normal(0, 0.1, 3000)
    x[2000:2300] += 3.0  # a level shift of 30 sd for 300 rows
    b = detectors.StreamingBaseline()
    sends = b.run(x[:, None], 450)
    assert b.flags[2000] and sends[2000]
    # flagged far longer than it sends: one message, re-sent every 60 rows at most
    assert b.flags[2000:2300].sum() >= 25 and sends[2000:2300].sum() <= math.ceil(300 / 60) + 1
    assert sends.sum() < b.flags.sum()
