"""`edgewatch analyze` on real SKAB data and on a synthetic many-channel CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgewatch.cli import main
from edgewatch.training.analysis import analyze
from edgewatch.training.forecast.data import shared_data

SKAB = shared_data() / "skab"
# The installed console script, so errors go through the CLI exactly as a user sees them.
EDGEWATCH = str(Path(sys.executable).with_name("edgewatch"))
FIGURES = ("scatter", "means", "clusters", "cluster_means", "boxplots")


def test_analyze_skab_writes_the_papers_figures(tmp_path):
    out = tmp_path / "report"
    rc = main(["analyze", "--data", str(SKAB / "valve1"), "--out", str(out), "--max-rows", "8000"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["rows"] == 8000 and len(s["channels"]) == 8
    # 5 % contamination: the forest flags about 5 % of the rows.
    assert 0.03 < s["abnormal"] / s["rows"] < 0.08
    assert s["k"] == 4 and len(s["clusters"]) == 4 and sum(c["rows"] for c in s["clusters"]) == s["abnormal"]
    md = (out / "report.md").read_text()
    for key in FIGURES:
        png = out / s["figures"][key]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
        assert f"]({png.name})" in md
    # SKAB is labelled: the report scores the forest like SKAB's leaderboard does.
    v = s["vs_label"]
    assert v["tp"] + v["fp"] == s["abnormal"]
    assert 0 < v["f1"] < 1 and "FAR %" in md


def _synthetic(path: Path, channels: int, rows: int = 600) -> np.ndarray:
    """Normal noise on many channels with one planted event on channels 3 and 17."""
    rng = np.random.default_rng(1)
    v = rng.normal(0, 1, (rows, channels))
    event = np.zeros(rows, bool)
    event[200:230] = True
    v[event, 3] += 12
    v[event, 17] -= 9
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp"] + [f"s{i}" for i in range(channels)])
        for i, r in enumerate(v):
            w.writerow([1700000000 + i] + [f"{x:.4f}" for x in r])
    return event


def test_analyze_many_channels_finds_the_planted_event(tmp_path):
    src = tmp_path / "hat.csv"
    event = _synthetic(src, channels=21)  # the paper's Sense HAT has 21 columns
    s = analyze.run_analysis(analyze.load_many([str(src)]), tmp_path / "r", contamination=0.05,
                             clusters=2)
    assert len(s["channels"]) == 21
    # Every planted row is abnormal, and one cluster is exactly that event,
    # told apart by the two channels that were moved.
    a = analyze.analyze(analyze.load_many([str(src)]).values, 0.05, 2, seed=0)
    # 30 alike rows mask each other a little among 21 noisy channels: most, not all.
    assert a["abnormal"][event].mean() > 0.6
    assert a["abnormal"][~event].mean() < 0.02
    event_cluster = np.bincount(a["cluster"][event & a["abnormal"]]).argmax()
    c = s["clusters"][event_cluster]
    assert set(c["most_different"][:2]) == {"s3", "s17"}


@pytest.mark.parametrize("argv, expect", [
    (["--contamination", "0.9"], "--contamination 0.9"),
    (["--clusters", "0"], "--clusters 0"),
])
def test_bad_options_are_one_line(tmp_path, argv, expect):
    src = tmp_path / "d.csv"
    _synthetic(src, channels=20, rows=300)
    r = subprocess.run([EDGEWATCH, "analyze", "--data", str(src),
                        "--out", str(tmp_path / "o"), *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and expect in r.stderr and "Traceback" not in r.stderr


def test_missing_source_is_one_line(tmp_path):
    r = subprocess.run([EDGEWATCH, "analyze", "--data",
                        str(tmp_path / "nope.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "nope.csv: no such file" in r.stderr
    assert "Traceback" not in r.stderr
