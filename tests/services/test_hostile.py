"""Hostile input against real services: /metrics never fails, labels and logs stay clean.

A real collector and a real bridge process behind a real Mosquitto (the project's
password + ACL set-up) get one hostile message at a time; after each, both
/metrics answer 200 once the message has been taken in (issue 14, "Broke" 5).
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from edgewatch.core.schema import Status
from edgewatch.services.broker import DEVICE_ACL, Broker
from edgewatch.services.metrics import OTHER, Devices, JsonFormatter, Metrics, clean
from figures import record
from hostkit import HOST_PW, Board, alert, service_env, spawn, telemetry, wait_until
from prometheus_client import generate_latest


def _status(device: str, **extra) -> bytes:
    body = {"v": 1, "device": device, "state": "online", "fw": "0.1.0", "model": "3f2a9c1e",
            "outbox": 0, "dropped": 0, "uptime": 5}
    body.update(extra)
    return json.dumps(body).encode()


def _raw_status(device: str, fw_json: str) -> bytes:
    """A status whose fw is the JSON text ``fw_json`` as written (lone surrogates survive)."""
    return (f'{{"v": 1, "device": "{device}", "state": "online", "fw": {fw_json}, '
            f'"model": "3f2a9c1e"}}').encode()


# (topic device, kind, payload): what an attacker holding a login can publish
HOSTILE = [
    ("gh-01", "status", _raw_status("gh-01", '"\\ud800"')),          # the one that broke /metrics
    ("gh-01", "status", _raw_status("gh-01", '"0.1\\udfff"')),
    ("gh-01", "status", _raw_status("gh-01", '"\\u0000\\u001b[31m"')),
    ("gh-01", "status", _raw_status("gh-01", '"a\\nb\\rc"')),
    ("gh-01", "status", _raw_status("gh-01", '"\\u2028\\u0085\\u007f"')),
    ("gh-01", "status", _raw_status("gh-01", json.dumps("x" * 3000))),
    ("gh-01", "status", _status("gh-01", error="\udcff boom\x00")),
    ("gh-01", "status", _status("gh-01", error="E" * 4000)),
    ("gh-01", "status", _status("gh-01", fw="é-ünï-çødé")),             # odd but valid: kept
    ("gh-01", "status", _raw_status("gh-01", '{"nested": [1, {"a": [2]}]}')),
    ("gh-01", "status", _raw_status("gh-01", "NaN")),
    ("gh-01", "status", b"\xff\xfe\xed" * 50),
    ("gh-01", "status", b"[" * 3000 + b"]" * 3000),
    ("gh-01", "status", b"x" * 1_000_000),
    ("gh-01", "telemetry", b'{"v": 1, "device": "gh-01", "seq": 1, "values": {"temperature": NaN}}'),
    ("gh-01", "telemetry", b'{"v": 1, "device": "gh-01", "seq": 2, "values": {"temperature": 1e400}}'),
    ("gh-01", "telemetry", json.dumps(telemetry("gh-01", 3, **{"t\u00e9mp": 1.0})).encode()),
    ("gh-01", "telemetry", b'{"v": 1, "device": "gh-01", "seq": 4, "values": {"\\ud800": 1.0}}'),
    ("gh-01", "telemetry", json.dumps(telemetry("gh-01", 5, **{'x"; DROP TABLE telemetry; --': 1.0})
                                      ).encode()),
    ("gh-01", "telemetry", json.dumps({"v": 1, "device": "gh-01", "seq": 6,
                                       "values": {"temperature": {"a": {"b": [1, 2]}}}}).encode()),
    ("gh-01", "telemetry", b'{"v": 1, "device": "gh-01", "seq": 7, "values": ' + b"[" * 2000
     + b"]" * 2000 + b"}"),
    ("gh-01", "alert", b'{"v": 1, "device": "gh-01", "seq": 8, "sample": 1, "rule": "\\ud800"}'),
    ("gh-01", "alert", json.dumps(dict(alert("gh-01", 9), channel="\x1b[2J")).encode()),
    ("gh-01", "alert", json.dumps(dict(alert("gh-01", 10), value=float("nan"))).encode()),
    ("x'); DROP TABLE devices;--", "status", _status("x'); DROP TABLE devices;--")),
    ("1 OR 1=1", "telemetry", json.dumps(telemetry("1 OR 1=1", 1)).encode()),
    ("\u03a9mega", "status", _status("\u03a9mega")),
    ("gh-01\u202e", "alert", json.dumps(alert("gh-01\u202e", 1)).encode()),
    ("d" * 200, "status", _status("d" * 200)),
]
# devices past --max-devices: their series fold into one aggregate
FLOOD = [(f"flood-{i:02d}", "status", _status(f"flood-{i:02d}", fw=f"f{i}")) for i in range(12)]
MAX_DEVICES = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    """GET /metrics; fails the test on anything but 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200
            return r.read().decode("utf-8")
    except urllib.error.HTTPError as exc:  # the 500 of a label that cannot be encoded
        pytest.fail(f"/metrics on :{port} answered {exc.code}")


