"""SKAB protocol: metrics definitions, fit/test split, concatenation, and the file set."""

import time

import numpy as np
import pytest
from edgewatch.training.evaluation import skab


def test_binary_metrics_definitions():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    p = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], bool)
    m = skab.binary_metrics(y, p)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["far"] == pytest.approx(100 / 6)
    assert m["mar"] == pytest.approx(25.0)
    assert skab.binary_metrics(y, np.zeros(10, bool))["f1"] == 0.0


def test_the_34_labelled_files_in_a_stable_order():
    paths = skab.list_files()
    assert len(paths) == 34
    assert all("anomaly-free" not in str(p) for p in paths)
    assert [p.parent.name for p in paths[:16]] == ["valve1"] * 16
    assert [p.stem for p in paths[:3]] == ["0", "1", "2"]


class _Recorder:
    """Flags every row after the fit rows; remembers what it was given."""

    seen = []

    def run(self, values, n_fit):
        _Recorder.seen.append((values.shape, n_fit))
        out = np.zeros(len(values), bool)
        out[n_fit:] = True
        return out


def test_only_test_rows_are_scored_and_files_are_concatenated():
    files = skab.load_files(limit=3)
    _Recorder.seen = []
    r = skab.evaluate(_Recorder, files, keep=(files[0].name,))
    assert [s[1] for s in _Recorder.seen] == [400, 400, 400]
    n_test = sum(len(f.values) - 400 for f in files)
    n_anom = sum(int(f.anomaly[400:].sum()) for f in files)
    assert r["tp"] + r["fp"] + r["fn"] + r["tn"] == n_test
    assert (r["tp"], r["fn"], r["far"], r["mar"]) == (n_anom, 0, 100.0, 0.0)
    # Whole-file scoring adds the fit rows, where this detector is silent.
    assert r["whole_file"]["far"] < 100.0
    assert files[0].name in r["kept"] and len(r["per_file"]) == 3


def test_wrong_length_verdicts_are_refused():
    class Short:
        def run(self, values, n_fit):
            return np.zeros(len(values) - 1, bool)

    with pytest.raises(ValueError, match="expected"):
        skab.evaluate(Short, skab.load_files(limit=1))


def test_evaluate_cli_refuses_unknown_names_in_one_line(capsys):
    from edgewatch.cli import main

    assert main(["evaluate", "--suite", "kdd99"]) == 2
    assert main(["evaluate", "--detectors", "best,oracle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--suite: unknown 'kdd99'" in err[0] and "unknown 'oracle'" in err[1]
    # an --out it cannot write is refused before the suites run (it was refused after them)
    t0 = time.monotonic()
    assert main(["evaluate", "--out", "/proc/x/o.json"]) == 2
    assert main(["evaluate", "--out", "/proc/self/o.json"]) == 2
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "folder /proc/x does not exist" in err[0], err
    assert "--out /proc/self/o.json: cannot write a file there" in err[1], err


def test_evaluate_cli_fast_writes_json(tmp_path, capsys):
    from edgewatch.cli import main

    out = tmp_path / "r.json"
    assert main(["evaluate", "--suite", "skab", "--detectors", "best", "--fast", "--out", str(out)]) == 0
    import json

    r = json.loads(out.read_text())["skab"]["best"]
    assert r["files"] == 3 and 0 <= r["f1"] <= 1 and "kept" not in r
    assert "skab  best" in capsys.readouterr().out
