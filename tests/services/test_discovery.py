"""Home Assistant MQTT discovery: the collector announces a new board's entities, retained.

The value templates are rendered with Jinja2 (the engine Home Assistant uses)
against real messages, so a template that would show nothing in Home Assistant fails here.
"""

from __future__ import annotations

import json
import re
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


# Home Assistant's MQTT discovery schema (2025.10+), per-component form, as documented:
# every entity of a device has unique_id; the device has identifiers; origin needs name;
# object_id is deprecated (refused from 2026.4) in favour of default_entity_id = <domain>.<id>;
# entity_category is "config" or "diagnostic"; availability entries need a topic.
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}}
ALLOWED_CATEGORIES = {"config", "diagnostic"}


def check_ha_payload(topic: str, cfg: dict) -> None:
    prefix, component, _node, obj, tail = topic.split("/")
    assert prefix == "homeassistant" and tail == "config"
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", obj), topic
    assert REQUIRED[component] <= set(cfg), (topic, REQUIRED[component] - set(cfg))
    assert "object_id" not in cfg and "hw_version" not in cfg["device"]
    assert re.fullmatch(rf"{component}\.[a-z0-9_]+", cfg["default_entity_id"]), cfg
    assert cfg["unique_id"] and cfg["device"]["identifiers"]
    assert cfg["origin"]["name"] == "edgewatch" and cfg["origin"]["sw_version"]
    assert cfg.get("entity_category", "diagnostic") in ALLOWED_CATEGORIES
    for a in cfg.get("availability", []):
        assert a["topic"] and set(a) <= {"topic", "value_template", "payload_available",
                                         "payload_not_available"}
    assert not ("availability" in cfg and "availability_topic" in cfg)


def test_configs_follow_the_current_discovery_schema():
    cfg = configs("gh-01", ["temperature", "humidity"], fw="0.1.0")
    for topic, c in cfg.items():
        check_ha_payload(topic, c)
    assert all(c["device"]["sw_version"] == "0.1.0" for c in cfg.values())
    t = cfg["homeassistant/sensor/gh-01/temperature/config"]
    assert t["default_entity_id"] == "sensor.gh_01_temperature"
    diag = {c["name"]: c for c in cfg.values() if c.get("entity_category") == "diagnostic"}
    assert {"status", "free heap", "outbox depth", "dropped records", "model id"} <= set(diag)
    online = {"v": 1, "device": "gh-01", "state": "online", "fw": "0.1.0", "model": "3f2a9c1e",
              "heap_free": 41234, "outbox": 3, "dropped": 0}
    assert _render(diag["free heap"]["value_template"], online) == "41234"
    assert _render(diag["outbox depth"]["value_template"], online) == "3"
    assert _render(diag["model id"]["value_template"], online) == "3f2a9c1e"
    # the last will has only the state: "None" is Home Assistant's "unknown", not an error
    assert _render(diag["free heap"]["value_template"], {"state": "offline"}) == "None"
    assert diag["free heap"]["unit_of_measurement"] == "B"
    assert "sw_version" not in configs("gh-01", ["temperature"])[
        "homeassistant/sensor/gh-01/temperature/config"]["device"]


def test_configs_render_against_real_messages():
    cfg = configs("gh-01", ["temperature", "humidity", "lux"], model="3f2a9c1e", fw="0.1.0")
    assert {t for t in cfg if "/heap_free/" not in t and "/outbox/" not in t
            and "/dropped/" not in t and "/model/" not in t} == {
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
    av = t["availability"][0]
    assert _render(av["value_template"], {"state": "offline"}) == av["payload_not_available"]
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
            # the board's status names its firmware: announced again, now with sw_version
            dev.publish("status", {"v": 1, "device": "gh-07", "seq": 3, "state": "online",
                                   "fw": "0.1.0", "model": None, "heap_free": 40000,
                                   "outbox": 0, "dropped": 0, "uptime": 5}, retain=True)
            wait_until(lambda: col._fw.get("gh-07") == "0.1.0", what="status stored")
            time.sleep(0.5)  # the configs reach the broker before Home Assistant starts
            # a Home Assistant connecting later still gets every config (retained)
            got, done = {}, threading.Event()
            ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha")
            ha.username_pw_set("edgewatch", HOST_PW)

            def on_message(_c, _u, m):
                got[m.topic] = (json.loads(m.payload), m.retain)
                if len(got) == 8 and all(p.get("device", {}).get("sw_version")
                                         for p, _ in got.values()):
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
            assert hum["availability"][0]["topic"] == "edgewatch/gh-07/status"
            assert hum["device"]["sw_version"] == "0.1.0"
        finally:
            dev.close()
            col.stop()
