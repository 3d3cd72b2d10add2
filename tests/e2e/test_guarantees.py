"""Guarantees the suite used to take on trust, each tested so that breaking it fails here:
the firmware's reconnect backoff grows (measured at the server), a message without `seq` is
refused, and a bridge killed between an alert's arrival and its outbox write loses nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time

import pytest
from edgewatch.board import fwrun
from edgewatch.core.schema import SchemaError, parse_alert, parse_telemetry
from edgewatch.services.broker import Broker
from hostkit import Board, alert, service_env, spawn, telemetry, wait_until

from tests.firmware.test_firmware_e2e import BOARD, sim, summary, test_config


def test_firmware_reconnect_backoff_grows_measured_at_the_server(tmp_path):
    """A 'broker' that accepts and hangs up at once: the gaps between the board's
    connection attempts double from min_ms up to max_ms (equal jitter: [d/2, d])."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    times: list[float] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            times.append(time.monotonic())
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        flash = fwrun.prepare(tmp_path / "b", "bk-1", BOARD,
                              f"mqtt://127.0.0.1:{srv.getsockname()[1]}", sim=sim([]),
                              **test_config(stop_after=150, drain_ms=0,
                                            backoff={"min_ms": 100, "max_ms": 800}))
        proc = fwrun.run(flash, BOARD, timeout=60)
        assert proc.returncode == 0, proc.stdout[-2000:]
        summary(proc.stdout)
    finally:
        stop.set()
        t.join(2)
        srv.close()
    gaps = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) >= 6, gaps
    for i, g in enumerate(gaps):
        d = min(800, 100 << i)
        # the loop looks at the link between samples (40 ms apart): some lateness allowed
        assert d / 2 - 20 <= g <= d + 120, (i, d, [round(x) for x in gaps])
    assert max(gaps) > 350  # it grew: 100 ms pauses forever would fail above


@pytest.mark.parametrize("kind", ["telemetry", "alert"])
def test_a_message_without_seq_is_refused(kind):
    parse = parse_telemetry if kind == "telemetry" else parse_alert
    msg = telemetry("gh-01", 5) if kind == "telemetry" else alert("gh-01", 5)
    assert parse(msg).seq == 5
    for bad in ({k: v for k, v in msg.items() if k != "seq"}, {**msg, "seq": None}):
        with pytest.raises(SchemaError, match="seq: missing"):
            parse(bad)


def test_bridge_killed_before_the_outbox_write_loses_no_alert(tmp_path):
    """The bridge acknowledges an alert only once it is in its outbox: with the outbox
    locked (the write cannot happen) it is killed -9 holding received alerts; the next
    bridge (same state: same client id, same persistent session) notifies every one."""
    with Broker(tmp_path / "mq") as broker:
        env = service_env(EDGEWATCH_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}")
        work = tmp_path / "bridge"
        work.mkdir()
        args = ["bridge", "--notify", "console", "--cooldown", "0", "--max-per-minute", "0",
                "--outbox", str(work / "outbox.db")]
        log1 = work / "first.log"
        p1 = spawn(args, env, log1)
        wait_until(lambda: (work / "outbox.db").exists() and "bridge" in log1.read_text(), 20,
                   what="bridge up")
        time.sleep(0.5)
        lock = sqlite3.connect(work / "outbox.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the outbox write now blocks (a slow disk, a crash)
        board = Board(broker, "gh-01")
        try:
            for i in range(20):
                board.publish("alert", alert("gh-01", 100 + i))
            time.sleep(1.5)  # received by the bridge, stuck before the outbox
            os.kill(p1.pid, signal.SIGKILL)
            p1.wait(10)
            lock.execute("ROLLBACK")
            lock.close()
            assert "ALERT " not in log1.read_text()
            log2 = work / "second.log"
            p2 = spawn(args, env, log2)
            try:
                wait_until(lambda: log2.read_text().count("ALERT ") == 20, 30,
                           what="every alert notified by the next bridge")
                time.sleep(0.5)
                assert log2.read_text().count("ALERT ") == 20
            finally:
                p2.terminate()
                p2.wait(15)
        finally:
            board.close()
    rows = sqlite3.connect(work / "outbox.db").execute("SELECT COUNT(*) FROM seen").fetchone()
    assert rows == (20,)
    json.dumps(rows)
