"""Helpers shared by the host-service tests: boards that publish, waiting, subprocess services."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt

from tools.harness import service_env, wait_until  # noqa: F401 (the tests import them from here)

ROOT = Path(__file__).resolve().parents[2]
HOST_PW = "host-secret-pw"


def telemetry(device: str, seq: int, t=None, **values) -> dict:
    return {"v": 1, "device": device, "seq": seq, "t": t,
            "values": values or {"temperature": 20.0 + seq % 7, "humidity": 40.0 + seq % 5},
            "pred": None, "band": None, "anomaly": False, "faults": [], "model": None}


def alert(device: str, seq: int, rule: str = "band", value: float = 35.2, t=None) -> dict:
    return {"v": 1, "device": device, "seq": seq, "t": t, "sample": max(seq - 1, 0),
            "rule": rule, "channel": "temperature", "value": value, "band": [21.1, 21.7],
            "pred": 21.4, "model": "3f2a9c1e"}


class Board:
    """A device's MQTT connection (its own user, optionally TLS and a last will)."""

    def __init__(self, broker, name: str, password: str | None = None, tls: bool = False,
                 will: bool = False, prefix: str = "edgewatch", user: str | None = None):
        self.name, self.prefix = name, prefix
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ew-board-{name}")
        if password is not None:
            self.c.username_pw_set(user or name, password)
        if will:
            self.c.will_set(f"{prefix}/{name}/status",
                            json.dumps({"v": 1, "device": name, "state": "offline"}), 1, True)
        port = broker.port
        if tls:
            self.c.tls_set(ca_certs=broker.ca_file, cert_reqs=ssl.CERT_REQUIRED)
            port = broker.tls_port
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def publish(self, kind: str, payload, device: str | None = None, retain: bool = False):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.c.publish(f"{self.prefix}/{device or self.name}/{kind}", body, qos=1,
                              retain=retain)
        info.wait_for_publish(5)
        return info

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def vanish(self):
        """Drop the TCP connection without DISCONNECT, so the broker sends the last will."""
        self.c.loop_stop()
        self.c.socket().close()


def edgewatch(*args: str) -> list[str]:
    """The command line of `edgewatch <args>` with this interpreter (as the console script runs it)."""
    return [sys.executable, "-c", "import sys; from edgewatch.cli import main; sys.exit(main())", *args]


def one_line_error(r: subprocess.CompletedProcess, command: str, message: str) -> None:
    """`r` ended as a user mistake should: exit 2 and one line, ``edgewatch COMMAND: ...``,
    holding ``message``."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgewatch {command}: "), r.stderr
    assert message in lines[0], lines[0]


def spawn(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """Start ``edgewatch <args>`` as a real subprocess, output to ``log_path``."""
    fh = open(log_path, "ab")
    return subprocess.Popen(edgewatch(*args), cwd=log_path.parent,
                            env=env, stdout=fh, stderr=subprocess.STDOUT)
