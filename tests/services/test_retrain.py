"""`edgewatch retrain`: recent data from a collector database, approve only a better model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgewatch.core.schema import Telemetry
from edgewatch.core.store import Store
from edgewatch.services import retrain
from edgewatch.services.registry import Registry
from edgewatch.training.forecast.generate import generate

EDGEWATCH = str(Path(sys.executable).with_name("edgewatch"))
PERIOD = 300.0  # 5-minute samples: two days are 576 rows, plenty for a tiny TCN


def fill(url: str, devices=("gh-01", "gh-02"), days=2.0, iid=False, flagged=()) -> None:
    """Store generated greenhouse telemetry as the collector would; rows in ``flagged``
    carry the board's anomaly flag. ``iid``: independent random readings instead."""
    store = Store(url)
    for i, dev in enumerate(devices):
        s, _ = generate(days=days, period=PERIOD, seed=i, faults="none")
        vals = s.values
        if iid:
            rng = np.random.default_rng(5 + i)
            vals = np.column_stack([rng.uniform(0, 40, len(vals)), rng.uniform(20, 90, len(vals))])
        recs = []
        for k, (t, v) in enumerate(zip(s.timestamps, vals, strict=True)):
            values = {c: float(v[j]) for j, c in enumerate(s.channels)}
            recs.append((Telemetry(dev, k, float(t), values, anomaly=k in flagged), float(t)))
        store.write(recs, [])
    store.close()


@pytest.mark.slow
def test_first_model_approved_then_only_a_better_one(tmp_path):
    reg = Registry(tmp_path / "reg")
    # A model trained on independent random readings learns to pull every prediction
    # towards their mean: deployed, it mispredicts the real room badly.
    off = f"sqlite:///{tmp_path / 'off.db'}"
    fill(off, iid=True)
    first = retrain.retrain(off, reg.root, tmp_path / "work", epochs=3)
    assert first["approved"] and first["parent"] is None and first["device"] == "gh-01"
    reg.mark_deployed(first["entry"], "gh-01")

    url = f"sqlite:///{tmp_path / 'tel.db'}"
    flagged = set(range(100, 110))
    fill(url, flagged=flagged)
    second = retrain.retrain(url, reg.root, tmp_path / "work", device="gh-01", epochs=3)
    assert second["parent"] == first["entry"]
    cand, old = second["candidate"]["score"], second["deployed"]["score"]
    assert second["approved"] == (cand <= 0.95 * old)
    assert second["approved"], second["reason"]
    e = reg.get(second["entry"])
    span = e.meta["data"]
    assert span["rows"] == 576 - len(flagged) and span["dropped"] == len(flagged)
    assert span["train_rows"] + span["holdout_rows"] == span["rows"]
    assert span["end"] - span["start"] == 575 * PERIOD
    assert e.meta["model_id"] == second["model_id"] and len(second["model_id"]) == 8
    assert (e.path / "model.tflite").is_file() and (e.path / "scaler.json").is_file()

    # Deployed now; retrained on the same data with the same seed, the candidate is
    # no better (Keras layer names may differ in-process, so the bytes may too).
    reg.mark_deployed(second["entry"], "gh-01")
    third = retrain.retrain(url, reg.root, tmp_path / "work", device="gh-01", epochs=3)
    assert not third["approved"] and third["parent"] == second["entry"]
    assert third["candidate"]["score"] == pytest.approx(third["deployed"]["score"], rel=1e-3)
    assert not reg.get(third["entry"]).approved or third["entry"] == second["entry"]
    assert reg.latest().id == second["entry"]
    assert reg.get(second["entry"]).meta["parent"] == first["entry"]  # lineage kept


@pytest.mark.slow
def test_any_channel_count_from_a_csv(tmp_path):
    """Three channels from a CSV: the blob carries all three, the CSV's labelled rows are dropped."""
    import csv

    from edgewatch.training.export import blob as tblob

    s, _ = generate(days=1.5, period=PERIOD, seed=3, faults="none")
    src = tmp_path / "three.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "temperature", "humidity", "pressure", "anomaly"])
        for k, (t, v) in enumerate(zip(s.timestamps, s.values, strict=True)):
            w.writerow([t, v[0], v[1], 1013 + np.sin(k / 20), int(k in (50, 51))])
    out = retrain.retrain(str(src), tmp_path / "reg", tmp_path / "work", epochs=1)
    assert out["approved"] and out["device"] is None
    assert out["data"]["rows"] == len(s) - 2
    spec = tblob.read(Registry(tmp_path / "reg").get(out["entry"]).blob())
    assert spec.names == ["temperature", "humidity", "pressure"]


def test_recent_days_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'tel.db'}"
    fill(url, devices=("gh-01",), days=3.0)
    s, dev = retrain.pull(url, None, days=1.0)
    assert dev == "gh-01"
    assert s.timestamps[-1] - s.timestamps[0] <= 86400
    assert len(s) == 289  # one day of 5-minute samples, both ends included
    assert np.all(np.diff(s.timestamps) > 0)


