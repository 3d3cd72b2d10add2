"""`edgewatch sim`: real firmware processes under the unix port publish to a real Mosquitto.

Every message is held against the host's schema parser; each board's seq runs 0..N-1 with
none missing or doubled; the clean board raises no alert and the faulty board raises the
alerts of the faults planned for it (rules only here: the model path is covered by the demo).
"""

import json
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

from edgewatch.board.sim import Fleet, faults_seen, plan_faults, rows_needed, warmup_rows
from edgewatch.core.schema import Alert, Telemetry
from edgewatch.services.broker import Broker
from edgewatch.services.mqtt_watch import Watch
from hostkit import telemetry

ROOT = Path(__file__).resolve().parents[2]
EW = str(Path(sys.executable).parent / "edgewatch")


def test_fault_plan_is_sequential_and_sized():
    plan = plan_faults(["spike", "stuck", "range"])
    rows = [f["row"] for f in plan]
    assert rows == sorted(rows) and rows[0] >= 30
    assert plan[1]["count"] > 30  # longer than the stuck rule's 30 samples
    assert rows_needed(["spike", "stuck", "range"]) > rows[-1]


def test_faults_start_after_the_models_window_and_a_console_tells_which_samples_they_hit(
        tiny_model_dir):
    from edgewatch.training.export import blob

    window = blob.read((tiny_model_dir / "model.ewb").read_bytes()).window
    start = warmup_rows(tiny_model_dir / "model.ewb")
    assert start >= window + 30 and warmup_rows(None) == 40
    plan = plan_faults(["spike", "drift"], start)
    assert plan[0]["row"] == start and plan[1]["kind"] == "drift" and plan[1]["count"] >= 30

    def rec(seq, *faults, device="gh-02"):  # the firmware's per-sample line: the record
        return json.dumps({**telemetry(device, seq), "anomaly": bool(faults),
                           "faults": list(faults)}, separators=(",", ":"))

    console = ["sim: drift fault begins", rec(5), rec(6, "drift"),
               "other line", rec(7, "drift"), rec(3, "band", device="gh-01"),
               "sim: drift fault ends", rec(8, "band"), rec(9),
               "sim: spike fault begins", rec(10), "sim: spike fault ends",
               rec(11), '{"v":1, not a record']
    assert faults_seen(console, "gh-02") == [
        {"kind": "drift", "samples": 4, "flagged": 3, "first": 2},  # its 3 rows + the one after
        {"kind": "spike", "samples": 2, "flagged": 0, "first": None}]


def test_fleet_publishes_every_sample_once_and_alerts_only_on_faults(tmp_path):
    kinds = ["stuck", "range", "fail"]  # rule faults; the model's band rule is the demo's
    samples = rows_needed(kinds)
    with Broker(tmp_path / "broker") as b:
        rec = Watch(b.port)
        fleet = Fleet(tmp_path / "fleet", 2, f"mqtt://127.0.0.1:{b.port}", None,
                      faults=kinds, period=0.25, samples=samples, clean=1,
                      extra={"retry_ms": 20})  # quick retries: a failed read costs 60 ms
        fleet.start()
        try:
            assert fleet.wait(timeout=samples * 0.25 * 3 + 60), "boards did not finish"
        finally:
            fleet.stop()
        threading.Event().wait(1.0)
        rec.close()
    assert not rec.bad, rec.bad[:3]
    seqs, alerts = defaultdict(list), defaultdict(list)
    for r in rec.records:
        if isinstance(r, (Telemetry, Alert)):
            seqs[r.device].append(r.seq)
        if isinstance(r, Alert):
            alerts[r.device].append(r)
    assert set(seqs) == {"sim-01", "sim-02"}
    for dev, got in seqs.items():
        assert sorted(got) == list(range(len(got))), f"{dev}: seqs missing or doubled"
    tel = [r for r in rec.records if isinstance(r, Telemetry)]
    assert sum(1 for r in tel if r.device == "sim-01") == samples
    assert alerts["sim-01"] == [], [(a.rule, a.channel) for a in alerts["sim-01"]]
    rules = {a.rule for a in alerts["sim-02"]}
    assert {"stuck", "range", "read"} <= rules, rules
    rng = [a for a in alerts["sim-02"] if a.rule == "range"]
    assert rng[0].channel == "humidity" and rng[0].value == 120.0
    # the range alert belongs to the sample the fault was planned for
    planned = next(f["row"] for f in fleet.devices[1].faults if f["kind"] == "range")
    assert abs(rng[0].sample - planned) <= 12  # failed reads before it consume seqs too
    summary = "\n".join(fleet.summary())
    assert "sim-01: faults none (clean); 0 alerts" in summary


