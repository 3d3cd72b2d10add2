"""Run a fleet of simulated boards: the real firmware under the MicroPython unix port, one process each.

    edgewatch sim --devices 3 --broker mqtt://127.0.0.1:1883 --data generated --faults spike,stuck

Each board gets its own flash folder (``--out``/<device>: config.json, board.json, model.ewb,
its outbox), the board's heap budget (``-X heapsize=``), and the host stand-ins for
``machine``/``dht`` (host/board/standins) replaying a CSV — real data such as
``../shared/data/occupancy/datatraining.txt`` or generated greenhouse readings — from a
different starting row per board, with sensor faults injected at planned rows (simboard's
fault kinds: spike, stuck, range, fail, crc, stall). The first ``--clean`` boards get no
faults, so a run shows both what must alert and what must stay quiet. The firmware talks
to the broker over real sockets with umqtt; it stops after ``--samples`` samples (0: runs
until Ctrl-C) and drains its outbox first.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgewatch.board import fwrun
from edgewatch.core import mpy
from edgewatch.core.errors import UserError

FAULT_KINDS = ("spike", "stuck", "range", "fail", "crc", "stall", "drift")
DEFAULT_FAULTS = "spike,stuck,range"
WARMUP_ROWS = 40  # the model's window fills and the band settles before the first fault


@dataclass
class Device:
    """One simulated board: its id, flash folder, planned faults and running process."""

    device: str
    folder: Path
    faults: list[dict]
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


STUCK_ROWS = 45  # longer than the sim's stuck_samples (30), so a stuck sensor alerts
PROGRESS_S = 5.0  # seconds between progress lines of a --quiet run
GAP_ROWS = 25  # quiet rows after each fault, more than the detector's episode_gap (20): each
# fault is its own episode, so its alert is sent and attributable


# A simulated board shares the host with everything else: its loop can pause this long
# without a sample being really missed (a busy 2-core CI machine paused a clean board at a
# 0.25 s period for 0.75 s, and its dropout rule, set for a real board's minute, fired).
# The dropout rule of a simulated board waits at least this long; an injected stall lasts
# two periods more than that.
HOST_JITTER_S = 2.0

DRIFT_ROWS = 60  # a slow drift: the reading walks away from the truth over this many samples
DRIFT_DELTA = 3.0  # degrees C at its end (0.05 a sample: inside one sample's band)


def warmup_rows(blob: Path | None) -> int:
    """Clean samples before the first fault: the model's window fills and its band settles."""
    if blob is None:
        return WARMUP_ROWS
    from edgewatch.training.export import blob as blobfmt

    try:
        window = blobfmt.read(Path(blob).read_bytes()).window
    except (OSError, blobfmt.BlobError):
        return WARMUP_ROWS  # the board refuses it and says so; rules only
    return max(WARMUP_ROWS, window + WARMUP_ROWS)


def plan_faults(kinds: list[str], start: int = WARMUP_ROWS) -> list[dict]:
    """simboard fault entries for `kinds`, one after another from row `start`."""
    out, row = [], start
    for kind in kinds:
        if kind == "spike":
            out.append({"kind": "spike", "row": row, "count": 1, "channel": "temperature", "delta": 8.0})
        elif kind == "stuck":
            out.append({"kind": "stuck", "row": row, "count": STUCK_ROWS})
        elif kind == "range":
            out.append({"kind": "range", "row": row, "count": 1, "channel": "humidity", "value": 120.0})
        elif kind == "drift":
            out.append({"kind": "drift", "row": row, "count": DRIFT_ROWS, "channel": "temperature",
                        "delta": DRIFT_DELTA})
        elif kind in ("fail", "crc"):
            out.append({"kind": kind, "row": row, "attempts": 10})  # more than the read retries
        elif kind == "stall":
            out.append({"kind": "stall", "row": row, "ms": 0})  # ms: set by the fleet (its period)
        row += out[-1].get("count", 1) + GAP_ROWS
    return out


def rows_needed(kinds: list[str], start: int = WARMUP_ROWS) -> int:
    """Samples a board must take for every planned fault to happen and be judged."""
    plan = plan_faults(kinds, start)
    return (plan[-1]["row"] + plan[-1].get("count", 1) + GAP_ROWS) if plan else start