def _sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in
               re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW, "gh-01": "pw1"},
                acl=DEVICE_ACL) as b:
        yield b


def test_metrics_answer_200_after_every_hostile_message(tmp_path, broker):
    env = service_env(EDGEWATCH_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
                      MQTT_USERNAME="edgewatch", MQTT_PASSWORD=HOST_PW, EDGEWATCH_COOLDOWN="0",
                      EDGEWATCH_MAX_PER_MINUTE="0")
    cport, bport = _free_port(), _free_port()
    clog, blog = tmp_path / "collect.log", tmp_path / "bridge.log"
    procs = [spawn(["collect", "--db", f"sqlite:///{tmp_path}/ew.db", "--no-discovery",
                    "--flush-ms", "5", "--metrics-port", str(cport),
                    "--max-devices", str(MAX_DEVICES)], env, clog),
             spawn(["bridge", "--notify", "console", "--outbox", str(tmp_path / "o.db"),
                    "--db", "none", "--metrics-port", str(bport),
                    "--max-devices", str(MAX_DEVICES)], env, blog)]
    host = Board(broker, "edgewatch", HOST_PW)
    board = Board(broker, "gh-01", "pw1")  # a board's own login: its topics only
    try:
        wait_until(lambda: "collecting into" in clog.read_text()
                   and "bridge running" in blog.read_text(), what="services up")
        for p in procs:
            assert p.poll() is None
        seen = {cport: 0.0, bport: 0.0}
        for n, (device, kind, payload) in enumerate(HOSTILE + FLOOD):
            (board if device == "gh-01" and n % 2 else host).publish(kind, payload, device=device)
            for port in (cport, bport):
                # taken in = received or refused before it got a kind (a topic it cannot parse)
                def moved(port=port):
                    t = _scrape(port)
                    got = (_sum(t, "edgewatch_messages_received_total")
                           + _sum(t, "edgewatch_messages_rejected_total"))
                    return got > seen[port] and got
                if kind == "telemetry" and port == bport:
                    continue  # the bridge does not subscribe to telemetry
                seen[port] = wait_until(moved, timeout=10, what=f"message {n} taken in on {port}")
        # _scrape raises on any answer but 200: reaching here means every scrape was a 200
        record("hostile messages, each followed by a /metrics scrape answered 200", n + 1)
        text = _scrape(cport)
        btext = _scrape(bport)
        for t in (text, btext):
            # the flood: MAX_DEVICES own series, the rest in one aggregate, counted
            assert len(set(re.findall(r'edgewatch_device_last_seen_timestamp_seconds\{device="'
                                      r'([^"]*)"', t))) <= MAX_DEVICES + 1
            assert f'device="{OTHER}"' in t
            assert _sum(t, "edgewatch_devices_over_cap_total") >= len(FLOOD) - MAX_DEVICES
            assert "\ufffd" not in t and not re.search(r"[\x00-\x08\x0b-\x1f]", t)
        # the odd-but-valid firmware string is kept as it came, on both
        assert 'fw="é-ünï-çødé"' in text
        # a valid message after all that is still stored
        host.publish("telemetry", telemetry("gh-01", 1000, temperature=21.5), device="gh-01")
        wait_until(lambda: 'edgewatch_reading{channel="temperature",device="gh-01"} 21.5'
                   in _scrape(cport), what="a valid sample after the attack")
        for log in (clog, blog):
            raw = log.read_bytes()
            raw.decode("utf-8")  # valid UTF-8 throughout
            assert b"Logging error" not in raw and b"Traceback" not in raw
            assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", raw)
            assert max(len(x) for x in raw.splitlines()) < 5000
            assert "\u202e" not in raw.decode()  # no bidirectional override reaches a log
    finally:
        host.close()
        board.close()
        for p in procs:
            p.terminate()
            p.wait(10)


