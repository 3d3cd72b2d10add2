"""What the dashboard reads: prediction, band and the newest sample per device stored by the
collector, notification outcomes recorded by the bridge, and old databases migrated in place
(real SQLite, PostgreSQL and MariaDB)."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from edgewatch.core.schema import parse
from edgewatch.core.settings import MqttSettings
from edgewatch.core.store import Store, connect
from edgewatch.services.bridge import Bridge, Outbox
from edgewatch.services.notifiers import DryRunSMS
from hostkit import HOST_PW, Board, alert, wait_until

from tests.services.test_bridge import FROM, TO, _sms, broker, sink  # noqa: F401 (fixtures)
from tests.services.test_collector import MY, PG, _reachable

OLD_TABLES = [  # the tables as the collector created them before this change
    "CREATE TABLE {p}telemetry (device VARCHAR(32) NOT NULL, seq BIGINT NOT NULL, t {r}, "
    "received {r}, anomaly SMALLINT, faults VARCHAR(64), model VARCHAR(8), temperature {r}, "
    "PRIMARY KEY (device, seq))",
    "CREATE TABLE {p}alerts (device VARCHAR(32) NOT NULL, seq BIGINT NOT NULL, t {r}, "
    "received {r}, sample BIGINT, {rule} VARCHAR(16), channel VARCHAR(32), {value} {r}, "
    "lo {r}, hi {r}, pred {r}, model VARCHAR(8), PRIMARY KEY (device, seq))",
    "CREATE TABLE {p}devices (device VARCHAR(32) NOT NULL PRIMARY KEY, state VARCHAR(8), "
    "last_seen {r}, status_seq BIGINT, fw VARCHAR(32), model VARCHAR(8), outbox INTEGER, "
    "heap_free INTEGER, dropped BIGINT, uptime {r}, error VARCHAR(200))",
]


def _url(kind: str, tmp_path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/ew.db"
    port = 5432 if kind == "postgresql" else 3306
    if not _reachable(port):
        pytest.skip(f"no {kind} on 127.0.0.1:{port} on this machine")
    return PG if kind == "postgresql" else MY


def tel(seq: int, t: float, v: float, band: bool = True, device: str = "gh-01"):
    m = {"v": 1, "device": device, "seq": seq, "t": t, "values": {"temperature": v},
         "pred": {"temperature": v - 0.5} if band else None,
         "band": {"temperature": [v - 2, v + 2]} if band else None,
         "anomaly": seq == 3, "faults": ["band"] if seq == 3 else [], "model": "3f2a9c1e"}
    return parse(f"edgewatch/{device}/telemetry", json.dumps(m)), t


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def url(request, tmp_path):
    return _url(request.param, tmp_path)


def test_prediction_band_verdict_and_newest_sample_are_stored(url):
    s = Store(url, f"ew{uuid.uuid4().hex[:8]}_")
    try:
        s.write([tel(1, 100.0, 20.0, band=False), tel(3, 300.0, 23.0)], [])
        s.write([tel(2, 200.0, 21.0)], [])  # late: older than the newest stored sample
        rows = s.query("SELECT seq, temperature, _pred_temperature, _lo_temperature, "
                       "_hi_temperature, anomaly, faults FROM {telemetry} ORDER BY seq")
        assert rows == [(1, 20.0, None, None, None, 0, ""), (2, 21.0, 20.5, 19.0, 23.0, 0, ""),
                        (3, 23.0, 22.5, 21.0, 25.0, 1, "band")]
        assert s.channels == {"temperature"}  # the band is no channel for training/export
        (lt, latest), = s.query("SELECT latest_t, latest FROM {devices}")
        assert lt == 300.0 and json.loads(latest)["seq"] == 3
        assert json.loads(latest)["band"] == {"temperature": [21.0, 25.0]}
        row = {"nkey": "k1", "device": "gh-01", "alert_seq": 7, "kind": "alert",
               "notifier": "sms", "recipient": "…0001", "state": "queued", "attempts": 0,
               "updated": 1.0}
        s.write_notifications([row])
        s.write_notifications([{**row, "state": "sent", "ref": "SM1", "attempts": 1}])
        s.write_notifications([{**row, "state": "sent", "attempts": 1}])  # the ref is kept
        assert s.query("SELECT state, ref, attempts FROM {notifications}") == [("sent", "SM1", 1)]
    finally:
        s.drop()
        s.close()


def test_an_old_database_migrates_in_place(url):
    p = f"ew{uuid.uuid4().hex[:8]}_"
    conn, d = connect(url)
    cur = conn.cursor()
    for sql in OLD_TABLES:
        cur.execute(sql.format(p=p, r=d.real, rule=d.q("rule"), value=d.q("value")))
    cur.execute(f"INSERT INTO {p}telemetry (device, seq, t, received, anomaly, faults, model, "
                f"temperature) VALUES ('gh-01', 1, 10, 10, 0, '', NULL, 19.5)")
    cur.execute(f"INSERT INTO {p}devices (device, state, last_seen) VALUES ('gh-01', "
                f"'online', 10)")
    conn.commit()
    conn.close()
    s = Store(url, p)
    try:
        s.write([tel(2, 20.0, 21.0)], [])
        assert s.query("SELECT seq, temperature, _pred_temperature FROM {telemetry} "
                       "ORDER BY seq") == [(1, 19.5, None), (2, 21.0, 20.5)]
        assert s.query("SELECT state, latest_t FROM {devices}") == [("online", 20.0)]
        assert s.query("SELECT COUNT(*) FROM {notifications}") == [(0,)]
        name = f"{p}telemetry_device_t"
        if s.d.name == "sqlite":
            idx = s.query(f"SELECT name FROM sqlite_master WHERE type = 'index' AND name = '{name}'")
        elif s.d.name == "postgresql":
            idx = s.query(f"SELECT indexname FROM pg_indexes WHERE indexname = '{name}'")
        else:
            idx = s.query("SELECT index_name FROM information_schema.statistics WHERE "
                          f"table_schema = DATABASE() AND index_name = '{name}'")
        assert idx, "no (device, t) index after migration"
        Store(url, p).close()  # opening again is a no-op
    finally:
        s.drop()
        s.close()


def _bridge(tmp_path, broker, notifiers, results, **policy):  # noqa: F811
    out = Outbox(tmp_path / "b.db", **{"cooldown": 0, "max_per_minute": 0, **policy})
    mq = MqttSettings(port=broker.port, username="edgewatch", password=HOST_PW)
    return Bridge(out, notifiers, mq, retry_base=0.2, retry_cap=1.0, results=results).start()


def test_bridge_records_sent_dead_and_provider_reference(tmp_path, broker, sink):  # noqa: F811
    sink.reject.add(TO[1])
    results = Store(f"sqlite:///{tmp_path}/ew.db")
    b = _bridge(tmp_path, broker, [_sms(sink)], results)
    dev = Board(broker, "gh-01", "pw1")
    try:
        dev.publish("alert", alert("gh-01", 5))
        rows = wait_until(lambda: (r := results.query(
            "SELECT device, alert_seq, notifier, recipient, state, ref, error FROM "
            "{notifications} ORDER BY recipient")) and all(x[4] in ("sent", "dead") for x in r)
            and len(r) == 2 and r, what="both outcomes recorded")
        sent, dead = rows
        assert sent[:5] == ("gh-01", 5, "sms", "…0001", "sent")
        assert sent[5] and sent[5].startswith("SM")  # Twilio's message SID
        assert dead[:5] == ("gh-01", 5, "sms", "…0002", "dead") and "400" in dead[6]
        text = json.dumps(results.query("SELECT * FROM {notifications}"))
        assert TO[0] not in text and TO[1] not in text  # numbers are not copied
    finally:
        dev.close()
        b.stop()
        results.close()


def test_bridge_records_dry_run_and_cooldown(tmp_path, broker):  # noqa: F811
    results = Store(f"sqlite:///{tmp_path}/ew.db")
    b = _bridge(tmp_path, broker, [DryRunSMS(["+15550000042"], io.StringIO())], results,
                cooldown=300)
    dev = Board(broker, "gh-01", "pw1")
    try:
        dev.publish("alert", alert("gh-01", 1))
        dev.publish("alert", alert("gh-01", 2))
        wait_until(lambda: results.query("SELECT alert_seq, state FROM {notifications} "
                                         "ORDER BY alert_seq") == [(1, "dry-run"), (2, "cooldown")],
                   what="dry run and cooldown recorded")
    finally:
        dev.close()
        b.stop()
        results.close()
