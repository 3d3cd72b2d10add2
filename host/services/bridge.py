"""Relay alerts from MQTT to phones (Twilio SMS) and other notifiers, once, and never lose one.

    edgewatch bridge                          # SMS from TWILIO_* in env/.env, else a dry run
    edgewatch bridge --notify sms,webhook --group bridges --outbox /var/lib/edgewatch/outbox.db

Every alert goes through a persistent SQLite outbox before its MQTT
acknowledgement, so it survives a bridge restart and an SMS-provider outage:
sending is retried with exponential backoff on HTTP 5xx/429 and timeouts; a 4xx
(a bad number, bad credentials) goes to dead-letter with one clear log line.

SMS once as far as Twilio can tell: each send is marked in flight in the outbox
before its request; one whose outcome is unknown (timeout, connection lost after
sending, a crash mid-send) is looked up in Twilio's Messages list by the
``ref`` its body carries, and again after ``TWILIO_MAX_LATENCY``, before it is
sent again (``Bridge._look_up``). Webhook attempts carry an ``Idempotency-Key``.

A flapping sensor does not flood a phone: after an alert, the same
(device, rule) is quiet for ``--cooldown`` seconds; alerts in that time are
counted and sent as one digest when it ends. A global cap
(``--max-per-minute``) holds back alerts beyond it the same way. A replayed
alert (same device, epoch and seq) is sent once; a board re-flashed (new epoch,
seq from 0 again) has its alerts sent.

Several bridges share the alerts with ``--group`` (MQTT shared subscription):
each alert reaches one of them. Bridges on one host may also share one outbox
file; a lease on each row makes sure only one of them sends it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import random
import socket
import sqlite3
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from edgewatch.core.errors import UserError
from edgewatch.core.schema import Alert, SchemaError, Status, parse, to_json
from edgewatch.core.settings import (
    MqttSettings,
    check_group,
    close_client,
    connect,
    env,
    mqtt_settings,
    safe_url,
    service_client,
)
from edgewatch.core.store import Store
from edgewatch.services.collector import parse_devices
from edgewatch.services.daemon import add_service_arguments, serve_metrics, serve_until_signal
from edgewatch.services.metrics import Devices, Metrics, setup_logging
from edgewatch.services.notifiers import (
    Message,
    Notifier,
    OutcomeUnknown,
    PermanentError,
    TransientError,
    from_env,
)

log = logging.getLogger("edgewatch.bridge")

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (device TEXT NOT NULL, epoch INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL, received REAL, outcome TEXT, PRIMARY KEY (device, epoch, seq));
CREATE INDEX IF NOT EXISTS seen_received ON seen (received);
CREATE TABLE IF NOT EXISTS cooldown (device TEXT NOT NULL, rule TEXT NOT NULL, until REAL,
    suppressed INTEGER DEFAULT 0, since REAL, last TEXT, PRIMARY KEY (device, rule));
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE,
    notifier TEXT, recipient TEXT, subject TEXT, body TEXT, data TEXT, received REAL,
    created REAL, next_try REAL, attempts INTEGER DEFAULT 0, state TEXT DEFAULT 'pending',
    lease_until REAL DEFAULT 0, owner TEXT, last_error TEXT, sent_at REAL,
    ref TEXT, inflight REAL, first_try REAL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_try);
"""
# columns added since the first outbox version (added in place to older files)
OUTBOX_ADDED = (("ref", "TEXT"), ("inflight", "REAL"), ("first_try", "REAL"))

# Test hook: a deterministic crash point (kill -9 of itself): "before-outbox" (an alert
# received, not yet in the outbox: nothing may be acked), "after-send" (the provider answered,
# the outbox does not know yet). Never set in production.
CRASH_POINT = os.environ.get("EDGEWATCH_CRASH_POINT", "")


# ---------------------------------------------------------------- texts

# decimals a reading of a channel is shown with: the resolution the supported sensors
# report (DHT22 0.1 °C / 0.1 %RH; the SHTC3's 0.01 is below its ±0.2 °C, ±2 %RH accuracy)
DECIMALS = {"temperature": 1, "humidity": 1}


def _num(x, channel: str | None = None) -> str:
    """A number as a person reads it: to the sensor's resolution, else 4 significant digits."""
    if x is None:
        return "?"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and channel is None):
        return str(int(x))
    places = DECIMALS.get((channel or "").lower())
    if places is None:
        return f"{x:.4g}"
    text = f"{x:.{places}f}"
    return text.lstrip("-") if float(text) == 0 else text  # never "-0.0"


def _when(t: float | None) -> str:
    try:
        return time.strftime("%H:%M:%S UTC", time.gmtime(t if t is not None else time.time()))
    except (OverflowError, OSError, ValueError):  # no calendar time: never stop the outbox
        return time.strftime("%H:%M:%S UTC (received)", time.gmtime())