def sample_record(line: str, device: str):
    """The telemetry record of a board's per-sample console line (the firmware prints the
    record as queued: the JSON MQTT carries), or None for any other line."""
    if not line.startswith('{"v":'):
        return None
    from edgewatch.core.schema import DEFAULT_PREFIX, SchemaError, parse

    try:
        return parse(f"{DEFAULT_PREFIX}/{device}/telemetry", line.encode())
    except SchemaError:
        return None


def console_text(line: str, device: str) -> str:
    """A console line for people: a per-sample record as `edgewatch logs` prints it."""
    rec = sample_record(line, device)
    if rec is None:
        return line
    from edgewatch.services.logs import line as log_line

    return log_line(rec)


def faults_seen(console: list[str], device: str) -> list[dict]:
    """Per planned fault that spans rows, read from a board's console (simboard's begin/end
    lines around the firmware's per-sample lines): the samples it covered (its rows plus the
    one after, where a fault's end is judged), how many of them the board flagged, and after
    how many samples the first flag came (1 = on its first row; None = never while present)."""
    out, open_, closing = [], [], []
    for line in console:
        if line.startswith("sim: ") and line.endswith(" fault begins"):
            ep = {"kind": line.split()[1], "samples": 0, "flagged": 0, "first": None}
            out.append(ep)
            open_.append(ep)
        elif line.startswith("sim: ") and line.endswith(" fault ends"):
            kind = line.split()[1]
            for ep in open_:
                if ep["kind"] == kind:
                    open_.remove(ep)
                    closing.append(ep)  # judged on one more sample
                    break
        elif (rec := sample_record(line, device)) is not None:
            for ep in open_ + closing:
                ep["samples"] += 1
                if rec.anomaly:
                    ep["flagged"] += 1
                    if ep["first"] is None:
                        ep["first"] = ep["samples"]
            closing = []
    return out


def parse_faults(text: str | None) -> list[str]:
    """'spike,stuck' → ['spike', 'stuck']; 'all'; 'none' or '' → []."""
    if not text or text.strip().lower() == "none":
        return []
    if text.strip().lower() == "all":
        return list(FAULT_KINDS)
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad:
        raise UserError(f"--faults: unknown fault '{bad[0]}' (choose from {', '.join(FAULT_KINDS)}, all, none)")
    return kinds


def generated_data(path: Path, days: float = 3, seed: int = 7, sensor: str = "dht22") -> Path:
    """Clean generated greenhouse readings (training/forecast/generate.py) as a CSV the stand-ins replay."""
    from edgewatch.training.forecast.generate import SENSORS, generate, write_csv

    series, _ = generate(days=days, period=60, sensor=sensor, faults=None, seed=seed)
    write_csv(series, path, SENSORS[sensor].resolution)
    return path


def csv_columns(path: Path) -> dict:
    """simboard's column map for a CSV: the generic names, or the occupancy data's."""
    with open(path) as fh:
        header = [h.strip().strip('"').lower() for h in fh.readline().split(",")]
    cols = {}
    for name in ("temperature", "humidity"):
        if name not in header:
            raise UserError(f"{path}: no '{name}' column (have: {', '.join(header)})")
        cols[name] = name
    return cols


def training_data(blob: Path | None) -> str | None:
    """The CSV the model next to ``blob`` was trained on (its config.json), if it is a file here."""
    if blob is None:
        return None
    try:
        src = json.loads((blob.parent / "config.json").read_text()).get("data")
    except (OSError, ValueError):
        return None
    if not isinstance(src, str):
        return None
    for cand in (Path(src), mpy.ROOT / src):
        if cand.is_file():
            try:
                csv_columns(cand)
            except UserError:
                return None
            return str(cand)
    return None


