"""Health of the host services: Prometheus metrics, per-device status, JSON logs.

Each service owns one :class:`Metrics` (its own registry, so two services in
one test process do not collide) and may serve it over HTTP for Prometheus.
:class:`Devices` keeps the per-device view the issue asks for: online/offline
from the retained status and last will, last seen, the board's outbox depth and
its model version. Logs are one JSON object per line, secrets redacted.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from edgewatch.core.settings import RedactFilter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", stream=None) -> None:
    """Route the root logger to JSON lines on stderr (or ``stream``), secrets redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # twilio's HTTP client logs each request at INFO; keep it out of service logs.
    logging.getLogger("twilio").setLevel(logging.WARNING)


def reason_label(reason: str) -> str:
    """A bounded label for a rejection reason (Prometheus labels must not explode)."""
    r = reason.lower()
    for key, label in (("oversized", "oversized"), ("utf-8", "encoding"), ("nan ", "nonfinite"),
                       ("infinity", "nonfinite"), ("not finite", "nonfinite"), ("json", "json"),
                       ("version", "version"), ("does not match", "device_mismatch"),
                       ("topic", "topic"), ("unknown device", "unknown_device"),
                       ("replayed", "replayed")):
        if key in r:
            return label
    return "invalid"


class Metrics:
    """The counters and gauges of one service, in its own registry."""

    def __init__(self, service: str):
        self.service = service
        self.registry = r = CollectorRegistry()
        self.received = Counter("edgewatch_messages_received", "MQTT messages received",
                                ["kind"], registry=r)
        self.rejected = Counter("edgewatch_messages_rejected",
                                "messages refused (never stored, never relayed)",
                                ["reason"], registry=r)
        self.stored = Counter("edgewatch_records_stored", "records written exactly once",
                              ["kind"], registry=r)
        self.duplicates = Counter("edgewatch_records_duplicate",
                                  "replayed (device, seq) already stored", ["kind"], registry=r)
        self.batch_seconds = Histogram("edgewatch_write_batch_seconds",
                                       "time to write one batch", registry=r)
        self.notifications = Counter("edgewatch_notifications",
                                     "notification attempts by outcome",
                                     ["notifier", "outcome"], registry=r)
        self.suppressed = Counter("edgewatch_alerts_suppressed",
                                  "alerts held back by cooldown or the rate cap (sent in a digest)",
                                  ["why"], registry=r)
        self.outbox_depth = Gauge("edgewatch_outbox_pending", "notifications waiting to be sent",
                                  registry=r)
        self.latency = Histogram("edgewatch_alert_to_send_seconds",
                                 "alert received -> notifier request done",
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60),
                                 registry=r)
        self.online = Gauge("edgewatch_device_online", "1 online, 0 offline (last will)",
                            ["device"], registry=r)
        self.last_seen = Gauge("edgewatch_device_last_seen_seconds",
                               "Unix time of the device's last message", ["device"], registry=r)
        self.device_outbox = Gauge("edgewatch_device_outbox",
                                   "records queued on the board (from its status)",
                                   ["device"], registry=r)
        self.device_info = Gauge("edgewatch_device_info", "model and firmware of a device",
                                 ["device", "model", "fw"], registry=r)
        self._log_window: dict[str, list] = {}
        self._log_lock = threading.Lock()

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Serve /metrics on ``addr:port`` (0 = a free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server.server_address[1]

    def reject(self, log: logging.Logger, topic: str, reason: str) -> None:
        """Count a refused message and log it; at most 20 lines per reason per 10 s."""
        label = reason_label(reason)
        self.rejected.labels(label).inc()
        now = time.monotonic()
        with self._log_lock:
            win = self._log_window.setdefault(label, [now, 0, 0])  # start, logged, hidden
            if now - win[0] > 10:
                if win[2]:
                    log.warning("rejected %d more %s messages (not logged)", win[2], label,
                                extra={"reason": label, "count": win[2]})
                win[:] = [now, 0, 0]
            if win[1] >= 20:
                win[2] += 1
                return
            win[1] += 1
        log.warning("rejected %s: %s", topic[:120], reason,
                    extra={"topic": topic[:120], "reason": label})

    def value(self, name: str, **labels) -> float:
        """The current value of one sample (for tests and the benchmark)."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v


class Devices:
    """Per-device status: online/offline, last seen, the board's outbox depth and model."""

    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics
        self._d: dict[str, dict] = {}
        self._lock = threading.Lock()

    def seen(self, device: str, when: float | None = None, model: str | None = None) -> None:
        """Any valid message from ``device`` (a message means it is online)."""
        when = when or time.time()
        with self._lock:
            d = self._d.setdefault(device, {"state": "online", "last_seen": 0.0, "outbox": None,
                                            "model": None, "fw": None})
            d["last_seen"] = max(d["last_seen"], when)
            if model:
                d["model"] = model
        if self.metrics:
            self.metrics.last_seen.labels(device).set(d["last_seen"])

    def status(self, rec, when: float | None = None) -> None:
        """A status message or last will (a :class:`edgewatch.core.schema.Status`)."""
        when = when or time.time()
        with self._lock:
            d = self._d.setdefault(rec.device, {"last_seen": 0.0, "outbox": None,
                                                "model": None, "fw": None})
            old = (d.get("model"), d.get("fw"))
            d["state"] = rec.state
            d["last_seen"] = max(d["last_seen"], when)
            for k in ("outbox", "model", "fw", "error"):
                if getattr(rec, k) is not None:
                    d[k] = getattr(rec, k)
            new = (d.get("model"), d.get("fw"))
        if self.metrics:
            m = self.metrics
            m.online.labels(rec.device).set(1 if rec.state == "online" else 0)
            m.last_seen.labels(rec.device).set(d["last_seen"])
            if d.get("outbox") is not None:
                m.device_outbox.labels(rec.device).set(d["outbox"])
            if new != old:
                if any(old):
                    try:
                        m.device_info.remove(rec.device, old[0] or "", old[1] or "")
                    except KeyError:
                        pass
                m.device_info.labels(rec.device, new[0] or "", new[1] or "").set(1)

    def get(self, device: str) -> dict | None:
        """A copy of one device's status, or None if never heard of."""
        with self._lock:
            d = self._d.get(device)
            return dict(d) if d else None

    def all(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self._d.items()}
