"""Store every telemetry sample and alert from MQTT in a database, once per (device, epoch, seq).

    edgewatch collect --db sqlite:///edgewatch.db
    edgewatch collect --db postgresql://user@host/db --group collectors   # scale out

Messages are validated by host/core/schema.py; a bad one (malformed JSON, wrong
types, NaN/Inf, oversized, device id not matching the topic, a device not on
the ``--devices`` list) is counted, logged and dropped, never stored.

Writes are batched: a writer thread takes whatever has arrived (up to
``--batch`` messages, waiting at most ``--flush-ms`` for the first) and stores it
in one transaction. The MQTT acknowledgement of a message is sent only after
its batch is committed, and the session is persistent, so a collector that
dies mid-batch gets those messages again from the broker; the (device, epoch,
seq) primary key then stores each once. A board whose flash was erased starts
``seq`` again at 0 under a new epoch: its records are new, and the new epoch is
logged at warning, counted (``edgewatch_device_new_epochs``) and kept in the
device's status. Several collectors share the work with
``--group`` (MQTT shared subscription ``$share/<group>/...``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

from edgewatch.core.errors import UserError
from edgewatch.core.schema import (
    CHANNEL_RE,
    DEVICE_RE,
    GAP_SEQ_BASE,
    RESERVED_CHANNELS,
    VERSION,
    Alert,
    SchemaError,
    Status,
    Telemetry,
    gap_seq,
    parse,
)
from edgewatch.core.settings import (
    MqttSettings,
    ack_all,
    check_group,
    close_client,
    connect,
    env,
    mqtt_client,
    mqtt_settings,
    safe_url,
    service_client,
    service_client_id,
)
from edgewatch.core.store import Store
from edgewatch.services import discovery
from edgewatch.services.daemon import add_service_arguments, serve_metrics, serve_until_signal
from edgewatch.services.metrics import OTHER, Devices, Metrics, setup_logging

log = logging.getLogger("edgewatch.collector")


def parse_devices(spec: str | None) -> frozenset[str] | None:
    """The allowed device ids from ``a,b,c`` or a file with one id per line; None = any."""
    if not spec:
        return None
    p = Path(spec)
    if p.is_file():
        items = [ln.split("#")[0].strip() for ln in p.read_text().splitlines()]
        where = str(p)
    else:
        items, where = [x.strip() for x in spec.split(",")], "--devices"
    items = [x for x in items if x]
    for x in items:
        if not DEVICE_RE.fullmatch(x):
            raise UserError(f"{where}: {x!r} is not a device id (1-32 of A-Z a-z 0-9 _ -)")
    return frozenset(items)


def subscriptions(prefix: str, group: str | None, kinds=("telemetry", "alert")) -> list:
    """Topics to subscribe to; shared (``$share/group/``) when a group is given.

    Status is never shared: brokers do not deliver retained messages to shared
    subscriptions, and every instance wants the status of every device.
    """
    share = f"$share/{group}/" if group else ""
    subs = [(f"{share}{prefix}/+/{k}", 1) for k in kinds]
    return subs + [(f"{prefix}/+/status", 1)]


class _Handoff:
    """The paho thread -> writer thread queue: a deque, with an Event only for an idle writer.

    ``queue.Queue`` takes a lock and notifies a condition on every put, which
    costs the paho thread (the collector's bottleneck) as much as a schema
    check. ``deque.append``/``popleft`` are atomic; the event is set only when
    it is not already, i.e. when the writer may be asleep waiting for work.
    """

    def __init__(self):
        self._d: deque = deque()
        self._ready = threading.Event()

    def put(self, item) -> None:
        self._d.append(item)
        if not self._ready.is_set():
            self._ready.set()

    def empty(self) -> bool:
        return not self._d

    def qsize(self) -> int:
        return len(self._d)

    def take(self, batch: int, flush_s: float, idle_s: float = 0.2) -> list:
        """Up to ``batch`` items: wait ``idle_s`` for the first, then ``flush_s`` to fill."""
        d = self._d
        if not d:
            self._ready.clear()  # cleared before looking again, so a put now is not missed
            if not d and not self._ready.wait(idle_s):
                return []
        deadline = time.monotonic() + flush_s
        while len(d) < batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.002))  # a 2 ms poll: no per-message wake-ups
        pop = d.popleft
        return [pop() for _ in range(min(batch, len(d)))]


class Collector:
    """MQTT -> Store. ``start()`` connects and returns; ``stop()`` flushes and disconnects."""

    def __init__(self, store: Store, mqtt: MqttSettings, *, group: str | None = None,
                 devices: frozenset[str] | None = None, batch: int = 1000, flush_ms: int = 100,
                 client_id: str | None = None, ha_discovery: bool = True, max_channels: int = 64,
                 metrics: Metrics | None = None, state_dir: str | os.PathLike | None = None,
                 discovery_mqtt: MqttSettings | None = None, device_channels: int = 16,
                 channels: frozenset[str] | None = None, gap_wait: float = 60.0):
        self.store, self.mqtt, self.group, self.allowed = store, mqtt, group, devices
        self.batch, self.flush_s = max(1, batch), max(0.0, flush_ms / 1000)
        self.ha_discovery, self.max_channels = ha_discovery, max_channels
        # per device (besides temperature and humidity), and optionally only these names
        self.device_channels, self.allow = device_channels, channels
        if channels:
            store.reserve_channels(sorted(channels))
        # Home Assistant's configs are retained messages. On a RabbitMQ cluster the consumer
        # is AMQP (nothing it publishes is retained), retained messages stay on the node they
        # were published through and reach no wildcard subscription (Home Assistant subscribes
        # to homeassistant/#): the configs go over MQTT through --discovery-broker (any node),
        # and again whenever Home Assistant announces itself (docs/scaling.md).
        self.discovery_mqtt = discovery_mqtt
        self._disco = None
        if mqtt.amqp and ha_discovery and discovery_mqtt is None:
            log.warning("Home Assistant discovery is off: on a cluster it needs "
                        "--discovery-broker mqtt://NODE (retained messages stay on one node)")
            self.ha_discovery = False
        self.metrics = metrics or Metrics("collector")
        self.devices = Devices(self.metrics)
        self.q = _Handoff()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._announced: dict[str, frozenset] = {}
        self._fw: dict[str, str] = {}  # device -> firmware version from its status
        self._alert_seq: dict[str, int] = {}  # device -> seq of the last alert counted
        self._reading_seq: dict[str, int] = {}  # device -> seq of the reading in the gauges
        # label lookups cost a lock and a dict each: resolve them once, not per message
        self._rx = {k: self.metrics.received.labels(k)
                    for k in ("telemetry", "alert", "status", "other")}
        # Messages received per kind, counted with a plain int on the paho thread
        # (the only writer) and added to the Prometheus counter by the writer
        # thread once per batch: a Counter.inc takes a lock on every message.
        self._nrx = dict.fromkeys(self._rx, 0)
        self._nrx_flushed = dict.fromkeys(self._rx, 0)
        # (device, channel names) already claimed: the same few every message
        self._fits: set[tuple] = set()
        # device -> (current epoch, epochs seen before it); loaded from the store on first sight
        self._epochs: dict[str, tuple[int, set]] = {}
        # gaps: a seq missing gap_wait seconds after a later one arrived is not coming (the
        # board's outbox replays in order); checked against the database, so collectors in a
        # group each see every record, and raised under one key whoever raises it
        self.gap_wait = max(0.0, gap_wait)
        self._gap_mark: dict[tuple[str, int], int] = {}  # (device, epoch) -> last seq in order
        self._gap_active: set[str] = set()  # devices with records since the last check
        self._next_gap_check = 0.0
        self._raised: dict[tuple, None] = {}  # alert keys raised here (bounded, oldest out)
        self._dropped: dict[str, int] = {}  # device -> its dropped counter last seen
        self._started = time.time()
        # stable across restarts (the broker keeps the session) but unguessable: 128 random
        # bits kept in the state directory, never logged (host.settings.service_client_id)
        self.client_id, self.client = service_client(mqtt, "collector", client_id, state_dir,
                                                     group, prefetch=2 * self.batch)
        self.client.on_message = self._on_message

    # ------------------------------------------------------------ intake (paho thread)
    def _on_message(self, client, _userdata, msg) -> None:
        now = time.time()
        topic = msg.topic  # a property that decodes the bytes on every access
        try:
            kind = topic[topic.rfind("/") + 1:]
            self._nrx[kind if kind in self._nrx else "other"] += 1
            rec = parse(topic, msg.payload, self.mqtt.prefix, now)
            if self.allowed is not None and rec.device not in self.allowed:
                raise SchemaError(f"unknown device {rec.device!r}")
            self.q.put((rec, now, msg.mid, msg.qos))
        except SchemaError as exc:
            self.metrics.reject(log, topic, exc.reason)
            client.ack(msg.mid, msg.qos)
        except Exception:  # never let one message take the service down
            log.exception("unexpected error on %s", topic[:120])
            self.metrics.rejected.labels("error").inc()
            client.ack(msg.mid, msg.qos)

    # ------------------------------------------------------------ writer thread
    def _take(self) -> list:
        return self.q.take(self.batch, self.flush_s)

    def _admit(self, rec: Telemetry) -> bool:
        """Claim the sample's channels for its device (store.claim_channels) before its batch
        touches the table; a refused sample is counted, logged and dropped alone."""
        key = (rec.device, tuple(rec.values), tuple(rec.pred or ()), tuple(rec.band or ()))
        if key in self._fits:
            return True
        chans = {c.lower() for c in rec.values}
        extra = {c.lower() for c in (*(rec.pred or ()), *(rec.band or ()))} - chans
        why = (f"pred/band: channel {sorted(extra)[0]!r} is not among the values"
               if extra else
               self.store.claim_channels(rec.device, chans, cap=self.max_channels,
                                         per_device=self.device_channels, allow=self.allow))
        if why:
            self.metrics.reject(log, f"{self.mqtt.prefix}/{rec.device}/telemetry", why)
            return False
        if len(self._fits) < 4096:
            self._fits.add(key)
        return True

    def _write(self, items) -> None:
        tel = [(r, w) for r, w, _, _ in items if isinstance(r, Telemetry)]
        alerts = [(r, w) for r, w, _, _ in items if isinstance(r, Alert)]
        stats = [(r, w) for r, w, _, _ in items if isinstance(r, Status)]
        self._check_epochs(tel, alerts)
        self._check_dropped(stats)
        t0 = time.perf_counter()
        # more batches waiting (a backlog, a burst): the devices table can wait for them
        n_t, n_a = self.store.write(tel, alerts, stats, defer_devices=not self.q.empty())
        self._count_alerts(alerts, all_new=n_a == len(alerts))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        self.metrics.stored.labels("telemetry").inc(n_t)
        self.metrics.stored.labels("alert").inc(n_a)
        for kind, n_new, n_all in (("telemetry", n_t, len(tel)), ("alert", n_a, len(alerts))):
            if n_all > n_new:
                self.metrics.duplicates.labels(kind).inc(n_all - n_new)
                self.metrics.rejected.labels("replayed").inc(n_all - n_new)
                log.info("%d replayed %s messages already stored, skipped", n_all - n_new, kind,
                         extra={"reason": "replayed", "count": n_all - n_new})

    def _count_alerts(self, alerts, all_new: bool) -> None:
        """edgewatch_alerts_total{device,rule}: each stored alert once (a replay is not counted)."""
        for a, _ in alerts:
            last = self._alert_seq.get(a.device, -1)
            if all_new or a.seq > last:
                self.metrics.alerts.labels(self.metrics.device_label(a.device) or OTHER,
                                           a.rule).inc()
            self._alert_seq[a.device] = a.seq if all_new else max(last, a.seq)

    def _check_epochs(self, tel, alerts) -> None:
        """Log (warning) and count each board seen starting an epoch it never used before."""
        for rec, _ in tel + alerts:
            known = self._epochs.get(rec.device)
            if known is None:
                row = self.store.device_status(rec.device)
                if row is None or row.get("epoch") is None:  # never seen: nothing to compare
                    self._epochs[rec.device] = (rec.epoch, set())
                    continue
                known = self._epochs[rec.device] = (row["epoch"], set())
            cur, old = known
            if rec.epoch == cur or rec.epoch in old:
                continue
            if self.store.epoch_is_older(rec.device, rec.epoch, cur):
                # the board has left that epoch (epochs are random: "began earlier", asked of
                # the database, which outlives this process): a late record of a previous
                # flash, stored as it is, not a new epoch
                if len(old) < 64:
                    old.add(rec.epoch)
                log.info("device %s: late records of its earlier epoch %d (now %d)",
                         rec.device, rec.epoch, cur,
                         extra={"device": rec.device, "epoch": rec.epoch, "current_epoch": cur})
                continue
            if len(old) < 64:
                old.add(cur)
            self._epochs[rec.device] = (rec.epoch, old)
            self.metrics.new_epochs.inc()
            self._raise(rec.device, rec.epoch, "epoch", 0, cur,
                        f"new epoch {rec.epoch} (was {cur}): flash erased or outbox recreated")
            log.warning("device %s started a new epoch %d (was %d) at seq %d: its flash was "
                        "erased or its outbox recreated; its seq counts from there",
                        rec.device, rec.epoch, cur, rec.seq,
                        extra={"device": rec.device, "epoch": rec.epoch, "previous_epoch": cur})

    def _raise(self, device: str, epoch: int, rule: str, first: int, value: float,
               why: str) -> None:
        """Publish a gap alert on the device's alert topic (stored by the collectors and sent by
        the bridge like any alert), keyed by (device, epoch, rule, first seq)."""
        seq = gap_seq(rule, first)
        if (device, epoch, seq) in self._raised:
            return
        self._raised[(device, epoch, seq)] = None
        if len(self._raised) > 4096:
            self._raised.pop(next(iter(self._raised)))
        self.metrics.gaps.labels(rule).inc()
        # a new epoch has its own warning (_check_epochs); its alert is noted at info
        (log.info if rule == "epoch" else log.warning)(
            "device %s: %s (epoch %d, from seq %d); alert raised", device, why, epoch, first,
            extra={"device": device, "rule": rule, "epoch": epoch, "first_seq": first})
        msg = {"v": VERSION, "device": device, "epoch": epoch, "seq": seq, "t": time.time(),
               "sample": first, "rule": rule, "channel": None, "value": float(value),
               "band": None, "pred": None, "model": None}
        try:
            self.client.publish(f"{self.mqtt.prefix}/{device}/alert", json.dumps(msg), qos=1)
        except Exception as exc:  # the metric and the log line above still tell
            log.error("cannot publish the %s alert of %s: %s", rule, device, exc)

    def _check_dropped(self, stats) -> None:
        """A board's dropped counter (its outbox overflowed) grew: raise a `dropped` alert."""
        for rec, _ in stats:
            if rec.dropped is None:
                continue
            prev = self._dropped.get(rec.device)
            if prev is None:
                row = self.store.device_status(rec.device)
                prev = (row or {}).get("dropped") or 0
            self._dropped[rec.device] = rec.dropped
            if rec.dropped > prev:
                self._raise(rec.device, rec.epoch or 0, "dropped",
                            rec.seq if rec.seq is not None else rec.dropped, rec.dropped - prev,
                            f"outbox overflowed: {rec.dropped - prev} records dropped on the "
                            f"board ({rec.dropped} in all)")

    def _check_gaps(self) -> None:
        """Seqs missing ``gap_wait`` s after a later one was stored become `gap` alerts."""
        now = time.time()
        devices, self._gap_active = self._gap_active, set()
        for device in devices:
            epoch = self._epochs.get(device, (0, None))[0]
            mark = self._gap_mark.get((device, epoch))
            ph = "{ph}"
            both = ("SELECT seq, received FROM {telemetry} WHERE device = %s AND epoch = %s "
                    "AND seq > %s AND seq < %s UNION ALL SELECT seq, received FROM {alerts} "
                    "WHERE device = %s AND epoch = %s AND seq > %s AND seq < %s")
            if mark is None:  # start where this collector's records start (recent ones only)
                rows = self.store.query(
                    "SELECT MIN(seq) FROM {telemetry} WHERE device = {ph} AND epoch = {ph} "
                    "AND received >= {ph}", (device, epoch, self._started - 600))
                if not rows or rows[0][0] is None:
                    continue
                mark = rows[0][0]
            sql = both.replace("%s", ph) + " ORDER BY 1 LIMIT 10000"
            rows = self.store.query(sql, (device, epoch, mark, GAP_SEQ_BASE) * 2)
            expect = mark + 1
            for seq, received in rows:
                if seq < expect:
                    continue
                if seq > expect:
                    if now - received < self.gap_wait:
                        self._gap_active.add(device)  # may still come: look again later
                        break
                    self.metrics.missing.inc(seq - expect)
                    self._raise(device, epoch, "gap", expect, seq - expect,
                                f"{seq - expect} records never arrived (seq {expect} to "
                                f"{seq - 1}; the board's outbox could not fill them)")
                mark, expect = seq, seq + 1
            self._gap_mark[(device, epoch)] = mark
        if len(self._gap_mark) > 100_000:  # bounded: forget the oldest devices' marks
            for k in list(self._gap_mark)[: len(self._gap_mark) // 2]:
                del self._gap_mark[k]

    def _write_or_split(self, items) -> None:
        """Write a batch; if the database refuses it while reachable, find and drop the bad rows."""
        try:
            self._write(items)
            return
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            self.store.query("SELECT 1")
        except Exception:
            # the connection is gone: open a new one; the writer loop retries the batch
            self._reconnect()
            raise ConnectionError(first) from None
        if len(items) > 1:
            self.metrics.split.inc()
        if len(items) == 1:
            rec = items[0][0]
            self.metrics.reject(log, f"{self.mqtt.prefix}/{rec.device}/{rec.kind}",
                                f"database refused seq {getattr(rec, 'seq', None)}: {first}")
            return
        for it in items:
            self._write_or_split([it])

    def _reconnect(self) -> None:
        old = self.store
        old.close()
        try:
            self.store = Store(old.url, old.names["telemetry"][: -len("telemetry")])
        except Exception as exc:
            raise ConnectionError(str(exc)) from None
        self.store._dev_pending = old._dev_pending  # committed batches' deferred device rows
        log.info("reconnected to %s", safe_url(old.url))

    def _flush_received(self) -> None:
        for kind, n in list(self._nrx.items()):
            if n > self._nrx_flushed[kind]:
                self._rx[kind].inc(n - self._nrx_flushed[kind])
                self._nrx_flushed[kind] = n

    def _writer_loop(self) -> None:
        backoff = 0.5
        pending: list = []
        good: list | None = None
        while True:
            self._flush_received()
            if self._gap_active and time.monotonic() >= self._next_gap_check:
                self._next_gap_check = time.monotonic() + max(0.5, min(self.gap_wait / 4, 5.0))
                try:
                    self._check_gaps()
                except Exception as exc:  # the database is down: the writer says so below
                    log.debug("gap check: %s", exc)
            if not pending:
                if self._stop.is_set() and self.q.empty():
                    return
                pending = self._take()
                if not pending:
                    continue
                good = None
            try:
                if good is None:
                    # channels claimed before the batch: a refused sample is dropped alone
                    # (acked with the batch), never failing the batch it came in
                    good = [it for it in pending if type(it[0]) is not Telemetry
                            or self._admit(it[0])]
                if good:
                    self._write_or_split(good)
            except Exception as exc:
                # database down: keep the batch unacknowledged and try again
                log.error("database %s unavailable (%s); retrying in %.1f s",
                          safe_url(self.store.url), exc, backoff)
                if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                    log.error("stopping with %d messages not stored; the broker keeps them "
                              "for this session", len(pending) + self.q.qsize())
                    return
                time.sleep(0.2 if self._stop.is_set() else backoff)
                backoff = min(backoff * 2, 30)
                continue
            backoff = 0.5
            try:
                self._after_commit(good, pending)
            except Exception:  # status/discovery bookkeeping must not stop the writer
                log.exception("after storing a batch")
            pending = []

    def _after_commit(self, good, pending) -> None:
        last: dict[str, tuple] = {}
        readings: dict[str, Telemetry] = {}
        ack_all(self.client, [(mid, qos) for _, _, mid, qos in pending])
        for rec, when, _, _ in good:
            if type(rec) is Telemetry and rec.seq > self._reading_seq.get(rec.device, -1):
                readings[rec.device] = rec  # a replayed (older) sample does not move the gauge
                self._reading_seq[rec.device] = rec.seq
            if isinstance(rec, Status):
                self.devices.status(rec, when)
                if rec.fw and self.ha_discovery and self._fw.get(rec.device) != rec.fw:
                    self._fw[rec.device] = rec.fw
                    chans = self._announced.pop(rec.device, None)
                    if chans is not None:  # announced before the status: again, with sw_version
                        self._announce_channels(rec.device, chans)
            else:  # the device's current epoch: a late record of an earlier one keeps it
                epoch = self._epochs.get(rec.device, (rec.epoch,))[0]
                last[rec.device] = (when, rec.model, epoch)
                if isinstance(rec, Telemetry) and self.ha_discovery:
                    self._announce(rec)
        self._gap_active.update(last)
        for device, (when, model, epoch) in last.items():  # once per device per batch
            self.devices.seen(device, when, model, epoch)
        for device, rec in readings.items():  # the newest reading of each channel
            dev = self.metrics.device_label(device)
            if dev is None:  # past --max-devices: no per-device series
                continue
            for channel, value in rec.values.items():
                if value is not None:
                    self.metrics.reading.set(value, dev, channel)

    def _on_ha_status(self, _c, _u, msg) -> None:
        """Home Assistant's birth message ("online" on homeassistant/status, sent when it
        starts): announce again every device this collector has announced. On RabbitMQ the
        retained configs reach no wildcard subscriber, so this is how a restarted Home
        Assistant learns them; every collector answers for the devices it has seen."""
        if msg.payload.strip().lower() != b"online":
            return
        for device, chans in list(self._announced.items()):
            self._announce_channels(device, chans)

    def _announce(self, rec: Telemetry) -> None:
        chans = frozenset(rec.values)
        if self._announced.get(rec.device) == chans:
            return
        self._announce_channels(rec.device, chans)

    def _announce_channels(self, device: str, chans: frozenset) -> None:
        self._announced[device] = chans
        discovery.publish(self._disco or self.client, device, sorted(chans), self.mqtt.prefix,
                          fw=self._fw.get(device))

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Collector:
        self._stop_deadline = float("inf")
        self._writer = threading.Thread(target=self._writer_loop, name="collector-writer",
                                        daemon=True)
        self._writer.start()
        if self.ha_discovery and self.discovery_mqtt is not None:
            self._disco = mqtt_client(self.discovery_mqtt,
                                      service_client_id("collector-discovery", None))
            self._disco.on_message = self._on_ha_status
            connect(self._disco, self.discovery_mqtt, [(discovery.HA_STATUS, 1)])
        connect(self.client, self.mqtt, subscriptions(self.mqtt.prefix, self.group))
        log.info("collector storing to %s", safe_url(self.store.url),
                 extra={"group": self.group or ""})
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, store what arrived, acknowledge it, disconnect."""
        self.client.on_message = None
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        if self._writer:
            self._writer.join(timeout + 1)
        try:
            self.store.flush_devices()
        except Exception as exc:  # the database is down: the next message refreshes them
            log.error("device rows not written at stop: %s", exc)
        self._flush_received()
        close_client(self.client, self.client_id)
        if self._disco is not None:
            self._disco.disconnect()
            self._disco.loop_stop()


def add_arguments(parser) -> None:
    """Options of `edgewatch collect`."""
    parser.add_argument("--db", help="database URL: sqlite:///file.db (default "
                        "sqlite:///edgewatch.db), postgresql://..., mysql://... (env EDGEWATCH_DB_URL)")
    parser.add_argument("--table-prefix", default="", help="prefix of the table names")
    parser.add_argument("--batch", type=int, default=1000, help="max messages per transaction")
    parser.add_argument("--flush-ms", type=int, default=100,
                        help="max wait to fill a batch (ms)")
    parser.add_argument("--state-dir", help="folder of this instance's state (its client id); "
                        "env EDGEWATCH_STATE_DIR, default the SQLite database's folder, "
                        "else the current one")
    parser.add_argument("--max-channels", type=int, default=64,
                        help="channel columns the telemetry table may get in all (default 64)")
    parser.add_argument("--device-channels", type=int, default=16,
                        help="channels one device may add besides temperature and humidity "
                        "(default 16)")
    parser.add_argument("--channels", help="only these channel names (a,b,c; env "
                        "EDGEWATCH_CHANNELS); temperature and humidity are always allowed")
    parser.add_argument("--gap-wait", type=float, default=60.0,
                        help="seconds a missing seq may take to arrive after a later one before "
                        "it is a gap alert (default 60)")
    parser.add_argument("--no-discovery", action="store_true",
                        help="do not publish Home Assistant discovery configs")
    parser.add_argument("--discovery-broker", metavar="URL",
                        help="with --broker amqp://... (a cluster): publish the discovery "
                        "configs over MQTT through this node (mqtt[s]://node:port; the "
                        "service's user and password unless the URL has them), again each time "
                        "Home Assistant sends its birth message (env EDGEWATCH_DISCOVERY_URL)")
    add_service_arguments(parser, "instances with the same group split the messages",
                          "others are counted and dropped")


def _state_dir(db_url: str) -> str:
    """Default state folder: the SQLite database's folder, else the current one."""
    from urllib.parse import unquote, urlparse

    u = urlparse(db_url)
    if u.scheme in ("", "sqlite"):
        path = unquote(u.netloc + u.path) if u.scheme else db_url
        if u.scheme and path.startswith("/") and not u.netloc:
            path = path[1:]
        return str(Path(path).parent)
    return "."


def run(args) -> int:
    """Run the collector until SIGTERM/SIGINT."""
    # before anything is opened; `not (x >= 0)` as NaN fails every comparison
    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: expected at least 1 message per transaction")
    if args.flush_ms < 0:
        raise UserError(f"--flush-ms {args.flush_ms}: expected milliseconds >= 0")
    if not (math.isfinite(args.gap_wait) and args.gap_wait >= 0):
        raise UserError(f"--gap-wait {args.gap_wait}: expected a finite number of seconds >= 0")
    setup_logging(args.log_level)
    mqtt = mqtt_settings(args)
    group = check_group(args.group or env("EDGEWATCH_GROUP"))  # before the database is opened
    url = args.db or env("EDGEWATCH_DB_URL", "sqlite:///edgewatch.db")
    devices = parse_devices(args.devices or env("EDGEWATCH_DEVICES"))
    store = Store(url, args.table_prefix)
    metrics = serve_metrics("collector", args, log)
    disco_url = args.discovery_broker or env("EDGEWATCH_DISCOVERY_URL")
    disco = None
    if disco_url:
        if not mqtt.amqp:
            raise UserError("--discovery-broker: only with a cluster's --broker amqp://...; "
                            "on MQTT the configs go to --broker")
        disco = mqtt_settings(SimpleNamespace(mqtt=disco_url, username=args.username,
                                              ca_file=args.ca_file, cert_file=args.cert_file,
                                              key_file=args.key_file, prefix=args.prefix))
        if not disco.username:
            disco.username, disco.password = mqtt.username, mqtt.password
    allow = None
    spec = args.channels or env("EDGEWATCH_CHANNELS")
    if spec:
        allow = frozenset(x.strip().lower() for x in spec.split(",") if x.strip())
        for x in sorted(allow):
            if not CHANNEL_RE.fullmatch(x) or x in RESERVED_CHANNELS:
                raise UserError(f"--channels: {x!r} is not a channel name (a letter, then up to "
                                "31 of a-z 0-9 _; not a reserved name)")
    for name in ("max_channels", "device_channels"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')}: {getattr(args, name)} is negative")
    col = Collector(store, mqtt, group=group, devices=devices,
                    batch=args.batch, flush_ms=args.flush_ms, client_id=args.client_id,
                    ha_discovery=not args.no_discovery, metrics=metrics,
                    state_dir=args.state_dir or env("EDGEWATCH_STATE_DIR") or _state_dir(url),
                    discovery_mqtt=disco, max_channels=args.max_channels,
                    device_channels=args.device_channels, channels=allow,
                    gap_wait=args.gap_wait)
    serve_until_signal(col, f"collecting into {safe_url(url)} (pid {os.getpid()})")
    store.close()
    return 0