def range_warning(blob: Path | None, data: Path, margin: float = 0.5) -> str | None:
    """One line when ``data``'s readings lie outside the range the model was trained on.

    The training range is the model's scaler (``scaler.json``: offset .. offset + scale per
    channel, the training split only); ``margin`` is the share of that span tolerated on
    either side (the rest of a training file, or a warmer week, is not a mismatch).
    """
    if blob is None or not (blob.parent / "scaler.json").is_file():
        return None
    from edgewatch.training.forecast.data import Scaler, load

    try:
        scaler = Scaler.load(blob.parent / "scaler.json")
        series = load(str(data), channels=scaler.channels)
    except Exception:  # not comparable (other channels): the firmware will say so
        return None
    out = []
    for j, ch in enumerate(scaler.channels):
        lo, hi = float(scaler.offset[j]), float(scaler.offset[j] + scaler.scale[j])
        slack = margin * (hi - lo)
        dlo, dhi = float(series.values[:, j].min()), float(series.values[:, j].max())
        if dlo < lo - slack or dhi > hi + slack:
            out.append(f"{ch} {dlo:.1f}..{dhi:.1f} (trained on {lo:.1f}..{hi:.1f})")
    if not out:
        return None
    return (f"sim: warning: {data.name} lies outside the model's training range: {'; '.join(out)}; "
            f"expect model alerts (band, drift, burst, shift) on clean boards (replay its training data with "
            f"--data auto, or retrain on this data)")


