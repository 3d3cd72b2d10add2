"""Boot epochs: a board whose flash was erased (seq from 0 again) is stored and notified, not
taken for a replay; databases and bridge outboxes of the version before epochs migrate in place."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sqlite3

from edgewatch.board import fwrun
from edgewatch.core.schema import parse_alert
from edgewatch.core.settings import MqttSettings
from edgewatch.core.store import Store
from edgewatch.services.bridge import Bridge, Outbox
from edgewatch.services.broker import Broker
from edgewatch.services.collector import Collector
from edgewatch.services.notifiers import Console
from figures import record
from hostkit import alert, wait_until

from tests.firmware.test_firmware_e2e import sim, summary
from tests.services.test_collector import store  # noqa: F401 (fixture: SQLite, PostgreSQL, MariaDB)

BOARD = "esp32-devkitc-dht22"


def _run_board(flash_dir, broker, samples, fault_row):
    cfg = {"period_ms": 40, "retry_ms": 0, "stop_after": samples, "drain_ms": 20000,
           "backoff": {"min_ms": 200, "max_ms": 2000}}
    faults = [{"kind": "range", "row": fault_row, "count": 1, "channel": "temperature",
               "value": 150.0}]
    flash = fwrun.prepare(flash_dir, "ep-1", BOARD, f"mqtt://127.0.0.1:{broker.port}",
                          sim=sim(faults=faults), **cfg)
    proc = fwrun.run(flash, BOARD, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return summary(proc.stdout)


def test_reflashed_board_is_stored_and_notified_not_discarded(tmp_path):
    sms = io.StringIO()
    with Broker(tmp_path / "mq") as broker:
        mq = MqttSettings(port=broker.port)
        st = Store(f"sqlite:///{tmp_path}/ew.db")
        col = Collector(st, mq, batch=64, flush_ms=20, ha_discovery=False).start()
        bridge = Bridge(Outbox(tmp_path / "o.db", cooldown=0, max_per_minute=0),
                        [Console(sms)], mq, retry_base=0.2, retry_cap=1.0).start()
        try:
            first = _run_board(tmp_path / "flash", broker, 60, 10)
            wait_until(lambda: st.count() == 60, 20, what="first life stored")
            shutil.rmtree(tmp_path / "flash" / "outbox.d")  # `make flash` erases the flash
            second = _run_board(tmp_path / "flash", broker, 30, 10)
            assert second["next_seq"] < first["next_seq"]  # the seqs of the two lives overlap
            # the board's alerts, and the collector's one `epoch` alert (docs/messages.md, Gaps)
            n_alerts = first["alerts"] + second["alerts"] + 1
            with contextlib.suppress(TimeoutError):  # counted below: the loss is the figure
                wait_until(lambda: st.count() == 90, 20, what="second life stored")
                wait_until(lambda: st.count("alerts") == n_alerts, 20, what="every alert stored")
                wait_until(lambda: sms.getvalue().count("ALERT") == n_alerts, 20,
                           what="every alert notified")
            record("re-flashed board: samples not stored", 90 - st.count())
            record("re-flashed board: alerts not notified",
                   n_alerts - sms.getvalue().count("ALERT"))
            assert st.count() == 90 and st.count("alerts") == n_alerts
            assert sms.getvalue().count("ALERT") == n_alerts and second["alerts"] >= 1
            epochs = st.query("SELECT DISTINCT epoch FROM {telemetry}")
            assert len(epochs) == 2 and all(e[0] > 0 for e in epochs)
            assert st.device_status("ep-1")["epoch"] == max(
                st.query("SELECT epoch, MAX(received) FROM {telemetry} GROUP BY epoch"),
                key=lambda r: r[1])[0]
            assert col.metrics.value("edgewatch_device_new_epochs_total") == 1
            assert st.query("SELECT COUNT(*) FROM {alerts} WHERE rule = 'epoch'") == [(1,)]
            assert col.devices.get("ep-1")["epoch"] == st.device_status("ep-1")["epoch"]
        finally:
            bridge.stop()
            col.stop()
            st.close()


OLD_TEL = ("CREATE TABLE {t} (device VARCHAR(32) NOT NULL, seq BIGINT NOT NULL, t {r}, "
           "received {r}, anomaly SMALLINT, faults VARCHAR(64), model VARCHAR(8), "
           "temperature {r}, PRIMARY KEY (device, seq))")
OLD_ALERT = ("CREATE TABLE {t} (device VARCHAR(32) NOT NULL, seq BIGINT NOT NULL, t {r}, "
             "received {r}, sample BIGINT, {rule} VARCHAR(16), channel VARCHAR(32), {value} {r}, "
             "lo {r}, hi {r}, pred {r}, model VARCHAR(8), PRIMARY KEY (device, seq))")
OLD_DEV = ("CREATE TABLE {t} (device VARCHAR(32) NOT NULL PRIMARY KEY, state VARCHAR(8), "
           "last_seen {r}, status_seq BIGINT, fw VARCHAR(32), model VARCHAR(8), outbox INTEGER, "
           "heap_free INTEGER, dropped BIGINT, uptime {r}, error VARCHAR(200))")


def test_store_of_the_version_before_epochs_migrates_in_place(store):  # noqa: F811
    url, prefix = store.url, store.names["telemetry"][: -len("telemetry")]
    store.drop()
    d, cur = store.d, store.conn.cursor()
    cur.execute(OLD_TEL.format(t=store.t_tel, r=d.real))
    cur.execute(OLD_ALERT.format(t=store.t_alert, r=d.real, rule=d.q("rule"), value=d.q("value")))
    cur.execute(OLD_DEV.format(t=store.t_dev, r=d.real))
    cur.execute(f"INSERT INTO {store.t_tel} (device, seq, t, received, temperature) "
                f"VALUES ('gh-01', 7, 1, 1, 20.5)")
    cur.execute(f"INSERT INTO {store.t_alert} (device, seq, t, received, sample, {d.q('rule')}) "
                f"VALUES ('gh-01', 8, 1, 1, 7, 'band')")
    store.conn.commit()
    new = Store(url, prefix)  # opens the old tables: migrated
    try:
        assert new.query("SELECT device, epoch, seq, temperature FROM {telemetry}") == [
            ("gh-01", 0, 7, 20.5)]
        from edgewatch.core.schema import parse_telemetry
        from hostkit import telemetry

        old = parse_telemetry(telemetry("gh-01", 7))  # older firmware, replayed: epoch 0
        fresh = parse_telemetry({**telemetry("gh-01", 7), "epoch": 99})  # re-flashed board
        a = parse_alert({**alert("gh-01", 8), "epoch": 99})
        assert new.write([(old, 5.0), (fresh, 5.0)], [(a, 5.0)]) == (1, 1)
        assert new.count() == 2 and new.count("alerts") == 2
        assert new.device_status("gh-01")["epoch"] == 99
    finally:
        new.close()


def test_bridge_outbox_of_the_version_before_epochs_migrates(tmp_path):
    path = tmp_path / "o.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE seen (device TEXT NOT NULL, seq INTEGER NOT NULL, received REAL,"
                     " outcome TEXT, PRIMARY KEY (device, seq));"
                     "INSERT INTO seen VALUES ('gh-01', 3, 1.0, 'sent');")
    db.close()
    box = Outbox(path, cooldown=0, max_per_minute=0)
    note = Console(io.StringIO())
    replay = parse_alert(alert("gh-01", 3))  # the same alert again: still a replay
    reflashed = parse_alert({**alert("gh-01", 3), "epoch": 42})
    assert box.add_alerts([(replay, 2.0), (reflashed, 2.0)], [note]) == ["replay", "sent"]


def test_new_epoch_is_logged_at_warning(tmp_path, caplog):
    st = Store(f"sqlite:///{tmp_path}/ew.db")
    col = Collector(st, MqttSettings(port=1), ha_discovery=False)
    from edgewatch.core.schema import parse_telemetry
    from hostkit import telemetry

    with caplog.at_level(logging.INFO, logger="edgewatch"):
        col._write([(parse_telemetry({**telemetry("gh-01", s), "epoch": 5}), 1.0, 0, 0)
                    for s in range(3)])
        col._write([(parse_telemetry({**telemetry("gh-01", 0), "epoch": 6}), 2.0, 0, 0)])
        col._write([(parse_telemetry({**telemetry("gh-01", 3), "epoch": 5}), 3.0, 0, 0)])  # late
    warns = [r for r in caplog.records if r.levelno == logging.WARNING and "epoch" in r.message]
    assert len(warns) == 1 and "new epoch 6 (was 5)" in warns[0].message
    assert col.metrics.value("edgewatch_device_new_epochs_total") == 1
    assert st.count() == 5
    st.close()
