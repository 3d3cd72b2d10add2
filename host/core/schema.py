"""Parse and validate the MQTT messages of docs/messages.md on the host.

One function per message kind returns a small typed record or raises
:class:`SchemaError` with a one-line reason. The collector, the bridge, the
scorer and the firmware contract test all go through here, so a message that
passes is safe to store and to relay: finite numbers only (readings, predictions and
bands within float32, as a board has them), a device id that is
safe in a topic, a file name and an SQL value, and nothing over 4096 bytes.

    rec = parse(topic, payload)          # Telemetry | Alert | Status
    kind, device = parse_topic(topic)    # ("telemetry", "gh-01")
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field

import orjson

VERSION = 1
MAX_PAYLOAD = 4096
DEFAULT_PREFIX = "edgewatch"
KINDS = ("telemetry", "alert", "status")
RULES = ("band", "drift", "burst", "shift", "stuck", "range", "dropout", "read")
# Alerts the collector raises about the records themselves (docs/messages.md, "Gaps"):
# a seq gap the outbox did not fill, the board's dropped counter growing, a new epoch.
HOST_RULES = ("gap", "dropped", "epoch")
ALERT_RULES = RULES + HOST_RULES
GAP_SEQ_BASE = 2**61  # host gap alerts: seq = GAP_SEQ_BASE + 4·first + index of the rule
STATES = ("online", "offline")
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Channel names become SQL column names in the collector's table, so they are
# held to identifier syntax here, once, rather than quoted everywhere.
CHANNEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
MODEL_RE = re.compile(r"[0-9a-fA-F]{8}")
# Names a channel may not take, refused before any batch or DDL (one bad message costs its
# own row, never a failed batch): the telemetry table's own columns; PostgreSQL's system
# columns (ADD COLUMN "xmin" fails); SQLite's rowid aliases; SQL words that readers which do
# not quote identifiers (exports, dashboards, ad-hoc SQL) would trip over.
RESERVED_CHANNELS = frozenset({
    "device", "epoch", "seq", "t", "received", "received_at", "anomaly", "faults", "model", "id",
    "timestamp",
    "tableoid", "xmin", "cmin", "xmax", "cmax", "ctid", "oid",
    "rowid", "_rowid_",
    "all", "alter", "and", "as", "asc", "between", "by", "case", "check", "column",
    "constraint", "create", "current_date", "current_time", "current_timestamp",
    "current_user", "default", "delete", "desc", "distinct", "drop", "else", "end", "exists",
    "from", "group", "having", "in", "index", "insert", "into", "is", "join", "key", "like",
    "limit", "not", "null", "offset", "on", "or", "order", "primary", "references", "select",
    "set", "table", "then", "union", "unique", "update", "user", "using", "values", "when",
    "where", "with"})
MAX_SEQ = 2**63 - 1  # fits a signed 64-bit SQL BIGINT
MAX_EPOCH = 2**32 - 1  # the board's outbox epoch (u32); 0 = firmware from before epochs
MAX_CHANNELS = 16
# the largest float32: a board's numbers are single precision, so a reading, prediction or
# band beyond it is not a sensor's (the firmware sends null for what does not fit); it would
# become an infinity in the float32 arrays of detect and train
FLOAT32_MAX = 3.4028234663852886e38
# Text fields (fw, error) reach databases, logs and metric labels: control characters and
# lone surrogates (valid in JSON's \\uXXXX, not in UTF-8) are refused.
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class SchemaError(ValueError):
    """A message that does not follow docs/messages.md; ``reason`` is one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """What every message is: about one device, and of one kind (its topic's last level).

    A record class names its kind, ``class Alert(Record, kind="alert")``: a field set
    after the class's own ones, shown and compared as they are, never passed in.
    """

    device: str

    def __init_subclass__(cls, kind: str, **kw):
        super().__init_subclass__(**kw)
        cls.__annotations__["kind"] = "str"
        cls.kind = field(default=kind, init=False)


@dataclass(frozen=True)
class Telemetry(Record, kind="telemetry"):
    """One sample: readings (None = failed read), prediction and band when the model ran."""

    seq: int
    t: float | None
    values: dict[str, float | None]
    pred: dict[str, float | None] | None = None
    band: dict[str, tuple[float, float] | None] | None = None
    anomaly: bool = False
    faults: tuple[str, ...] = ()
    model: str | None = None
    epoch: int = 0


