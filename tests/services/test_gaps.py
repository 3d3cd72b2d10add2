"""Gaps are alerts (issue 14 item 6, "Broke" 7): a seq gap the outbox does not fill, a board's
dropped counter growing and a new epoch each become one alert on the alert topic, whichever of
two collectors in a shared-subscription group sees it (real Mosquitto, real SQLite)."""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack

import paho.mqtt.client as mqtt
import pytest
from edgewatch.core.schema import GAP_SEQ_BASE, gap_seq, parse_alert
from edgewatch.core.settings import MqttSettings
from edgewatch.core.store import Store
from edgewatch.services.bridge import alert_text
from edgewatch.services.broker import Broker
from edgewatch.services.collector import Collector
from hostkit import HOST_PW, Board, telemetry, wait_until

WAIT = 1.0  # --gap-wait of the collectors under test


class AlertTap:
    """Every message on edgewatch/+/alert, as parsed alerts."""

    def __init__(self, broker):
        self.got: list = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-tap")
        self.c.username_pw_set("edgewatch", HOST_PW)
        self.c.on_message = self._on
        self.c.on_connect = lambda c, *_: c.subscribe("edgewatch/+/alert", 1)
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()

    def _on(self, _c, _u, msg):
        with self.lock:
            self.got.append(parse_alert(msg.payload))

    def keys(self, rule: str) -> set:
        with self.lock:
            return {(a.device, a.epoch, a.seq) for a in self.got if a.rule == rule}

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def setup(tmp_path):
    # each part's clean-up registered as it is made: undone last first, also when a later
    # part fails to start
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW}) as broker, ExitStack() as undo:
        url = f"sqlite:///{tmp_path}/ew.db"
        stores = [Store(url), Store(url)]
        for s in stores:
            undo.callback(s.close)
        mq = MqttSettings(port=broker.port, username="edgewatch", password=HOST_PW)
        cols = []
        for i, s in enumerate(stores):
            cols.append(Collector(s, mq, group="g", client_id=f"col-{i}", ha_discovery=False,
                                  flush_ms=10, gap_wait=WAIT).start())
            undo.callback(cols[-1].stop)
        tap = AlertTap(broker)
        undo.callback(tap.close)
        host = Board(broker, "edgewatch", HOST_PW)
        undo.callback(host.close)
        time.sleep(0.3)
        yield host, tap, cols, stores[0]


def _send(host, device, seqs, epoch=7):
    for seq in seqs:
        host.publish("telemetry", dict(telemetry(device, seq), epoch=epoch), device=device)


def _gap_rows(store, rule):
    return store.query("SELECT device, epoch, seq, sample, value FROM {alerts} WHERE rule = {ph} "
                       "ORDER BY device, seq", (rule,))


def test_an_unfilled_gap_is_one_alert_a_filled_one_none(setup):
    host, tap, cols, store = setup
    _send(host, "gh-01", [*range(0, 20), *range(25, 60)])  # 20..24 never come
    _send(host, "gh-02", [*range(0, 10), *range(15, 30)])
    time.sleep(WAIT / 3)
    _send(host, "gh-02", range(10, 15))  # late, within the wait: the outbox filled it
    wait_until(lambda: _gap_rows(store, "gap"), timeout=15, what="the gap alert stored")
    time.sleep(3 * WAIT)  # a second alert, from either collector, would be here by now
    assert _gap_rows(store, "gap") == [("gh-01", 7, gap_seq("gap", 20), 20, 5.0)]
    assert tap.keys("gap") == {("gh-01", 7, GAP_SEQ_BASE + 4 * 20)}  # one identity, however
    # many collectors published it; the bridge keys its outbox by it and sends it once
    assert sum(c.metrics.value("edgewatch_records_missing_total") for c in cols) >= 5
    a = next(a for a in tap.got if a.rule == "gap")
    assert alert_text(a).startswith("edgewatch gh-01: 5 records lost from seq 20 (gap)")


def test_dropped_growth_and_a_new_epoch_are_alerts(setup):
    host, tap, cols, store = setup
    status = {"v": 1, "device": "gh-03", "epoch": 7, "state": "online", "fw": "0.1.0",
              "outbox": 0, "dropped": 0}
    host.publish("status", dict(status, seq=10), device="gh-03")
    _send(host, "gh-03", range(0, 12))
    host.publish("status", dict(status, seq=40, dropped=6), device="gh-03")  # outbox overflowed
    wait_until(lambda: _gap_rows(store, "dropped"), timeout=15, what="the dropped alert")
    _send(host, "gh-03", range(0, 5), epoch=8)  # flash erased: a new epoch, seq from 0
    wait_until(lambda: _gap_rows(store, "epoch"), timeout=15, what="the epoch alert")
    time.sleep(2 * WAIT)
    assert _gap_rows(store, "dropped") == [("gh-03", 7, gap_seq("dropped", 40), 40, 6.0)]
    assert _gap_rows(store, "epoch") == [("gh-03", 8, gap_seq("epoch", 0), 0, 7.0)]
    assert len(tap.keys("dropped")) == len(tap.keys("epoch")) == 1
    assert not _gap_rows(store, "gap")  # a new epoch starting at 0 is not a gap
    m = sum(c.metrics.value("edgewatch_gaps_total", kind="dropped") for c in cols)
    assert m >= 1
    # the retained status again (a collector restart): no new alert
    host.publish("status", dict(status, seq=40, dropped=6), device="gh-03")
    time.sleep(WAIT)
    assert len(tap.keys("dropped")) == 1
    assert json.loads(json.dumps(tap.got[0].__dict__, default=str))  # plain data


def test_gap_alerts_reach_the_bridge_user_on_the_production_broker(tmp_path):
    """On the shipped broker config (deploy/mosquitto/) the collector's own user may publish
    the gap alerts and the bridge's user receives them (mosquitto drops a publish its ACL
    refuses without a word, so an ACL without the collector's write would lose them all)."""
    from edgewatch.services import broker as brokers

    services = {"collector": "pw-collector", "bridge": "pw-bridge"}
    b = brokers.production(tmp_path / "mq", {"gh-01": "pw-gh01"}, services).start()
    st = Store(f"sqlite:///{tmp_path}/ew.db")
    col = None
    tap = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ew-tap-bridge")
    got: list = []
    try:
        mq = MqttSettings(port=b.port, tls=True, username="collector",
                          password=services["collector"], ca_file=b.ca_file)
        col = Collector(st, mq, ha_discovery=False, flush_ms=10, gap_wait=WAIT).start()
        tap.username_pw_set("bridge", services["bridge"])
        tap.tls_set(ca_certs=b.ca_file)
        tap.on_message = lambda _c, _u, m: got.append(parse_alert(m.payload))
        tap.on_connect = lambda c, *_: c.subscribe("edgewatch/+/alert", 1)
        tap.connect("127.0.0.1", b.port)
        tap.loop_start()
        board = Board(b, "gh-01", "pw-gh01", tls=True)
        time.sleep(0.5)
        status = {"v": 1, "device": "gh-01", "epoch": 3, "state": "online", "dropped": 0}
        board.publish("status", dict(status, seq=5))
        board.publish("status", dict(status, seq=9, dropped=4))
        wait_until(lambda: [a for a in got if a.rule == "dropped"], timeout=10,
                   what="the dropped alert at the bridge's user")
        assert wait_until(lambda: _gap_rows(st, "dropped"), timeout=10) == [
            ("gh-01", 3, gap_seq("dropped", 9), 9, 4.0)]
        board.close()
    finally:
        tap.loop_stop()
        if col is not None:
            col.stop()
        st.close()
        b.stop()
