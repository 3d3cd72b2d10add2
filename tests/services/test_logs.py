"""`edgewatch logs` and the firmware's per-sample console line (the record as queued), against a simulated board
(the real firmware in the MicroPython unix port) and a real Mosquitto."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

from edgewatch.board.sim import Fleet, console_text, sample_record
from edgewatch.services.broker import Broker
from hostkit import Board, alert, edgewatch, service_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL = str(ROOT / "tests/golden/model.ewb")
HOST_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d sim-01 #(\d+) (.*) (ok|ANOMALY \S+)$")
CHANNEL = re.compile(r"(\w+)=(-?\d+\.\d\d) pred=(-?\d+\.\d\d) band=(-?\d+\.\d\d)\.\.(-?\d+\.\d\d)")


def _sample(m) -> tuple:
    """(values per channel, verdict) of a matched line; only lines with a band count."""
    chans = {c: v for c, v, *_ in CHANNEL.findall(m.group(2))}
    return (chans, m.group(3)) if set(chans) == {"temperature", "humidity"} else None


def test_logs_follow_a_board_and_match_its_console_line(tmp_path):
    with Broker(tmp_path / "mq") as b:
        proc = subprocess.Popen(edgewatch("logs", "sim-01", "--mqtt", f"mqtt://127.0.0.1:{b.port}"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=service_env(), cwd=tmp_path)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        err = proc.stderr.readline()  # printed once subscribed
        assert "following sim-01" in err
        fleet = Fleet(tmp_path / "fleet", 1, f"mqtt://127.0.0.1:{b.port}", MODEL, faults=[],
                      period=0.1, samples=30, clean=1)
        fleet.start()
        try:
            assert fleet.wait(timeout=120), "the board did not finish"
            other = Board(b, "sim-09")  # another board: not followed
            other.publish("telemetry", {"v": 1, "device": "sim-09", "seq": 1, "t": None,
                                        "values": {"temperature": 1.0}})
            dev = Board(b, "sim-01x")
            dev.publish("alert", alert("sim-01", 99), device="sim-01")
            wait_until(lambda: any("sample=#98" in ln for ln in lines), timeout=10,
                       what="the alert line")
            other.close()
            dev.close()
        finally:
            fleet.stop()
            proc.terminate()
            proc.wait(10)
    host = {int(m.group(1)): _sample(m) for ln in lines if (m := HOST_LINE.match(ln.rstrip()))}
    host = {k: v for k, v in host.items() if v}
    assert any(" STATUS online fw=" in ln and "model=4de3408a" in ln for ln in lines), lines[:5]
    assert len(host) >= 15, lines[:20]  # the first samples fill the window: no band yet
    assert not any("sim-09" in ln for ln in lines)
    alert_ln = next(ln for ln in lines if "sample=#98" in ln)
    assert "sim-01 ALERT band temperature value=35.20 band=21.10..21.70 pred=21.40" in alert_ln
    # the board printed each sample's record on its console (the JSON it queued, no age):
    # the same record MQTT carried, so the same line once rendered (as the sim's echo does)
    console = (tmp_path / "fleet" / "sim-01" / "console.log").read_text().splitlines()
    recs = [r for ln in console if (r := sample_record(ln, "sim-01")) is not None]
    assert len(recs) == 30 and [r.seq for r in recs] == list(range(30)), console[:5]
    rendered = [console_text(ln, "sim-01") for ln in console if ln.startswith('{"v":')]
    board = {int(m.group(1)): _sample(m) for ln in rendered if (m := HOST_LINE.match(ln))}
    board = {k: v for k, v in board.items() if v}
    assert len(board) >= 15, console[:20]
    same = set(board) & set(host)
    assert len(same) >= 15
    for seq in same:
        assert board[seq] == host[seq], (seq, board[seq], host[seq])


def test_log_quiet_prints_no_sample_lines(tmp_path):
    with Broker(tmp_path / "mq") as b:
        fleet = Fleet(tmp_path / "fleet", 1, f"mqtt://127.0.0.1:{b.port}", MODEL, faults=[],
                      period=0.05, samples=10, clean=1, extra={"log": "quiet"})
        fleet.start()
        try:
            assert fleet.wait(timeout=60)
        finally:
            fleet.stop()
    console = (tmp_path / "fleet" / "sim-01" / "console.log").read_text()
    assert "app: done samples=10" in console
    assert "sim-01 #" not in console and '{"v":' not in console


def test_logs_bad_device_id_is_one_line(tmp_path):
    r = subprocess.run(edgewatch("logs", "bad/id#"), capture_output=True, text=True,
                       env=service_env(), timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a device id" in r.stderr
