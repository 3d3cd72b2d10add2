"""`edgewatch bridge` as a real process: killed during an SMS outage, restarted, nothing lost or doubled."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from edgewatch.services.broker import DEVICE_ACL, Broker
from hostkit import HOST_PW, Board, alert, edgewatch, one_line_error, service_env, spawn, wait_until

from tools.twilio_sink import TwilioSink

TOKEN = "tok-restart-very-secret"


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW}, acl=DEVICE_ACL) as b:
        yield b


def _env(broker, sink=None, **extra):
    e = {"EDGEWATCH_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}", "MQTT_USERNAME": "edgewatch",
         "MQTT_PASSWORD": HOST_PW, "EDGEWATCH_COOLDOWN": "0", "EDGEWATCH_MAX_PER_MINUTE": "0",
         "TWILIO_TO": "+15551230001"}
    if sink:
        e.update(TWILIO_ACCOUNT_SID=sink.account_sid, TWILIO_AUTH_TOKEN=sink.auth_token,
                 TWILIO_FROM="+15005550006", TWILIO_API_BASE=sink.url, TWILIO_TIMEOUT="2")
    e.update(extra)
    return service_env(**e)


def _started(log, proc):
    wait_until(lambda: proc.poll() is not None or "bridge running" in log.read_text(),
               what="bridge start")
    assert proc.poll() is None, log.read_text()[-2000:]


def test_restart_during_sms_outage_delivers_every_alert_exactly_once(tmp_path, broker):
    sink = TwilioSink(auth_token=TOKEN).start()
    sink.mode = "5xx"
    log = tmp_path / "bridge.log"
    args = ["bridge", "--outbox", str(tmp_path / "outbox.db"), "--retry-base", "0.3",
            "--retry-cap", "1.5"]
    env = _env(broker, sink)
    dev = Board(broker, "edgewatch", HOST_PW)
    p1 = spawn(args, env, log)
    try:
        _started(log, p1)
        for i in range(15):
            dev.publish("alert", alert(f"dev-{i % 5}", 100 + i, value=40.0 + i), device=f"dev-{i % 5}")
        wait_until(lambda: len({r["Body"] for r in sink.refused}) >= 15, timeout=20,
                   what="every alert tried and refused with 503")
        p1.send_signal(signal.SIGKILL)  # a crash, not a clean stop
        p1.wait(10)
        # alerts while no bridge runs: the broker keeps them for the bridge's session
        for i in range(15, 25):
            dev.publish("alert", alert(f"dev-{i % 5}", 100 + i, value=40.0 + i), device=f"dev-{i % 5}")
        sink.stop()  # the SMS provider is now unreachable altogether
        p2 = spawn(args, env, log)
        _started(log, p2)
        time.sleep(2.5)
        assert not sink.requests
        sink.start()
        sink.mode = "ok"
        wait_until(lambda: len(sink.requests) >= 25, timeout=30, what="25 SMS")
        time.sleep(2.0)  # anything sent twice would show up by now
        bodies = sink.bodies()
        assert len(bodies) == 25 == len(set(bodies))
        for i in range(25):
            assert sum(f"dev-{i % 5}: temperature {40 + i:.1f} " in b for b in bodies) == 1
        assert all(r["auth_ok"] and r["To"] == "+15551230001" for r in sink.requests)
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(20) == 0
        text = log.read_text()
        assert "retry" in text and "HTTP 503" in text and "ConnectionError" in text
        assert TOKEN not in text and HOST_PW not in text
    finally:
        dev.close()
        for p in (p1, locals().get("p2")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
        sink.stop()


def test_dry_run_without_twilio_credentials_prints_the_sms(tmp_path, broker):
    log = tmp_path / "dry.log"
    p = spawn(["bridge", "--outbox", str(tmp_path / "o.db")], _env(broker), log)
    dev = Board(broker, "edgewatch", HOST_PW)
    try:
        _started(log, p)
        dev.publish("alert", alert("gh-01", 5), device="gh-01")
        line = wait_until(lambda: next((ln for ln in log.read_text().splitlines()
                                        if ln.startswith("DRY-RUN SMS")), None), what="dry run")
        assert line.startswith("DRY-RUN SMS to +15551230001: edgewatch gh-01: temperature 35.2")
        assert "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM not set" in log.read_text()
    finally:
        dev.close()
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0


@pytest.mark.parametrize("extra,args,message", [
    ({}, ["--notify", "pager"], "notifier 'pager'"),
    ({"MQTT_PASSWORD": "wrong"}, [], "refused the connection"),
    ({"EDGEWATCH_MQTT_URL": "http://x"}, [], "not an MQTT URL"),
    ({}, ["--ca-file", "/nonexistent/ca.crt"], "CA file not found"),
    ({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t", "TWILIO_FROM": "+1500",
      "TWILIO_MAX_LATENCY": "soon"}, [], "TWILIO_MAX_LATENCY='soon': not a number of seconds"),
])
def test_user_mistakes_are_one_line(tmp_path, broker, extra, args, message):
    r = subprocess.run(edgewatch("bridge", "--outbox", str(tmp_path / "o.db"), *args), env=_env(broker, **extra), cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("edgewatch bridge: ") and message in last
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("extra,args,message", [
    ({}, ["--cooldown", "nan"], "--cooldown nan: expected a finite number >= 0"),
    ({}, ["--cooldown", "inf"], "--cooldown inf"),
    ({}, ["--cooldown", "-5"], "--cooldown -5.0: expected a finite number >= 0"),
    ({"EDGEWATCH_COOLDOWN": "nan"}, [], "EDGEWATCH_COOLDOWN='nan': expected a finite number"),
    ({"EDGEWATCH_COOLDOWN": "soon"}, [], "EDGEWATCH_COOLDOWN='soon': not a number"),
    ({}, ["--max-per-minute", "-1"], "--max-per-minute -1: expected a whole number >= 0"),
    ({"EDGEWATCH_MAX_PER_MINUTE": "nan"}, [], "EDGEWATCH_MAX_PER_MINUTE='nan'"),
    ({"EDGEWATCH_MAX_PER_MINUTE": "1e400"}, [], "EDGEWATCH_MAX_PER_MINUTE='1e400'"),
    ({"EDGEWATCH_MAX_PER_MINUTE": "2.5"}, [], "EDGEWATCH_MAX_PER_MINUTE='2.5': expected a whole"),
    ({}, ["--retry-base", "0"], "--retry-base 0.0: expected a finite number > 0"),
    ({}, ["--retry-base", "nan"], "--retry-base nan"),
    ({}, ["--retry-cap", "inf"], "--retry-cap inf"),
    # were tracebacks
    ({}, ["--log-level", "LOUD"], "--log-level LOUD: expected one of"),
    ({}, ["--outbox", "/proc/x/o.db"], "/proc/x/o.db: cannot create the outbox's folder"),
    ({}, ["--prefix", "a/+"], "--prefix 'a/+': MQTT wildcards"),
    ({}, ["--group", "g#"], "group 'g#'"),
])
def test_options_out_of_range_are_one_line(tmp_path, extra, args, message):
    """NaN passed every check and then stalled the bridge; a bad log level or outbox folder
    was a traceback; a wildcard prefix or group was accepted. Each is found before the outbox
    is created or the broker is tried (nothing listens on its port here)."""
    env = service_env(EDGEWATCH_MQTT_URL="mqtt://127.0.0.1:1", **extra)
    outbox = [] if "--outbox" in args else ["--outbox", str(tmp_path / "o.db")]
    r = subprocess.run(edgewatch("bridge", "--notify", "console", *outbox, *args),
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    one_line_error(r, "bridge", message)
    assert not (tmp_path / "o.db").exists()


def test_outbox_path_from_the_environment_is_one_line(tmp_path):
    env = service_env(EDGEWATCH_MQTT_URL="mqtt://127.0.0.1:1", EDGEWATCH_OUTBOX="/proc/x/o.db")
    r = subprocess.run(edgewatch("bridge", "--notify", "console"), env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("edgewatch bridge: /proc/x/o.db: cannot create the outbox's "
                                "folder (No such file or directory)")
