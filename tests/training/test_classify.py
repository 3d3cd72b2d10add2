"""`edgewatch classify` on SKAB's labels: RF and XGBoost, SMOTE, TPE, the emlearn board forest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from edgewatch.cli import main
from edgewatch.training.forecast.data import shared_data

SKAB = shared_data() / "skab"
# The installed console script, so errors go through the CLI exactly as a user sees them.
EDGEWATCH = str(Path(sys.executable).with_name("edgewatch"))
METRICS = ("accuracy", "precision", "recall", "f1")


def test_classify_skab_report(tmp_path):
    out = tmp_path / "cls"
    rc = main(["classify", "--data", str(SKAB / "valve1"), str(SKAB / "valve2"),
               "--max-rows", "5000", "--budget-s", "6", "--max-trials", "4",
               "--board-trees", "5", "--board-depth", "6", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["train_rows"] == 3500 and s["test_rows"] == 1500  # 70/30
    assert [(r["model"], r["smote"]) for r in s["runs"]] == [
        ("rf", False), ("rf", True), ("xgb", False), ("xgb", True)]
    md = (out / "report.md").read_text()
    for r in s["runs"]:
        assert 1 <= r["trials"] <= 4
        cm = r["test"]["confusion"]
        assert sum(map(sum, cm)) == 1500
        # SKAB's valve faults are learnable: far better than the 35 % base rate.
        assert r["test"]["f1"] > 0.6, r
        assert all(0 <= r["test"][m] <= 1 for m in METRICS)
        png = out / r["figure"]
        assert png.read_bytes()[:4] == b"\x89PNG" and f"]({png.name})" in md
        assert (r["smote_ratio"] is not None) == r["smote"]
    b = s["board"]
    assert b["nodes"] <= 5 * 127  # 5 trees of depth 6
    assert b["test"]["f1"] > 0.5
    # emlearn's compiled C gives the same answers as scikit-learn.
    assert b["c_agreement"] > 0.97
    c = (out / "rf_board.h").read_text()
    assert "rf_board_predict" in c and "int16_t" in c


def test_unlabelled_data_is_refused(tmp_path):
    r = subprocess.run([EDGEWATCH, "classify", "--data",
                        str(SKAB / "anomaly-free" / "anomaly-free.csv"), "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no 'anomaly' label column" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_model_is_refused(tmp_path):
    r = subprocess.run([EDGEWATCH, "classify", "--models", "svm",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--models svm" in r.stderr


def test_many_channels(tmp_path):
    """21 features as on the paper's Sense HAT: the report, the C forest and its quantiser."""
    import csv

    import numpy as np
    from edgewatch.training.analysis.analyze import load_many
    from edgewatch.training.analysis.classify import run_classify

    rng = np.random.default_rng(3)
    n, c = 1200, 21
    x = rng.normal(0, 1, (n, c))
    y = (x[:, 4] + x[:, 17] > 1.2).astype(int)  # two of 21 features decide
    src = tmp_path / "hat.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp"] + [f"s{i}" for i in range(c)] + ["anomaly"])
        for i in range(n):
            w.writerow([1700000000 + i] + [f"{v:.4f}" for v in x[i]] + [y[i]])
    s = run_classify(load_many([str(src)]), "anomaly", tmp_path / "out", models=("xgb",),
                     smote="no", budget_s=2, max_trials=3, board_trees=5, board_depth=6)
    assert len(s["channels"]) == 21 and s["runs"][0]["test"]["f1"] > 0.8
    assert len(json.loads((tmp_path / "out" / "rf_board.json").read_text())["low"]) == 21
    assert "features_length" in (tmp_path / "out" / "rf_board.h").read_text()


@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-3"])
def test_a_budget_that_cannot_end_is_refused(tmp_path, budget):
    """--budget-s nan ran on for minutes with no output."""
    r = subprocess.run([EDGEWATCH, "classify", "--budget-s", budget, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"--budget-s {float(budget)}: expected a finite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