class Fleet:
    """Start, watch and stop N simulated boards."""

    def __init__(self, out: str | os.PathLike, devices: int, broker: str, model: str | None,
                 board: str = "esp32-devkitc-dht22", data: str = "auto",
                 faults: list[str] | None = None, period: float = 1.0, samples: int = 0,
                 clean: int = 1, prefix: str = "sim", credentials: dict | None = None,
                 echo: bool = False, extra: dict | None = None, stuck: int = 30):
        if devices < 1 or devices > 500:
            raise UserError(f"--devices {devices}: expected 1..500")
        if not (math.isfinite(period) and 0 < period <= 86400):  # NaN passed `period <= 0`
            raise UserError(f"--period {period}: expected seconds > 0, at most 86400 (a day)")
        if samples < 0:
            raise UserError(f"--samples {samples}: expected >= 0")
        from edgewatch.core.schema import DEVICE_RE

        if not DEVICE_RE.fullmatch(f"{prefix}-{devices:02d}"):  # the boards would loop on it
            raise UserError(f"--prefix {prefix!r}: device ids are <prefix>-01..; letters, digits, "
                            "_ and - only, at most 32 characters in all")
        if not 2 <= stuck <= 100000:  # the firmware's config range (firmware/config.py)
            raise UserError(f"--stuck {stuck}: expected 2..100000 equal samples")
        from edgewatch.board.catalog import load_board

        self.out = Path(out).resolve()  # each board runs in its own folder: no relative paths
        self.board_name = board
        self.board = load_board(board)
        self.broker = broker
        self.model = self._model_blob(model)
        self.period_ms = max(10, int(period * 1000))
        self.dropout_periods = max(1, -(-int(HOST_JITTER_S * 1000) // self.period_ms))
        self.samples = samples
        self.echo = echo
        self.credentials = credentials or {}
        self.extra = extra or {}
        self.stuck = stuck
        self.data = self._data(data)
        self.range_warning = range_warning(self.model, self.data)
        kinds = faults if faults is not None else parse_faults(DEFAULT_FAULTS)
        self.warmup = warmup_rows(self.model)
        self.devices: list[Device] = []
        for i in range(devices):
            dev = f"{prefix}-{i + 1:02d}"
            plan = [] if i < clean else plan_faults(kinds, self.warmup)
            for f in plan:
                if f["kind"] == "stall":
                    # missed periods past the dropout rule's: a dropout
                    f["ms"] = self.period_ms * (self.dropout_periods + 2)
            self.devices.append(Device(dev, self.out / dev, plan))

    def _model_blob(self, model: str | None) -> Path | None:
        if not model:
            return None
        p = Path(model)
        blob = p if p.suffix == ".ewb" else p / "model.ewb"
        if not blob.is_file():
            raise UserError(f"{blob}: no model blob (make train convert, or --model none)")
        from edgewatch.board.deploy import check_blob

        check_blob(blob)  # a damaged blob: one line, not boards that run on rules alone
        return blob

    def _data(self, data: str) -> Path:
        if data == "auto":  # the data the model was trained on, when it is a file here
            data = training_data(self.model) or "generated"
        if data == "generated":
            path = self.out / "greenhouse.csv"
            if not path.is_file():
                self.out.mkdir(parents=True, exist_ok=True)
                generated_data(path, sensor=self.board.get("sensor", "dht22")
                               if self.board.get("sensor") in ("dht22", "dht11", "shtc3") else "dht22")
            return path.resolve()
        path = Path(data)
        if not path.is_file():
            raise UserError(f"--data {data}: no such file (a CSV, or 'generated')")
        csv_columns(path)
        return path.resolve()

    def _prepare(self, i: int, d: Device) -> dict:
        if d.folder.exists():
            shutil.rmtree(d.folder)  # a fresh flash: seq and outbox start from zero
        d.folder.mkdir(parents=True)
        cfg = {"device": d.device, "board": self.board_name, "broker": self.broker,
               "period_ms": self.period_ms, "stop_after": self.samples,
               "drain_ms": 20000, "status_every_ms": 0,
               "detector": {"stuck_samples": self.stuck, "dropout_periods": self.dropout_periods}}
        if self.credentials.get(d.device):
            cfg["user"], cfg["password"] = d.device, self.credentials[d.device]
        cfg.update(self.extra)
        if cfg.get("ota_key"):  # the fleet master key: each board gets its own, as deploy does
            from edgewatch.training.export.blob import derive_key

            cfg["ota_key"] = derive_key(bytes.fromhex(cfg["ota_key"]), d.device,
                                        cfg.get("ota_key_version", 1)).hex()
        (d.folder / "config.json").write_text(json.dumps(cfg))
        (d.folder / "board.json").write_text(json.dumps(self.board))
        if self.model:
            shutil.copy(self.model, d.folder / "model.ewb")
        sim = {"csv": str(self.data), "columns": csv_columns(self.data), "start": 500 * i,
               "faults": d.faults}
        (d.folder / "sim.json").write_text(json.dumps(sim))
        return sim

    def build(self) -> Path:
        """The board's files as deploy makes them: .mpy for the unix port's arch, main.py as source."""
        from edgewatch.board.deploy import arch_of, stage_code

        if not (mpy.MPLIB / "umqtt" / "simple.py").is_file():
            raise UserError(f"{mpy.MPLIB}: umqtt missing: run `make setup`")
        info = int(mpy.run(code="import sys; print(sys.implementation._mpy)").stdout.split()[-1])
        code = self.out / "_firmware"
        if code.exists():
            shutil.rmtree(code)
        code.mkdir(parents=True)
        stage_code(code, arch_of(info)[0], True, str(mpy.MPLIB))
        return code

    def start(self) -> Fleet:
        """Start every board's firmware process (precompiled, as deployed to a board)."""
        code = self.build()
        heap = fwrun.sim_heap(self.board["heap_budget"])
        standins = fwrun.build_mpy()[0]
        for i, d in enumerate(self.devices):
            self._prepare(i, d)
            # the precompiled firmware and /lib on the board's flash, with the stand-ins of its
            # C modules, run from there (fwrun.flash: no host folder on the heap)
            for src in (code, standins):
                shutil.copytree(src, d.folder, dirs_exist_ok=True)
            d.proc = mpy.spawn(script=d.folder / "main.py", heap=heap, cwd=d.folder,
                               EDGEWATCH_SIM=str(d.folder / "sim.json"), **fwrun.FLASH_ENV)
            threading.Thread(target=self._pump, args=(d,), daemon=True).start()
        return self

    def _pump(self, d: Device) -> None:
        with open(d.folder / "console.log", "w") as logf:
            for raw in d.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                sample = line.startswith('{"v":')  # a per-sample record: console.log only
                if not sample:
                    d.log.append(line)
                logf.write(line + "\n")
                logf.flush()
                if self.echo:  # the records as `edgewatch logs` prints them
                    print(f"[{d.device}] {console_text(line, d.device) if sample else line}",
                          flush=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every board to finish (``--samples``); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        for d in self.devices:
            while d.running:
                if end is not None and time.monotonic() > end:
                    return False
                time.sleep(0.1)
        return True

    def stop(self) -> None:
        """Stop every board still running (Ctrl-C to the firmware, then kill)."""
        for d in self.devices:
            if d.running:
                d.proc.send_signal(signal.SIGINT)
        for d in self.devices:
            if d.proc is None:
                continue
            try:
                d.proc.wait(5)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(5)

    def progress(self, elapsed: float) -> str:
        """One line for a quiet run: time so far (of the expected), alerts per board."""
        expected = self.samples * self.period_ms / 1000 if self.samples else 0
        when = f"{elapsed:.0f} s" + (f" of ~{expected:.0f} s" if expected else "")
        alerts = ", ".join(f"{d.device} {sum(ln.startswith('alert:') for ln in d.log)}"
                           for d in self.devices)
        running = sum(d.running for d in self.devices)
        return f"{when}; {running}/{len(self.devices)} boards running; alerts: {alerts}"

    def summary(self) -> list[str]:
        """One line per board: faults planned, alerts raised, what the firmware reported at the end."""
        out = []
        for d in self.devices:
            alerts = [ln for ln in d.log if ln.startswith("alert:")]
            done = next((ln for ln in reversed(d.log) if ln.startswith("app: done")), "")
            planned = ",".join(f["kind"] for f in d.faults) or "none (clean)"
            rc = d.proc.returncode if d.proc else None
            out.append(f"{d.device}: faults {planned}; {len(alerts)} alerts; "
                       f"{done[5:] if done else 'exit ' + str(rc)}")
        return out


def add_arguments(p) -> None:
    """Options of `edgewatch sim`."""
    p.add_argument("--devices", type=int, default=3, help="number of boards (default 3)")
    p.add_argument("--broker", "--mqtt", dest="broker",
                   default=os.environ.get("EDGEWATCH_MQTT_URL") or "mqtt://127.0.0.1:1883",
                   help="broker URL the boards connect to (env EDGEWATCH_MQTT_URL)")
    p.add_argument("--data", default="auto",
                   help="CSV to replay (e.g. ../shared/data/occupancy/datatraining.txt), 'generated', "
                        "or 'auto' (default): the model's training data when it is a file here, "
                        "else generated")
    p.add_argument("--faults", default=DEFAULT_FAULTS,
                   help=f"faults per faulty board: {','.join(FAULT_KINDS)}, all or none "
                        f"(default {DEFAULT_FAULTS})")
    p.add_argument("--clean", type=int, default=1, help="boards without faults (default 1)")
    p.add_argument("--period", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--samples", type=int, default=0,
                   help="stop each board after N samples (0: run on; see the faults' rows in sim.json)")
    p.add_argument("--stuck", type=int, default=30,
                   help="samples of an unchanged reading that make a stuck alert (default 30)")
    p.add_argument("--model", default="models/default", help="model folder or .ewb; 'none' for rules only")
    p.add_argument("--board", default=os.environ.get("BOARD") or "esp32-devkitc-dht22",
                   help="boards/<name> for pins, sensor and heap budget")
    p.add_argument("--out", default="runs/sim", help="folder for the boards' flash (default runs/sim)")
    p.add_argument("--prefix", default="sim", help="device ids are <prefix>-01, -02, ...")
    p.add_argument("--quiet", action="store_true", help="do not echo the boards' console output")
    p.add_argument("--users", help="the boards' MQTT accounts: a file of device:password lines "
                   "(as for edgewatch cluster up --users)")


def run(args) -> int:
    """Run `edgewatch sim` until the boards finish or Ctrl-C."""
    from edgewatch.core.settings import read_users, safe_url

    fleet = Fleet(args.out, args.devices, args.broker,
                  None if args.model == "none" else args.model, args.board, args.data,
                  parse_faults(args.faults), args.period, args.samples, args.clean,
                  args.prefix, echo=not args.quiet, stuck=args.stuck,
                  credentials=read_users(args.users) if args.users else None)
    print(f"sim: {args.devices} boards ({args.board}) -> {safe_url(args.broker)}, replaying "
          f"{fleet.data.name}, flash in {args.out}", flush=True)
    if fleet.range_warning:
        print(fleet.range_warning, file=sys.stderr, flush=True)
    fleet.start()
    t0 = time.monotonic()
    try:
        # --quiet hides the boards' consoles: a line every PROGRESS_S shows the run is alive
        while not fleet.wait(timeout=PROGRESS_S):
            if args.quiet:
                print("sim: " + fleet.progress(time.monotonic() - t0), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
    for line in fleet.summary():
        print("sim: " + line)
    sys.stdout.flush()
    return 0