@dataclass(frozen=True)
class Alert(Record, kind="alert"):
    """One rule that fired on one sample (``sample`` is that telemetry record's seq)."""

    seq: int
    t: float | None
    sample: int
    rule: str
    channel: str | None
    value: float | None
    band: tuple[float, float] | None
    pred: float | None
    model: str | None
    epoch: int = 0


@dataclass(frozen=True)
class Status(Record, kind="status"):
    """A board's retained status, or its last will (state offline, most fields None)."""

    state: str
    seq: int | None = None
    t: float | None = None
    fw: str | None = None
    model: str | None = None
    heap_free: int | None = None
    outbox: int | None = None
    dropped: int | None = None
    uptime: float | None = None
    error: str | None = None
    epoch: int | None = None


# ---------------------------------------------------------------- primitives

def _reject_constant(name: str):
    raise SchemaError(f"not JSON: {name} is not a number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_loads = orjson.loads
# Memos of checks already passed: the same few channel names, channel sets,
# device ids and topics arrive in every message, so each is checked in full
# once and then recognised by a set/dict lookup (the collector's hot path).
# Only successes are remembered, and each memo is bounded, so a flood of
# distinct bad or random names cannot grow memory; past the bound the full
# checks simply run every time.
_MEMO_MAX = 4096
_GOOD_CHANNELS: set[str] = set()
_GOOD_KEYSETS: set[tuple] = set()  # channel-name tuples: valid, distinct ignoring case
_GOOD_DEVICES: set[str] = set()
_GOOD_MODELS: set[str] = set()  # model ids seen valid
_TOPICS: dict[tuple[str, str], tuple[str, str]] = {}
_isfinite = math.isfinite


def decode(payload: bytes | str, strict: bool = False) -> dict:
    """The JSON object of a payload: size, UTF-8, strict JSON (no NaN/Infinity), an object.

    ``strict``: read by the standard library's decoder only (see ``_strict_retry``)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if len(payload) > MAX_PAYLOAD:
        raise SchemaError(f"oversized payload: {len(payload)} bytes > {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"not UTF-8: byte {exc.start}") from None
    try:
        # orjson first (about 4x faster): it accepts no more than the strict decoder below
        # (no NaN/Infinity, no 1e999); what it refuses (also a lone surrogate escape) goes to
        # the strict decoder, which accepts or explains it as before. It reads an integer
        # past 64 bits as a float: a message refused after orjson is read again by the strict
        # decoder (_strict_retry), so the reason given is the one it always was
        if strict:
            raise ValueError
        obj = _loads(payload)
    except ValueError:
        try:
            obj = _DECODER.decode(text)
        except SchemaError:
            raise
        except (ValueError, RecursionError) as exc:
            raise SchemaError(f"not JSON: {str(exc).splitlines()[0][:80]}") from None
    if not isinstance(obj, dict):
        raise SchemaError(f"not a JSON object: {type(obj).__name__}")
    return obj


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(obj: dict, key: str, *, nullable: bool, where: str = "",
            reading: bool = False) -> float | None:
    """A finite number (or None when ``nullable``); a ``reading`` (values, pred, band, an
    alert's value) also within the board's float32 range."""
    x = obj.get(key)
    name = f"{where}{key}"
    if x is None:
        if nullable:
            return None
        raise SchemaError(f"{name}: missing or null, expected a number")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise SchemaError(f"{name}: expected a number, got {type(x).__name__}")
    try:
        x = float(x)
    except OverflowError:  # an integer of 309 digits or more
        raise SchemaError(f"{name}: not finite (an integer beyond the float range)") from None
    if not math.isfinite(x):  # 1e400 parses to inf
        raise SchemaError(f"{name}: not finite")
    if reading and not -FLOAT32_MAX <= x <= FLOAT32_MAX:
        raise SchemaError(f"{name}: {x:.6g} is beyond the float32 range (±3.40282e+38): not "
                          "finite on a board")
    return x


def _int(obj: dict, key: str, *, required: bool, lo: int = 0, hi: int = MAX_SEQ) -> int | None:
    if key not in obj or obj[key] is None:
        if required:
            raise SchemaError(f"{key}: missing, expected an integer")
        return None
    x = obj[key]
    if not _is_int(x):
        raise SchemaError(f"{key}: expected an integer, got {type(x).__name__}")
    if not lo <= x <= hi:
        raise SchemaError(f"{key}: {x} out of range [{lo}, {hi}]")
    return x


def _str(obj: dict, key: str, *, pattern: re.Pattern | None = None, maxlen: int = 64,
         required: bool = False) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise SchemaError(f"{key}: missing, expected a string")
        return None
    x = obj[key]
    if not isinstance(x, str):
        raise SchemaError(f"{key}: expected a string, got {type(x).__name__}")
    if pattern is not None and not pattern.fullmatch(x):
        raise SchemaError(f"{key}: {x[:40]!r} is not valid")
    if len(x) > maxlen:
        raise SchemaError(f"{key}: longer than {maxlen} characters")
    if _BAD_TEXT.search(x):  # no database stores a NUL or a lone surrogate; no log shows them
        raise SchemaError(f"{key}: control character or lone surrogate in {x[:40]!r}")
    return x


def _pair(x, name: str) -> tuple[float, float]:
    if not isinstance(x, list) or len(x) != 2:
        raise SchemaError(f"{name}: expected [lo, hi]")
    lo = _number({"lo": x[0]}, "lo", nullable=False, where=f"{name}.", reading=True)
    hi = _number({"hi": x[1]}, "hi", nullable=False, where=f"{name}.", reading=True)
    if lo > hi:
        raise SchemaError(f"{name}: lo {lo} > hi {hi}")
    return lo, hi


def _channel(name, where: str) -> str:
    if not isinstance(name, str) or not CHANNEL_RE.fullmatch(name):
        raise SchemaError(f"{where}: channel name {str(name)[:40]!r} is not valid")
    if name.lower() in RESERVED_CHANNELS:
        raise SchemaError(f"{where}: channel name {name!r} is reserved")
    return name


def _common(obj: dict, device: str | None, *,
            seq_required: bool = True) -> tuple[str, int | None, int | None]:
    v = obj.get("v")
    if not _is_int(v) or v != VERSION:
        raise SchemaError(f"v: unknown schema version {v!r} (expected {VERSION})")
    dev = obj.get("device")
    if type(dev) is not str or dev not in _GOOD_DEVICES:  # else: checked in full before
        dev = _str(obj, "device", pattern=DEVICE_RE, maxlen=32, required=True)
        if len(_GOOD_DEVICES) < _MEMO_MAX:
            _GOOD_DEVICES.add(dev)
    if device is not None and dev != device:
        raise SchemaError(f"device: {dev!r} does not match the topic's {device!r}")
    seq = obj.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:  # the common case skips _int
        seq = _int(obj, "seq", required=seq_required)
    epoch = obj.get("epoch")
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:  # absent: older firmware
        epoch = _int(obj, "epoch", required=False, hi=MAX_EPOCH)
    return dev, epoch, seq


MAX_AGE_MS = 2**31 - 1  # the board's ticks_diff range
# the latest measurement time a message may carry: 9999-12-31T23:59:59Z, the last second
# every consumer's calendar (datetime, gmtime, ISO 8601) can show; a t beyond it once stopped
# the bridge's SMS for every device (gmtime raised on it in a loop)
MAX_T = 253402300799.0


def _time(obj: dict, received: float | None = None) -> float | None:
    """The message's measurement time: its `t`; without one, ``received`` minus its `age`
    (ms since the board took the reading, at send time) when both are known; else None."""
    t = obj.get("t")
    age = obj.get("age")
    if age is not None:
        age = _int(obj, "age", required=False, hi=MAX_AGE_MS)
    if t is None or (type(t) is float and _isfinite(t) and 0 <= t <= MAX_T):  # the common case
        return received - age / 1000 if t is None and age is not None and received else t
    t = _number(obj, "t", nullable=True)
    if t is not None and t < 0:
        raise SchemaError(f"t: {t} is negative")
    if t is not None and t > MAX_T:
        raise SchemaError(f"t: {t} is after 9999-12-31 (seconds since 1970 expected)")
    if t is None and age is not None and received:
        return received - age / 1000
    return t


def _model(obj: dict) -> str | None:
    m = obj.get("model")
    if m is None or (type(m) is str and m in _GOOD_MODELS):
        return m
    m = _str(obj, "model", pattern=MODEL_RE, maxlen=8)
    if len(_GOOD_MODELS) < _MEMO_MAX:
        _GOOD_MODELS.add(m)
    return m


# ---------------------------------------------------------------- messages

def _strict_retry(fn):
    """A parser whose refusal of a payload read by orjson is checked again on the strict
    decoder's reading (refusals are rare: the common case pays nothing)."""
    @functools.wraps(fn)
    def parse_checked(payload, device: str | None = None, received: float | None = None):
        try:
            return fn(payload, device, received)
        except SchemaError:
            if isinstance(payload, dict):
                raise
            return fn(decode(payload, strict=True), device, received)
    return parse_checked


@_strict_retry
def parse_telemetry(payload, device: str | None = None,
                    received: float | None = None) -> Telemetry:
    """A telemetry message; ``device`` (from the topic) must match the payload's."""
    obj = decode(payload) if not isinstance(payload, dict) else payload
    dev, epoch, seq = _common(obj, device)
    values = obj.get("values")
    if not isinstance(values, dict) or not values:
        raise SchemaError("values: expected a non-empty object of channel -> number or null")
    if len(values) > MAX_CHANNELS:
        raise SchemaError(f"values: more than {MAX_CHANNELS} channels")
    keys = tuple(values)
    known = keys in _GOOD_KEYSETS  # names valid and distinct: only the numbers to check
    vals: dict[str, float | None] = {}
    for name, x in values.items():
        if not known and name not in _GOOD_CHANNELS:
            _channel(name, "values")
            if len(_GOOD_CHANNELS) < _MEMO_MAX:
                _GOOD_CHANNELS.add(name)
        # the common case, without the general checks (NaN and the infinities fail it too)
        if type(x) is float and -FLOAT32_MAX <= x <= FLOAT32_MAX:
            vals[name] = x
        else:
            vals[name] = _number(values, name, nullable=True, where="values.", reading=True)
    if not known:
        if len(values) > 1 and len({n.lower() for n in values}) != len(values):
            raise SchemaError("values: a channel is given twice (names differ only in case)")
        if len(_GOOD_KEYSETS) < _MEMO_MAX:
            _GOOD_KEYSETS.add(keys)
    pred = obj.get("pred")
    if pred is not None:
        if not isinstance(pred, dict):
            raise SchemaError("pred: expected an object or null")
        if tuple(pred) in _GOOD_KEYSETS:  # names checked before: only the numbers
            pred = {k: x if type(x) is float and -FLOAT32_MAX <= x <= FLOAT32_MAX
                    else _number(pred, k, nullable=True, where="pred.", reading=True)
                    for k, x in pred.items()}
        else:
            pred = {_channel(k, "pred"): _number(pred, k, nullable=True, where="pred.",
                                                 reading=True)
                    for k in pred}
    band = obj.get("band")
    if band is not None:
        if not isinstance(band, dict):
            raise SchemaError("band: expected an object or null")
        known = tuple(band) in _GOOD_KEYSETS
        out = {}
        for k, b in band.items():
            # the common case (two finite floats, in order) without the general checks
            if known and type(b) is list and len(b) == 2:
                lo, hi = b
                if (type(lo) is float and type(hi) is float and -FLOAT32_MAX <= lo <= hi
                        and hi <= FLOAT32_MAX):
                    out[k] = (lo, hi)
                    continue
            out[_channel(k, "band")] = None if b is None else _pair(b, f"band.{k}")
        band = out
    anomaly = obj.get("anomaly", False)
    if not isinstance(anomaly, bool):
        raise SchemaError(f"anomaly: expected true/false, got {type(anomaly).__name__}")
    faults = obj.get("faults", [])
    if type(faults) is list and not faults:  # the common case: no faults
        faults = ()
    elif (not isinstance(faults, list) or any(f not in RULES for f in faults)
            or len(set(faults)) != len(faults)):
        raise SchemaError(f"faults: expected a list of distinct rule names {list(RULES)}")
    return _telemetry(dev, seq, _time(obj, received), vals, pred, band, anomaly, tuple(faults), _model(obj),
                      epoch or 0)


_new = object.__new__


def _telemetry(device, seq, t, values, pred, band, anomaly, faults, model, epoch=0) -> Telemetry:
    """``Telemetry(...)`` of checked fields, built without the frozen-dataclass ``__init__``.

    A frozen dataclass sets each field through ``object.__setattr__``, which is a
    third of the cost of parsing a telemetry message; filling the instance
    ``__dict__`` in one call gives the same record (equal, same fields, still frozen).
    """
    rec = _new(Telemetry)
    rec.__dict__.update(device=device, seq=seq, t=t, values=values, pred=pred, band=band,
                        anomaly=anomaly, faults=faults, model=model, epoch=epoch)
    return rec


@_strict_retry
def parse_alert(payload, device: str | None = None, received: float | None = None) -> Alert:
    """An alert message; ``device`` (from the topic) must match the payload's."""
    obj = decode(payload) if not isinstance(payload, dict) else payload
    dev, epoch, seq = _common(obj, device)
    rule = obj.get("rule")
    if rule not in ALERT_RULES:
        raise SchemaError(f"rule: {str(rule)[:40]!r} is not one of {list(ALERT_RULES)}")
    channel = obj.get("channel")
    if channel is not None:
        _channel(channel, "channel")
    band = obj.get("band")
    return Alert(dev, seq, _time(obj, received), _int(obj, "sample", required=True), rule, channel,
                 _number(obj, "value", nullable=True, reading=True),
                 None if band is None else _pair(band, "band"),
                 _number(obj, "pred", nullable=True, reading=True), _model(obj), epoch or 0)


@_strict_retry
def parse_status(payload, device: str | None = None, received: float | None = None) -> Status:
    """A status message or last will; ``device`` (from the topic) must match the payload's."""
    obj = decode(payload) if not isinstance(payload, dict) else payload
    dev, epoch, seq = _common(obj, device, seq_required=False)
    state = obj.get("state")
    if state not in STATES:
        raise SchemaError(f"state: {str(state)[:40]!r} is not one of {list(STATES)}")
    uptime = _number(obj, "uptime", nullable=True)
    if uptime is not None and uptime < 0:
        raise SchemaError("uptime: negative")
    return Status(dev, state, seq, _time(obj),
                  _str(obj, "fw", maxlen=32), _model(obj),
                  _int(obj, "heap_free", required=False, hi=2**31 - 1),  # an INTEGER column
                  _int(obj, "outbox", required=False, hi=2**31 - 1),
                  _int(obj, "dropped", required=False, hi=2**62),
                  uptime, _str(obj, "error", maxlen=200), epoch)


def gap_seq(rule: str, first: int) -> int:
    """The seq of a host gap alert: the same (device, epoch, rule, first seq) -> the same key,
    whichever collector raises it, so the collector stores it once and the bridge sends it once."""
    return GAP_SEQ_BASE + 4 * first + HOST_RULES.index(rule)


PARSERS = {"telemetry": parse_telemetry, "alert": parse_alert, "status": parse_status}


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """``(kind, device)`` of ``<prefix>/<device>/<kind>``; SchemaError for anything else."""
    hit = _TOPICS.get((topic, prefix))
    if hit is not None:  # this topic was checked in full before (each device reuses its own)
        return hit
    kind, device = _parse_topic(topic, prefix)
    if len(_TOPICS) < 16 * _MEMO_MAX:
        _TOPICS[(topic, prefix)] = (kind, device)
    return kind, device


def _parse_topic(topic: str, prefix: str) -> tuple[str, str]:
    parts = topic.split("/")
    pre = prefix.split("/")
    if len(parts) != len(pre) + 2 or parts[: len(pre)] != pre:
        raise SchemaError(f"topic {topic[:80]!r} is not {prefix}/<device>/<kind>")
    device, kind = parts[-2], parts[-1]
    if not DEVICE_RE.fullmatch(device):
        raise SchemaError(f"topic: device id {device[:40]!r} is not valid")
    if kind not in PARSERS:
        raise SchemaError(f"topic: kind {kind[:40]!r} is not one of {list(PARSERS)}")
    return kind, device


def parse(topic: str, payload, prefix: str = DEFAULT_PREFIX,
          received: float | None = None) -> Telemetry | Alert | Status:
    """The record of one MQTT message, checked against its topic; SchemaError if bad.

    ``received``: the Unix time it arrived; a message without `t` but with its `age` gets
    the time it was measured (received - age)."""
    kind, device = parse_topic(topic, prefix)
    return PARSERS[kind](payload, device, received)


def to_json(rec: Telemetry | Alert | Status) -> dict:
    """The message object of a record (the inverse of parsing; None fields of status dropped)."""
    if isinstance(rec, Telemetry):
        return {"v": VERSION, "device": rec.device, "epoch": rec.epoch, "seq": rec.seq,
                "t": rec.t, "values": rec.values, "pred": rec.pred,
                "band": None if rec.band is None else
                {k: (None if b is None else list(b)) for k, b in rec.band.items()},
                "anomaly": rec.anomaly, "faults": list(rec.faults), "model": rec.model}
    if isinstance(rec, Alert):
        return {"v": VERSION, "device": rec.device, "epoch": rec.epoch, "seq": rec.seq,
                "t": rec.t, "sample": rec.sample, "rule": rec.rule, "channel": rec.channel,
                "value": rec.value, "band": None if rec.band is None else list(rec.band),
                "pred": rec.pred, "model": rec.model}
    out = {"v": VERSION, "device": rec.device, "state": rec.state}
    for k in ("epoch", "seq", "t", "fw", "model", "heap_free", "outbox", "dropped", "uptime", "error"):
        if getattr(rec, k) is not None:
            out[k] = getattr(rec, k)
    return out
