"""Sensor series in, clean model-ready windows out.

Loaders read a generic CSV (a timestamp column plus numeric channels), the
occupancy files, SKAB, NAB and the collector's database into one small
:class:`Series`. Cleaning follows the first seed paper: rows with a missing
(NaN/null) reading are dropped, then every channel is standardised and min-max
scaled to [0, 1]. That composite is one affine map per channel, kept by
:class:`Scaler` as ``normalised = (x - offset) / scale`` and saved next to the
model as ``scaler.json`` so the board applies exactly the same map.

Every mistake in the input (missing file or column, a non-numeric cell, an infinite
one or one beyond float32, too few rows, timestamps going backwards) raises :class:`edgewatch.cli.UserError` with one
line naming the file and the row as an editor shows it (1-based line number,
header = line 1), so the CLI prints it without a traceback.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from edgewatch.core import firmware
from edgewatch.core.errors import UserError
from edgewatch.core.schema import FLOAT32_MAX

# Column names (after slugging) that hold the time of a row.
TIME_NAMES = ("timestamp", "datetime", "date", "time", "ts", "t")
# Columns that label rows rather than measure something: never default channels.
LABEL_NAMES = ("anomaly", "changepoint", "fault", "label", "is_anomaly", "occupancy")
# Cells that mean "no reading" (a failed read): the row is dropped when cleaning.
MISSING = frozenset({"", "nan", "null", "none", "na", "n/a"})
# Channels of the occupancy files that the board also measures.
OCCUPANCY_CHANNELS = ["temperature", "humidity"]
DB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")


# Physical units of the channels the boards measure (for tables and plots).
UNITS = {"temperature": "°C", "humidity": "%RH"}


def unit(channel: str) -> str:
    """The physical unit of a channel name, or '' when unknown."""
    return UNITS.get(slug(channel), "")


def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return firmware.ROOT


def shared_data() -> Path:
    """Where the project's real data lives: ``../shared/data`` next to the repo."""
    return repo_root().parent / "shared" / "data"


