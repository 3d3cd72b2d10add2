"""Home Assistant MQTT discovery: the collector announces a new board's entities, retained.

The value templates are rendered with Jinja2 (the engine Home Assistant uses)
against real messages, so a template that would show nothing in Home Assistant fails here.
"""

from __future__ import annotations

import json
import threading
import time

import jinja2
import paho.mqtt.client as mqtt
from edgewatch.core.settings import MqttSettings
from edgewatch.core.store import Store
from edgewatch.services.broker import DEVICE_ACL, Broker
from edgewatch.services.collector import Collector
from edgewatch.services.discovery import configs
from hostkit import HOST_PW, Board, telemetry, wait_until


def _render(template: str, payload: dict) -> str:
    return jinja2.Environment().from_string(template).render(value_json=payload).strip()


def test_configs_render_against_real_messages():
    cfg = configs("gh-01", ["temperature", "humidity", "lux"], model="3f2a9c1e", fw="0.1.0")
    assert set(cfg) == {
        "homeassistant/sensor/gh-01/temperature/config", "homeassistant/sensor/gh-01/humidity/config",
        "homeassistant/sensor/gh-01/lux/config", "homeassistant/binary_sensor/gh-01/anomaly/config",
        "homeassistant/binary_sensor/gh-01/status/config"}
    t = cfg["homeassistant/sensor/gh-01/temperature/config"]
    assert (t["device_class"], t["unit_of_measurement"]) == ("temperature", "°C")
    assert "device_class" not in cfg["homeassistant/sensor/gh-01/lux/config"]
    msg = telemetry("gh-01", 3, temperature=21.5, humidity=48.2)
    assert _render(t["value_template"], msg) == "21.5"
    a = cfg["homeassistant/binary_sensor/gh-01/anomaly/config"]
    assert _render(a["value_template"], msg) == "OFF"
    assert _render(a["value_template"], dict(msg, anomaly=True)) == "ON"
    s = cfg["homeassistant/binary_sensor/gh-01/status/config"]
    assert _render(s["value_template"], {"state": "online"}) == "ON"
    assert _render(s["value_template"], {"state": "offline"}) == "OFF"
    assert _render(t["availability_template"], {"state": "offline"}) == t["payload_not_available"]
    uids = [c["unique_id"] for c in cfg.values()]
    assert len(set(uids)) == len(uids)
    assert all(c["device"]["identifiers"] == ["edgewatch_gh-01"] for c in cfg.values())


def test_collector_announces_a_new_board_retained(tmp_path):
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW, "gh-07": "pw"},
                acl=DEVICE_ACL) as broker:
        store = Store(f"sqlite:///{tmp_path}/ew.db")
        col = Collector(store, MqttSettings(port=broker.port, username="edgewatch",
                                            password=HOST_PW)).start()
        dev = Board(broker, "gh-07", "pw")
        try:
            dev.publish("telemetry", telemetry("gh-07", 1, temperature=20.0, humidity=50.0))
            dev.publish("telemetry", telemetry("gh-07", 2, temperature=20.1, humidity=50.1))
            wait_until(lambda: store.count() == 2 and "gh-07" in col._announced, what="stored")
            time.sleep(0.5)  # the configs reach the broker before Home Assistant starts
            # a Home Assistant connecting later still gets every config (retained)
            got, done = {}, threading.Event()
            ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha")
            ha.username_pw_set("edgewatch", HOST_PW)

            def on_message(_c, _u, m):
                got[m.topic] = (json.loads(m.payload), m.retain)
                if len(got) == 4:
                    done.set()

            ha.on_message = on_message
            ha.on_connect = lambda c, *a: c.subscribe("homeassistant/#", 1)
            ha.connect("127.0.0.1", broker.port)
            ha.loop_start()
            assert done.wait(5), got
            ha.loop_stop()
            ha.disconnect()
            assert set(got) == set(configs("gh-07", ["temperature", "humidity"]))
            assert all(retained for _, retained in got.values())
            hum = got["homeassistant/sensor/gh-07/humidity/config"][0]
            assert hum["state_topic"] == "edgewatch/gh-07/telemetry"
            assert hum["availability_topic"] == "edgewatch/gh-07/status"
        finally:
            dev.close()
            col.stop()
