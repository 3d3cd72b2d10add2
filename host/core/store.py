"""The collector's database: SQLite by default, PostgreSQL (psycopg 3) or MySQL/MariaDB (PyMySQL).

URLs: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` (or a plain path),
``postgresql://user:pw@host:5432/db``, ``mysql://user:pw@host:3306/db``.

Tables (names optionally prefixed, so tests and several sites can share one database):

- ``telemetry``: ``device, epoch, seq, t, received, anomaly, faults, model`` and one
  DOUBLE column per channel, added the first time a channel is seen. This is the
  shape ``edgewatch.training.forecast.data.load_db`` and ``edgewatch export`` read. ``t`` is the
  board's time, or the arrival time when the board's clock was not set.
  Beside each channel ``c`` the board's prediction and band are kept in
  ``_pred_c``, ``_lo_c`` and ``_hi_c`` (a leading ``_`` is never a channel name,
  so readers that take every other column as a channel are unaffected); the
  verdict is ``anomaly`` and ``faults``. Indexed by (device, t) for charts.
- ``alerts``: one row per alert message.
- ``devices``: per-device status (state, last seen, firmware, model, outbox depth)
  and the latest sample (``latest_t``, ``latest``: JSON of seq, values, pred,
  band, anomaly, faults), so the fleet view is one small table read.
- ``notifications``: the bridges' outcome of each alert and notification
  (queued, sent, dry_run, retry, dead, cooldown, ratecap; provider reference).
- ``channels`` and ``device_channels``: the channel columns claimed so far, each in a
  numbered slot (``slot`` is the key, the name unique), and which device uses which. A new
  channel is claimed (:meth:`Store.claim_channels`) before any DDL, in one transaction that
  inserts ``slot = number claimed so far``: two collectors (or two batches) racing for the
  last slot collide on the key and one retries, so the table never holds more than the cap,
  and a device never more than its own limit. The known channels (temperature, humidity and
  any configured allow-list) are claimed once up front and never count against a device.

Existing databases migrate in place: missing tables, columns and the index are
added when a :class:`Store` opens them for writing (``create=True``).

``(device, epoch, seq)`` is the primary key of telemetry and alerts and every
insert ignores a key already present, so a replayed or redelivered message is
stored once however often it arrives; :meth:`Store.write` reports how many rows
were new. ``epoch`` is the board's outbox epoch (new after a flash erase, when
``seq`` restarts at 0; 0 for firmware that sends none). Tables of an older
version, keyed by ``(device, seq)``, are migrated in place when the store opens.

``devices.epoch`` is the device's current epoch and never goes back to one it has left:
epochs are random, not increasing, so "older" means "began earlier". An epoch's start is
the arrival of its lowest-seq telemetry row (one index seek on the key); an epoch with a
row that arrived before the current epoch's start is an earlier one, and a record of it
(the previous flash's outbox delivered late) is stored but does not change the epoch
(:data:`OLDER_EPOCH`, the same test in the SQL of the upserts and in
:meth:`Store.epoch_is_older`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import orjson
from edgewatch.core.errors import UserError
from edgewatch.core.schema import RESERVED_CHANNELS, Alert, Status, Telemetry
from edgewatch.core.settings import add_secret, safe_url

log = logging.getLogger("edgewatch.store")

EPOCH_COL = "epoch BIGINT NOT NULL DEFAULT 0"

ALERT_COLS = ("device", "epoch", "seq", "t", "received", "sample", "rule", "channel", "value", "lo", "hi",
              "pred", "model")
TELEMETRY_META = ("device", "epoch", "seq", "t", "received", "anomaly", "faults", "model")
# their types as PostgreSQL names them (Postgres.many: the staging table a batch is copied into)
TELEMETRY_META_TYPES = ("text", "int8", "int8", "float8", "float8", "int2", "text", "text")
SEEN_TYPES = ("text", "text", "float8", "text", "int8")  # device, state, last_seen, model, epoch
DEVICE_COLS = ("device", "state", "last_seen", "status_seq", "fw", "model", "outbox", "heap_free",
               "dropped", "uptime", "error", "epoch")
NOTIFY_COLS = ("nkey", "device", "alert_seq", "kind", "notifier", "recipient", "state", "ref",
               "error", "attempts", "updated")
BAND = ("_pred_", "_lo_", "_hi_")  # column prefixes of a channel's prediction and band
KNOWN_CHANNELS = ("temperature", "humidity")  # every board's sensors: never refused
DEVICE_ROWS_EVERY = 1.0  # seconds between device-row writes while batches queue (Store.write)
CLOCK_SKEW_S = 300.0  # how far ahead of its arrival a board's `t` may order its samples
# epoch {new} of device {dev} began before epoch {cur}: it has a telemetry row that arrived
# before {cur}'s lowest-seq one (no row of {cur}: unknown, taken as not older). Both lookups
# go through the (device, epoch, seq) key; for an older epoch the scan stops at its first
# early row, for a new one it reads only the rows just stored
EPOCH_START = ("(SELECT ew_o.received FROM {tel} ew_o WHERE ew_o.device = {dev} "
               "AND ew_o.epoch = {cur} ORDER BY ew_o.seq LIMIT 1)")
OLDER_EPOCH = ("EXISTS (SELECT 1 FROM {tel} ew_n WHERE ew_n.device = {dev} AND ew_n.epoch = {new} "
               "AND ew_n.received < " + EPOCH_START + ")")


def band_columns(channel: str) -> tuple[str, str, str]:
    """The columns holding a channel's prediction, band low and band high."""
    return tuple(p + channel for p in BAND)