def alert_text(a: Alert) -> str:
    """The SMS text of one alert (short: one SMS segment for usual ids)."""
    what = a.channel or "device"

    def num(x):
        return _num(x, a.channel)

    if a.rule == "band" and a.band:
        detail = f"{what} {num(a.value)} outside {num(a.band[0])}..{num(a.band[1])}"
    elif a.rule == "drift" and a.band:
        detail = f"{what} {num(a.value)} drifting from {num(a.pred)}"
    elif a.rule == "burst" and a.band:
        detail = f"{what} {num(a.value)} erratic around {num(a.pred)}"
    elif a.rule == "shift" and a.band:
        detail = f"{what} mean {num(a.value)} shifted outside {num(a.band[0])}..{num(a.band[1])}"
    elif a.rule == "range":
        detail = f"{what} {num(a.value)} out of sensor range"
    elif a.rule == "stuck" and a.channel is None:
        detail = f"readings unchanged for {_num(a.value)} samples"
    elif a.rule == "stuck":
        detail = f"{what} stuck at {num(a.value)}"
    elif a.rule == "dropout":
        detail = "missed samples"
    elif a.rule == "gap":  # raised by the collector (docs/messages.md, "Gaps")
        detail = f"{_num(a.value)} records lost from seq {a.sample}"
    elif a.rule == "dropped":
        detail = f"outbox overflowed, {_num(a.value)} records dropped on the board"
    elif a.rule == "epoch":
        detail = "new epoch: flash erased or outbox recreated"
    else:
        detail = f"{what} read failed"
    return f"edgewatch {a.device}: {detail} ({a.rule}) at {_when(a.t)}"


def message_ref(key: str) -> str:
    """The short reference an alert's messages carry (``ref 1a2b3c4d``): from its outbox key

    (device, epoch, seq; a digest's device, rule and start), so every attempt, every
    bridge and every restart gives the same one. The bridge finds an SMS whose answer
    was lost by it in the provider's Messages list.
    """
    return hashlib.sha256(f"edgewatch:{key}".encode()).hexdigest()[:8]


def digest_text(device: str, rule: str, n: int, since: float, last: str) -> str:
    """The SMS text summarising alerts held back by the cooldown or the rate cap."""
    return (f"edgewatch {device}: {n} more {rule} alert{'s' if n != 1 else ''} since "
            f"{_when(since)} (last: {last})")


# ---------------------------------------------------------------- outcomes

def outcome_row(key: str, data: dict, notifier: str | None, recipient: str | None, state: str,
                when: float, ref: str | None = None, error: str | None = None,
                attempts: int = 0) -> dict:
    """One row of the shared ``notifications`` table (host/store.py).

    The outbox key names the recipient, so the row is keyed by its hash; the
    recipient itself is kept only as its last 4 characters (the dashboard
    shows who was notified without publishing phone numbers or addresses).
    """
    seq = data.get("seq") if data.get("kind", "alert") == "alert" else None
    masked = f"…{recipient[-4:]}" if recipient else None
    if error and recipient:
        error = error.replace(recipient, masked)  # a provider's error may quote the number
    return {"nkey": hashlib.sha1(key.encode()).hexdigest(), "device": data.get("device"),
            "alert_seq": seq, "kind": data.get("kind", "alert"), "notifier": notifier,
            "recipient": masked, "state": state,
            "ref": ref, "error": (error or None) and error[:200], "attempts": attempts,
            "updated": when}


# ---------------------------------------------------------------- outbox

# Due rows, earliest due first (a new row is due when queued: first come, first sent), in
# the order of the index outbox_due: the claim reads the first `limit` due rows and stops.
# Ordered by id instead, SQLite sorted every due row on each claim (a temp B-tree): once the
# bridge fell behind, each claim cost more with the backlog it had to clear (0.28 ms with
# 1,000 rows waiting against 0.007), and at 500 alerts/s on 2 cores it fell further behind.
CLAIM = ("SELECT id, notifier, recipient, subject, body, data, received, attempts, created, key, "
         "ref, inflight, first_try FROM outbox WHERE state = 'pending' AND next_try <= ? AND "
         "lease_until <= ? ORDER BY next_try, id LIMIT ?")