@pytest.mark.parametrize("argv, expect", [
    (["--holdout", "0.9"], "--holdout 0.9"),
    (["--device", "nobody"], "no telemetry from device 'nobody'"),
    (["--days", "0"], "--days 0"),
])
def test_bad_input_is_one_line(tmp_path, argv, expect):
    url = f"sqlite:///{tmp_path / 'tel.db'}"
    fill(url, devices=("gh-01",), days=0.5)
    r = subprocess.run([EDGEWATCH, "retrain", "--data", url, "--registry", str(tmp_path / "r"),
                        "--work", str(tmp_path / "w"), *argv], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()  # nothing recorded


def test_publish_without_key_fails_before_training(tmp_path):
    url = f"sqlite:///{tmp_path / 'tel.db'}"
    fill(url, devices=("gh-01",), days=0.5)
    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGEWATCH_OTA_KEY", "EDGEWATCH_MODEL_KEY", "OTA_KEY")}
    r = subprocess.run([EDGEWATCH, "retrain", "--data", url, "--publish", "--work",
                        str(tmp_path / "w"), "--registry", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "EDGEWATCH_OTA_KEY is not set" in r.stderr
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- schedulers

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _parse_edgewatch(argv: list[str]) -> None:
    """Parse ``edgewatch <cmd> ...`` with the command's real argparse (SystemExit on a bad option)."""
    import argparse
    import importlib

    from edgewatch.cli import COMMANDS

    assert Path(argv[0]).name == "edgewatch", argv
    mod = importlib.import_module(COMMANDS[argv[1]])
    parser = argparse.ArgumentParser(prog=f"edgewatch {argv[1]}", exit_on_error=False)
    mod.add_arguments(parser)
    try:
        parser.parse_args(argv[2:])
    except (SystemExit, argparse.ArgumentError) as exc:
        pytest.fail(f"edgewatch refuses {argv}: {exc}")


def _edgewatch_argv(shell: str) -> list[str]:
    """The edgewatch invocation inside a shell command line (after ``cd ... &&``)."""
    import shlex

    words = shlex.split(shell.split("&&")[-1].split(">>")[0])
    return words


def test_cron_line_runs_a_valid_retrain():
    lines = [x for x in (DEPLOY / "cron" / "edgewatch-retrain.cron").read_text().splitlines()
             if x.strip() and not x.startswith("#") and "=" not in x.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)
    minute, hour, dom, month, dow, user, command = fields
    assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24 and dom == "*/3" and user == "edgewatch"
    argv = _edgewatch_argv(command)
    assert argv[1] == "retrain" and "--publish" in argv
    _parse_edgewatch(argv)


def test_systemd_units_verify_and_run_a_valid_retrain(tmp_path):
    import shutil

    service = (DEPLOY / "systemd" / "edgewatch-retrain.service").read_text()
    timer = (DEPLOY / "systemd" / "edgewatch-retrain.timer").read_text()
    exec_start = next(x for x in service.splitlines() if x.startswith("ExecStart="))[10:]
    _parse_edgewatch(exec_start.split())
    assert "EnvironmentFile=" in service and "EDGEWATCH_OTA_KEY=" not in service
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    calendar = next(x for x in timer.splitlines() if x.startswith("OnCalendar="))[11:]
    r = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # verify wants the ExecStart binary to exist: point it at this checkout's.
    (tmp_path / "edgewatch-retrain.service").write_text(
        service.replace(exec_start.split()[0], EDGEWATCH))
    (tmp_path / "edgewatch-retrain.timer").write_text(timer)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "edgewatch-retrain.service"),
                        str(tmp_path / "edgewatch-retrain.timer")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_airflow_dag_parses_and_calls_the_same_steps():
    """Airflow is ~130 packages (and protobuf 7, which TensorFlow refuses), so the DAG is
    checked without it: it parses, schedules every three days, runs analyze then
    retrain, and each task's command parses with edgewatch's real options."""
    import ast

    src = (DEPLOY / "airflow" / "edgewatch_dag.py").read_text()
    tree = ast.parse(src)
    assign = next(n for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", None) == "COMMANDS")
    home, exe = "/opt/edgewatch", "/opt/edgewatch/.venv/bin/edgewatch"
    commands = eval(compile(ast.Expression(assign.value), "dag", "eval"),
                    {"HOME": home, "EDGEWATCH": exe})
    assert set(commands) == {"analyze", "retrain"}
    for name, shell in commands.items():
        # What Airflow renders: its Jinja run date, the worker's environment.
        shell = shell.replace("{{ ds }}", "2026-01-04").replace("$EDGEWATCH_DB_URL", "sqlite:///x.db")
        argv = _edgewatch_argv(shell)
        assert argv[1] == name
        _parse_edgewatch(argv)
    assert "--publish" in commands["retrain"]
    ops = {kw.value.value: kw for n in ast.walk(tree) if isinstance(n, ast.Call)
           and getattr(n.func, "id", "") == "BashOperator" for kw in n.keywords if kw.arg == "task_id"}
    assert set(ops) == {"analyze", "retrain"}
    assert "analyze >> retrain" in src
    dag = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DAG")
    kws = {kw.arg: ast.unparse(kw.value) for kw in dag.keywords}
    assert kws["schedule"] == "timedelta(days=3)" and kws["catchup"] == "False"
