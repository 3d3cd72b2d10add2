"""The collector against a real Mosquitto (TLS, passwords, device ACL) and real SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import uuid

import pytest
from edgewatch.core.schema import FLOAT32_MAX, gap_seq
from edgewatch.core.settings import MqttSettings
from edgewatch.core.store import Store
from edgewatch.services.broker import DEVICE_ACL, Broker
from edgewatch.services.collector import Collector, _Handoff, parse_devices
from hostkit import HOST_PW, Board, alert, service_env, spawn, telemetry, wait_until

PG = "postgresql://postgres@127.0.0.1:5432/test"
MY = "mysql://root@127.0.0.1:3306/test"


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _open(url: str) -> Store:
    prefix = f"ew{uuid.uuid4().hex[:10]}_"
    try:
        return Store(url, prefix)
    except Exception as exc:
        pytest.skip(f"{url} not usable here: {exc}")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ew.db"
    elif request.param == "postgresql":
        if not _reachable(5432):
            pytest.skip("no PostgreSQL on 127.0.0.1:5432 on this machine")
        url = PG
    else:
        if not _reachable(3306):
            pytest.skip("no MariaDB/MySQL on 127.0.0.1:3306 on this machine")
        url = MY
    s = _open(url)
    yield s
    s.drop()
    s.close()


@pytest.fixture
def broker(tmp_path):
    users = {"edgewatch": HOST_PW, "gh-01": "pw1", "gh-02": "pw2"}
    with Broker(tmp_path / "mq", users=users, acl=DEVICE_ACL, tls=True) as b:
        yield b


def _mqtt(broker, tls=True) -> MqttSettings:
    return MqttSettings(port=broker.tls_port if tls else broker.port, tls=tls,
                        username="edgewatch", password=HOST_PW,
                        ca_file=broker.ca_file if tls else None)


BAD = [b"{oops", b"\xff\xfe", b"[]", b"x" * 5000,
       b'{"v": 1, "device": "gh-01", "seq": 900, "t": null, "values": {"temperature": NaN}}',
       b'{"v": 1, "device": "gh-01", "seq": 901, "t": null, "values": {"temperature": 1e999}}',
       # finite as a double, not as the board's float32: no reading (detect made it inf)
       b'{"v": 1, "device": "gh-01", "seq": 906, "t": null, "values": {"temperature": 1e300}}',
       json.dumps(dict(telemetry("gh-01", 902), seq="902")).encode(),
       json.dumps(dict(telemetry("gh-01", 903), v=2)).encode(),
       json.dumps(telemetry("gh-02", 904)).encode(),  # payload names another device
       json.dumps(telemetry("gh-01", 905, temperature="warm")).encode()]


def test_every_sample_stored_exactly_once_bad_input_never(store, broker):
    col = Collector(store, _mqtt(broker), devices=frozenset({"gh-01", "gh-02"}), batch=64,
                    flush_ms=20, ha_discovery=False).start()
    b1 = Board(broker, "gh-01", "pw1", tls=True, will=True)
    b2 = Board(broker, "gh-02", "pw2", tls=True)
    host = Board(broker, "edgewatch", HOST_PW, tls=True)
    try:
        for seq in range(50):
            b1.publish("telemetry", telemetry("gh-01", seq, t=1.7e9 + seq, temperature=20 + seq / 10,
                                              humidity=40.0))
            b2.publish("telemetry", telemetry("gh-02", seq, temperature=None, humidity=50 - seq))
        for seq in range(40, 50):  # the board's outbox replays after a reconnect
            b1.publish("telemetry", telemetry("gh-01", seq, t=1.7e9 + seq, temperature=99.0))
        b1.publish("alert", alert("gh-01", 50))
        b1.publish("alert", alert("gh-01", 50))
        for p in BAD:
            b1.publish("telemetry", p)
        b1.publish("telemetry", telemetry("gh-02", 777), device="gh-02")  # ACL: never delivered
        host.publish("telemetry", telemetry("intruder", 1), device="intruder")  # not on the list
        b1.publish("status", {"v": 1, "device": "gh-01", "seq": 51, "t": None, "state": "online",
                              "fw": "0.1.0", "model": "3f2a9c1e", "heap_free": 61234,
                              "outbox": 3, "dropped": 0, "uptime": 60}, retain=True)
        wait_until(lambda: col.metrics.value("edgewatch_messages_received_total",
                                             kind="telemetry") >= 100 + 10 + len(BAD) + 1,
                   what="all telemetry received")
        wait_until(lambda: store.count() == 100 and store.count("alerts") == 1
                   and (store.device_status("gh-01") or {}).get("outbox") == 3, what="rows stored")
        b1.vanish()
        wait_until(lambda: store.device_status("gh-01")["state"] == "offline", timeout=15,
                   what="last will stored")
        m = col.metrics
        assert m.value("edgewatch_records_duplicate_total", kind="telemetry") == 10
        assert m.value("edgewatch_records_duplicate_total", kind="alert") == 1
        # the collector's own series: readings, alerts by device and rule (a replay counted once)
        assert m.value("edgewatch_reading", device="gh-01", channel="temperature") == \
            pytest.approx(24.9)
        assert m.value("edgewatch_reading", device="gh-02", channel="humidity") == 1.0
        assert m.value("edgewatch_alerts_total", device="gh-01", rule="band") == 1
        from prometheus_client import generate_latest

        text = generate_latest(m.registry).decode()
        assert "edgewatch_device_last_seen_timestamp_seconds{" in text
        for bridge_only in ("edgewatch_notifications", "edgewatch_outbox_pending",
                            "edgewatch_alert_to_send_seconds", "edgewatch_alerts_suppressed"):
            assert bridge_only not in text
        rej = {r: m.value("edgewatch_messages_rejected_total", reason=r)
               for r in ("json", "encoding", "oversized", "nonfinite", "invalid", "version",
                         "device_mismatch", "unknown_device")}
        assert rej == {"json": 2, "encoding": 1, "oversized": 1, "nonfinite": 3, "invalid": 2,
                       "version": 1, "device_mismatch": 1, "unknown_device": 1}
        assert store.count() == 100  # nothing of the bad input, nothing twice
        rows = store.query("SELECT device, seq, t, temperature, humidity, anomaly, faults "
                           "FROM {telemetry} ORDER BY device, seq")
        assert [r[1] for r in rows] == list(range(50)) * 2
        g1 = [r for r in rows if r[0] == "gh-01"]
        assert g1[49][2] == pytest.approx(1.7e9 + 49) and g1[49][3] == pytest.approx(24.9)
        g2 = [r for r in rows if r[0] == "gh-02"]
        assert all(r[3] is None for r in g2) and g2[10][4] == pytest.approx(40.0)
        assert all(r[2] > 1.7e9 for r in g2)  # no board clock: the arrival time
        a = store.query("SELECT device, seq, sample, {ph}, channel, value, lo, hi FROM {alerts}"
                        .replace("{ph}", store.d.q("rule")))
        assert a == [("gh-01", 50, 49, "band", "temperature", 35.2, 21.1, 21.7)]
        st = store.device_status("gh-01")
        assert (st["fw"], st["model"], st["heap_free"], st["outbox"]) == ("0.1.0", "3f2a9c1e",
                                                                          61234, 3)
        assert store.device_status("intruder") is None
    finally:
        for b in (b2, host):
            b.close()
        col.stop()


def test_killed_collector_loses_nothing_and_stores_nothing_twice(tmp_path, broker):
    db = tmp_path / "crash.db"
    env = service_env(EDGEWATCH_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
                      MQTT_USERNAME="edgewatch", MQTT_PASSWORD=HOST_PW)
    args = ["collect", "--db", f"sqlite:///{db}", "--batch", "50", "--no-discovery"]
    log = tmp_path / "collect.log"
    p1 = spawn(args, env, log)
    host = Board(broker, "edgewatch", HOST_PW)
    p2 = None
    try:
        wait_until(lambda: "collecting into" in log.read_text(), what="collector start")
        for seq in range(400):
            host.publish("telemetry", telemetry(f"d{seq % 4}", seq), device=f"d{seq % 4}")
        p1.send_signal(signal.SIGKILL)
        p1.wait(10)
        for seq in range(400, 600):
            host.publish("telemetry", telemetry(f"d{seq % 4}", seq), device=f"d{seq % 4}")
        for seq in range(0, 600, 7):  # replays mixed in
            host.publish("telemetry", telemetry(f"d{seq % 4}", seq), device=f"d{seq % 4}")
        p2 = spawn(args, env, log)
        store = Store(f"sqlite:///{db}")
        wait_until(lambda: store.count() >= 600, timeout=30, what="600 rows")
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(20) == 0
        assert store.count() == 600
        assert store.query("SELECT COUNT(DISTINCT seq) FROM {telemetry}") == [(600,)]
        assert HOST_PW not in log.read_text()
    finally:
        host.close()
        for p in (p1, p2):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)


def test_two_collectors_in_a_group_share_the_work(tmp_path, broker):
    url = f"sqlite:///{tmp_path}/shared.db"
    s1, s2 = Store(url), Store(url)
    c1 = Collector(s1, _mqtt(broker, tls=False), group="g", client_id="col-1",
                   ha_discovery=False).start()
    c2 = Collector(s2, _mqtt(broker, tls=False), group="g", client_id="col-2",
                   ha_discovery=False).start()
    host = Board(broker, "edgewatch", HOST_PW)
    try:
        for seq in range(300):
            host.publish("telemetry", telemetry(f"d{seq % 10}", seq), device=f"d{seq % 10}")
        wait_until(lambda: s1.count() == 300, what="300 rows")
        n1 = c1.metrics.value("edgewatch_records_stored_total", kind="telemetry")
        n2 = c2.metrics.value("edgewatch_records_stored_total", kind="telemetry")
        assert n1 + n2 == 300 and n1 > 0 and n2 > 0
    finally:
        host.close()
        c1.stop()
        c2.stop()


def test_device_list_and_bad_urls_are_user_errors(tmp_path):
    from edgewatch.core.errors import UserError

    f = tmp_path / "devices.txt"
    f.write_text("gh-01  # greenhouse\n\ngh-02\n")
    assert parse_devices(str(f)) == {"gh-01", "gh-02"}
    assert parse_devices("a,b") == {"a", "b"} and parse_devices(None) is None
    with pytest.raises(UserError, match="not a device id"):
        parse_devices("ok,bad id")
    with pytest.raises(UserError, match="unknown database scheme"):
        Store("oracle://x/y")
    with pytest.raises(UserError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/db: cannot open"):
        Store("postgresql://u:hunter22@127.0.0.1:1/db")


@pytest.mark.parametrize("extra,args,message", [
    ({}, ["--batch", "0"], "--batch 0: expected at least 1"),
    ({}, ["--batch", "-5"], "--batch -5"),
    ({}, ["--flush-ms", "-1"], "--flush-ms -1: expected milliseconds >= 0"),
    ({}, ["--gap-wait", "nan"], "--gap-wait nan: expected a finite number"),
    ({}, ["--gap-wait", "inf"], "--gap-wait inf"),
    ({}, ["--gap-wait", "-1"], "--gap-wait -1.0"),
    # were tracebacks
    ({}, ["--broker", "mqtt://u:S3CRETPW@[::1"], "mqtt://u:***@[::1: not an MQTT URL"),
    ({"EDGEWATCH_MQTT_URL": "mqtt://u:S3CRETPW@[::1"}, [], "mqtt://u:***@[::1: not an MQTT URL"),
    ({}, ["--metrics-port", "99999"], "--metrics-port 99999: expected a TCP port"),
    ({}, ["--metrics-port", "-3"], "--metrics-port -3: expected a TCP port"),
    ({"EDGEWATCH_METRICS_PORT": "99999"}, [], "EDGEWATCH_METRICS_PORT='99999'"),
    ({"EDGEWATCH_METRICS_PORT": "x"}, [], "EDGEWATCH_METRICS_PORT='x': not a port number"),
    ({}, ["--metrics-addr", "999.1.1.1", "--metrics-port", "1"], "--metrics-addr 999.1.1.1"),
    ({}, ["--log-level", "LOUD"], "--log-level LOUD: expected one of debug, info"),
    # were accepted: a prefix or group with wildcards subscribes to what it should not
    ({}, ["--prefix", "a/#"], "--prefix 'a/#': MQTT wildcards (+, #) are not allowed"),
    ({"EDGEWATCH_PREFIX": "+"}, [], "EDGEWATCH_PREFIX='+': MQTT wildcards"),
    ({}, ["--group", "#"], "group '#' (--group or EDGEWATCH_GROUP): a group name cannot"),
    ({"EDGEWATCH_GROUP": "a/b"}, [], "group 'a/b'"),
])
def test_command_line_mistakes_are_one_line(tmp_path, extra, args, message):
    """One line naming the option and what is wrong (no broker listens on port 1: each is
    found before a connection is tried); the URL's password never shown."""
    import subprocess

    from hostkit import edgewatch, one_line_error

    env = service_env(**{"EDGEWATCH_MQTT_URL": "mqtt://127.0.0.1:1", **extra})
    r = subprocess.run(edgewatch("collect", "--db", f"sqlite:///{tmp_path}/ew.db", *args),
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    one_line_error(r, "collect", message)
    assert "S3CRET" not in r.stderr


def test_database_connection_lost_mid_run_loses_nothing(tmp_path, broker):
    if not _reachable(5432):
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 on this machine")
    store = _open(PG)
    col = Collector(store, _mqtt(broker, tls=False), ha_discovery=False, flush_ms=10).start()
    host = Board(broker, "edgewatch", HOST_PW)
    try:
        for seq in range(50):
            host.publish("telemetry", telemetry("pg-1", seq), device="pg-1")
        wait_until(lambda: col.metrics.value("edgewatch_records_stored_total",
                                             kind="telemetry") == 50, what="first 50")
        # the server drops the collector's connection (a database restart, a failover)
        pid = col.store.conn.info.backend_pid
        admin = Store(PG, store.names["telemetry"][: -len("telemetry")])
        admin.query("SELECT pg_terminate_backend({ph})", (pid,))
        for seq in range(50, 100):
            host.publish("telemetry", telemetry("pg-1", seq), device="pg-1")
        wait_until(lambda: col.metrics.value("edgewatch_records_stored_total",
                                             kind="telemetry") == 100, timeout=20,
                   what="the rest after reconnecting")
        assert admin.count() == 100
        assert col.store.conn.info.backend_pid != pid
        admin.close()
    finally:
        host.close()
        col.stop()
        col.store.drop()
        col.store.close()


def test_handoff_between_threads_loses_nothing_and_keeps_order():
    """The paho->writer deque: a fast producer and a batching consumer, real threads."""
    q, n, got = _Handoff(), 50_000, []

    def produce():
        for i in range(n):
            q.put(i)
            if i % 5000 == 0:
                time.sleep(0.01)  # pauses make the consumer go idle and wait on the event

    t = threading.Thread(target=produce)
    t.start()
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        batch = q.take(batch=1000, flush_s=0.005, idle_s=0.2)
        assert len(batch) <= 1000
        got.extend(batch)
    t.join()
    assert got == list(range(n)) and q.empty() and q.qsize() == 0
    t0 = time.monotonic()
    assert q.take(batch=10, flush_s=0.0, idle_s=0.1) == []  # nothing: waits idle_s, then []
    assert 0.05 < time.monotonic() - t0 < 2


def test_batch_write_stores_every_float_bit_exact_and_counts_new_rows(store):
    """Store.write's batch path (PostgreSQL: COPY into a staging table, then one INSERT ...
    SELECT) keeps every value exactly and reports only new rows: a replayed batch, a batch
    mixing new and replayed rows, two batches in one run of the same staging table."""
    import random

    from edgewatch.core.schema import parse

    rnd = random.Random(7)
    # the largest reading the schema takes is float32's (a board's); the smallest doubles too
    specials = [0.1, 1 / 3, 2.0**-1022, 5e-324, FLOAT32_MAX, -FLOAT32_MAX, -21.46, 1e-310]

    def rec(dev, seq):
        x = specials[seq % len(specials)] if seq % 3 == 0 else rnd.uniform(-1e6, 1e6)
        y = rnd.uniform(-50, 50)
        msg = {"v": 1, "device": dev, "epoch": 9, "seq": seq, "t": 1.7e9 + seq / 7,
               "values": {"temperature": x, "humidity": y},
               "pred": {"temperature": y / 3, "humidity": None},
               "band": {"temperature": [y / 3 - 1, y / 3 + 1], "humidity": None},
               "anomaly": seq % 5 == 0, "faults": ["band"] if seq % 5 == 0 else [],
               "model": "3f2a9c1e"}
        return parse(f"edgewatch/{dev}/telemetry", json.dumps(msg).encode(), "edgewatch", 1.8e9)

    first = [(rec(f"d{i % 7}", i), 1.8e9 + i) for i in range(300)]
    assert store.write(first, []) == (300, 0)
    assert store.write(first, []) == (0, 0)  # replayed: nothing new
    mixed = first[100:150] + [(rec(f"d{i % 7}", i), 1.8e9 + i) for i in range(300, 340)]
    assert store.write(mixed, []) == (40, 0)
    want = {(r.device, r.seq): r for r, _ in first + mixed}
    rows = store.query("SELECT device, seq, temperature, humidity, _pred_temperature, "
                       "_lo_temperature, _hi_temperature, _pred_humidity, anomaly, faults, t "
                       "FROM {telemetry}", ())
    assert len(rows) == 340
    for dev, seq, temp, hum, p, lo, hi, ph, anomaly, faults, t in rows:
        r = want[(dev, seq)]
        assert (temp, hum, p, lo, hi, ph, t) == (
            r.values["temperature"], r.values["humidity"], r.pred["temperature"],
            *r.band["temperature"], None, r.t)
        assert repr(temp) == repr(r.values["temperature"])  # the same bits
        assert (bool(anomaly), faults) == (r.anomaly, ",".join(r.faults))


def test_deferred_device_rows_keep_the_order_of_messages(store, monkeypatch):
    """Store.write(defer_devices=True) (a collector with a backlog) writes the devices table
    at most once a second; what it holds back comes out before a later status (an offline
    will after them stays offline), with flush_devices, and never as an older sample."""
    from edgewatch.core.schema import parse

    def tel(seq, t, temp):
        msg = {"v": 1, "device": "d1", "epoch": 2, "seq": seq, "t": t,
               "values": {"temperature": temp, "humidity": 40.0}, "model": "3f2a9c1e"}
        return parse("edgewatch/d1/telemetry", json.dumps(msg).encode(), "edgewatch", 1.8e9), 1.8e9 + seq

    def latest():
        rows = store.query("SELECT state, latest_t, last_seen, latest FROM {devices} "
                           "WHERE device = {ph}", ("d1",))
        return rows[0] if rows else None

    monkeypatch.setattr("edgewatch.core.store.DEVICE_ROWS_EVERY", 3600.0)  # none falls due
    assert store.write([tel(1, 100.0, 20.0)], [], defer_devices=True) == (1, 0)
    assert latest()[1] == 100.0  # the first write is due: written
    store.write([tel(2, 101.0, 21.0)], [], defer_devices=True)
    store.write([tel(4, 103.0, 23.0), tel(3, 102.0, 22.0)], [], defer_devices=True)
    assert latest()[1] == 100.0  # held back (the telemetry rows are stored)
    assert len(store.query("SELECT seq FROM {telemetry}", ())) == 4
    store.flush_devices()
    state, t, seen, row = latest()
    assert (state, t, seen) == ("online", 103.0, 1.8e9 + 4)
    assert json.loads(row)["values"]["temperature"] == 23.0  # the newest, not the last to come
    store.flush_devices()  # nothing pending: nothing written, nothing fails
    # a sample held back, then the board's last will: offline wins, the sample is kept
    store.write([tel(5, 104.0, 24.0)], [], defer_devices=True)
    will = parse("edgewatch/d1/status", b'{"v": 1, "device": "d1", "state": "offline"}',
                 "edgewatch", 1.8e9 + 6)
    store.write([], [], [(will, 1.8e9 + 6)], defer_devices=True)
    state, t, seen, _ = latest()
    assert (state, t, seen) == ("offline", 104.0, 1.8e9 + 6)
    store.write([tel(6, 105.0, 25.0)], [])  # not deferred: written with the batch
    assert latest()[:2] == ("online", 105.0)


def test_device_ids_differing_in_case_are_two_devices(store):
    """Ids compare byte for byte in every database: on MariaDB's default collation gh-01's
    samples were dropped as replays of GH-01's and the two shared one devices row."""
    from edgewatch.core.schema import parse

    def tel(dev, temp):
        msg = {"v": 1, "device": dev, "epoch": 3, "seq": 1, "t": 1.7e9,
               "values": {"temperature": temp, "humidity": 40.0}}
        return parse(f"edgewatch/{dev}/telemetry", json.dumps(msg).encode(), "edgewatch", 1.7e9), 1.7e9

    assert store.write([tel("GH-01", 11.0)], []) == (1, 0)
    assert store.write([tel("gh-01", 22.0)], []) == (1, 0)
    rows = store.query("SELECT device, temperature FROM {telemetry} ORDER BY temperature", ())
    assert [tuple(r) for r in rows] == [("GH-01", 11.0), ("gh-01", 22.0)]
    devs = store.query("SELECT device, latest FROM {devices} ORDER BY latest_t, device", ())
    assert sorted((d, json.loads(js)["values"]["temperature"]) for d, js in devs) == \
        [("GH-01", 11.0), ("gh-01", 22.0)]


def test_a_sample_from_a_clock_years_ahead_does_not_stay_the_latest(store):
    """A board's `t` orders its samples, but no later than its arrival + CLOCK_SKEW_S: one
    sample stamped in the year 5000 used to stay the device's newest for good."""
    from edgewatch.core.schema import parse

    def tel(seq, t, received, temp):
        msg = {"v": 1, "device": "d1", "epoch": 1, "seq": seq, "t": t,
               "values": {"temperature": temp, "humidity": 40.0}}
        return parse("edgewatch/d1/telemetry", json.dumps(msg).encode(), "edgewatch", received), received

    store.write([tel(1, 1.7e9, 1.7e9, 20.0)], [])
    store.write([tel(2, 9.5e10, 1.7e9 + 60, 21.0)], [])  # the clock jumped ~3,000 years ahead
    store.write([tel(3, 1.7e9 + 600, 1.7e9 + 600, 22.0)], [])  # and back, ten minutes later
    (latest,) = store.query("SELECT latest FROM {devices} WHERE device = {ph}", ("d1",))
    assert json.loads(latest[0])["values"]["temperature"] == 22.0


def test_late_records_of_the_previous_epoch_never_set_the_epoch_back(store, broker):
    """A re-flashed board (a new epoch, seq from 0), then records of its previous flash
    delivered late (a redelivered, unacknowledged batch): each record is stored once, and the
    device's epoch stays the new one, in the devices table and in the collector's own view,
    also for a collector started afterwards (which raises no second `epoch` alert for them).
    Epochs are 31 random bits (firmware/outbox_boot.py), so the newer one need not be the
    larger: here it is the smaller, and "keep the highest" would be as wrong as "keep the last"."""
    old, new = 900_000_001, 12_345

    def send(board, epoch, seqs):
        for seq in seqs:
            board.publish("telemetry", {**telemetry("gh-01", seq, temperature=epoch % 1000 + seq,
                                                    humidity=40.0), "epoch": epoch})

    def epoch_alerts():
        rule = store.d.q("rule")
        return store.query(f"SELECT epoch, seq FROM {{alerts}} WHERE {rule} = 'epoch'")

    b = Board(broker, "gh-01", "pw1", tls=True)
    col = Collector(store, _mqtt(broker), batch=64, flush_ms=20, ha_discovery=False).start()
    col2 = None
    try:
        send(b, old, range(5))
        wait_until(lambda: store.count() == 5, what="the first flash's records")
        send(b, new, range(3))
        wait_until(lambda: store.count() == 8 and epoch_alerts(), what="the new epoch's records")
        assert store.device_status("gh-01")["epoch"] == new
        send(b, old, range(5, 8))  # the previous flash's records, late
        wait_until(lambda: store.count() == 11, what="the late records")
        col.stop()
        assert store.device_status("gh-01")["epoch"] == new
        assert col.devices.get("gh-01")["epoch"] == new
        assert col.metrics.value("edgewatch_device_new_epochs_total") == 1
        # a collector (re)started now knows the device's epoch only from the database
        col2 = Collector(store, _mqtt(broker), batch=64, flush_ms=20, ha_discovery=False).start()
        send(b, old, [8])
        send(b, new, [3])
        send(b, old, [9])  # late ones around a new one, likely in one batch
        wait_until(lambda: store.count() == 14, what="the records after the restart")
        col2.stop()
        assert store.device_status("gh-01")["epoch"] == new
        assert col2.devices.get("gh-01")["epoch"] == new
        assert col2.metrics.value("edgewatch_device_new_epochs_total") == 0
        assert epoch_alerts() == [(new, gap_seq("epoch", 0))]  # the re-flash, once
        rows = store.query("SELECT epoch, seq, temperature FROM {telemetry} ORDER BY epoch, seq")
        want = [(e, s, float(e % 1000 + s)) for e, seqs in ((new, range(4)), (old, range(10)))
                for s in seqs]
        assert sorted(rows) == sorted(want)  # every record once, with its own values
        assert col2.metrics.value("edgewatch_records_duplicate_total", kind="telemetry") == 0
    finally:
        b.close()
        col.stop()
        if col2 is not None:
            col2.stop()


def test_the_stored_epoch_is_the_one_the_device_began_last(store, monkeypatch):
    """Store.write weighs every epoch a batch holds against the stored one, whatever their
    order in the batch and whichever is larger: a late record, alert or status of an epoch the
    board has left never sets it back; a status with no epoch (a last will) keeps it; a new
    epoch's boot status, before any of its samples, is taken."""
    from edgewatch.core.schema import parse

    def rec(kind, epoch, seq, received, **extra):
        msg = {**(telemetry("d1", seq) if kind == "telemetry" else alert("d1", seq)), **extra}
        return parse(f"edgewatch/d1/{kind}", json.dumps({**msg, "epoch": epoch}).encode(),
                     "edgewatch", received), received

    def status(received, **extra):
        msg = {"v": 1, "device": "d1", "state": "online", **extra}
        return parse("edgewatch/d1/status", json.dumps(msg).encode(), "edgewatch", received), \
            received

    def epoch():
        return store.device_status("d1")["epoch"]

    store.write([rec("telemetry", 7, s, 100.0 + s) for s in range(3)], [])
    assert epoch() == 7
    # the re-flashed board's first records (epoch 5) between two late ones of epoch 7
    store.write([rec("telemetry", 7, 3, 200.0), rec("telemetry", 5, 0, 201.0),
                 rec("telemetry", 5, 1, 202.0), rec("telemetry", 7, 4, 203.0)], [])
    assert epoch() == 5
    assert store.epoch_is_older("d1", 7, 5) and not store.epoch_is_older("d1", 5, 7)
    store.write([rec("telemetry", 7, 5, 300.0)], [rec("alert", 7, 6, 301.0)])
    store.write([], [], [status(302.0, epoch=7)])  # its old online status, late
    assert epoch() == 5
    store.write([], [], [status(303.0, state="offline")])  # a last will: no epoch
    assert epoch() == 5
    # held back by a backlog (defer_devices), then flushed: a new epoch, then a late one
    monkeypatch.setattr("edgewatch.core.store.DEVICE_ROWS_EVERY", 3600.0)
    store.write([rec("telemetry", 9, 0, 400.0)], [])
    assert epoch() == 9
    store.write([rec("telemetry", 11, 0, 500.0)], [], defer_devices=True)
    store.write([rec("telemetry", 5, 2, 501.0), rec("telemetry", 9, 1, 502.0)], [],
                defer_devices=True)
    store.flush_devices()
    assert epoch() == 11
    store.write([], [], [status(600.0, epoch=13)])  # re-flashed again: its boot status first
    assert epoch() == 13
    assert store.count() == 12 and store.count("alerts") == 1  # every record, once


def _open_sqlite(path, q, barrier):
    barrier.wait()
    try:
        Store(f"sqlite:///{path}").close()
        q.put("ok")
    except Exception as exc:  # the UserError a collector would exit with
        q.put(str(exc))


def test_collectors_opening_one_new_sqlite_file_at_once_all_start(tmp_path):
    """Two collectors (make cluster's try-it, the cluster bench) opening one new SQLite file
    at the same moment: each gets it. The switch to WAL gave "database is locked" at once
    to all but one (7 of 40 rounds of 4 processes failed before the retry)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for i in range(15):
        q, barrier = ctx.Queue(), ctx.Barrier(4)
        ps = [ctx.Process(target=_open_sqlite, args=(tmp_path / f"db{i}.db", q, barrier))
              for _ in range(4)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(60)
        assert [q.get(timeout=5) for _ in ps] == ["ok"] * 4