def latest_json(rec: Telemetry) -> str:
    """The devices table's copy of a device's newest sample (orjson: one per device per batch,
    about 6x faster than json.dumps; the same JSON, compact)."""
    return orjson.dumps({"epoch": rec.epoch, "seq": rec.seq, "values": rec.values,
                         "pred": rec.pred, "band": rec.band, "anomaly": rec.anomaly,
                         "faults": list(rec.faults)}).decode()


class Dialect:
    """What differs between the three databases: driver, types, 'insert unless present', upsert.

    The SQL that differs is data (templates); the methods that fill them are shared.
    """

    name = "sqlite"
    ph = "?"
    real = "DOUBLE PRECISION"
    big = "BIGINT"
    greatest = "MAX"
    quote = '"{}"'
    insert_new_sql = "INSERT INTO {table} ({c}) VALUES ({v}) ON CONFLICT DO NOTHING"
    # upsert: the stored and the incoming value of a column, the conflict clause
    old_sql = "{table}.{col}"
    new_sql = "excluded.{col}"
    on_key_sql = "ON CONFLICT ({key}) DO UPDATE SET"
    older_epoch_sql = OLDER_EPOCH

    def q(self, ident: str) -> str:
        return self.quote.format(ident)

    def columns(self, cols) -> tuple[str, str]:
        """The quoted column list and the matching placeholders of an INSERT."""
        return ", ".join(self.q(x) for x in cols), ", ".join([self.ph] * len(cols))

    def rows(self, n: int, types=None) -> str:
        """The rows of an INSERT: one row of ``n`` placeholders (``executemany``)."""
        return f"VALUES ({', '.join([self.ph] * n)})"

    def insert_new(self, table: str, cols, types=None) -> str:
        c, _ = self.columns(cols)
        return self.insert_new_sql.replace("VALUES ({v})", self.rows(len(cols), types)).format(
            table=table, c=c)

    def upsert(self, table: str, cols, key: str, merge: dict[str, str], types=None) -> str:
        """Insert or update ``cols``; ``merge`` maps a column to an expression of old/new."""
        c, _ = self.columns(cols)
        sets = ", ".join(
            f"{self.q(k)} = "
            f"{e.format(old=self.old_sql.format(table=table, col=self.q(k)), new=self.new_sql.format(col=self.q(k)))}"
            for k, e in merge.items())
        return (f"INSERT INTO {table} ({c}) {self.rows(len(cols), types)} "
                f"{self.on_key_sql.format(key=self.q(key))} {sets}")

    def many(self, conn, sql, rows: list, types=None):
        """Run ``sql(types)`` (a statement of :meth:`insert_new`/:meth:`upsert`) for ``rows``;
        the cursor, whose rowcount is the rows inserted or updated."""
        cur = conn.cursor()
        cur.executemany(sql(None), rows)
        return cur


class Postgres(Dialect):
    """With ``types`` (one SQL type per column), a batch goes in by COPY: into a temporary
    table of those types (one per session and type list, emptied at each commit), then one
    ``INSERT ... SELECT`` with the same conflict rules. psycopg's ``executemany`` binds each
    row in Python, about 12 us of the collector's CPU per row; ``copy.write_row`` formats
    it in C, about 1.5 us. Same rows, same rowcount (inserted or updated)."""

    name = "postgresql"
    ph = "%s"
    greatest = "GREATEST"

    @staticmethod
    def staging(types) -> str:
        import hashlib

        return "ew_in_" + hashlib.sha1(",".join(types).encode()).hexdigest()[:12]

    def rows(self, n: int, types=None) -> str:
        if not types:
            return super().rows(n)
        return f"SELECT * FROM {self.staging(types)}"

    def many(self, conn, sql, rows: list, types=None):
        if not types or not rows:
            return super().many(conn, sql, rows)
        name = self.staging(types)
        cols = ", ".join(f"c{i} {t}" for i, t in enumerate(types))
        cur = conn.cursor()
        # in the batch's transaction: rolled back with it, made again by the next batch
        cur.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({cols}) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY {name} FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(list(types))  # binary: a float's 8 bytes, not its decimal text
            write = cp.write_row
            for row in rows:
                write(row)
        # emptied at once as well: a second use in the same transaction starts empty
        cur.execute(f"{sql(types)}; DELETE FROM {name}")
        return cur


