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
import re
import sys
import threading
import time

from edgewatch.core.errors import UserError
from edgewatch.core.settings import RedactFilter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# control characters, line/paragraph separators and the bidirectional overrides that can make
# a log line read differently from what it holds
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
OTHER = "(other)"  # the one aggregate series of the devices past the cap (not a device id)
MAX_DEVICES = 1000  # devices given their own series by default (--max-devices)


def clean(text, maxlen: int = 64) -> str:
    """``text`` made safe for a metric label or a log line: valid UTF-8 (a lone surrogate
    becomes ``?``), control characters as ``?``, at most ``maxlen`` characters (``…`` ends a
    shortened one). Whatever a message carried, the exposition and the log stay writable."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > maxlen:
        s = s[: maxlen - 1] + "\u2026"
    if not s.isascii():
        s = s.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("?", s)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": clean(record.getMessage(), 2000)}
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[clean(k)] = (v if isinstance(v, (int, float, bool, type(None)))
                                 else clean(v, 500))
        if record.exc_info:
            out["exc"] = clean(self.formatException(record.exc_info).splitlines()[-1], 500)
        return json.dumps(out, ensure_ascii=False)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def setup_logging(level: str = "info", stream=None) -> None:
    """Route the root logger to JSON lines on stderr (or ``stream``), secrets redacted."""
    if str(level).lower() not in LOG_LEVELS:
        raise UserError(f"--log-level {level}: expected one of {', '.join(LOG_LEVELS)}")
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


class LatestGauge:
    """A gauge whose series hold the last value set: ``set(value, *labels)`` is one dict store.

    prometheus_client's ``Gauge`` takes a lock on every ``set``; the collector sets a
    device's last-seen time and each channel's reading for every device in every batch,
    which was a tenth of its CPU per message. Here the values live in a plain dict (a
    store is atomic under the interpreter lock) that the registry reads, as a copy, when
    /metrics is scraped. ``labels(*values).set(v)`` works as on a ``Gauge``."""

    def __init__(self, name: str, doc: str, labelnames: list[str], registry):
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self.values: dict[tuple, float] = {}
        registry.register(self)

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def labels(self, *labels: str):
        return _Series(self.values, labels)

    def collect(self):
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, value in self.values.copy().items():
            fam.add_metric(labels, value)
        return [fam]

    def describe(self):
        return [GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)]


class _Series:
    __slots__ = ("_values", "_key")

    def __init__(self, values: dict, key: tuple):
        self._values, self._key = values, key

    def set(self, value: float) -> None:
        self._values[self._key] = value


class Metrics:
    """The counters and gauges of one service, in its own registry.

    Only the series the service fills are registered: the collector's
    (storage, readings, alerts) and the bridge's (notifications) are never
    exported by the other as a row of zeros. Both track the boards' status.
    """

    def __init__(self, service: str, max_devices: int = MAX_DEVICES):
        self.service = service
        # Per-device series for at most max_devices devices (first come); the others share
        # the OTHER series and are counted, so a flood of device ids cannot grow /metrics.
        self.max_devices = max(0, max_devices)
        self._admitted: dict[str, str] = {}  # device -> its label value
        self._over: set[str] = set()
        self._dev_lock = threading.Lock()
        self.registry = r = CollectorRegistry()
        self.devices_over_cap = Counter("edgewatch_devices_over_cap",
                                        "devices refused their own series (past --max-devices; "
                                        f"counted in device=\"{OTHER}\")", registry=r)
        self.received = Counter("edgewatch_messages_received", "MQTT messages received",
                                ["kind"], registry=r)
        self.rejected = Counter("edgewatch_messages_rejected",
                                "messages refused (never stored, never relayed)",
                                ["reason"], registry=r)
        if service == "collector":
            self.stored = Counter("edgewatch_records_stored", "records written exactly once",
                                  ["kind"], registry=r)
            self.duplicates = Counter("edgewatch_records_duplicate",
                                      "replayed (device, epoch, seq) already stored", ["kind"], registry=r)
            self.gaps = Counter("edgewatch_gaps",
                                "gap alerts raised: gap (seq missing past the wait), dropped "
                                "(a board's outbox overflowed), epoch (a new epoch)", ["kind"],
                                registry=r)
            self.missing = Counter("edgewatch_records_missing",
                                   "records never received (seq gaps past the wait)", registry=r)
            self.split = Counter("edgewatch_batches_split",
                                 "batches the database refused, stored again row by row",
                                 registry=r)
            self.batch_seconds = Histogram("edgewatch_write_batch_seconds",
                                           "time to write one batch", registry=r)
            self.reading = LatestGauge("edgewatch_reading", "the last stored reading of a channel",
                                       ["device", "channel"], r)
            self.alerts = Counter("edgewatch_alerts", "alerts stored, by device and rule",
                                  ["device", "rule"], registry=r)
        if service == "bridge":
            self.notifications = Counter("edgewatch_notifications",
                                         "notification attempts by outcome (sent, dry_run, retry, "
                                         "dead)", ["notifier", "outcome"], registry=r)
            self.suppressed = Counter("edgewatch_alerts_suppressed",
                                      "alerts held back by cooldown or the rate cap (sent in a "
                                      "digest)", ["why"], registry=r)
            self.outbox_depth = Gauge("edgewatch_outbox_pending",
                                      "notifications waiting to be sent", registry=r)
            self.latency = Histogram("edgewatch_alert_to_send_seconds",
                                     "alert received -> notifier request done",
                                     buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60),
                                     registry=r)
        self.online = Gauge("edgewatch_device_online", "1 online, 0 offline (last will)",
                            ["device"], registry=r)
        self.last_seen = LatestGauge("edgewatch_device_last_seen_timestamp_seconds",
                                     "Unix time of the device's last message", ["device"], r)
        self.device_outbox = Gauge("edgewatch_device_outbox",
                                   "records queued on the board (from its status)",
                                   ["device"], registry=r)
        self.new_epochs = Counter("edgewatch_device_new_epochs",
                                  "boards seen starting a new epoch (flash erased, seq from 0)",
                                  registry=r)
        self.device_info = Gauge("edgewatch_device_info", "model and firmware of a device",
                                 ["device", "model", "fw"], registry=r)
        self._log_window: dict[str, list] = {}
        self._log_lock = threading.Lock()

    def device_label(self, device: str) -> str | None:
        """``device`` as a label value, or None past the cap (use the OTHER aggregate)."""
        label = self._admitted.get(device)
        if label is not None:
            return label
        with self._dev_lock:
            if device in self._admitted:
                return self._admitted[device]
            if len(self._admitted) < self.max_devices:
                label = self._admitted[device] = clean(device, 32)
                return label
            if device not in self._over:
                if len(self._over) < 100 * max(self.max_devices, 1000):
                    self._over.add(device)
                self.devices_over_cap.inc()
        return None

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
        log.warning("rejected %s: %s", clean(topic, 120), clean(reason, 200),
                    extra={"topic": clean(topic, 120), "reason": label})

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

    def seen(self, device: str, when: float | None = None, model: str | None = None,
             epoch: int | None = None) -> None:
        """Any valid message from ``device`` (a message means it is online)."""
        when = when or time.time()
        with self._lock:
            d = self._d.setdefault(device, {"state": "online", "last_seen": 0.0, "outbox": None,
                                            "model": None, "fw": None})
            d["last_seen"] = max(d["last_seen"], when)
            if model:
                d["model"] = model
            if epoch is not None:
                d["epoch"] = epoch
        if self.metrics:
            m = self.metrics
            m.last_seen.set(d["last_seen"], m.device_label(device) or OTHER)

    def status(self, rec, when: float | None = None) -> None:
        """A status message or last will (a :class:`edgewatch.core.schema.Status`)."""
        when = when or time.time()
        with self._lock:
            d = self._d.setdefault(rec.device, {"last_seen": 0.0, "outbox": None,
                                                "model": None, "fw": None})
            old = (d.get("model"), d.get("fw"))
            d["state"] = rec.state
            d["last_seen"] = max(d["last_seen"], when)
            for k in ("outbox", "model", "fw", "error", "epoch"):
                if getattr(rec, k) is not None:
                    d[k] = getattr(rec, k)
            new = (d.get("model"), d.get("fw"))
        if self.metrics:
            m = self.metrics
            dev = m.device_label(rec.device)
            if dev is None:  # past the cap: only the aggregate's last seen
                m.last_seen.set(d["last_seen"], OTHER)
                return
            m.online.labels(dev).set(1 if rec.state == "online" else 0)
            m.last_seen.set(d["last_seen"], dev)
            if d.get("outbox") is not None:
                m.device_outbox.labels(dev).set(d["outbox"])
            if new != old:
                if any(old):
                    try:
                        m.device_info.remove(dev, clean(old[0] or ""), clean(old[1] or ""))
                    except KeyError:
                        pass
                m.device_info.labels(dev, clean(new[0] or ""), clean(new[1] or "")).set(1)

    def get(self, device: str) -> dict | None:
        """A copy of one device's status, or None if never heard of."""
        with self._lock:
            d = self._d.get(device)
            return dict(d) if d else None

    def all(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self._d.items()}
