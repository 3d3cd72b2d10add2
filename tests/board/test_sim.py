"""`edgewatch sim`: real firmware processes under the unix port publish to a real Mosquitto.

Every message is held against the host's schema parser; each board's seq runs 0..N-1 with
none missing or doubled; the clean board raises no alert and the faulty board raises the
alerts of the faults planned for it (rules only here: the model path is covered by the demo).
"""

import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

from edgewatch.board.sim import Fleet, plan_faults, rows_needed
from edgewatch.core.schema import Alert, Telemetry
from edgewatch.services.broker import Broker
from edgewatch.services.mqtt_watch import Watch

ROOT = Path(__file__).resolve().parents[2]
EW = str(Path(sys.executable).parent / "edgewatch")


def test_fault_plan_is_sequential_and_sized():
    plan = plan_faults(["spike", "stuck", "range"])
    rows = [f["row"] for f in plan]
    assert rows == sorted(rows) and rows[0] >= 30
    assert plan[1]["count"] > 30  # longer than the stuck rule's 30 samples
    assert rows_needed(["spike", "stuck", "range"]) > rows[-1]


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
    for args, needle in ((["--faults", "meteor"], "unknown fault 'meteor'"),
                         (["--devices", "0"], "--devices 0"),
                         (["--data", str(tmp_path / "nope.csv"), "--model", "none"], "no such file"),
                         (["--model", str(tmp_path)], "no model blob")):
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