def test_a_label_from_any_text_keeps_the_exposition_writable():
    """Defence in depth: whatever reaches Devices (even past the schema) cannot break /metrics."""
    m = Metrics("bridge", max_devices=2)
    dev = Devices(m)
    for i, fw in enumerate(["\ud800", "\x00\x1b[31m", "z" * 10_000, "a\nb", "\udcff\u2028"]):
        dev.status(Status(f"d{i}", "online", fw=fw, model="3f2a9c1e"))
        generate_latest(m.registry).decode("utf-8")  # raises on a lone surrogate
    text = generate_latest(m.registry).decode()
    assert m.value("edgewatch_devices_over_cap_total") == 3
    assert len(re.findall(r"^edgewatch_device_info\{", text, re.M)) == 2
    assert all(len(v) <= 64 for v in re.findall(r'fw="([^"]*)"', text))
    assert clean("\ud800x\x07", 8) == "?x?"


def test_logs_stay_valid_utf8_without_control_characters():
    stream = io.StringIO()
    h = logging.StreamHandler(stream)
    h.setFormatter(JsonFormatter())
    lg = logging.getLogger("edgewatch.test.hostile")
    lg.addHandler(h)
    lg.propagate = False
    try:
        lg.warning("got %s", "\ud800\x1b[2J" + "y" * 10_000, extra={"fw": "\udfff\n"})
    finally:
        lg.removeHandler(h)
    line = stream.getvalue()
    line.encode("utf-8")  # no lone surrogate left
    rec = json.loads(line)
    assert len(line) < 3000 and "\x1b" not in rec["msg"] and rec["fw"] == "??"


def test_records_without_seq_are_refused_counted_and_logged_once(tmp_path, caplog):
    """Telemetry and alerts without `seq` (issue 14 "Broke" 8: once accepted) are never stored
    and never notified: each is counted and logged once, by the schema, not by a failed batch."""
    from edgewatch.core.settings import MqttSettings
    from edgewatch.core.store import Store
    from edgewatch.services.bridge import Bridge, Outbox
    from edgewatch.services.collector import Collector
    from edgewatch.services.notifiers import Console

    sms = io.StringIO()
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW}) as broker:
        mq = MqttSettings(port=broker.port, username="edgewatch", password=HOST_PW)
        st = Store(f"sqlite:///{tmp_path}/ew.db")
        col = Collector(st, mq, batch=50, flush_ms=10, ha_discovery=False, gap_wait=3600).start()
        bridge = Bridge(Outbox(tmp_path / "o.db", cooldown=0, max_per_minute=0), [Console(sms)],
                        mq, retry_base=0.2, retry_cap=1.0).start()
        host = Board(broker, "edgewatch", HOST_PW)
        try:
            with caplog.at_level(logging.WARNING, logger="edgewatch"):
                for i in range(10):
                    no_seq = telemetry("gh-01", i)
                    no_seq.pop("seq")
                    host.publish("telemetry", no_seq if i % 2 else telemetry("gh-01", i),
                                 device="gh-01")
                for i in range(4):
                    a = alert("gh-01", 100 + i)
                    if i % 2:
                        a["seq"] = None
                    host.publish("alert", a, device="gh-01")
                wait_until(lambda: st.count() == 5 and st.count("alerts") == 2
                           and sms.getvalue().count("ALERT") == 2
                           and col.metrics.value("edgewatch_messages_rejected_total",
                                                 reason="invalid") == 7
                           and bridge.metrics.value("edgewatch_messages_rejected_total",
                                                    reason="invalid") == 2,
                           what="valid ones stored and sent, the 7 without seq refused")
                time.sleep(0.5)
            assert st.count() == 5 and st.count("alerts") == 2
            assert sms.getvalue().count("ALERT") == 2
            lines = [r.getMessage() for r in caplog.records if "seq: missing" in r.getMessage()]
            # once per refusal: 5 telemetry + 2 alerts at the collector, 2 alerts at the bridge
            assert len(lines) == 9, lines
            assert col.metrics.value("edgewatch_batches_split_total") == 0
            assert not [r for r in caplog.records if "database refused" in r.getMessage()]
        finally:
            host.close()
            bridge.stop()
            col.stop()
            st.close()