class Outbox:
    """The SQLite outbox: seen alerts, cooldowns, and the notifications to send.

    One connection per thread (SQLite connections are not shared between
    threads); WAL mode so the intake and the sender do not block each other,
    and several processes may use one file.
    """

    def __init__(self, path: str | os.PathLike, cooldown: float = 300.0, max_per_minute: int = 20,
                 lease: float = 30.0, max_age: float = 86400.0):
        self.path = str(path)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # /proc/x/o.db, a read-only folder
            raise UserError(f"{self.path}: cannot create the outbox's folder "
                            f"({exc.strerror or exc})") from None
        self.cooldown, self.max_per_minute = cooldown, max_per_minute
        self.lease, self.max_age = lease, max_age
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # SQLite's automatic checkpoint (every 1,000 WAL pages) runs inside a commit and
        # fsyncs: up to ~200 ms here, with the outbox's write lock held. A running bridge
        # sets 0 for its threads' connections and checkpoints from its own thread
        # (Bridge._checkpoint_loop). A commit is in the WAL file either way: on disk for a
        # kill -9 before any request goes out.
        self.autocheckpoint = 1000
        self._local = threading.local()
        # One writer at a time inside this process: SQLite's own busy handler
        # would make a blocked thread sleep in growing steps (up to 100 ms).
        self.wlock = threading.RLock()
        self.records = []
        try:
            self.db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: not a usable outbox database: {exc}") from None
        self._release_dead_leases()

    @property
    def db(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute(f"PRAGMA wal_autocheckpoint={int(self.autocheckpoint)}")
            self._local.conn = c
        return c

    @contextmanager
    def _transaction(self, db):
        """One write transaction (the caller holds ``wlock``): committed when the block ends;
        on any error rolled back, and the outcome rows recorded inside it dropped with it."""
        db.execute("BEGIN IMMEDIATE")
        mark = len(self.records)
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            del self.records[mark:]
            raise

    def checkpoint(self) -> None:
        """Copy the WAL into the database file as far as readers allow, without waiting for
        anyone and without the outbox's write lock (PASSIVE)."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _migrate(self) -> None:
        """An outbox of a version before epochs: key ``seen`` by (device, epoch, seq), in place."""
        db = self.db
        with self.wlock, self._transaction(db):
            cols = [r[1] for r in db.execute("PRAGMA table_info(seen)")]
            if "epoch" not in cols:
                log.warning("outbox %s: migrating seen alerts to the (device, epoch, seq) key",
                            self.path)
                db.execute("ALTER TABLE seen RENAME TO seen_premigrate")
                db.execute("DROP INDEX IF EXISTS seen_received")
                for stmt in SCHEMA.split(";")[:2]:
                    db.execute(stmt)
                db.execute("INSERT INTO seen (device, epoch, seq, received, outcome) "
                           "SELECT device, 0, seq, received, outcome FROM seen_premigrate")
                db.execute("DROP TABLE seen_premigrate")
            have = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            for name, kind in OUTBOX_ADDED:
                if name not in have:
                    db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")

    def _release_dead_leases(self) -> None:
        """Rows leased by a process of this host that no longer runs are free again at once."""
        host = socket.gethostname()
        for (owner,) in self.db.execute("SELECT DISTINCT owner FROM outbox WHERE state='pending' "
                                        "AND lease_until > ? AND owner LIKE ?",
                                        (time.time(), f"{host}:%")).fetchall():
            pid = int(owner.rsplit(":", 1)[1])
            try:
                os.kill(pid, 0)  # signal 0: only asks whether the process exists
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
            if not alive:
                self.db.execute("UPDATE outbox SET lease_until = 0 WHERE owner = ? AND "
                                "state='pending'", (owner,))

    # intake ------------------------------------------------------------
    records: list[dict]  # outcome rows for the shared database, taken by the bridge

    def take_records(self) -> list[dict]:
        """The outcome rows recorded since the last call (for ``Store.write_notifications``)."""
        with self.wlock:
            out, self.records = self.records, []
            return out

    def add_alerts(self, items: list[tuple[Alert, float]], notifiers: list[Notifier]) -> list[str]:
        """Record alerts in one transaction; the outcome of each.

        ``sent`` (notifications queued), ``replay`` (this device/epoch/seq was seen),
        ``cooldown`` or ``ratecap`` (held back for a digest).
        """
        db, out = self.db, []
        with self.wlock:
            return self._add_alerts(db, out, items, notifiers)

    def _add_alerts(self, db, out, items, notifiers) -> list[str]:
        with self._transaction(db):
            for a, received in items:
                cur = db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?, NULL)",
                                 (a.device, a.epoch, a.seq, received))
                if cur.rowcount == 0:
                    out.append("replay")
                    continue
                outcome = self._decide(db, a, received)
                # epoch 0 (firmware without epochs) keeps the key of earlier versions
                key = f"{a.device}:{a.epoch}:{a.seq}" if a.epoch else f"{a.device}:{a.seq}"
                if outcome != "sent":
                    self.records.append(outcome_row(f"held:{key}", to_json(a),
                                                    None, None, outcome, received))
                if outcome == "sent":
                    self._queue(db, key, alert_text(a),
                                {"kind": "alert", **to_json(a)}, received, notifiers)
                db.execute("UPDATE seen SET outcome = ? WHERE device = ? AND epoch = ? AND seq = ?",
                           (outcome, a.device, a.epoch, a.seq))
                out.append(outcome)
        return out

    def _rate_full(self, db, now: float) -> bool:
        if self.max_per_minute <= 0:
            return False
        n = db.execute("SELECT COUNT(*) FROM seen WHERE outcome IN ('sent', 'digest') "
                       "AND received > ?", (now - 60,)).fetchone()[0]
        return n >= self.max_per_minute

    def _decide(self, db, a: Alert, now: float) -> str:
        row = db.execute("SELECT until, suppressed FROM cooldown WHERE device = ? AND rule = ?",
                         (a.device, a.rule)).fetchone()
        last = alert_text(a).split(": ", 1)[1]
        if row and row[0] > now and self.cooldown > 0:
            db.execute("UPDATE cooldown SET suppressed = suppressed + 1, last = ?, "
                       "since = COALESCE(since, ?) WHERE device = ? AND rule = ?",
                       (last, now, a.device, a.rule))
            return "cooldown"
        if self._rate_full(db, now):
            db.execute("INSERT OR REPLACE INTO cooldown VALUES (?, ?, ?, 1, ?, ?)",
                       (a.device, a.rule, now + min(self.cooldown, 60.0), now, last))
            return "ratecap"
        db.execute("INSERT OR REPLACE INTO cooldown VALUES (?, ?, ?, 0, NULL, NULL)",
                   (a.device, a.rule, now + self.cooldown))
        return "sent"

    def _queue(self, db, key: str, body: str, data: dict, received: float,
               notifiers: list[Notifier]) -> None:
        now = time.time()
        subject = body.split(": ", 1)[0]
        ref = message_ref(key)
        body = f"{body} ref {ref}"  # discreet, and how a lost answer is found at the provider
        for n in notifiers:
            for r in n.recipients:
                self.records.append(outcome_row(f"{n.name}:{r}:{key}", data, n.name, r,
                                                "queued", now))
                db.execute("INSERT OR IGNORE INTO outbox (key, notifier, recipient, subject, body, "
                           "data, received, created, next_try, ref) VALUES (?,?,?,?,?,?,?,?,?,?)",
                           (f"{n.name}:{r}:{key}", n.name, r, subject, body,
                            json.dumps(data), received, now, now, ref))

    def queue_digests(self, notifiers: list[Notifier], now: float | None = None) -> int:
        """Turn ended cooldowns with held-back alerts into digest notifications; how many."""
        now = time.time() if now is None else now
        with self.wlock:
            return self._queue_digests(self.db, notifiers, now)

    def _queue_digests(self, db, notifiers, now) -> int:
        n = 0
        with self._transaction(db):
            rows = db.execute("SELECT device, rule, suppressed, since, last FROM cooldown "
                              "WHERE until <= ? AND suppressed > 0", (now,)).fetchall()
            for device, rule, count, since, last in rows:
                if self._rate_full(db, now):
                    # still over the cap: keep counting, try again in a minute
                    db.execute("UPDATE cooldown SET until = ? WHERE device = ? AND rule = ?",
                               (now + 60, device, rule))
                    continue
                key = f"digest:{device}:{rule}:{since:.6f}"
                self._queue(db, key, digest_text(device, rule, count, since, last or ""),
                            {"kind": "digest", "device": device, "rule": rule, "count": count,
                             "since": since}, now, notifiers)
                # the digest counts against the cap like an alert
                db.execute("INSERT OR IGNORE INTO seen (device, seq, received, outcome) "
                           "VALUES (?, ?, ?, 'digest')",
                           (f"digest:{device}", -int(now * 1000) - n, now))
                db.execute("UPDATE cooldown SET until = ?, suppressed = 0, since = NULL "
                           "WHERE device = ? AND rule = ?", (now + self.cooldown, device, rule))
                n += 1
        return n

    # sending -------------------------------------------------------------
    def claim(self, limit: int = 20, now: float | None = None,
              mark: frozenset[str] = frozenset()) -> list[dict]:
        """Lease up to ``limit`` due notifications for this process (others skip leased rows).

        ``mark``: notifiers whose rows are to be sent right away; a row of one of them
        without an earlier unknown outcome is marked in flight in the same transaction
        (``sending`` for the whole batch: one commit before any of its requests; its dict
        says ``marked``). A row marked so that is not sent (the process died first) is
        looked up at the provider on a restart, like any send with an unknown outcome.
        """
        now = time.time() if now is None else now
        with self.wlock:
            return self._claim(self.db, limit, now, mark)

    def _claim(self, db, limit, now, mark=frozenset()) -> list[dict]:
        with self._transaction(db):
            rows = db.execute(CLAIM, (now, now, limit)).fetchall()
            if rows:
                db.executemany("UPDATE outbox SET lease_until = ?, owner = ? WHERE id = ?",
                               [(now + self.lease, self.owner, r[0]) for r in rows])
                marked = [r[0] for r in rows if r[1] in mark and r[11] is None]
                if marked:
                    db.executemany("UPDATE outbox SET inflight = ?, first_try = COALESCE("
                                   "first_try, ?) WHERE id = ?", [(now, now, i) for i in marked])
        keys = ("id", "notifier", "recipient", "subject", "body", "data", "received", "attempts",
                "created", "key", "ref", "inflight", "first_try")
        return [dict(zip(keys, r, strict=True), marked=r[1] in mark and r[11] is None)
                for r in rows]

    def sending(self, row_id: int) -> None:
        """Mark a send as started, durably, BEFORE its request: found on a restart, the row is

        looked up at the provider before it is sent again (its outcome is unknown).
        """
        now = time.time()
        with self.wlock:
            self.db.execute("UPDATE outbox SET inflight = ?, first_try = COALESCE(first_try, ?) "
                            "WHERE id = ?", (now, now, row_id))

    def sent(self, row_id: int) -> None:
        with self.wlock:
            self.db.execute("UPDATE outbox SET state = 'sent', sent_at = ?, lease_until = 0, "
                            "inflight = NULL WHERE id = ?", (time.time(), row_id))

    def retry(self, row_id: int, error: str, delay: float, unknown: bool = False) -> None:
        """Try again in ``delay`` s; ``unknown``: the last request may have been created (keep

        the inflight mark, so it is looked up first)."""
        with self.wlock:
            self.db.execute("UPDATE outbox SET attempts = attempts + 1, next_try = ?, "
                            "lease_until = 0, last_error = ?, inflight = CASE WHEN ? THEN inflight "
                            "ELSE NULL END WHERE id = ?",
                            (time.time() + delay, error, unknown, row_id))

    def recheck(self, row_id: int, when: float, note: str) -> None:
        """Look the row up at the provider again at ``when`` (not an attempt: nothing sent)."""
        with self.wlock:
            self.db.execute("UPDATE outbox SET next_try = ?, lease_until = 0, last_error = ? "
                            "WHERE id = ?", (when, note, row_id))

    def dead(self, row_id: int, error: str) -> None:
        with self.wlock:
            self.db.execute("UPDATE outbox SET state = 'dead', attempts = attempts + 1, "
                            "lease_until = 0, last_error = ? WHERE id = ?", (error, row_id))

    def next_due(self) -> float | None:
        """When the earliest pending notification is due (None when there is none)."""
        r = self.db.execute("SELECT MIN(MAX(next_try, lease_until)) FROM outbox "
                            "WHERE state = 'pending'").fetchone()
        return r[0]

    def depth(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())

    def prune(self, keep_days: float = 7.0) -> None:
        """Forget seen alerts and finished notifications older than ``keep_days``."""
        cut = time.time() - keep_days * 86400
        with self.wlock:
            self.db.execute("DELETE FROM seen WHERE received < ?", (cut,))
            self.db.execute("DELETE FROM outbox WHERE state != 'pending' AND created < ?", (cut,))
            self.db.execute("DELETE FROM cooldown WHERE until < ? AND suppressed = 0", (cut,))


def backoff(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Delay before retry number ``attempt`` (1, 2, ...): exponential, capped, with ±20% jitter."""
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)