class MySQL(Dialect):
    name = "mysql"
    ph = "%s"
    real = "DOUBLE"
    greatest = "GREATEST"
    quote = "`{}`"
    insert_new_sql = "INSERT IGNORE INTO {table} ({c}) VALUES ({v})"
    old_sql = "{col}"
    new_sql = "VALUES({col})"
    on_key_sql = "ON DUPLICATE KEY UPDATE"
    # VALUES(col), the incoming value, is refused inside a subquery: the same test as IN,
    # which MariaDB runs as EXISTS with the epoch pushed down (the key again)
    older_epoch_sql = ("{new} IN (SELECT ew_n.epoch FROM {tel} ew_n WHERE ew_n.device = {dev} "
                       "AND ew_n.received < " + EPOCH_START + ")")


def _sqlite_wal(conn, wait: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out another process that holds the file: two
    collectors opening one new file at once got "database is locked" at once (the switch
    to WAL does not always go through SQLite's busy handler)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def connect(url: str, create: bool = True):
    """(DB-API connection, Dialect) for a database URL; ``create`` makes a missing SQLite file."""
    u = urlparse(url)
    scheme = u.scheme.split("+")[0]
    add_secret(u.password)
    try:
        if scheme in ("", "sqlite"):
            path = url if not u.scheme else unquote(u.netloc + u.path)
            if u.scheme and path.startswith("/") and not u.netloc:
                path = path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
            if not path:
                raise UserError(f"{url}: no database file in the URL")
            if not create and not Path(path).is_file():
                raise UserError(f"{path}: no such database file")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
            # WAL with synchronous=NORMAL: a commit is in the WAL file (the OS has it)
            # when commit() returns, but is fsynced only at checkpoints. The collector
            # acks a message after its batch commits, so that is durable against the
            # process being killed (kill -9, a crash), not against power loss or an OS
            # crash, which may lose the last acked batches; use PostgreSQL/MariaDB (or
            # synchronous=FULL) where that matters.
            _sqlite_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn, Dialect()
        if scheme in ("postgresql", "postgres"):
            import psycopg

            return psycopg.connect(url.replace(u.scheme + "://", "postgresql://", 1),
                                   connect_timeout=10), Postgres()
        if scheme in ("mysql", "mariadb"):
            import pymysql

            return pymysql.connect(host=u.hostname or "localhost", port=u.port or 3306,
                                   user=unquote(u.username or ""),
                                   password=unquote(u.password or ""),
                                   database=u.path.lstrip("/") or None, charset="utf8mb4",
                                   autocommit=False, connect_timeout=10), MySQL()
    except UserError:
        raise
    except Exception as exc:  # driver errors: one line, no traceback, no password
        raise UserError(f"{safe_url(url)}: cannot open: {str(exc).splitlines()[0]}") from None
    raise UserError(f"{safe_url(url)}: unknown database scheme {u.scheme!r} "
                    "(use sqlite:///file.db, postgresql://..., mysql://...)")


class Store:
    """Batched, exactly-once writes of telemetry, alerts and device status."""

    def __init__(self, url: str, table_prefix: str = "", create: bool = True):
        if table_prefix and not table_prefix.replace("_", "").isalnum():
            raise UserError(f"table prefix {table_prefix!r}: letters, digits and _ only")
        self.url = url
        self.conn, self.d = connect(url, create)
        self.lock = threading.Lock()
        # device rows deferred by write(defer_devices=True): (seen, latest), due time
        self._dev_pending: tuple[dict, dict] = ({}, {})
        self._dev_due = 0.0
        q = self.d.q
        self.t_tel = q(f"{table_prefix}telemetry")
        self.t_alert = q(f"{table_prefix}alerts")
        self.t_dev = q(f"{table_prefix}devices")
        self.t_note = q(f"{table_prefix}notifications")
        self.prefix = table_prefix
        self.t_chan = q(f"{table_prefix}channels")
        self.t_devchan = q(f"{table_prefix}device_channels")
        self._claimed: set[tuple[str, str]] = set()  # (device, channel) known to be claimed
        self._global: set[str] = set()  # channels known to hold a slot
        self.names = {"telemetry": f"{table_prefix}telemetry", "alerts": f"{table_prefix}alerts",
                      "devices": f"{table_prefix}devices",
                      "notifications": f"{table_prefix}notifications"}
        if create:
            try:
                self._create()
            except Exception as exc:  # no rights, a clashing table: one line, no traceback
                self.close()
                raise UserError(f"{safe_url(url)}: cannot create the tables: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                ) from None
        try:
            self.channels = self._channel_columns()
        except Exception:
            self.close()
            raise UserError(f"{safe_url(url)}: no table {self.names['telemetry']} "
                            "(has the collector run?)") from None

    # ------------------------------------------------------------ schema
    def _create(self) -> None:
        d, r, b = self.d, self.d.real, self.d.big
        key = "VARCHAR(32) NOT NULL"
        stmts = [
            f"CREATE TABLE IF NOT EXISTS {self.t_tel} (device {key}, {EPOCH_COL}, "
            f"seq {b} NOT NULL, t {r}, "
            f"received {r}, anomaly SMALLINT, faults VARCHAR(64), model VARCHAR(8), "
            f"PRIMARY KEY (device, epoch, seq))",
            f"CREATE TABLE IF NOT EXISTS {self.t_alert} (device {key}, {EPOCH_COL}, "
            f"seq {b} NOT NULL, t {r}, "
            f"received {r}, sample {b}, {d.q('rule')} VARCHAR(16), channel VARCHAR(32), "
            f"{d.q('value')} {r}, lo {r}, hi {r}, pred {r}, model VARCHAR(8), "
            f"PRIMARY KEY (device, epoch, seq))",
            f"CREATE TABLE IF NOT EXISTS {self.t_dev} (device {key} PRIMARY KEY, "
            f"state VARCHAR(8), last_seen {r}, status_seq {b}, fw VARCHAR(32), model VARCHAR(8), "
            f"outbox INTEGER, heap_free INTEGER, dropped {b}, uptime {r}, error VARCHAR(200), "
            f"epoch {b}, latest_t {r}, latest TEXT)",
            f"CREATE TABLE IF NOT EXISTS {self.t_note} (nkey VARCHAR(190) NOT NULL PRIMARY KEY, "
            f"device {key}, alert_seq {b}, kind VARCHAR(8), notifier VARCHAR(16), "
            f"recipient VARCHAR(64), state VARCHAR(12), ref VARCHAR(64), error VARCHAR(200), "
            f"attempts INTEGER, updated {r})",
        ]
        stmts += [
            f"CREATE TABLE IF NOT EXISTS {self.t_chan} (slot INTEGER NOT NULL PRIMARY KEY, "
            f"channel VARCHAR(32) NOT NULL UNIQUE)",
            f"CREATE TABLE IF NOT EXISTS {self.t_devchan} (device {key}, slot INTEGER NOT NULL, "
            f"channel VARCHAR(32) NOT NULL, PRIMARY KEY (device, slot), UNIQUE (device, channel))",
        ]
        cur = self.conn.cursor()
        if d.name == "mysql":
            # text compares byte for byte, as in SQLite and PostgreSQL: MariaDB's default
            # collation ignores case, so gh-01 and GH-01 were one device (gh-01's samples
            # dropped as replays of GH-01's, one devices row, a false re-flash alert)
            stmts = [st + " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" for st in stmts]
        for s in stmts:
            cur.execute(s)
        if d.name == "mysql":  # tables made before: converted once, in place
            for table in (self.t_tel, self.t_alert, self.t_dev, self.t_note, self.t_chan,
                          self.t_devchan):
                cur.execute("SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE "
                            "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table.strip("`"),))
                row = cur.fetchone()
                if row and row[0] != "utf8mb4_bin":
                    cur.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 "
                                "COLLATE utf8mb4_bin")
        self.conn.commit()
        # the columns already there (a database from before the channels table) and the
        # known channels hold their slots whatever the cap
        cols = self._columns(self.t_tel)
        have = sorted(c for c in cols - set(TELEMETRY_META) if not c.startswith("_"))
        self.reserve_channels(list(KNOWN_CHANNELS) + have)
        self._migrate()  # epochs first: a rebuilt SQLite table loses its indexes
        # in-place migration of databases made before these columns and the index existed
        have = self._columns(self.t_dev)
        for col, typ in (("latest_t", r), ("latest", "TEXT")):
            if col not in have:
                self._alter(f"ALTER TABLE {self.t_dev} ADD COLUMN {col} {typ}")
        self._index(f"{self.prefix}telemetry_device_t", self.t_tel, "device, t")
        self._index(f"{self.prefix}notifications_device", self.t_note, "device, alert_seq")

    def _migrate(self) -> None:
        """Tables of a version before epochs: add ``epoch`` (0 for the rows there) and key
        telemetry and alerts by (device, epoch, seq), in place, each table in one transaction."""
        d = self.d
        if "epoch" not in self._columns(self.t_dev):
            cur = self.conn.cursor()
            cur.execute(f"ALTER TABLE {self.t_dev} ADD COLUMN epoch {d.big}")
            self.conn.commit()
        for table in (self.t_tel, self.t_alert):
            if "epoch" in self._columns(table):
                continue
            log.warning("migrating %s to the (device, epoch, seq) key", table,
                        extra={"table": table})
            cur = self.conn.cursor()
            try:
                if d.name == "sqlite":  # SQLite cannot change a primary key: rebuild the table
                    cur.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (table.strip('"'),))
                    ddl = cur.fetchone()[0]
                    tmp = d.q(table.strip('"') + "_premigrate")
                    cur.execute("BEGIN")
                    cur.execute(f"ALTER TABLE {table} RENAME TO {tmp}")
                    head, _, rest = ddl.partition("(")
                    body = rest.rsplit(")", 1)[0].replace("PRIMARY KEY (device, seq)",
                                                          "PRIMARY KEY (device, epoch, seq)")
                    body = body.replace("seq BIGINT NOT NULL", f"{EPOCH_COL}, seq BIGINT NOT NULL",
                                        1)
                    cur.execute(f"CREATE TABLE {table} ({body})")
                    cur.execute(f"SELECT * FROM {tmp} WHERE 1 = 0")
                    cols = ", ".join(d.q(c[0]) for c in cur.description)
                    cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {tmp}")
                    cur.execute(f"DROP TABLE {tmp}")
                elif d.name == "postgresql":
                    cur.execute("SELECT conname FROM pg_constraint WHERE contype = 'p' AND "
                                "conrelid = to_regclass(%s)", (table,))
                    pk = cur.fetchone()[0]
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {EPOCH_COL}, "
                                f"DROP CONSTRAINT {d.q(pk)}, ADD PRIMARY KEY (device, epoch, seq)")
                else:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {EPOCH_COL}, DROP PRIMARY KEY, "
                                "ADD PRIMARY KEY (device, epoch, seq)")
                self.conn.commit()
            except Exception:
                self.conn.rollback()
                raise

    def _columns(self, table: str) -> set[str]:
        cur = self.conn.cursor()
        cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        cols = {c[0].lower() for c in cur.description}
        cur.fetchall()
        self.conn.commit()
        return cols

    def _alter(self, sql: str) -> None:
        try:
            self.conn.cursor().execute(sql)
            self.conn.commit()
        except Exception:  # another process migrated it first
            self.conn.rollback()

    def _index(self, name: str, table: str, cols: str) -> None:
        cur = self.conn.cursor()
        if self.d.name == "mysql":
            cur.execute("SELECT COUNT(*) FROM information_schema.statistics WHERE "
                        "table_schema = DATABASE() AND table_name = %s AND index_name = %s",
                        (table.strip("`"), name))
            if cur.fetchone()[0]:
                self.conn.commit()
                return
            self._alter(f"CREATE INDEX {self.d.q(name)} ON {table} ({cols})")
        else:
            self._alter(f"CREATE INDEX IF NOT EXISTS {self.d.q(name)} ON {table} ({cols})")

    def _channel_columns(self) -> set[str]:
        cols = self._columns(self.t_tel)
        self.band_cols = {c for c in cols if c.startswith("_")}
        return {c for c in cols - set(TELEMETRY_META) if not c.startswith("_")}

    def _ensure_channels(self, names: set[str], band: set[str] = frozenset()) -> None:
        want = [(n, n) for n in sorted(names - self.channels)]
        want += [(c, n) for n in sorted(band) for c in band_columns(n) if c not in self.band_cols]
        for col, name in want:
            cur = self.conn.cursor()
            try:
                cur.execute(f"ALTER TABLE {self.t_tel} ADD COLUMN {self.d.q(col)} {self.d.real}")
                self.conn.commit()
                log.info("telemetry: new column %s", col, extra={"channel": name})
            except Exception:
                # another collector added it first: refresh and carry on
                self.conn.rollback()
            self.channels = self._channel_columns()
            if col not in self.channels | self.band_cols:
                raise RuntimeError(f"cannot add channel column {col!r}")

    # ------------------------------------------------------------ channel claims
    def _claim_slot(self, table: str, key_cols: tuple, key_vals: tuple, channel: str,
                    limit: int | None, cur) -> bool:
        """Insert ``channel`` into the next slot of ``table`` (within ``key``); False if full.

        Runs inside the caller's transaction; a unique-key collision (another writer took the
        slot or the name first) raises and the caller retries from a fresh read.
        """
        ph = self.d.ph
        where = " AND ".join(f"{c} = {ph}" for c in key_cols) or "1 = 1"
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", key_vals)
        n = cur.fetchone()[0]
        if limit is not None and n >= limit:
            return False
        cols = (*key_cols, "slot", "channel")
        c, v = self.d.columns(cols)
        cur.execute(f"INSERT INTO {table} ({c}) VALUES ({v})", (*key_vals, n, channel))
        return True

    def _held(self, cur, device: str | None, channel: str) -> bool:
        ph = self.d.ph
        if device is None:
            cur.execute(f"SELECT 1 FROM {self.t_chan} WHERE channel = {ph}", (channel,))
        else:
            cur.execute(f"SELECT 1 FROM {self.t_devchan} WHERE device = {ph} AND channel = {ph}",
                        (device, channel))
        return cur.fetchone() is not None

    def reserve_channels(self, names) -> None:
        """Give each of ``names`` a global slot, whatever the cap (known and allowed channels)."""
        self._claim(None, sorted({n.lower() for n in names}), None, None)

    def claim_channels(self, device: str, names, *, cap: int, per_device: int,
                       allow: frozenset[str] | None = None) -> str | None:
        """Claim ``names`` for ``device`` before any column is added; None, or why not.

        A channel is refused when reserved, outside ``allow`` (if given), when the device
        would use more than ``per_device`` channels besides the known ones, or when more than
        ``cap`` channel columns would be claimed. All of a message's names are claimed in one
        transaction (all or none) whose unique keys make the caps hold across collectors.
        Known and allowed channels are always accepted.
        """
        free = set(KNOWN_CHANNELS) | (allow or set())
        own = []
        for n in sorted({x.lower() for x in names}):
            if n in RESERVED_CHANNELS or n.startswith("_"):
                return f"values: channel name {n!r} is reserved"
            if n in free:
                if n not in self._global:
                    self._claim(None, [n], None, None)
            elif allow is not None:
                return f"values: channel {n!r} is not on the allowed list"
            elif (device, n) not in self._claimed:
                own.append(n)
        return self._claim(device, own, cap, per_device) if own else None

    def _claim(self, device: str | None, names: list[str], cap: int | None,
               per_device: int | None) -> str | None:
        names = [n for n in names if not (device is None and n in self._global)]
        if not names:
            return None
        with self.lock:
            for _ in range(200):  # each retry follows another writer's committed claim
                cur = self.conn.cursor()
                why = None
                try:
                    for n in names:
                        if device is not None and self._held(cur, device, n):
                            continue
                        if not self._held(cur, None, n) and not self._claim_slot(
                                self.t_chan, (), (), n, cap, cur):
                            why = f"values: channel {n!r} would exceed {cap} channel columns"
                            break
                        if device is not None and not self._claim_slot(
                                self.t_devchan, ("device",), (device,), n, per_device, cur):
                            why = (f"values: channel {n!r} would exceed {per_device} channels "
                                   f"for device {device}")
                            break
                    if why:
                        self.conn.rollback()  # all of the message's names or none
                        return why
                    self.conn.commit()
                    break
                except Exception:
                    self.conn.rollback()  # a collision: someone else claimed first; read again
            else:
                raise RuntimeError(f"cannot claim channels {names[:3]}")
            self._global.update(names)
            if device is not None and len(self._claimed) < 100_000:
                self._claimed.update((device, n) for n in names)
        return None

    # ------------------------------------------------------------ writes
    def write(self, telemetry: list[tuple[Telemetry, float]], alerts: list[tuple[Alert, float]],
              statuses: list[tuple[Status, float]] = (), defer_devices: bool = False
              ) -> tuple[int, int]:
        """Store one batch in one transaction; (new telemetry rows, new alert rows).

        Each item is (record, arrival Unix time). Rows whose (device, epoch, seq) is
        already stored are skipped by the database, not by this process, so
        several collectors may write to one database.

        The devices table (last seen, newest sample) is written with the batch, or, with
        ``defer_devices`` (the collector has more batches waiting), at most once per
        ``DEVICE_ROWS_EVERY`` seconds: a device in every batch of a backlog costs one row
        update per second, not one per batch. A batch with a status (online, offline)
        writes them all first, so a device's rows keep the order its messages came in;
        :meth:`flush_devices` writes what is left.
        """
        with self.lock:
            if telemetry:
                self._ensure_channels({c.lower() for rec, _ in telemetry for c in rec.values},
                                      {c.lower() for rec, _ in telemetry if rec.pred
                                       for c in rec.pred})
            seen, latest = self._device_rows(telemetry, alerts)
            now = time.monotonic()
            flush = not defer_devices or bool(statuses) or now >= self._dev_due
            try:
                n_t = self._write_telemetry(telemetry) if telemetry else 0
                n_a = self._write_alerts(alerts) if alerts else 0
                if flush:
                    self._write_devices(seen, latest, statuses)
                self.conn.commit()
            except Exception:
                self.conn.rollback()
                raise
            if flush:
                self._dev_pending, self._dev_due = ({}, {}), now + DEVICE_ROWS_EVERY
            else:  # committed: the batch's device rows wait for a later one
                self._dev_pending = (seen, latest)
        return n_t, n_a

    def _write_telemetry(self, items) -> int:
        chans = sorted({c.lower() for rec, _ in items for c in rec.values})
        banded = sorted({c.lower() for rec, _ in items if rec.pred for c in rec.pred})
        cols = list(TELEMETRY_META) + chans + [c for n in banded for c in band_columns(n)]
        rows = []
        lower: dict[tuple, bool] = {}  # channel-name tuple -> already lower case (the usual)
        for rec, when in items:
            vals = rec.values
            keys = tuple(vals)
            ok = lower.get(keys)
            if ok is None:
                ok = lower[keys] = all(k == k.lower() for k in keys)
            if not ok:
                vals = {k.lower(): v for k, v in vals.items()}
            row = [rec.device, rec.epoch, rec.seq, rec.t if rec.t is not None else when, when,
                   int(rec.anomaly), ",".join(rec.faults), rec.model, *map(vals.get, chans)]
            if banded:
                pred = {k.lower(): v for k, v in (rec.pred or {}).items()}
                band = {k.lower(): v for k, v in (rec.band or {}).items()}
                for n in banded:
                    b = band.get(n) or (None, None)
                    row += (pred.get(n), b[0], b[1])
            rows.append(row)
        types = TELEMETRY_META_TYPES + ("float8",) * (len(cols) - len(TELEMETRY_META))
        cur = self.d.many(self.conn, lambda ty: self.d.insert_new(self.t_tel, cols, ty), rows,
                          types)
        return max(cur.rowcount, 0)

    def _write_alerts(self, items) -> int:
        rows = [(a.device, a.epoch, a.seq, a.t if a.t is not None else when, when, a.sample, a.rule,
                 a.channel, a.value, a.band[0] if a.band else None,
                 a.band[1] if a.band else None, a.pred, a.model) for a, when in items]
        cur = self.conn.cursor()
        cur.executemany(self.d.insert_new(self.t_alert, ALERT_COLS), rows)
        return max(cur.rowcount, 0)

    def _device_rows(self, telemetry, alerts) -> tuple[dict, dict]:
        """Each device's last seen (time, model, epoch) and newest sample, over the rows not
        yet written (deferred by earlier batches) and this batch's."""
        # device -> (last seen, model, epoch of its last record, the other epochs before it)
        seen: dict[str, tuple[float, str | None, int, tuple]] = dict(self._dev_pending[0])
        for rec, when in list(telemetry) + list(alerts):
            last, model, epoch, others = seen.get(rec.device, (0.0, None, None, ()))
            if epoch is not None and epoch != rec.epoch:  # rare: a re-flash, a late record
                others = tuple(e for e in others if e != rec.epoch) + (epoch,)
            seen[rec.device] = (max(last, when), rec.model or model, rec.epoch, others)
        latest: dict[str, tuple[float, Telemetry]] = dict(self._dev_pending[1])
        for rec, when in telemetry:
            # a board's clock cannot make a sample newer than its arrival (+ CLOCK_SKEW_S): one
            # sample from a clock set years ahead would otherwise stay "latest" for good
            t = when if rec.t is None else min(rec.t, when + CLOCK_SKEW_S)
            if rec.device not in latest or t >= latest[rec.device][0]:
                latest[rec.device] = (t, rec)
        return seen, latest

    def flush_devices(self) -> None:
        """Write the device rows deferred by :meth:`write` (a stopping collector calls it)."""
        with self.lock:
            if not self._dev_pending[0]:
                return
            try:
                self._write_devices(*self._dev_pending, ())
                self.conn.commit()
            except Exception:
                self.conn.rollback()
                raise
            self._dev_pending = ({}, {})

    def _write_devices(self, seen, latest, statuses) -> None:
        g = self.d.greatest
        cur = self.conn.cursor()
        seen_cols = ("device", "state", "last_seen", "model", "epoch")
        # an epoch the device has left is never its epoch again (OLDER_EPOCH); no epoch in a
        # status (a last will) keeps the stored one
        epoch = ("CASE WHEN {new} IS NULL THEN {old} WHEN {old} IS NULL OR {old} = {new} THEN {new} "
                 "WHEN " + self.d.older_epoch_sql.format(  # qualified: MySQL's {old} is not
                     tel=self.t_tel, dev=f"{self.t_dev}.device", new="{new}",
                     cur=f"{self.t_dev}.{self.d.q('epoch')}")
                 + " THEN {old} ELSE {new} END")
        seen_merge = {"state": "{new}", "last_seen": g + "(COALESCE({old}, 0), {new})",
                      "model": "COALESCE({new}, {old})", "epoch": epoch}
        # a device whose records came under several epochs: each of the others is weighed
        # first, one statement each (a PostgreSQL upsert may touch a row once per statement)
        for i in range(max((len(v[3]) for v in seen.values()), default=0)):
            rows = sorted((dev, "online", when, model, others[i])
                          for dev, (when, model, _, others) in seen.items() if i < len(others))
            self.d.many(self.conn, lambda ty: self.d.upsert(self.t_dev, seen_cols, "device",
                                                            seen_merge, ty), rows, SEEN_TYPES)
        if latest:
            # the newest sample per device, kept only if newer than the stored one; the
            # `latest` assignment comes first because MySQL evaluates them in order. One
            # statement per device with both (every device with a sample is also seen): one
            # row update each, not two
            newer = "CASE WHEN {old_t} IS NULL OR {new_t} >= {old_t} THEN {val} ELSE {old} END"
            if self.d.name == "mysql":
                o_t, n_t = self.d.q("latest_t"), "VALUES(latest_t)"
            else:
                o_t, n_t = f"{self.t_dev}.latest_t", "excluded.latest_t"
            merge = {"latest": newer.format(old_t=o_t, new_t=n_t, val="{new}", old="{old}"),
                     "latest_t": newer.format(old_t=o_t, new_t=n_t, val="{new}", old="{old}"),
                     **seen_merge}
            self.d.many(self.conn, lambda ty: self.d.upsert(
                self.t_dev, (*seen_cols, "latest_t", "latest"), "device", merge, ty),
                [(dev, "online", *seen[dev][:3], t, latest_json(rec))
                 for dev, (t, rec) in sorted(latest.items())], SEEN_TYPES + ("float8", "text"))
        only_seen = sorted((dev, v) for dev, v in seen.items() if dev not in latest)
        if only_seen:
            self.d.many(self.conn, lambda ty: self.d.upsert(self.t_dev, seen_cols, "device",
                                                            seen_merge, ty),
                        [(dev, "online", when, model, epoch)
                         for dev, (when, model, epoch, _) in only_seen], SEEN_TYPES)
        if statuses:
            merge = {c: "COALESCE({new}, {old})" for c in DEVICE_COLS[1:]}
            merge["state"] = "{new}"
            merge["last_seen"] = g + "(COALESCE({old}, 0), {new})"
            merge["epoch"] = epoch
            sql = self.d.upsert(self.t_dev, DEVICE_COLS, "device", merge)
            cur.executemany(sql, [(s.device, s.state, when, s.seq, s.fw, s.model, s.outbox,
                                   s.heap_free, s.dropped, s.uptime, s.error, s.epoch)
                                  for s, when in statuses])

    def write_notifications(self, rows: list[dict]) -> None:
        """Insert or update notification outcomes (dicts with the keys of NOTIFY_COLS)."""
        if not rows:
            return
        merge = {c: "{new}" for c in NOTIFY_COLS[1:]}
        merge["ref"] = merge["error"] = "COALESCE({new}, {old})"
        sql = self.d.upsert(self.t_note, NOTIFY_COLS, "nkey", merge)
        with self.lock:
            try:
                self.conn.cursor().executemany(sql, [tuple(r.get(c) for c in NOTIFY_COLS)
                                                     for r in rows])
                self.conn.commit()
            except Exception:
                self.conn.rollback()
                raise

    # ------------------------------------------------------------ reads
    def query(self, sql: str, params=()) -> list[tuple]:
        """Rows of a read-only query; ``{telemetry}``, ``{alerts}``, ``{devices}`` name the tables."""
        with self.lock:
            cur = self.conn.cursor()
            cur.execute(sql.format(telemetry=self.t_tel, alerts=self.t_alert, devices=self.t_dev,
                                   notifications=self.t_note,
                                   ph=self.d.ph), params)
            rows = [tuple(r) for r in cur.fetchall()]
            self.cols = [c[0] for c in cur.description] if cur.description else []
            self.conn.commit()
            return rows

    def count(self, table: str = "telemetry") -> int:
        return self.query(f"SELECT COUNT(*) FROM {{{table}}}")[0][0]

    def epoch_is_older(self, device: str, epoch: int, than: int) -> bool:
        """Whether ``epoch`` of ``device`` began before epoch ``than`` (:data:`OLDER_EPOCH`):
        a record of it is a late one from a flash the board has left, not a new epoch."""
        ph = self.d.ph
        sql = ("SELECT CASE WHEN " + OLDER_EPOCH.format(tel="{telemetry}", dev=ph, new=ph, cur=ph)
               + " THEN 1 ELSE 0 END")
        return bool(self.query(sql, (device, epoch, device, than))[0][0])

    def device_status(self, device: str) -> dict | None:
        """The stored status row of one device as a dict, or None."""
        rows = self.query(f"SELECT {', '.join(DEVICE_COLS)} FROM {{devices}} WHERE device = {{ph}}",
                          (device,))
        return dict(zip(DEVICE_COLS, rows[0], strict=True)) if rows else None

    def drop(self) -> None:
        """Drop this store's tables (tests)."""
        with self.lock:
            cur = self.conn.cursor()
            for t in (self.t_tel, self.t_alert, self.t_dev, self.t_note, self.t_chan,
                      self.t_devchan):
                cur.execute(f"DROP TABLE IF EXISTS {t}")
            self.conn.commit()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def read_telemetry(store: Store, device: str | None, channels: list[str] | None = None,
         since: float | None = None, until: float | None = None):
    """(device, channel names, rows of (t, [values...], anomaly)) from the telemetry table."""
    devices = [r[0] for r in store.query("SELECT DISTINCT device FROM {telemetry} ORDER BY device")]
    where = f"{safe_url(store.url)} {store.names['telemetry']}"
    if device is None:
        if len(devices) != 1:
            raise UserError(f"{where}: choose a device with --device ({', '.join(devices) or 'none stored'})")
        device = devices[0]
    elif device not in devices:
        raise UserError(f"{where}: no rows for device {device!r}")
    have = sorted(store.channels)
    if channels:
        missing = [c for c in channels if c.lower() not in store.channels]
        if missing:
            raise UserError(f"{where}: no channel {missing[0]!r} (have {', '.join(have)})")
        chans = [c.lower() for c in channels]
    else:
        chans = have
    q = store.d.q
    sql = (f"SELECT t, anomaly, {', '.join(q(c) for c in chans)} FROM {{telemetry}} "
           "WHERE device = {ph}")
    params: list = [device]
    if since is not None:
        sql += " AND t >= {ph}"
        params.append(since)
    if until is not None:
        sql += " AND t < {ph}"
        params.append(until)
    rows = store.query(sql + " ORDER BY t, seq", tuple(params))
    if not channels:
        # channels this device never reported are left out (another board's sensors)
        chans_used = [i for i, _ in enumerate(chans) if any(r[2 + i] is not None for r in rows)]
        chans = [chans[i] for i in chans_used]
        rows = [(r[0], r[1], *[r[2 + i] for i in chans_used]) for r in rows]
    return device, chans, [(float(r[0]), [None if v is None else float(v) for v in r[2:]],
                            int(r[1] or 0)) for r in rows]
