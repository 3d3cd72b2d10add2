"""publish-model's OTA version grows with every publish to a device, even two within one
second (the board refuses a version not newer than the one it holds: a rollback), and a
forged blob retained on the model topic does not steer it."""

from __future__ import annotations

import argparse
import time

import paho.mqtt.publish as mqtt_publish
from edgewatch.core.settings import mqtt_settings
from edgewatch.services import ota
from edgewatch.services.broker import Broker
from edgewatch.training.export import blob as tblob

KEY = b"k" * 32


def _retained(pub: ota.Publisher, device: str) -> int:
    time.sleep(0.3)
    return tblob.ota_version(pub.models[device])


def test_two_publishes_in_one_second_carry_growing_versions(tmp_path, tiny_model_dir, monkeypatch):
    raw = (tiny_model_dir / "model.ewb").read_bytes()
    monkeypatch.setattr(ota.time, "time", lambda: 1_800_000_000.5)  # the clock stands still
    with Broker(tmp_path / "mq") as b:
        s = mqtt_settings(argparse.Namespace(mqtt=f"mqtt://127.0.0.1:{b.port}"))
        ota.publish_model(s, ["gh-01"], raw, KEY)
        ota.publish_model(s, ["gh-01"], raw, KEY)
        watch = ota.Publisher(s)
        try:
            assert _retained(watch, "gh-01") == 1_800_000_001
            # a blob that no fleet key signed, with the largest version, retained by anyone
            # who can publish there: ignored (it would otherwise pin every later version)
            forged = tblob.sign(raw, b"x" * 32, 2**32 - 1)
            mqtt_publish.single("edgewatch/gh-01/model", forged, qos=1, retain=True,
                                hostname="127.0.0.1", port=b.port)
            ota.publish_model(s, ["gh-01"], raw, KEY)
            assert _retained(watch, "gh-01") == 1_800_000_000
        finally:
            watch.close()
