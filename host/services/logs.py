"""Follow boards over MQTT: one line per reading, alert and status change.

    edgewatch logs                    # every board
    edgewatch logs gh-01 gh-02        # these boards only
    edgewatch logs --count 10         # stop after 10 lines

A reading shows its time, seq, values, the board's prediction and band, and the
verdict (``ok`` or ``ANOMALY <rules>``), the same fields the firmware prints on
its console for each sample (``log: quiet`` in its config turns that off).
Messages are validated by host/schema.py; invalid ones are skipped, and text
from a board (an error) is printed with control characters escaped.
"""

from __future__ import annotations

import queue
import sys
import time
from datetime import datetime, timezone

from edgewatch.core.errors import UserError
from edgewatch.core.schema import DEVICE_RE, Alert, SchemaError, Status, Telemetry, parse
from edgewatch.core.settings import (
    add_mqtt_arguments,
    connect,
    mqtt_client,
    mqtt_settings,
    service_client_id,
)


def _n(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _text(s) -> str:
    """Board text made safe for a terminal (no escape sequences, one line)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(s))


def _when(t: float | None) -> str:
    try:
        return datetime.fromtimestamp(t or time.time(), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a stored t no calendar can show
        return f"t={t:g}"


def line(rec, received: float | None = None) -> str:
    """The log line of one message."""
    head = f"{_when(rec.t if rec.t is not None else received)} {rec.device}"
    if isinstance(rec, Telemetry):
        out = [head, f"#{rec.seq}"]
        for ch, v in rec.values.items():
            out.append(f"{ch}={_n(v)}")
            b = (rec.band or {}).get(ch)
            if rec.pred and b:
                out.append(f"pred={_n(rec.pred.get(ch))} band={_n(b[0])}..{_n(b[1])}")
        out.append("ANOMALY " + ",".join(rec.faults) if rec.anomaly or rec.faults else "ok")
        return " ".join(out)
    if isinstance(rec, Alert):
        band = f" band={_n(rec.band[0])}..{_n(rec.band[1])}" if rec.band else ""
        return (f"{head} ALERT {rec.rule} {rec.channel or '(device)'} value={_n(rec.value)}"
                f"{band} pred={_n(rec.pred)} sample=#{rec.sample}")
    s: Status = rec
    if s.state == "offline":
        return f"{head} STATUS offline"
    parts = [f"{head} STATUS {s.state}", f"fw={_text(s.fw or '-')}", f"model={s.model or '-'}",
             f"heap={s.heap_free}", f"outbox={s.outbox}", f"dropped={s.dropped}"]
    if s.error:
        parts.append(f"error={_text(s.error)}")
    return " ".join(parts)


def add_arguments(parser) -> None:
    """Options of `edgewatch logs`."""
    parser.add_argument("devices", nargs="*", metavar="DEVICE", help="device ids (default: all)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many lines (default: follow until Ctrl-C)")
    parser.add_argument("--no-status", action="store_true", help="readings and alerts only")
    add_mqtt_arguments(parser)


def run(args) -> int:
    """Print one line per message until Ctrl-C (or --count lines)."""
    for d in args.devices:
        if not DEVICE_RE.fullmatch(d):
            raise UserError(f"{d[:40]!r} is not a device id (1-32 of A-Z a-z 0-9 _ -)")
    if args.count < 0:
        raise UserError(f"--count {args.count}: expected >= 0")
    mqtt = mqtt_settings(args)
    p = mqtt.prefix
    kinds = ("telemetry", "alert") if args.no_status else ("telemetry", "alert", "status")
    subs = [(f"{p}/{d}/{k}", 1) for d in (args.devices or ["+"]) for k in kinds]
    q: queue.Queue = queue.Queue()

    def on_message(_c, _u, msg):
        q.put((msg.topic, msg.payload, time.time()))

    client = mqtt_client(mqtt, service_client_id("logs", None))
    client.on_message = on_message
    connect(client, mqtt, subs)
    print(f"following {', '.join(args.devices) or 'every board'} on {mqtt.url} "
          f"(Ctrl-C stops)", file=sys.stderr, flush=True)
    n = 0
    try:
        while not args.count or n < args.count:
            topic, payload, when = q.get()
            try:
                rec = parse(topic, payload, p)
            except SchemaError:
                continue
            print(line(rec, when), flush=True)
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0