def slug(name: str) -> str:
    """A column name as a channel name: lower case, runs of other characters -> ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


@dataclass
class Series:
    """A multichannel time series read from one source.

    ``timestamps`` are Unix seconds (float64, naive times read as UTC),
    ``values`` is float32 [N, C] in physical units, ``lines`` the 1-based
    line (or database row) each sample came from, for error messages,
    ``labels`` any label columns (SKAB ``anomaly``/``changepoint``, NAB
    windows, the generator's ``anomaly``/``fault``), ``dropped`` how many rows
    cleaning removed.
    """

    timestamps: np.ndarray
    values: np.ndarray
    channels: list[str]
    source: str
    lines: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: int = 0
    row_word: str = "line"
    stamps: np.ndarray | None = None  # each sample's timestamp as its source wrote it (text)

    def __len__(self) -> int:
        return len(self.values)

    def where(self, row: int) -> str:
        """``"FILE line N"`` for sample ``row`` (negative counts from the end)."""
        return f"{self.source} {self.row_word} {int(self.lines[row])}"

    def take(self, index) -> Series:
        """The samples at ``index`` (a slice, mask or index array), labels included."""
        return replace(
            self,
            timestamps=self.timestamps[index],
            values=self.values[index],
            lines=self.lines[index],
            labels={k: v[index] for k, v in self.labels.items()},
            stamps=self.stamps[index] if self.stamps is not None
            and len(self.stamps) == len(self.values) else None,
        )

    def select(self, channels: list[str] | None) -> Series:
        """The same series restricted to ``channels`` (names, case-insensitive)."""
        if not channels:
            return self
        cols = [_find_channel(self.channels, c, self.source) for c in channels]
        return replace(self, values=self.values[:, cols],
                       channels=[self.channels[i] for i in cols])


def _find_channel(names: list[str], want: str, source: str) -> int:
    key = slug(want)
    hits = [i for i, n in enumerate(names) if slug(n) == key]
    if len(hits) > 1:  # the first would be taken for both: a model fed one column twice
        raise UserError(f"{source} line 1: columns {hits[0] + 1} and {hits[1] + 1} are both named "
                        f"'{want}'; rename one")
    if hits:
        return hits[0]
    raise UserError(f"{source} line 1: no channel '{want}' (channels: {', '.join(names)})")


# ---------------------------------------------------------------- parsing cells

def parse_time(cell: str) -> float:
    """Unix seconds from an ISO-8601 date/time (naive = UTC) or a plain number."""
    cell = cell.strip()
    try:
        return float(cell)
    except ValueError:
        pass
    dt = datetime.fromisoformat(cell.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _number(cell, where: str, column: str) -> float:
    if cell is None:
        return math.nan
    if isinstance(cell, (int, float)):
        x = float(cell)
    else:
        text = str(cell).strip()
        if text.lower() in MISSING:
            return math.nan
        try:
            x = float(text)
        except ValueError:
            raise UserError(
                f"{where}: column '{column}' has non-numeric value {text[:30]!r}"
            ) from None
    if math.isinf(x):
        raise UserError(f"{where}: column '{column}' is infinite")
    if abs(x) > FLOAT32_MAX:  # finite as a double, an infinity in the float32 arrays
        raise UserError(f"{where}: column '{column}' has {x:.6g}, beyond the float32 range "
                        "(±3.40282e+38): no sensor reads that")
    return x


def _time(cell, where: str, column: str) -> float:
    if cell is None or str(cell).strip() == "":
        raise UserError(f"{where}: empty timestamp in column '{column}'")
    if isinstance(cell, datetime):
        return (cell if cell.tzinfo else cell.replace(tzinfo=timezone.utc)).timestamp()
    try:
        t = parse_time(str(cell))
    except ValueError:
        t = math.nan
    if not math.isfinite(t):  # not a time, or 'inf', 'nan': no time at all
        raise UserError(f"{where}: column '{column}' has {str(cell)[:30]!r}, "
                        "not a date/time or Unix seconds")
    return t


# ---------------------------------------------------------------- table -> Series

def _build(
    source: str,
    header: list[str],
    rows,
    channels: list[str] | None,
    default_channels: list[str] | None = None,
    label_names: tuple[str, ...] = LABEL_NAMES,
    order: str = "error",
    dropna: bool = True,
    time_name: str | None = None,
    row_word: str = "line",
) -> Series:
    """Turn (line number, cells) rows into a Series, with every check in one place."""
    names = [slug(h) for h in header]
    if time_name is not None:
        tcol = names.index(time_name) if time_name in names else None
    else:
        tcol = next((names.index(n) for n in TIME_NAMES if n in names), None)
    if tcol is None:
        raise UserError(f"{source} line 1: no timestamp column "
                        f"(expected one named {'/'.join(TIME_NAMES)}; columns: {', '.join(header)})")
    if channels:
        chan_cols = [_find_channel(header, c, source) for c in channels]
        if tcol in chan_cols:
            raise UserError(f"{source} line 1: '{header[tcol]}' is the timestamp, not a channel")
    elif default_channels:
        chan_cols = [_find_channel(header, c, source) for c in default_channels]
    else:
        # an unnamed column is no channel: a trailing delimiter (all empty: every row would be
        # dropped) or a pandas index (row numbers: a model would learn to count)
        chan_cols = [i for i, n in enumerate(names) if i != tcol and n and n not in label_names]
        if not chan_cols:
            raise UserError(f"{source} line 1: no channel columns besides the timestamp")
    seen: dict[str, int] = {}
    for i in chan_cols:
        if seen.get(names[i]) == i:
            raise UserError(f"{source} line 1: channel '{names[i]}' asked for twice")
        if names[i] in seen:  # one name for two channels: the blob and detect would mix them up
            raise UserError(f"{source} line 1: columns {seen[names[i]] + 1} and {i + 1} are both "
                            f"named '{names[i]}'; rename one")
        seen[names[i]] = i
    label_cols = [i for i, n in enumerate(names) if n in label_names and i not in chan_cols]

    ts, vals, lines, stamps = [], [], [], []
    labels: dict[int, list] = {i: [] for i in label_cols}
    width = len(header)
    for line, cells in rows:
        if len(cells) == width + 1:
            cells = cells[1:]  # a leading row-number column without a header (occupancy)
        elif len(cells) != width:
            if not any(str(c).strip() for c in cells):
                continue  # blank line
            raise UserError(f"{source} {row_word} {line}: {len(cells)} fields, the header has {width}")
        where = f"{source} {row_word} {line}"
        ts.append(_time(cells[tcol], where, header[tcol]))
        stamps.append(str(cells[tcol]).strip())
        vals.append([_number(cells[i], where, header[i]) for i in chan_cols])
        lines.append(line)
        for i in label_cols:
            labels[i].append(cells[i])
    if not vals:
        raise UserError(f"{source} line 2: no data rows")

    t = np.asarray(ts, dtype=np.float64)
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back) and order == "error":
        i = back[0] + 1
        raise UserError(f"{source} {row_word} {lines[i]}: timestamp goes backwards "
                        f"(earlier than {row_word} {lines[i - 1]}); sort the rows by time")
    series = Series(
        timestamps=t,
        values=np.asarray(vals, dtype=np.float64).astype(np.float32),
        channels=[names[i] for i in chan_cols],
        source=source,
        lines=np.asarray(lines, dtype=np.int64),
        labels={names[i]: _label_array(v) for i, v in labels.items()},
        row_word=row_word,
        stamps=np.asarray(stamps, dtype=object),
    )
    return clean(series) if dropna else series


def _label_array(cells: list) -> np.ndarray:
    try:
        return np.asarray([float(c) if str(c).strip() else 0.0 for c in cells])
    except ValueError:
        return np.asarray([str(c) for c in cells], dtype=object)


def clean(series: Series) -> Series:
    """Drop rows with a missing (NaN/null) reading on any channel, as the seed does."""
    keep = np.isfinite(series.values).all(axis=1)
    if keep.all():
        return series
    out = series.take(keep)
    out.dropped = series.dropped + int((~keep).sum())
    return out


def _open_csv(path: str | Path, delimiter: str | None = None):
    """(source name, header, iterator of (line, cells)) for a CSV file."""
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise UserError(f"{source}: no such file")
    if p.is_dir():
        raise UserError(f"{source}: is a folder, not a data file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"{source} line {line}: not UTF-8 text") from None
    first = text.split("\n", 1)[0]
    if not first.strip():
        raise UserError(f"{source} line 1: empty file or blank header")
    if delimiter is None:
        delimiter = max(";,\t", key=first.count) if any(d in first for d in ";,\t") else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(reader)

    def rows():
        for cells in reader:
            yield reader.line_num, cells

    return source, header, rows()


# ---------------------------------------------------------------- loaders

def load_csv(path, channels=None, order="error", dropna=True, **kw) -> Series:
    """A generic CSV: a timestamp column (timestamp/date/time/...) plus numeric channels.

    ``channels`` picks columns by name (case-insensitive); by default every
    column but the timestamp and label columns (anomaly, fault, ...).
    """
    source, header, rows = _open_csv(path, kw.pop("delimiter", None))
    return _build(source, header, rows, channels, order=order, dropna=dropna, **kw)


def load_occupancy(path, channels=None, dropna=True) -> Series:
    """The occupancy-detection files: ``temperature`` and ``humidity`` by default."""
    return load_csv(path, channels, dropna=dropna, default_channels=OCCUPANCY_CHANNELS)


def load_skab(path, channels=None, dropna=True) -> Series:
    """A SKAB file (``;``-separated, 8 sensors); ``anomaly``/``changepoint`` become labels."""
    return load_csv(path, channels, dropna=dropna, delimiter=";")


def load_nab(path, channels=None, windows=None, dropna=True) -> Series:
    """A NAB ``timestamp,value`` file; labels ``anomaly`` from NAB's windows.json.

    The published machine_temperature file repeats one hour (line 10151 goes
    back to 02:00); NAB scores rows in file order, so order is kept, not refused.
    """
    wfile = Path(windows) if windows else Path(path).with_name("windows.json")
    # only NAB's own files keep their order: any other `timestamp,value` file out of order is
    # refused, as every CSV is (its verdicts and windows would be of shuffled rows)
    s = load_csv(path, channels, order="keep" if _nab_listed(wfile, Path(path).name) else "error",
                 dropna=dropna)
    if wfile.exists():
        s.labels["anomaly"] = nab_window_labels(s.timestamps, Path(path).name, wfile)
    return s


def _nab_listed(windows_json: Path, name: str) -> bool:
    """Whether NAB's windows.json lists a file of this name (a published NAB file)."""
    try:
        keys = json.loads(windows_json.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(keys, dict) and any(k == name or k.endswith("/" + name) for k in keys)


def nab_window_labels(timestamps: np.ndarray, name: str, windows_json: Path) -> np.ndarray:
    """1.0 where a timestamp lies inside one of the file's labelled NAB windows."""
    spans = next((v for k, v in json.loads(windows_json.read_text()).items()
                  if k.endswith("/" + name) or k == name), [])
    out = np.zeros(len(timestamps))
    for a, b in spans:
        out[(timestamps >= parse_time(a)) & (timestamps <= parse_time(b))] = 1.0
    return out


def load_db(url: str, device: str | None = None, channels=None, table_prefix: str = "",
            dropna=True) -> Series:
    """One device's telemetry from the collector's database (``edgewatch.core.store``), in time order.

    ``url`` is a collector URL (``sqlite:///edgewatch.db``, ``postgresql://...``,
    ``mysql://...``) or a ``.db`` path; ``device`` may also come as
    ``?device=NAME`` and may be left out when the table holds a single device.
    The board's ``anomaly`` verdict becomes a label. Rows are numbered from 1
    in time order, as ``edgewatch export`` would write them.
    """
    from edgewatch.core.store import Store
    from edgewatch.core.store import read_telemetry as read

    q = parse_qs(urlparse(url).query)
    if device is None and "device" in q:
        device = q["device"][0]
    base = url.split("?", 1)[0]
    store = Store(base, table_prefix=table_prefix, create=False)
    try:
        device, chans, data = read(store, device, channels)
    finally:
        store.close()
    source = f"{base} device {device}"
    if not chans:
        raise UserError(f"{source}: no channel columns stored")
    rows = ((i + 1, [t, *vals, anomaly]) for i, (t, vals, anomaly) in enumerate(data))
    return _build(source, ["t", *chans, "anomaly"], rows, None, dropna=dropna,
                  time_name="t", row_word="row")


def load_parquet(path, channels=None, dropna=True) -> Series:
    """A Parquet file (as ``edgewatch export`` writes): a timestamp column plus channels."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow's errors are long; one line is enough
        raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    cols = [table.column(n).to_pylist() for n in table.column_names]
    rows = ((i + 1, list(r)) for i, r in enumerate(zip(*cols, strict=True)))
    return _build(str(path), list(table.column_names), rows, channels, dropna=dropna,
                  row_word="row")


def load(path_or_url, channels=None, device: str | None = None, dropna: bool = True) -> Series:
    """Load any supported source, choosing the reader from the URL or the file's header.

    Database URLs (sqlite://, postgresql://, mysql://) and ``.db``/``.sqlite``
    files go to :func:`load_db`, ``.parquet`` to :func:`load_parquet`; a ``;``-separated file with SKAB's columns to
    :func:`load_skab`; ``timestamp,value`` to :func:`load_nab`; the occupancy
    header to :func:`load_occupancy`; anything else to :func:`load_csv`.
    """
    text = str(path_or_url)
    if isinstance(channels, str):
        channels = [c for c in channels.split(",") if c.strip()]
    scheme = urlparse(text).scheme.split("+")[0]
    if scheme in DB_SCHEMES or Path(text.split("?", 1)[0]).suffix in (".db", ".sqlite", ".sqlite3"):
        return load_db(text, device=device, channels=channels, dropna=dropna)
    p = Path(text)
    if p.suffix.lower() == ".parquet":
        return load_parquet(p, channels, dropna=dropna)
    if p.is_file():
        with open(p, encoding="utf-8-sig", errors="replace") as fh:
            head = [slug(h) for h in re.split(r"[;,\t]", fh.readline())]
        if "accelerometer1rms" in head and "anomaly" in head:
            return load_skab(p, channels, dropna=dropna)
        if head == ["timestamp", "value"]:
            return load_nab(p, channels, dropna=dropna)
        if head[:3] == ["date", "temperature", "humidity"] and "occupancy" in head:
            return load_occupancy(p, channels, dropna=dropna)
    return load_csv(p, channels, dropna=dropna)


# ---------------------------------------------------------------- scaling, windows, split

@dataclass
class Scaler:
    """Per-channel affine map to the model's [0, 1] units: ``(x - offset) / scale``.

    Fit = standardise (mean, std) then min-max of the standardised values, as
    in the seed; the composite of the two is this single affine map.
    """

    channels: list[str]
    offset: np.ndarray
    scale: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, values: np.ndarray, channels: list[str]) -> Scaler:
        """Fit on ``values`` [N, C] (physical units)."""
        v = np.asarray(values, dtype=np.float64)
        mean, std = v.mean(axis=0), v.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant channel stays finite
        z = (v - mean) / std
        zmin, zmax = z.min(axis=0), z.max(axis=0)
        zrange = np.where(zmax > zmin, zmax - zmin, 1.0)
        return cls(list(channels), offset=mean + std * zmin, scale=std * zrange,
                   mean=mean, std=std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Physical units -> normalised (float32)."""
        return ((np.asarray(values, np.float64) - self.offset) / self.scale).astype(np.float32)

    def inverse(self, norm: np.ndarray) -> np.ndarray:
        """Normalised -> physical units (float64)."""
        return np.asarray(norm, np.float64) * self.scale + self.offset

    def to_dict(self) -> dict:
        """The JSON form stored as ``scaler.json``."""
        d = {"channels": list(self.channels), "offset": [float(x) for x in self.offset],
             "scale": [float(x) for x in self.scale],
             "formula": "normalised = (x - offset) / scale"}
        if self.mean is not None:
            d["mean"] = [float(x) for x in self.mean]
            d["std"] = [float(x) for x in self.std]
        return d

    def save(self, path) -> None:
        """Write ``scaler.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> Scaler:
        """Read a ``scaler.json`` written by :meth:`save`."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["channels"], np.asarray(d["offset"], float), np.asarray(d["scale"], float),
                       np.asarray(d["mean"], float) if "mean" in d else None,
                       np.asarray(d["std"], float) if "std" in d else None)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a scaler file ({exc})") from None


def make_windows(norm: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows: X [M, window, C] of past samples, y [M, C] the sample after each."""
    norm = np.asarray(norm, dtype=np.float32)
    if norm.ndim == 1:
        norm = norm[:, None]
    m = len(norm) - window
    if window < 1 or m < 1:
        raise ValueError(f"need more than {window} samples for windows of {window}, got {len(norm)}")
    x = np.lib.stride_tricks.sliding_window_view(norm[:-1], window, axis=0)  # [M, C, W]
    return np.ascontiguousarray(x.transpose(0, 2, 1)), norm[window:].copy()


def split_index(n: int, train_fraction: float = 0.8) -> int:
    """Index of the first validation item of a chronological split of n items."""
    return int(round(n * train_fraction))


def chrono_split(*arrays, train_fraction: float = 0.8):
    """Split arrays chronologically: ``(a_train, a_val, b_train, b_val, ...)``."""
    out = []
    for a in arrays:
        k = split_index(len(a), train_fraction)
        out += [a[:k], a[k:]]
    return tuple(out)


def require_rows(series: Series, window: int, train_fraction: float = 0.8) -> None:
    """Refuse a series too short to train: both split parts need at least one window."""
    n = len(series)
    # n - window windows, split chronologically; the smaller part needs one window.
    need = window + int(math.ceil(1 / min(train_fraction, 1 - train_fraction) - 1e-9))
    if n < need:
        last = f"{series.where(-1)}" if n else f"{series.source}"
        raise UserError(f"{last}: only {n} usable rows (after dropping {series.dropped} with "
                        f"missing values); a window of {window} needs at least {need}")


# Label columns that mark rows as anomalous: left out of training and calibration by default.
FAULT_LABELS = ("anomaly", "fault")


def labelled_rows(series: Series) -> np.ndarray:
    """Boolean [N]: rows an ``anomaly``/``fault`` label column marks (non-zero, non-empty)."""
    out = np.zeros(len(series), dtype=bool)
    for name, v in series.labels.items():
        if name.lower() not in FAULT_LABELS:
            continue
        if v.dtype == object:
            out |= np.array([bool(str(x).strip()) and str(x).strip() not in ("0", "0.0")
                             for x in v])
        else:
            out |= np.nan_to_num(np.asarray(v, np.float64)) != 0
    return out


def fit_selection(series: Series, fit_rows: int | None = None,
                  keep_labelled: bool = False) -> tuple[Series, int]:
    """The rows a model is trained and calibrated on: the first ``fit_rows`` rows (all when
    None), then, unless ``keep_labelled``, without the rows labelled anomalous, and without
    rows missing a reading. Returns the selection and how many labelled rows were left out.

    Pass ``series`` as loaded with ``dropna=False``: the first N rows are then the file's
    first N rows (counted after dropping the missing ones, they ran past row N)."""
    if fit_rows is not None:
        if not isinstance(fit_rows, (int, np.integer)) or fit_rows < 2:
            raise UserError(f"--fit-rows: must be an integer >= 2 (got {fit_rows})")
        if fit_rows > len(series):
            raise UserError(f"--fit-rows {fit_rows}: {series.source} has only {len(series)} rows")
        series = series.take(slice(0, int(fit_rows)))
    if keep_labelled:
        return clean(series), 0
    bad = labelled_rows(series)
    if bad.any():
        series = series.take(~bad)
    return clean(series), int(bad.sum())


def is_db(source: str) -> bool:
    """Whether ``source`` names a database (URL or .db/.sqlite file) rather than a CSV."""
    from urllib.parse import urlparse

    return (urlparse(source).scheme.split("+")[0] in DB_SCHEMES
            or Path(source).suffix in (".db", ".sqlite", ".sqlite3"))


def db_devices(url: str) -> dict[str, int]:
    """Device id -> telemetry row count in the collector's database."""
    from edgewatch.core.store import Store

    store = Store(url.split("?", 1)[0], create=False)
    try:
        rows = store.query("SELECT device, COUNT(*) FROM {telemetry} GROUP BY device")
    except Exception as exc:  # a database without the collector's tables
        raise UserError(f"{url}: no collector telemetry table ({str(exc).splitlines()[0]})") from None
    finally:
        store.close()
    return {str(d): int(n) for d, n in rows}
