"""Settings from env/.env, secrets masked in every log line, JSON logs; the systemd units' commands."""

from __future__ import annotations

import argparse
import configparser
import importlib
import io
import json
import logging
import shlex
from pathlib import Path

import pytest
from edgewatch.cli import COMMANDS, UserError
from edgewatch.core.settings import add_mqtt_arguments, load_env, mqtt_settings, redact, safe_url
from edgewatch.services.metrics import setup_logging

ROOT = Path(__file__).resolve().parents[2]


def _args(*argv):
    p = argparse.ArgumentParser()
    add_mqtt_arguments(p)
    return p.parse_args(list(argv))


def test_env_file_loads_without_overriding(tmp_path, monkeypatch):
    for k in ("EDGEWATCH_MQTT_URL", "MQTT_USERNAME", "MQTT_PASSWORD", "EDGEWATCH_PREFIX"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MQTT_USERNAME", "from-env")
    f = tmp_path / "site.env"
    f.write_text("EDGEWATCH_MQTT_URL=mqtts://broker.example:8884\nMQTT_USERNAME=from-file\n"
                 "MQTT_PASSWORD=file-pw-9876\nEDGEWATCH_PREFIX=site/a\n")
    s = mqtt_settings(_args("--env-file", str(f)))
    assert (s.host, s.port, s.tls, s.username, s.password, s.prefix) == (
        "broker.example", 8884, True, "from-env", "file-pw-9876", "site/a")
    s = mqtt_settings(_args("--env-file", str(f), "--mqtt", "mqtt://127.0.0.1", "--prefix", "x"))
    assert (s.port, s.tls, s.prefix) == (1883, False, "x")
    with pytest.raises(UserError, match="no such env file"):
        load_env(tmp_path / "missing.env")


@pytest.mark.parametrize("url,message", [("http://h", "not an MQTT URL"),
                                         ("mqtt://h:99999", "bad port"),
                                         ("mqtt://u:pw-secret@:1", "not an MQTT URL")])
def test_bad_mqtt_urls(url, message):
    with pytest.raises(UserError, match=message) as exc:
        mqtt_settings(_args("--mqtt", url))
    assert "pw-secret" not in str(exc.value)


def test_secrets_never_reach_a_log_line(monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tw-token-0123456789")
    monkeypatch.setenv("EDGEWATCH_DB_URL", "postgresql://ew:db-pw-4567@db/ew")
    buf = io.StringIO()
    setup_logging("info", stream=buf)
    try:
        log = logging.getLogger("edgewatch.test")
        log.info("token %s and url %s", "tw-token-0123456789", "postgresql://ew:db-pw-4567@db/ew",
                 extra={"device": "gh-01"})
        log.warning("plain tw-token-0123456789")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert lines[0]["msg"] == "token *** and url postgresql://ew:***@db/ew"
    assert lines[0]["device"] == "gh-01" and lines[0]["level"] == "info"
    assert lines[1]["msg"] == "plain ***"
    assert redact("x tw-token-0123456789 y") == "x *** y"
    assert safe_url("mysql://root:pw1234@h/db") == "mysql://root:***@h/db"


def _units():
    for f in sorted((ROOT / "deploy" / "systemd").glob("edgewatch-*.service")):
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.optionxform = str
        cp.read(f)
        yield f, cp


def test_systemd_units_run_real_commands_with_valid_options():
    units = list(_units())
    assert {f.name for f, _ in units} >= {"edgewatch-bridge.service", "edgewatch-collector.service"}
    for f, cp in units:
        svc = cp["Service"]
        argv = shlex.split(svc["ExecStart"])
        assert argv[0].endswith("/edgewatch"), f
        module = importlib.import_module(COMMANDS[argv[1]])
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        p.parse_args(argv[2:])  # SystemExit if the unit used an option that does not exist
        assert svc["EnvironmentFile"].startswith("/etc/edgewatch/")
        if svc.get("Type") != "oneshot":  # the long-running services restart, a bad option does not loop
            assert svc["Restart"] == "on-failure" and svc["RestartPreventExitStatus"] == "2"
        text = f.read_text()
        assert "TOKEN=" not in text and "PASSWORD=" not in text  # secrets stay in the env file


def test_a_service_hears_what_is_published_the_moment_it_has_connected(tmp_path):
    """connect() returns once the broker has acknowledged the subscriptions, so a QoS 1 message
    published right after it reaches the service (it used to return at CONNACK, and an alert
    published at once could beat the SUBSCRIBE and be dropped)."""
    import threading

    import paho.mqtt.client as mqtt
    from edgewatch.core.settings import MqttSettings, connect, mqtt_client
    from edgewatch.services.broker import Broker

    with Broker(tmp_path / "mq") as b:
        s = MqttSettings(port=b.port)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        missed = []
        try:
            for i in range(40):
                got = threading.Event()
                c = mqtt_client(s, f"svc-{i}")
                c.on_message = lambda *_a, got=got: got.set()
                connect(c, s, [(f"edgewatch/+/alert{i}", 1)])
                pub.publish(f"edgewatch/gh-01/alert{i}", b"x", qos=1).wait_for_publish(5)
                if not got.wait(5):
                    missed.append(i)
                c.disconnect()
                c.loop_stop()
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert missed == []