# ---------------------------------------------------------------- the service

class Bridge:
    """MQTT alerts -> Outbox -> notifiers. ``start()`` returns; ``stop()`` drains and disconnects."""

    def __init__(self, outbox: Outbox, notifiers: list[Notifier], mqtt: MqttSettings, *,
                 group: str | None = None, client_id: str | None = None,
                 state_dir: str | os.PathLike | None = None,
                 retry_base: float = 1.0, retry_cap: float = 300.0, workers: int = 4,
                 devices: frozenset[str] | None = None, metrics: Metrics | None = None,
                 results: Store | None = None):
        if not notifiers:
            raise UserError("no notifiers: give --notify sms,console,webhook,email")
        self.outbox, self.notifiers, self.mqtt, self.group = outbox, notifiers, mqtt, group
        self.by_name = {n.name: n for n in notifiers}
        self.allowed = devices
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.metrics = metrics or Metrics("bridge")
        self.devices = Devices(self.metrics)
        self.q: queue.Queue = queue.Queue()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # 128 random bits kept next to the outbox (or in state_dir): stable across restarts,
        # unguessable, never logged (host.settings.service_client_id)
        self.client_id, self.client = service_client(
            mqtt, "bridge", client_id,
            state_dir if state_dir is not None else Path(outbox.path).parent, group, prefetch=400)
        self.client.on_message = self._on_message
        self.workers = max(1, workers)
        # claimed rows go to `workers` long-lived sender threads, at most one row each
        # (so at most `workers` rows are marked in flight and not yet requested)
        self._work: queue.Queue = queue.Queue()
        self._busy = 0
        self._starved = False  # rows may be due that no thread was free for
        self._busy_lock = threading.Lock()
        self._sender_done = threading.Event()
        # notifiers whose rows the claim marks in flight for the whole batch at once
        self._mark = frozenset(n.name for n in notifiers if n.can_lookup)
        self.results = results  # the shared database, where each outcome is recorded
        # outcome rows are written by one thread, in batches, off the alert's path: it
        # looks every RECORD_EVERY s (a wake-up per row would cost each alert thread switches)
        self._recq: deque = deque()  # append and popleft are atomic
        self._rec_stop = threading.Event()
        self._rec_thread: threading.Thread | None = None
        self._ckpt_stop = threading.Event()
        self._ckpt_thread: threading.Thread | None = None

    RECORD_EVERY = 0.1

    def _record(self, rows: list[dict]) -> None:
        """Queue outcome rows for the shared database (written by ``_record_loop``)."""
        if self.results is not None and rows:
            self._recq.append(rows)  # list.append is atomic

    def _record_row(self, row: dict, state: str, ref=None, error=None, attempts=0) -> None:
        if self.results is not None:
            self._recq.append((row, state, time.time(), ref, error, attempts))

    def _record_loop(self) -> None:
        """Write queued outcome rows, all that wait in one transaction; a failure there never
        holds back an alert."""
        q = self._recq
        while True:
            stopping = self._rec_stop.wait(self.RECORD_EVERY)
            items = []
            while q:
                items.append(q.popleft())
            if items:
                self._write_records(items)
            if stopping and not q:
                return

    CHECKPOINT_EVERY = 1.0

    def _checkpoint_loop(self) -> None:
        """The outbox's WAL checkpoints, off the alert's path (Outbox.autocheckpoint)."""
        while True:
            stopping = self._ckpt_stop.wait(self.CHECKPOINT_EVERY)
            try:
                self.outbox.checkpoint()
            except Exception as exc:  # busy or gone: the next one catches up
                log.debug("outbox %s: checkpoint: %s", self.outbox.path, exc)
            if stopping:
                return

    def _write_records(self, items: list) -> None:
        rows = []
        for it in items:
            if isinstance(it, list):
                rows.extend(it)
            else:
                row, state, when, ref, error, attempts = it
                rows.append(outcome_row(row["key"], json.loads(row["data"] or "{}"),
                                        row["notifier"], row["recipient"], state, when, ref,
                                        error, attempts))
        try:
            self.results.write_notifications(rows)
        except Exception as exc:
            log.error("notifications to %s not recorded: %s", safe_url(self.results.url),
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    # intake ------------------------------------------------------------
    def _on_message(self, client, _userdata, msg) -> None:
        now = time.time()
        try:
            rec = parse(msg.topic, msg.payload, self.mqtt.prefix)
            self.metrics.received.labels(rec.kind).inc()
            if self.allowed is not None and rec.device not in self.allowed:
                raise SchemaError(f"unknown device {rec.device!r}")
            if isinstance(rec, Status):
                self.devices.status(rec, now)
                client.ack(msg.mid, msg.qos)
            elif isinstance(rec, Alert):
                self.q.put((rec, now, msg.mid, msg.qos))
            else:
                client.ack(msg.mid, msg.qos)
        except SchemaError as exc:
            self.metrics.reject(log, msg.topic, exc.reason)
            client.ack(msg.mid, msg.qos)
        except Exception:  # one bad message never takes the bridge down
            log.exception("unexpected error on %s", msg.topic[:120])
            self.metrics.rejected.labels("error").inc()
            client.ack(msg.mid, msg.qos)

    def _intake_loop(self) -> None:
        while not (self._stop.is_set() and self.q.empty()):
            try:
                items = [self.q.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(items) < 200:
                try:
                    items.append(self.q.get_nowait())
                except queue.Empty:
                    break
            if CRASH_POINT == "before-outbox":
                time.sleep(0.5)  # time for any early acknowledgement to reach the broker
                os.kill(os.getpid(), 9)
            while True:
                try:
                    outcomes = self.outbox.add_alerts([(a, w) for a, w, _, _ in items],
                                                      self.notifiers)
                    break
                except Exception as exc:  # the outbox is the alert's safety: never give up on it
                    log.error("outbox %s: %s; retrying", self.outbox.path, exc)
                    if self._stop.wait(1.0):
                        return  # not acked: the broker delivers them again
            self._record(self.outbox.take_records())
            if self.workers > 1:
                try:
                    self._dispatch()  # straight to an idle sender thread
                except Exception as exc:
                    log.error("outbox %s: %s", self.outbox.path, exc)
                    self.wake.set()
            else:
                self.wake.set()
            for (a, when, mid, qos), outcome in zip(items, outcomes, strict=True):
                self.client.ack(mid, qos)
                self.devices.seen(a.device, when, a.model)
                if outcome == "replay":
                    self.metrics.rejected.labels("replayed").inc()
                    log.info("replayed alert %s seq %d already handled", a.device, a.seq,
                             extra={"device": a.device, "seq": a.seq, "reason": "replayed"})
                elif outcome in ("cooldown", "ratecap"):
                    self.metrics.suppressed.labels(outcome).inc()
                    log.info("alert %s seq %d held for a digest (%s)", a.device, a.seq, outcome,
                             extra={"device": a.device, "seq": a.seq, "rule": a.rule,
                                    "outcome": outcome})
                else:
                    log.info("alert %s seq %d %s queued", a.device, a.seq, a.rule,
                             extra={"device": a.device, "seq": a.seq, "rule": a.rule})

    # sending -----------------------------------------------------------
    def _send_one(self, row: dict) -> None:
        n = self.by_name.get(row["notifier"])
        where = f"{row['notifier']} to {row['recipient']}"
        if n is None:
            # queued by a bridge run with other notifiers; wait for one that has it
            self.outbox.retry(row["id"], f"notifier {row['notifier']} not enabled", 60)
            return
        msg = Message(row["subject"], row["body"], json.loads(row["data"] or "{}"),
                      ref=row.get("ref") or "",
                      key=hashlib.sha256(row["key"].encode()).hexdigest()[:32])
        if n.can_lookup and row.get("inflight") is not None and not self._look_up(n, row, msg):
            return
        try:
            if n.can_lookup and not row.get("marked"):
                self.outbox.sending(row["id"])
            ref = n.send(row["recipient"], msg)
            if CRASH_POINT == "after-send":  # test hook: the provider has it, the outbox not
                os.kill(os.getpid(), 9)
        except PermanentError as exc:
            self.outbox.dead(row["id"], str(exc))
            self._record_row(row, "dead", error=str(exc), attempts=row["attempts"] + 1)
            self.metrics.notifications.labels(n.name, "dead").inc()
            log.error("dead-letter: %s for %s failed for good: %s (not retried)", where,
                      row["subject"], exc, extra={"notifier": n.name, "outbox_id": row["id"]})
            return
        except Exception as exc:
            transient = isinstance(exc, TransientError)
            err = str(exc) if transient else f"{type(exc).__name__}: {exc}"
            attempt = row["attempts"] + 1
            if time.time() - row["created"] > self.outbox.max_age:
                self.outbox.dead(row["id"], err)
                self._record_row(row, "dead", error=err, attempts=attempt)
                self.metrics.notifications.labels(n.name, "dead").inc()
                log.error("dead-letter: %s for %s still failing after %.0f h: %s", where,
                          row["subject"], self.outbox.max_age / 3600, err)
                return
            delay = backoff(attempt, self.retry_base, self.retry_cap)
            self.outbox.retry(row["id"], err, delay, unknown=isinstance(exc, OutcomeUnknown))
            self._record_row(row, "retry", error=err, attempts=attempt)
            self.metrics.notifications.labels(n.name, "retry").inc()
            log.warning("%s failed (%s); retry %d in %.1f s", where, err, attempt, delay,
                        extra={"notifier": n.name, "outbox_id": row["id"], "attempt": attempt})
            return
        self.outbox.sent(row["id"])
        self._record_row(row, "dry_run" if n.dry_run else "sent",
                         ref=ref if isinstance(ref, str) else None, attempts=row["attempts"] + 1)
        self.metrics.notifications.labels(n.name, "dry_run" if n.dry_run else "sent").inc()
        self.metrics.latency.observe(max(0.0, time.time() - row["received"]))
        log.info("sent %s: %s", where, row["body"],
                 extra={"notifier": n.name, "outbox_id": row["id"]})

    def _look_up(self, n: Notifier, row: dict, msg: Message) -> bool:
        """An earlier send of ``row`` has an unknown outcome: ask the provider. True: send now.

        Found: recorded as sent, not sent again. Not listed: asked again once the
        provider's worst-case latency since that send has passed; only then is it
        taken as never created and sent again.
        """
        where = f"{row['notifier']} to {row['recipient']}"
        try:
            found = n.lookup(row["recipient"], msg, row["first_try"] or row["inflight"])
        except TransientError as exc:
            delay = backoff(row["attempts"] + 1, self.retry_base, self.retry_cap)
            self.outbox.retry(row["id"], str(exc), delay, unknown=True)
            self.metrics.notifications.labels(n.name, "retry").inc()
            log.warning("%s: %s; looking again in %.1f s", where, exc, delay,
                        extra={"notifier": n.name, "outbox_id": row["id"]})
            return False
        if found:
            self.outbox.sent(row["id"])
            self._record_row(row, "sent", ref=found if isinstance(found, str) else None,
                             attempts=row["attempts"])
            self.metrics.notifications.labels(n.name, "sent").inc()
            self.metrics.latency.observe(max(0.0, time.time() - row["received"]))
            log.info("%s ref %s found at the provider (its answer was lost): not sent again",
                     where, msg.ref, extra={"notifier": n.name, "outbox_id": row["id"]})
            return False
        ready = row["inflight"] + n.max_latency
        if time.time() < ready:
            self.outbox.recheck(row["id"], ready, f"ref {msg.ref} not listed yet")
            log.info("%s ref %s not listed yet; looking again in %.1f s before sending again",
                     where, msg.ref, ready - time.time(),
                     extra={"notifier": n.name, "outbox_id": row["id"]})
            return False
        log.warning("%s ref %s not listed %.0f s after it was sent: never created; sending again",
                    where, msg.ref, n.max_latency, extra={"notifier": n.name,
                                                         "outbox_id": row["id"]})
        return True

    def _sender_loop(self) -> None:
        """Claim due rows, as many as there are idle sender threads, and hand them over.

        A slow provider must not hold back the other recipients: up to ``workers`` requests
        run at once, and a row is claimed as soon as a thread is free (no batch waits for
        its slowest request). The claim marks the batch in flight in one commit.
        """
        last_digest = last_prune = 0.0
        try:
            while not self._stop.is_set():
                try:
                    self.wake.clear()  # before looking: a wake from now on is not lost
                    if time.monotonic() - last_digest >= 1.0:
                        last_digest = time.monotonic()
                        self.outbox.queue_digests(self.notifiers)
                        self._record(self.outbox.take_records())
                    if time.monotonic() - last_prune >= 3600:
                        last_prune = time.monotonic()
                        self.outbox.prune()
                    if self.workers == 1:
                        rows = self.outbox.claim(limit=1, mark=self._mark)
                        for r in rows:
                            self._send_one(r)
                        n = len(rows)
                    else:
                        n = self._dispatch()
                        if n < 0:  # all busy: the first to finish claims what is due
                            self.wake.wait(1.0)
                            continue
                    if n:
                        continue
                    self.metrics.outbox_depth.set(self.outbox.depth())
                    due = self.outbox.next_due()
                    wait = 1.0 if due is None else min(1.0, max(0.0, due - time.time()))
                    self.wake.wait(wait)
                except Exception as exc:  # keep sending whatever one row or the file did
                    log.error("outbox %s: %s", self.outbox.path, exc)
                    self._stop.wait(1.0)
        finally:
            self._sender_done.set()

    def _dispatch(self) -> int:
        """Claim due rows for the idle sender threads and hand them over; how many (the
        intake, the sender loop and a thread that has just finished all call it); -1: none
        is idle. Nothing is claimed once the bridge stops (a claimed row is marked in flight:
        it must be requested)."""
        if self._stop.is_set():
            return 0
        with self._busy_lock:
            free = self.workers - self._busy
            if free <= 0:
                self._starved = True
                return -1
            self._busy += free  # reserved while claiming
        rows: list[dict] = []
        try:
            rows = self.outbox.claim(limit=free, mark=self._mark)
        finally:
            with self._busy_lock:
                self._busy -= free - len(rows)
                if len(rows) == free:
                    self._starved = True  # more may be due
        for r in rows:
            self._work.put(r)
        return len(rows)

    def _worker_loop(self) -> None:
        """Send the rows handed over by ``_dispatch``; exit once the sender loop has ended and
        none is claimed or waiting (a row claimed is always requested: it is marked in flight)."""
        while True:
            try:
                row = self._work.get(timeout=0.2)
            except queue.Empty:
                with self._busy_lock:
                    idle = self._busy == 0  # nothing claimed for a thread, nothing being sent
                if self._sender_done.is_set() and idle and self._work.empty():
                    return
                continue
            try:
                self._send_one(row)
            except Exception as exc:  # the row stays leased, then is looked up and sent again
                log.error("outbox %s: %s", self.outbox.path, exc)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    again, self._starved = self._starved, False
            if again and not self._stop.is_set():
                try:
                    self._dispatch()
                except Exception as exc:
                    log.error("outbox %s: %s", self.outbox.path, exc)
                    self.wake.set()

    # lifecycle ---------------------------------------------------------
    def start(self) -> Bridge:
        self.outbox.autocheckpoint = 0  # for the connections of the threads started here
        self._ckpt_thread = threading.Thread(target=self._checkpoint_loop,
                                             name="bridge-checkpoint", daemon=True)
        self._ckpt_thread.start()
        loops = [(self._intake_loop, "bridge-intake"), (self._sender_loop, "bridge-send")]
        if self.workers > 1:
            loops += [(self._worker_loop, f"bridge-send-{k}") for k in range(self.workers)]
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.results is not None:
            self._rec_thread = threading.Thread(target=self._record_loop, name="bridge-record",
                                                daemon=True)
            self._rec_thread.start()
        share = f"$share/{self.group}/" if self.group else ""
        connect(self.client, self.mqtt, [(f"{share}{self.mqtt.prefix}/+/alert", 1),
                                         (f"{self.mqtt.prefix}/+/status", 1)])
        log.info("bridge relaying alerts to %s", ", ".join(n.name for n in self.notifiers),
                 extra={"outbox": self.outbox.path, "group": self.group or "",
                        "pending": self.outbox.depth()})
        return self

    def stop(self) -> None:
        """Stop: alerts received are recorded in the outbox first; unsent ones stay there."""
        self.client.on_message = None
        self._stop.set()
        self.wake.set()
        for t in self._threads:
            t.join(15)
        self._rec_stop.set()  # after the loops that queue outcome rows
        if self._rec_thread is not None:
            self._rec_thread.join(15)
        self._ckpt_stop.set()
        if self._ckpt_thread is not None:
            self._ckpt_thread.join(15)
        close_client(self.client, self.client_id)


def add_arguments(parser) -> None:
    """Options of `edgewatch bridge`."""
    parser.add_argument("--notify", help="notifiers, comma-separated: sms,console,webhook,email "
                        "(env EDGEWATCH_NOTIFY; default sms)")
    parser.add_argument("--outbox", help="outbox SQLite file (env EDGEWATCH_OUTBOX; "
                        "default edgewatch-outbox.db)")
    parser.add_argument("--db", help="shared database where each notification's outcome is "
                        "recorded (the collector's; env EDGEWATCH_DB_URL; default "
                        "sqlite:///edgewatch.db; 'none' records nothing)")
    parser.add_argument("--table-prefix", default="", help="prefix of the table names")
    parser.add_argument("--cooldown", type=float, default=None,
                        help="seconds of quiet per device and rule after an alert (default 300)")
    parser.add_argument("--max-per-minute", type=int, default=None,
                        help="global cap on alerts sent per minute, 0 = none (default 20)")
    parser.add_argument("--retry-base", type=float, default=1.0,
                        help="first retry delay in seconds (doubles each time)")
    parser.add_argument("--retry-cap", type=float, default=300.0, help="longest retry delay")
    add_service_arguments(parser, "bridges with the same group split the alerts",
                          "alerts of others are counted and dropped")
    parser.add_argument("--state-dir", help="folder of this instance's state (its client id); "
                        "env EDGEWATCH_STATE_DIR, default the outbox's folder")


def _number(flag, env_name: str | None, name: str, default: float, *, low: float = 0.0,
            above: bool = False, whole: bool = False) -> float:
    """The option's value (``flag``, else the environment variable ``env_name``), else the
    default: a finite number >= ``low`` (> ``low`` with ``above``; an integer with ``whole``).
    NaN would pass any comparison-based check and then stall the bridge; 1e400 is inf."""
    if flag is not None:
        value, shown = flag, f"{name} {flag}"
    else:
        value = env(env_name) if env_name else None
        shown = f"{env_name}={value!r}"
    if value is None:
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{shown}: not a number") from None
    if not math.isfinite(x) or x < low or (above and x <= low) or (whole and x != int(x)):
        kind = "a whole number" if whole else "a finite number"
        raise UserError(f"{shown}: expected {kind} {'>' if above else '>='} {low:g}")
    return int(x) if whole else x


def _limits(args) -> dict:
    """--cooldown, --max-per-minute, --retry-base/--retry-cap (or their env), checked."""
    base = _number(args.retry_base, None, "--retry-base", 1.0, above=True)
    cap = _number(args.retry_cap, None, "--retry-cap", 300.0, above=True)
    return {"cooldown": _number(args.cooldown, "EDGEWATCH_COOLDOWN", "--cooldown", 300.0),
            "max_per_minute": _number(args.max_per_minute, "EDGEWATCH_MAX_PER_MINUTE",
                                      "--max-per-minute", 20, whole=True),
            "retry_base": base, "retry_cap": cap}


def run(args) -> int:
    """Run the bridge until SIGTERM/SIGINT."""
    setup_logging(args.log_level)
    mqtt = mqtt_settings(args)  # loads .env: the limits below may come from it
    limits = _limits(args)
    group = check_group(args.group or env("EDGEWATCH_GROUP"))  # before the outbox is created
    names = [x.strip() for x in (args.notify or env("EDGEWATCH_NOTIFY", "sms")).split(",")
             if x.strip()]
    notifiers = from_env(names)
    outbox = Outbox(args.outbox or env("EDGEWATCH_OUTBOX", "edgewatch-outbox.db"),
                    cooldown=limits["cooldown"], max_per_minute=limits["max_per_minute"])
    metrics = serve_metrics("bridge", args, log)
    url = args.db or env("EDGEWATCH_DB_URL", "sqlite:///edgewatch.db")
    results = None
    if url.lower() != "none":
        try:
            results = Store(url, args.table_prefix)
        except UserError as exc:  # alerts go out without the database; the outcomes do not
            log.error("notification outcomes will not be recorded: %s", exc)
    bridge = Bridge(outbox, notifiers, mqtt, group=group,
                    client_id=args.client_id, state_dir=args.state_dir or env("EDGEWATCH_STATE_DIR"),
                    retry_base=limits["retry_base"],
                    retry_cap=limits["retry_cap"], metrics=metrics,
                    devices=parse_devices(args.devices or env("EDGEWATCH_DEVICES")),
                    results=results)
    serve_until_signal(bridge, f"bridge running, outbox {outbox.path} (pid {os.getpid()})")
    if results is not None:
        results.close()
    return 0
