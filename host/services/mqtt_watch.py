"""Watch a broker the way the host does: subscribe, parse every message with host/core/schema.py, keep it.

Used by the demo (predictions and bands for its plot) and by the board-tooling tests (every
message a board sends must pass the host's parser; ``bad`` lists those that do not).

    w = Watch(port, "edgewatch/gh-01/#", user="edgewatch", password=pw)
    w.wait_for(Telemetry, 3); w.close()
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from edgewatch.core.schema import DEFAULT_PREFIX, parse
from edgewatch.core.settings import service_client_id


class Watch:
    """A paho client that records parsed messages (``records``) and refused ones (``bad``)."""

    def __init__(self, port: int, topic: str = f"{DEFAULT_PREFIX}/#", user: str | None = None,
                 password: str | None = None, host: str = "127.0.0.1", timeout: float = 10.0):
        self.records: list = []
        self.bad: list = []
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=service_client_id("watch", None))
        if user:
            self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on
        self.c.connect(host, port)
        self.c.loop_start()
        if not ready.wait(timeout):
            self.close()
            raise TimeoutError(f"no subscription to {topic} on {host}:{port} within {timeout}s")

    def _on(self, client, userdata, msg) -> None:
        try:
            self.records.append(parse(msg.topic, msg.payload))
        except Exception as exc:  # what the host would refuse, kept with the reason
            self.bad.append((msg.topic, bytes(msg.payload[:200]), exc))

    def of(self, kind) -> list:
        """The records of one kind (Telemetry, Alert, Status), in arrival order."""
        return [r for r in list(self.records) if isinstance(r, kind)]

    def wait_for(self, kind, n: int = 1, timeout: float = 40.0) -> list:
        """Wait until `n` records of `kind` arrived; an AssertionError naming what came otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.of(kind)
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise AssertionError(f"{n} {kind.__name__} not received in {timeout}s; "
                             f"last: {self.records[-3:]}, refused: {self.bad[-3:]}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