def test_sim_command_line_errors_are_one_line(tmp_path):
    (tmp_path / "bad.ewb").write_bytes(b"EWB1" + bytes(60))  # ran the boards on rules alone, exit 0
    for args, needle in ((["--faults", "meteor"], "unknown fault 'meteor'"),
                         (["--model", str(tmp_path / "bad.ewb")], "not a valid model blob"),
                         (["--devices", "0"], "--devices 0"),
                         (["--period", "nan", "--model", "none"], "--period nan"),
                         (["--period", "inf", "--model", "none"], "--period inf"),
                         (["--data", str(tmp_path / "nope.csv"), "--model", "none"], "no such file"),
                         (["--model", str(tmp_path)], "no model blob"),
                         # the boards looped on their config errors
                         (["--prefix", "a/b", "--model", "none"], "--prefix 'a/b'"),
                         (["--stuck", "-1", "--model", "none"], "--stuck -1: expected 2..100000")):
        r = subprocess.run([EW, "sim", "--out", str(tmp_path / "o"), *args], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_sim_command_runs_a_clean_board_to_the_end(tmp_path):
    with Broker(tmp_path / "broker") as b:
        r = subprocess.run([EW, "sim", "--devices", "1", "--samples", "20", "--period", "0.2",
                            "--model", "none", "--quiet", "--out", str(tmp_path / "o"),
                            "--broker", f"mqtt://127.0.0.1:{b.port}"],
                           capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sim: sim-01: faults none (clean); 0 alerts; done samples=20" in r.stdout
    assert "outbox=0" in r.stdout  # everything sampled was delivered before it stopped


def test_quiet_run_shows_progress(monkeypatch, capsys):
    """`sim --quiet` is not silent for the whole run: a line every PROGRESS_S; the broker's
    password is never printed."""
    import argparse

    from edgewatch.board import sim

    class FakeFleet:
        data, range_warning = Path("greenhouse.csv"), None

        def __init__(self, *a, **kw):
            self.calls = 0

        def start(self):
            return self

        def wait(self, timeout=None):
            self.calls += 1
            return self.calls > 3  # three progress periods, then done

        def stop(self):
            pass

        def progress(self, elapsed):
            return f"{elapsed:.0f} s of ~37 s; 3/3 boards running; alerts: sim-01 0"

        def summary(self):
            return ["sim-01: faults none (clean); 0 alerts; done"]

    monkeypatch.setattr(sim, "Fleet", FakeFleet)
    p = argparse.ArgumentParser()
    sim.add_arguments(p)
    assert sim.run(p.parse_args(["--quiet", "--broker", "mqtt://bob:S3CRETSIMPW@127.0.0.1:18931"])) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert sum("boards running" in ln for ln in lines) == 3, lines
    # the broker URL's password is masked as the services' safe_url does
    assert "-> mqtt://bob:***@127.0.0.1:18931, replaying" in lines[0]
    assert "S3CRETSIMPW" not in out.out + out.err


def test_progress_line_counts_alerts_per_board(tmp_path):
    fleet = Fleet.__new__(Fleet)
    fleet.samples, fleet.period_ms = 40, 250

    class D:
        def __init__(self, name, log):
            self.device, self.log, self.running = name, log, True

    fleet.devices = [D("sim-01", ["app: start"]), D("sim-02", ["alert: stuck x", "alert: range y"])]
    assert fleet.progress(4.2) == "4 s of ~10 s; 2/2 boards running; alerts: sim-01 0, sim-02 2"


def test_default_data_is_the_models_training_data_and_a_mismatch_warns(tmp_path):
    """`make train` (occupancy, humidity 17-39 %) then `make sim`: the boards replay what the
    model knows; generated greenhouse data (55-68 %) gets a one-line warning."""
    from edgewatch.training.forecast.data import Scaler, load, shared_data

    occ = shared_data() / "occupancy" / "datatraining.txt"
    model = tmp_path / "model"
    model.mkdir()
    series = load(str(occ), channels=["temperature", "humidity"])
    Scaler.fit(series.values[: int(0.8 * len(series))], ["temperature", "humidity"]).save(
        model / "scaler.json")
    (model / "config.json").write_text(json.dumps({"data": str(occ)}))
    # a valid blob (the Fleet parses it); the scaler and config.json above are what count here
    (model / "model.ewb").write_bytes((ROOT / "tests" / "golden" / "model.ewb").read_bytes())
    fleet = Fleet(tmp_path / "fleet", 1, "mqtt://127.0.0.1:1", str(model))
    assert fleet.data == occ.resolve() and fleet.range_warning is None
    fleet = Fleet(tmp_path / "fleet", 1, "mqtt://127.0.0.1:1", str(model), data="generated")
    w = fleet.range_warning
    assert w and "\n" not in w and w.startswith("sim: warning: greenhouse.csv")
    assert "humidity" in w and "trained on" in w
