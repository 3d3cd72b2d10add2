"""Export one device's stored telemetry to CSV or Parquet for training.

    edgewatch export --db sqlite:///edgewatch.db --device gh-01 --out gh-01.csv
    edgewatch export --db postgresql://... --device gh-01 --out gh-01.parquet --since 2026-11-01

The columns are ``timestamp`` (ISO 8601, UTC), one column per channel, and
``anomaly`` (0/1, the board's verdict): the shape a generic CSV loader reads
(``edgewatch.training.forecast.data.load_csv`` takes the timestamp, the channels, and ``anomaly``
as a label). Rows are in time order; a failed read is an empty cell (NaN in Parquet).
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timezone
from pathlib import Path

from edgewatch.core.errors import UserError
from edgewatch.core.schema import DEVICE_RE
from edgewatch.core.settings import env, load_env, safe_url
from edgewatch.core.store import Store, read_telemetry


def _time(text: str | None, what: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{what} {text!r}: not a date (use 2026-11-23 or 2026-11-23T10:00:00Z)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def iso(t: float) -> str:
    """Unix seconds as ISO 8601 UTC with a Z (milliseconds when not whole seconds)."""
    try:
        dt = datetime.fromtimestamp(t, timezone.utc)
    except (OverflowError, OSError, ValueError):  # stored before the schema bounded t
        return f"{t:g}"
    spec = "seconds" if dt.microsecond == 0 else "milliseconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")



def write_csv(path: Path, chans: list[str], rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", *chans, "anomaly"])
        for t, vals, anomaly in rows:
            w.writerow([iso(t), *("" if v is None else repr(v) for v in vals), anomaly])


def write_parquet(path: Path, chans: list[str], rows) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"timestamp": pa.array([int(round(t * 1e6)) for t, _, _ in rows],
                                  pa.timestamp("us", tz="UTC"))}
    for i, c in enumerate(chans):
        cols[c] = pa.array([math.nan if v[i] is None else v[i] for _, v, _ in rows], pa.float64())
    cols["anomaly"] = pa.array([a for _, _, a in rows], pa.int8())
    pq.write_table(pa.table(cols), path)


def add_arguments(parser) -> None:
    """Options of `edgewatch export`."""
    parser.add_argument("--db", help="database URL (env EDGEWATCH_DB_URL; default sqlite:///edgewatch.db)")
    parser.add_argument("--table-prefix", default="")
    parser.add_argument("--device", help="device id (needed when the database holds several)")
    parser.add_argument("--out", required=True, help="output file: .csv or .parquet")
    parser.add_argument("--format", choices=("csv", "parquet"), help="default: from --out")
    parser.add_argument("--channels", help="comma-separated channels (default: all the device has)")
    parser.add_argument("--since", help="first time (ISO 8601 or Unix seconds), inclusive")
    parser.add_argument("--until", help="last time (ISO 8601 or Unix seconds), exclusive")
    parser.add_argument("--env-file", help="read settings from this file (default ./.env)")


def run(args) -> int:
    """Write the CSV or Parquet file; prints one summary line."""
    load_env(args.env_file)
    if args.device and not DEVICE_RE.fullmatch(args.device):
        raise UserError(f"--device {args.device!r}: not a device id")
    out = Path(args.out)
    fmt = args.format or {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(
        out.suffix.lower())
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / 'export.csv'}")
    if fmt is None:
        raise UserError(f"{out}: give a .csv or .parquet file name, or --format")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such directory")
    url = args.db or env("EDGEWATCH_DB_URL", "sqlite:///edgewatch.db")
    store = Store(url, args.table_prefix, create=False)
    try:
        channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
        device, chans, rows = read_telemetry(store, args.device, channels,
                                   _time(args.since, "--since"), _time(args.until, "--until"))
    finally:
        store.close()
    if not rows:
        raise UserError(f"{safe_url(url)}: no rows for {device} in the chosen time range")
    try:
        (write_csv if fmt == "csv" else write_parquet)(out, chans, rows)
    except OSError as exc:  # /proc/version.csv, a read-only folder, a full disk
        raise UserError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {len(rows)} rows of {device} ({', '.join(chans)}) to {out}")
    return 0
