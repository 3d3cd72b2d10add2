"""The alert bridge against a real Mosquitto and the real twilio client on a local Messages API."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
import urllib.request

import pytest
from edgewatch.core.schema import parse
from edgewatch.core.settings import MqttSettings
from edgewatch.services.bridge import Bridge, Outbox, alert_text, backoff, message_ref
from edgewatch.services.broker import DEVICE_ACL, Broker
from edgewatch.services.metrics import JsonFormatter
from edgewatch.services.notifiers import (
    Console,
    Message,
    OutcomeUnknown,
    TransientError,
    TwilioSMS,
)
from hostkit import HOST_PW, Board, alert, wait_until

from tools.twilio_sink import TwilioSink

FROM, TO = "+15005550006", ["+15551230001", "+15551230002"]


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW, "gh-01": "pw1", "gh-02": "pw2"},
                acl=DEVICE_ACL, tls=True) as b:
        yield b


@pytest.fixture
def sink():
    with TwilioSink(account_sid="AC" + "1" * 32, auth_token="tok-abcdef-secret") as s:
        yield s


def _sms(sink, to=TO):
    return TwilioSMS(sink.account_sid, sink.auth_token, FROM, to, api_base=sink.url, timeout=2)


def _bridge(tmp_path, broker, notifiers, name="b", tls=True, **kw):
    policy = {k: kw.pop(k) for k in ("cooldown", "max_per_minute") if k in kw}
    out = Outbox(tmp_path / f"{name}.db", **{"cooldown": 0, "max_per_minute": 0, **policy})
    mq = MqttSettings(port=broker.tls_port if tls else broker.port, tls=tls, username="edgewatch",
                      password=HOST_PW, ca_file=broker.ca_file if tls else None)
    return Bridge(out, notifiers, mq, retry_base=0.2, retry_cap=1.0, **kw).start()


@pytest.fixture
def logs():
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter())
    logging.getLogger("edgewatch").addHandler(h)
    logging.getLogger("edgewatch").setLevel(logging.INFO)
    yield buf
    logging.getLogger("edgewatch").removeHandler(h)


def test_alert_over_tls_and_acl_reaches_each_phone_once(tmp_path, broker, sink, logs):
    b = _bridge(tmp_path, broker, [_sms(sink)])
    dev = Board(broker, "gh-01", "pw1", tls=True)
    try:
        dev.publish("alert", alert("gh-01", 7, t=1732372000))
        dev.publish("alert", alert("gh-01", 7, t=1732372000))  # replayed by the board's outbox
        # the ACL keeps gh-01 out of gh-02's topics: this never reaches the bridge
        dev.publish("alert", alert("gh-02", 8), device="gh-02")
        wait_until(lambda: len(sink.requests) >= 2, what="two SMS")
        wait_until(lambda: b.metrics.value("edgewatch_messages_rejected_total",
                                           reason="replayed") == 1, what="replay counted")
        assert sorted(r["To"] for r in sink.requests) == TO
        assert {r["From"] for r in sink.requests} == {FROM}
        assert all(r["auth_ok"] for r in sink.requests)
        body = sink.requests[0]["Body"]
        # the text, then a short reference from the alert's identity (device, epoch, seq)
        assert body == alert_text(parse("edgewatch/gh-01/alert",
                                        json.dumps(alert("gh-01", 7, t=1732372000)))) + \
            f" ref {message_ref('gh-01:7')}"
        assert body.endswith(f"at 14:26:40 UTC ref {message_ref('gh-01:7')}")
        assert len(message_ref("gh-01:7")) == 8 and message_ref("gh-01:7") != message_ref("gh-01:8")
        assert "gh-01" in body and "35.2" in body and "21.1..21.7" in body and "(band)" in body
        assert len(sink.requests) == 2
        wait_until(lambda: b.outbox.counts() == {"sent": 2}, what="both rows marked sent")
        wait_until(lambda: b.metrics.value("edgewatch_alert_to_send_seconds_count") == 2,
                   what="latency observed for both")
        assert sink.auth_token not in logs.getvalue()
    finally:
        dev.close()
        b.stop()


def test_flapping_sensor_gives_one_sms_then_one_digest(tmp_path, broker, sink):
    b = _bridge(tmp_path, broker, [_sms(sink, TO[:1])], tls=False, cooldown=1.5)
    dev = Board(broker, "gh-01", "pw1")
    try:
        for seq in range(1, 41):
            dev.publish("alert", alert("gh-01", seq, value=30 + seq))
        dev.publish("alert", alert("gh-01", 100, rule="stuck"))  # another rule: its own SMS
        wait_until(lambda: len(sink.requests) >= 2, what="first SMS of each rule")
        assert len(sink.requests) == 2
        wait_until(lambda: len(sink.requests) >= 3, timeout=6, what="the digest")
        digest = sink.requests[2]["Body"]
        assert "39 more band alerts" in digest and "70" in digest  # last value 30+40
        # the cooldown starts again after the digest: nothing more is sent
        wait_until(lambda: b.outbox.depth() == 0, what="outbox drained")
        assert len(sink.requests) == 3
        assert b.metrics.value("edgewatch_alerts_suppressed_total", why="cooldown") == 39
    finally:
        dev.close()
        b.stop()


def test_global_rate_cap_holds_back_the_rest(tmp_path, broker, sink):
    b = _bridge(tmp_path, broker, [_sms(sink, TO[:1])], tls=False, cooldown=0.5,
                max_per_minute=3)
    dev = Board(broker, "edgewatch", HOST_PW)  # the host user may publish for any device
    try:
        for i in range(8):
            dev.publish("alert", alert(f"dev-{i}", 1), device=f"dev-{i}")
        wait_until(lambda: b.metrics.value("edgewatch_alerts_suppressed_total", why="ratecap") == 5,
                   what="5 alerts held back")
        wait_until(lambda: len(sink.requests) >= 3, what="3 SMS")
        time.sleep(1.5)  # past the cooldown: digests are due but the cap is still full
        assert len(sink.requests) == 3
        held = b.outbox.db.execute("SELECT COUNT(*), SUM(suppressed) FROM cooldown "
                                   "WHERE suppressed > 0").fetchone()
        assert held == (5, 5)
    finally:
        dev.close()
        b.stop()


def test_5xx_is_retried_4xx_is_dead_lettered(tmp_path, broker, sink, logs):
    sink.reject.add(TO[1])
    sink.mode = "5xx"
    b = _bridge(tmp_path, broker, [_sms(sink)], tls=False)
    dev = Board(broker, "gh-01", "pw1")
    try:
        dev.publish("alert", alert("gh-01", 1))
        wait_until(lambda: len(sink.refused) >= 4, what="several 503s")
        assert not sink.requests
        sink.mode = "ok"
        wait_until(lambda: b.outbox.counts() == {"sent": 1, "dead": 1}, what="sent + dead")
        assert [r["To"] for r in sink.requests] == TO[:1]
        text = logs.getvalue()
        assert "dead-letter: sms to +15551230002" in text and "HTTP 400" in text
        assert "retry" in text and "HTTP 503" in text
        row = b.outbox.db.execute("SELECT attempts, last_error FROM outbox WHERE state='sent'"
                                  ).fetchone()
        assert row[0] >= 2 and "503" in row[1]
    finally:
        dev.close()
        b.stop()


def test_bad_input_is_counted_never_sent_never_crashes(tmp_path, broker, sink):
    b = _bridge(tmp_path, broker, [_sms(sink, TO[:1])], tls=False, metrics=None)
    dev = Board(broker, "gh-01", "pw1")
    bad = [b"{oops", b"\xff\xfe", b"[]", b'{"v": 1, "device": "gh-01", "seq": NaN}',
           b"x" * 5000, dict(alert("gh-01", 1), v=9), dict(alert("gh-01", 1), seq="1"),
           dict(alert("gh-01", 1), device="gh-02"), dict(alert("gh-01", 1), value=float("inf")),
           # no calendar shows it: gmtime raised in the outbox, which retried it forever
           # and sent nothing else, from any device, even after a restart
           dict(alert("gh-01", 1), t=1e20)]
    try:
        for p in bad:
            dev.publish("alert", p if isinstance(p, bytes) else
                        json.dumps(p).replace("Infinity", "1e999").encode())
        dev.publish("alert", alert("gh-01", 2))
        wait_until(lambda: len(sink.requests) == 1, what="the one good alert")
        total = sum(b.metrics.value("edgewatch_messages_rejected_total", reason=r)
                    for r in ("json", "encoding", "invalid", "nonfinite", "oversized", "version",
                              "device_mismatch"))
        assert total == len(bad)
        assert sink.requests[0]["Body"].startswith("edgewatch gh-01:")
    finally:
        dev.close()
        b.stop()


def test_two_bridges_in_a_group_send_each_alert_once(tmp_path, broker, sink):
    b1 = _bridge(tmp_path, broker, [_sms(sink, TO[:1])], name="b1", tls=False, group="g",
                 client_id="bridge-1")
    b2 = _bridge(tmp_path, broker, [_sms(sink, TO[:1])], name="b2", tls=False, group="g",
                 client_id="bridge-2")
    dev = Board(broker, "edgewatch", HOST_PW)
    try:
        n = 0
        for i in range(40):
            for seq in range(5):
                dev.publish("alert", alert(f"d{i}", seq, rule=("band", "stuck", "range", "read",
                                                               "dropout")[seq]), device=f"d{i}")
                n += 1
        wait_until(lambda: len(sink.requests) >= n, timeout=20, what=f"{n} SMS")
        time.sleep(0.5)
        bodies = sink.bodies()
        assert len(bodies) == n == len(set((r["Body"]) for r in sink.requests))
        sent1 = b1.metrics.value("edgewatch_notifications_total", notifier="sms", outcome="sent")
        sent2 = b2.metrics.value("edgewatch_notifications_total", notifier="sms", outcome="sent")
        assert sent1 + sent2 == n and sent1 > 0 and sent2 > 0
    finally:
        dev.close()
        b1.stop()
        b2.stop()


def test_device_status_from_last_will_and_metrics_endpoint(tmp_path, broker, sink):
    b = _bridge(tmp_path, broker, [Console(stream=io.StringIO())], tls=False)
    port = b.metrics.serve(0)
    dev = Board(broker, "gh-01", "pw1", will=True)
    try:
        dev.publish("status", {"v": 1, "device": "gh-01", "seq": 5, "t": None, "state": "online",
                               "fw": "0.1.0", "model": "3f2a9c1e", "heap_free": 60000,
                               "outbox": 12, "dropped": 0, "uptime": 30}, retain=True)
        wait_until(lambda: (b.devices.get("gh-01") or {}).get("outbox") == 12, what="status")
        dev.vanish()
        wait_until(lambda: b.devices.get("gh-01")["state"] == "offline", timeout=15,
                   what="last will")
        st = b.devices.get("gh-01")
        assert st["model"] == "3f2a9c1e" and st["fw"] == "0.1.0" and st["last_seen"] > 0
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'edgewatch_device_online{device="gh-01"} 0.0' in text
        assert 'edgewatch_device_outbox{device="gh-01"} 12.0' in text
        assert 'edgewatch_device_info{device="gh-01",fw="0.1.0",model="3f2a9c1e"} 1.0' in text
    finally:
        b.stop()


def test_backoff_grows_and_is_capped():
    d = [backoff(i, 1.0, 60.0) for i in range(1, 10)]
    assert 0.8 <= d[0] <= 1.2 and 3.2 <= d[2] <= 4.8 and all(x <= 72 for x in d)
    assert d[-1] >= 48


def test_two_bridges_on_one_outbox_file_send_each_alert_once(tmp_path, broker, sink):
    # no group: both bridges get every alert; the shared outbox keeps each once,
    # and the row lease lets only one of them send it
    kw = {"tls": False, "devices": frozenset({"gh-01"})}
    b1 = _bridge(tmp_path, broker, [_sms(sink, TO[:1])], name="shared", client_id="s-1", **kw)
    b2 = _bridge(tmp_path, broker, [_sms(sink, TO[:1])], name="shared", client_id="s-2", **kw)
    dev = Board(broker, "edgewatch", HOST_PW)
    try:
        for seq in range(30):
            dev.publish("alert", alert("gh-01", seq, value=50 + seq), device="gh-01")
        dev.publish("alert", alert("gh-02", 1), device="gh-02")  # not on the device list
        try:
            wait_until(lambda: len(sink.requests) >= 30, what="30 SMS")
        except AssertionError:
            rows = b1.outbox.db.execute("SELECT state, lease_until - ?, attempts, last_error, "
                                        "next_try - ? FROM outbox", (time.time(), time.time())).fetchall()
            seen = b1.outbox.db.execute("SELECT outcome, COUNT(*) FROM seen GROUP BY outcome").fetchall()
            raise AssertionError(f"{len(sink.requests)} sent; {rows}; {seen}") from None
        time.sleep(1.0)
        assert len(sink.bodies()) == 30 == len(set(sink.bodies()))
        assert not any("gh-02" in body for body in sink.bodies())
        replays = sum(b.metrics.value("edgewatch_messages_rejected_total", reason="replayed")
                      for b in (b1, b2))
        assert replays == 30  # each alert arrived twice, was kept once
        assert all(b.metrics.value("edgewatch_messages_rejected_total", reason="unknown_device")
                   == 1 for b in (b1, b2))
    finally:
        dev.close()
        b1.stop()
        b2.stop()


def test_leases_of_dead_processes_are_released_at_start(tmp_path):
    import socket
    import subprocess
    import sys

    box = Outbox(tmp_path / "o.db")
    box._queue(box.db, "gh-01:1", "text", {}, time.time(), [Console(stream=io.StringIO())])
    box._queue(box.db, "gh-01:2", "text", {}, time.time(), [Console(stream=io.StringIO())])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = socket.gethostname()
        box.db.execute("UPDATE outbox SET lease_until = ?, owner = ? WHERE key LIKE '%:1'",
                       (time.time() + 600, f"{host}:{dead.pid}"))
        box.db.execute("UPDATE outbox SET lease_until = ?, owner = ? WHERE key LIKE '%:2'",
                       (time.time() + 600, f"{host}:{live.pid}"))
        again = Outbox(tmp_path / "o.db")  # a bridge restarting after a crash
        claimed = again.claim()
        assert [r["id"] for r in claimed] == [1]  # the dead process's row, not the live one's
    finally:
        live.kill()
        live.wait()


def test_alert_text_rounds_to_the_sensor_resolution():
    from edgewatch.core.schema import Alert

    a = Alert("gh-01", 7, 0.0, 6, "shift", "humidity", 68.72134523, (-6.135234523, 53.7623452),
              None, "m1")
    assert "humidity mean 68.7 shifted outside -6.1..53.8" in alert_text(a)
    a = Alert("gh-01", 7, 0.0, 6, "band", "temperature", 23.0, (-0.04, 22.96), 21.3, "m1")
    assert "temperature 23.0 outside 0.0..23.0" in alert_text(a)
    a = Alert("gh-01", 7, 0.0, 6, "stuck", None, 40, None, None, "m1")
    assert "readings unchanged for 40 samples" in alert_text(a) and "None" not in alert_text(a)
    a = Alert("gh-01", 7, 0.0, 6, "burst", "temperature", 21.849, (20.1, 22.9), 21.52, "m1")
    assert "temperature 21.8 erratic around 21.5" in alert_text(a)


def test_dry_run_sms_counted_as_dry_run_and_only_bridge_series(tmp_path, broker):
    from edgewatch.services.notifiers import DryRunSMS
    from prometheus_client import generate_latest

    out = io.StringIO()
    b = _bridge(tmp_path, broker, [DryRunSMS(["+15551230001"], stream=out)], tls=False)
    dev = Board(broker, "gh-01", "pw1")
    try:
        dev.publish("alert", alert("gh-01", 3))
        wait_until(lambda: "DRY-RUN SMS" in out.getvalue(), what="dry-run SMS printed")
        wait_until(lambda: b.metrics.value("edgewatch_notifications_total", notifier="sms",
                                           outcome="dry_run") == 1, what="dry run counted")
        assert b.metrics.value("edgewatch_notifications_total", notifier="sms", outcome="sent") == 0
        text = generate_latest(b.metrics.registry).decode()
        for collector_only in ("edgewatch_records_stored", "edgewatch_write_batch_seconds",
                               "edgewatch_reading", "edgewatch_records_duplicate"):
            assert collector_only not in text
    finally:
        dev.close()
        b.stop()


def test_twilio_outcomes_known_and_unknown_and_the_messages_list(sink):
    """Which failures may have created the SMS (looked up before a resend) and which cannot."""
    sms = TwilioSMS(sink.account_sid, sink.auth_token, FROM, TO, api_base=sink.url, timeout=1)
    t0 = time.time()
    for i in range(7):
        sms.send(TO[i % 2], Message("s", f"text {i} ref r{i}", ref=f"r{i}"))
    # found through the real client's list, pages followed, filtered by To, From and DateSent>=
    sink.page_size = 2
    assert sms.lookup(TO[0], Message("s", "", ref="r0"), t0) == sink.requests[0]["sid"]
    assert {q.get("Page") for q in sink.lookups} == {None, "1"}
    assert sms.lookup(TO[1], Message("s", "", ref="r0"), t0) is None  # another phone
    assert sms.lookup(TO[0], Message("s", "", ref="r0"), t0 + 120) is None  # sent before
    assert sms.lookup(TO[0], Message("s", "text 2 ref r2"), t0) is not None  # no ref: whole body
    assert all(q["From"] == FROM and q["DateSent>"].endswith("Z") for q in sink.lookups)
    cases = {"slow": OutcomeUnknown, "drop": OutcomeUnknown, "drop-created": OutcomeUnknown,
             "5xx": TransientError}
    sink.delay = 2.0
    for mode, kind in cases.items():
        sink.mode = mode
        with pytest.raises(TransientError) as exc:
            sms.send(TO[0], Message("s", f"{mode} ref m-{mode}", ref=f"m-{mode}"))
        assert type(exc.value) is kind, (mode, exc.value)
    sink.mode = "ok"
    listed = {m: sms.lookup(TO[0], Message("s", "", ref=f"m-{m}"), t0) is not None for m in cases}
    assert listed == {"slow": True, "drop": False, "drop-created": True, "5xx": False}
    sink.stop()  # connection refused: the request never left
    with pytest.raises(TransientError) as exc:
        sms.send(TO[0], Message("s", "x ref x", ref="x"))
    assert type(exc.value) is TransientError and "ConnectionError" in str(exc.value)
    with pytest.raises(TransientError, match="lookup failed"):
        sms.lookup(TO[0], Message("s", "", ref="r0"), t0)


def test_outbox_of_the_previous_version_gains_the_inflight_columns(tmp_path):
    """An outbox written before SMS lookups opens in place; its pending rows are sent as before."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE,
                notifier TEXT, recipient TEXT, subject TEXT, body TEXT, data TEXT, received REAL,
                created REAL, next_try REAL, attempts INTEGER DEFAULT 0,
                state TEXT DEFAULT 'pending', lease_until REAL DEFAULT 0, owner TEXT,
                last_error TEXT, sent_at REAL);
            INSERT INTO outbox (key, notifier, recipient, subject, body, data, received, created,
                next_try) VALUES ('sms:+1555:gh-01:4', 'sms', '+1555', 'edgewatch gh-01',
                'edgewatch gh-01: old text', '{}', 1, 1, 1);""")
    out = Outbox(path)
    (row,) = out.claim()
    assert (row["body"], row["ref"], row["inflight"]) == ("edgewatch gh-01: old text", None, None)
    out.sending(row["id"])
    (row,) = out.claim(now=time.time() + 60)  # lease over: the mark is there for a restart
    assert row["inflight"] is not None and row["first_try"] == row["inflight"]
    out.retry(row["id"], "timeout", 0, unknown=True)
    assert out.claim(now=time.time() + 120)[0]["inflight"] is not None  # kept: look it up first
    out.retry(row["id"], "503", 0)
    assert out.claim(now=time.time() + 180)[0]["inflight"] is None  # a known failure: cleared


def test_a_claim_reads_the_earliest_due_rows_without_sorting_the_backlog(tmp_path):
    """A bridge that falls behind must not pay more per claim for the backlog it has to
    clear: with 2,000 rows waiting, the claim walks the due-time index and stops (no sort of
    every due row, which made each claim cost more the further behind it was)."""
    from edgewatch.services.bridge import CLAIM

    box = Outbox(tmp_path / "o.db")
    con = [Console(stream=io.StringIO())]
    now = time.time()
    with box.wlock, box._transaction(box.db):
        for i in range(2000):
            box._queue(box.db, f"gh-01:{i}", f"text {i}", {}, now, con)
    # row 1 failed once and waits for its retry; row 2 is being sent by another thread
    box.db.execute("UPDATE outbox SET next_try = ? WHERE id = 1", (now + 60,))
    box.db.execute("UPDATE outbox SET lease_until = ? WHERE id = 2", (now + 30,))
    plan = " ".join(str(r[3]) for r in box.db.execute("EXPLAIN QUERY PLAN " + CLAIM, (now, now, 4)))
    assert "outbox_due" in plan and "TEMP B-TREE" not in plan, plan
    assert [r["id"] for r in box.claim(limit=3, now=now + 1)] == [3, 4, 5]  # first come first
    assert [r["id"] for r in box.claim(limit=2, now=now + 2)] == [6, 7]  # row 2 still leased
    box.db.execute("UPDATE outbox SET next_try = ? WHERE id = 9", (now + 30,))  # retry at +30
    # a minute later every lease has run out: the rows due since the start in the order they
    # came, then the retries in the order they fell due
    ids = [r["id"] for r in box.claim(limit=5000, now=now + 61)]
    assert ids[:4] == [2, 3, 4, 5] and ids[-2:] == [9, 1] and len(ids) == 2000


def test_a_time_no_calendar_can_show_never_raises_where_an_alert_is_shown():
    """Rows stored before the schema bounded `t` (or any such Alert): the SMS text, the log
    line and the export show something and do not raise (gmtime/datetime would)."""
    from edgewatch.core.schema import Alert
    from edgewatch.services.export import iso
    from edgewatch.services.logs import line

    a = Alert("gh-01", 7, 1e20, 6, "band", "temperature", 23.0, (20.0, 22.0), 21.0, "m1")
    assert "(received)" in alert_text(a)
    assert line(a).startswith("t=1e+20 gh-01")
    assert iso(1e20) == "1e+20" and iso(1.7e9) == "2023-11-14T22:13:20Z"


def test_twilio_over_https_a_certificate_failure_is_an_unknown_outcome(tmp_path, sink,
                                                                       monkeypatch):
    """An untrusted certificate is OutcomeUnknown (the bridge looks the SMS up before it
    sends again), not an AttributeError: ssl.SSLError's ``reason`` is a string, which the
    notifier's walk along the exception chain once followed as an exception. With the CA
    bundle from the environment (REQUESTS_CA_BUNDLE) the same provider is trusted."""
    import ssl

    from edgewatch.services.broker import _make_tls

    files = _make_tls(tmp_path, [])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files["server_cert"], files["server_key"])
    sink.server.socket = ctx.wrap_socket(sink.server.socket, server_side=True)
    base = f"https://localhost:{sink.port}"
    untrusted = TwilioSMS(sink.account_sid, sink.auth_token, FROM, TO, api_base=base, timeout=2)
    with pytest.raises(OutcomeUnknown, match="SSLError"):
        untrusted.send(TO[0], Message("s", "never ref n", ref="n"))
    assert sink.requests == []
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(files["ca"]))
    sms = TwilioSMS(sink.account_sid, sink.auth_token, FROM, TO, api_base=base, timeout=2)
    assert sms.send(TO[0], Message("s", "one ref r1", ref="r1")) == sink.requests[-1]["sid"]
    assert [r["Body"] for r in sink.requests] == ["one ref r1"]
