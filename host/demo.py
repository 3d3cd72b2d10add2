"""`make demo`: the whole system on one machine, no board, no configuration, one command.

1. model: reuse ``models/default`` if it has a firmware blob, else generate greenhouse data
   (``edgewatch generate``), train the TCN (``edgewatch train``) and convert it (``edgewatch convert``);
2. broker: a private Mosquitto (host/services/broker.py) on a free loopback port, or, where Mosquitto is not
   installed, an embedded Python broker (amqtt);
3. the collector (SQLite) and the alert bridge (SMS in dry-run mode: no Twilio account needed);
4. a few simulated boards (``edgewatch sim``'s Fleet): the real firmware in the MicroPython unix
   port replaying the data the model was trained on (the generated greenhouse readings, or
   ``make train``'s occupancy data), one board clean, the others with injected sensor faults;
5. the SMS texts the bridge would send, a per-board summary from the collector's database, and
   a PNG of readings, the boards' predictions and bands, and alerts;
6. everything stopped cleanly. Exit status 0 only if every faulty board alerted and the clean
   board did not.

    make demo            # or: edgewatch demo [--fast] [--out demo-out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from edgewatch.core import firmware
from edgewatch.core.schema import DEFAULT_PREFIX

ROOT = firmware.ROOT
BIN = Path(sys.executable).parent
EW = str(BIN / "edgewatch")
# the stuck sensor late: when it comes unstuck the model re-anchors and its residuals settle
# over a few dozen samples, one episode that would take in the next fault's alert message
# (the telemetry still flags every sample)
FAULTS = ["spike", "range", "fail", "stuck", "drift"]


def say(msg: str) -> None:
    print(msg, flush=True)


def _ew(*args: str, quiet: bool = False) -> None:
    """Run one edgewatch step; its own output is the user's progress report."""
    r = subprocess.run([EW, *args], cwd=ROOT, text=True,
                       stdout=subprocess.PIPE if quiet else None,
                       stderr=subprocess.STDOUT if quiet else None)
    if r.returncode:
        out = (r.stdout or "")[-2000:] if quiet else ""
        raise SystemExit(f"demo: `edgewatch {' '.join(args)}` failed ({r.returncode}){out}")


def ensure_model(model_dir: str | os.PathLike, fast: bool = False, work: Path | None = None,
                 quiet: bool = False) -> Path:
    """The model folder with a firmware blob: reused when present, else generated, trained, converted.

    Returned absolute, resolved against the caller's working directory: the steps run from
    the repository root (``_ew``), where a relative path would name another folder."""
    model = Path(model_dir).resolve()
    if (model / "model.ewb").is_file():
        return model
    work = Path(work).resolve() if work else model.parent
    work.mkdir(parents=True, exist_ok=True)
    data = work / "greenhouse-train.csv"
    days, epochs = ("4", "3") if fast else ("10", "10")
    _ew("generate", "--out", str(data), "--days", days, "--seed", "1", quiet=quiet)
    _ew("train", "--data", str(data), "--epochs", epochs, "--out", str(model), "--no-plots",
        quiet=quiet)
    _ew("convert", "--model", str(model), quiet=quiet)
    if not (model / "model.ewb").is_file():
        raise SystemExit(f"demo: convert wrote no {model / 'model.ewb'}")
    return model


class Broker:
    """Mosquitto when installed, else amqtt, on a free loopback port."""

    def __init__(self, folder: Path, prefer: str = "auto"):
        from edgewatch.services import broker as mb

        self.folder = folder
        self.kind = prefer
        if prefer == "auto":
            try:
                mb.mosquitto_binary()
                self.kind = "mosquitto"
            except FileNotFoundError:
                self.kind = "amqtt"
        self.port = mb.free_port()
        self._mosq = None
        self._proc = None
        if self.kind == "mosquitto":
            self._mosq = mb.Broker(folder, port=self.port).start()
        else:
            self._start_amqtt()
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def _start_amqtt(self) -> None:
        from edgewatch.services.broker import _listening

        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "amqtt.yaml"
        conf.write_text("listeners:\n  default:\n    type: tcp\n"
                        f"    bind: 127.0.0.1:{self.port}\n"
                        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                        "    allow_anonymous: true\n")
        log = open(self.folder / "amqtt.log", "w")
        self._proc = subprocess.Popen([str(BIN / "amqtt"), "-c", str(conf)], stdout=log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not _listening(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"demo: amqtt did not start (see {self.folder / 'amqtt.log'})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._mosq:
            self._mosq.stop()
        from edgewatch.services.broker import terminate

        terminate(self._proc, 10)


class Service:
    """An `edgewatch` service in its own process; its output lines are kept and can be echoed."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], echo=None):
        self.name = name
        self.lines: list[str] = []
        self.echo = echo
        self.proc = subprocess.Popen([EW, *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip()
            self.lines.append(line)
            if self.echo:
                self.echo(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._t.join(5)
        return self.proc.returncode


class Listener:
    """Keeps the predictions and bands of the boards' telemetry for the plot."""

    def __init__(self, port: int):
        from edgewatch.services.mqtt_watch import Watch

        self.watch = Watch(port, f"{DEFAULT_PREFIX}/+/telemetry")

    @property
    def pred(self) -> dict[str, dict[int, dict]]:
        from edgewatch.core.schema import Telemetry

        out: dict[str, dict[int, dict]] = defaultdict(dict)
        for rec in self.watch.of(Telemetry):
            if rec.pred:
                out[rec.device][rec.seq] = {"pred": rec.pred, "band": rec.band}
        return out

    def stop(self) -> None:
        self.watch.close()


def sample_times(rows) -> dict:
    """seq -> Unix time of each (device, seq, t, ...) row.

    The board stamps whole seconds, and the demo samples several times a second: the
    times are the line through (seq, t) that fits best, exact for a steady sampling
    period, so samples of one second do not pile up on one x.
    """
    import numpy as np

    seqs = np.asarray([r[1] for r in rows], dtype=float)
    ts = np.asarray([r[2] for r in rows], dtype=float)
    if len(rows) < 2 or np.ptp(seqs) == 0 or np.ptp(ts) == 0:
        return {r[1]: r[2] for r in rows}
    slope, icpt = np.polyfit(seqs, ts, 1)
    return {int(q): float(icpt + slope * q) for q in seqs}


def plot(db_url: str, listener: Listener, devices: list, path: Path) -> None:
    """Readings (from the collector's DB), predictions and bands (from the boards), alerts,
    over time (UTC); labels never overlap and a single spike cannot flatten a panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from edgewatch.core.store import Store
    from edgewatch.training.forecast.plots import label_alerts, reading_panel

    store = Store(db_url, create=False)
    try:
        tel = store.query("SELECT device, seq, COALESCE(t, received), temperature, humidity "
                          "FROM telemetry ORDER BY device, seq")
        alerts = store.query("SELECT device, sample, rule, channel, value FROM alerts")
    finally:
        store.close()
    chans = ["temperature", "humidity"]
    units = {"temperature": "°C", "humidity": "%RH"}
    fig, axes = plt.subplots(len(devices), 2, figsize=(14, 3.2 * len(devices)), squeeze=False)
    pending = []
    for r, d in enumerate(devices):
        rows = [t for t in tel if t[0] == d.device]
        when = sample_times(rows)  # seq -> time
        planned = ", ".join(f["kind"] for f in d.faults) or "none (clean)"
        p = listener.pred.get(d.device, {})
        for c, ch in enumerate(chans):
            pred = {when[s]: p[s]["pred"][ch] for s in p if s in when and p[s]["pred"]
                    and p[s]["pred"].get(ch) is not None}
            band = {when[s]: p[s]["band"][ch] for s in p if s in when and p[s]["band"]
                    and p[s]["band"].get(ch)}
            hits = [(when[a[1]], a[2], a[4] if a[3] == ch else None) for a in alerts
                    if a[0] == d.device and a[3] in (ch, None) and a[1] in when]
            ok = [t for t in rows if t[3 + c] is not None]
            ax = axes[r][c]
            events = reading_panel(ax, [when[t[1]] for t in ok], [t[3 + c] for t in ok],
                                   f"{d.device} {ch} — faults: {planned}", units[ch], pred, band,
                                   hits, empty_note=f"no {ch} readings stored for {d.device}")
            pending.append((ax, events))
            if r == 0 and ok:
                ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("edgewatch demo: readings, on-board predictions and bands, alerts (red)")
    fig.tight_layout()
    for ax, events in pending:  # after the layout: label positions are final
        label_alerts(ax, events)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_demo(out: Path, model_dir: str, devices: int = 3, fast: bool = False,
             broker: str = "auto", period: float | None = None,
             faults: list[str] | None = None) -> int:
    """Run the demo; 0 when every faulty board alerted, the clean one did not, and SMS were printed."""
    from edgewatch.board.sim import Fleet, faults_seen, rows_needed, warmup_rows
    from edgewatch.core.store import Store

    t0 = time.monotonic()
    out = out.resolve()  # the services run from the repository root
    period = period or (0.1 if fast else 0.5)
    faults = faults or FAULTS
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    say("edgewatch demo: simulated greenhouse boards running the real firmware, no hardware needed")
    t = time.monotonic()
    model_dir = Path(model_dir).resolve()  # the user's cwd, not the root the services run in
    reused = (model_dir / "model.ewb").is_file()
    model = ensure_model(model_dir, fast=fast)
    samples = rows_needed(faults, warmup_rows(Path(model) / "model.ewb"))
    say(f"[1/6] model: {'reused' if reused else 'trained'} {model} ({time.monotonic() - t:.0f} s)")
    b = Broker(out / "broker", broker)
    services: list[Service] = []
    listener = None
    fleet = None
    sms: list[str] = []
    try:
        say(f"[2/6] broker: {b.kind} on {b.url}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
        env.update(EDGEWATCH_MQTT_URL=b.url, PYTHONUNBUFFERED="1")
        db_url = f"sqlite:///{(out / 'demo.db').resolve()}"

        def on_bridge(line):
            if "DRY-RUN SMS" in line:
                sms.append(line)
                say("   SMS " + line.split("DRY-RUN SMS ", 1)[1])

        services.append(Service("collector", ["collect", "--broker", b.url, "--db", db_url,
                                              "--log-level", "warning"], env))
        services.append(Service("bridge", ["bridge", "--broker", b.url, "--notify", "sms",
                                           "--outbox", str(out / "bridge-outbox.db"),
                                           "--db", db_url,
                                           "--log-level", "warning"], env, echo=on_bridge))
        listener = Listener(b.port)
        time.sleep(1.0)  # the services subscribe before the boards publish
        say(f"[3/6] collector -> {out / 'demo.db'}; bridge: SMS dry run (no Twilio account)")
        fleet = Fleet(out / "boards", devices, b.url, str(model), faults=faults, period=period,
                      samples=samples, clean=1, prefix="gh", extra={"retry_ms": 20})
        if fleet.range_warning:
            say(fleet.range_warning)
        clean = [d.device for d in fleet.devices if not d.faults]
        faulty = [d.device for d in fleet.devices if d.faults]
        say(f"[4/6] {devices} boards, {samples} samples every {period} s: {', '.join(clean)} clean; "
            f"{', '.join(faulty)} with faults {', '.join(faults)}")
        fleet.start()
        if not fleet.wait(timeout=samples * period * 4 + 120):
            say("demo: the boards did not finish in time")
        fleet.stop()
        expected = sum(int(ln.split("next_seq=")[1]) for d in fleet.devices for ln in d.log
                       if "next_seq=" in ln and ln.startswith("app: done"))
        store = Store(db_url, create=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stored = store.count("telemetry") + store.count("alerts")
            if stored >= expected:
                break
            time.sleep(0.2)
        time.sleep(2.0)  # the bridge sends what the last alerts queued
        per_dev = {d.device: store.query("SELECT rule, channel, sample FROM alerts WHERE device = ? "
                                         "ORDER BY seq", (d.device,)) for d in fleet.devices}
        n_tel = {d.device: store.query("SELECT COUNT(*) FROM telemetry WHERE device = ?",
                                       (d.device,))[0][0] for d in fleet.devices}
        store.close()
        say(f"[5/6] stored {sum(n_tel.values())} samples and "
            f"{sum(len(v) for v in per_dev.values())} alerts; {len(sms)} SMS would be sent")
        ok = bool(sms)
        for s in services:
            if s.proc.poll() is not None:  # a service that died early is a failed demo
                ok = False
                say(f"demo: the {s.name} stopped early ({s.proc.returncode}): "
                    f"{s.lines[-1] if s.lines else 'no output'}")
        for d in fleet.devices:
            rules = defaultdict(int)
            for rule, ch, _ in per_dev[d.device]:
                rules[f"{rule}" + (f"/{ch}" if ch else "")] += 1
            desc = ", ".join(f"{k} x{v}" for k, v in sorted(rules.items())) or "no alerts"
            kind = "clean data" if not d.faults else "faults " + ",".join(f["kind"] for f in d.faults)
            say(f"   {d.device}: {n_tel[d.device]} samples, {desc} ({kind})")
            refused = next((ln for ln in d.log if "model.ewb refused" in ln), None)
            if refused:  # said plainly: the band rule did not run on this board
                say(f"   {d.device}: {refused.split('app: ', 1)[-1]}")
            ok &= (not per_dev[d.device]) if not d.faults else bool(per_dev[d.device])
            console = (d.folder / "console.log").read_text(errors="replace").splitlines()
            for ep in faults_seen(console, d.device):
                # caught while it happens: flagged on one of its own samples; the sample after
                # it counts only for a one-sample fault (a spike is judged on the next reading
                # too); a drift flagged only when the reading jumps back was not caught
                n = ep["samples"] - 1  # its own rows
                caught = ep["first"] is not None and (ep["first"] <= n or n == 1)
                when = (f"first on sample {ep['first']}" if caught else
                        "NOT caught while present" + (" (only when it ended)" if ep["first"] else ""))
                say(f"   {d.device}: {ep['kind']} fault over {n} sample{'s' * (n > 1)}: "
                    f"{ep['flagged']} flagged, {when}")
        listener.stop()
        png = out / "demo.png"
        if sum(n_tel.values()):
            plot(db_url, listener, fleet.devices, png)
            say(f"[6/6] plot of readings, predictions, bands and alerts: {png}")
            say(f"   browse it: make dashboard DB={db_url}")
        else:
            say(f"[6/6] no plot: nothing was stored (see {out / 'boards'}/*/console.log)")
        listener = None
        if not ok:
            say("demo: FAILED: a faulty board raised no alert, the clean board did, or no SMS")
        return 0 if ok else 1
    finally:
        if fleet:
            fleet.stop()
        for s in services:
            s.stop()
        if listener:
            listener.stop()
        b.stop()
        say(f"demo: stopped everything ({time.monotonic() - t0:.0f} s in all)")


def add_arguments(ap) -> None:
    """The options of `edgewatch demo` (and `python -m edgewatch.demo`)."""
    ap.add_argument("--fast", action="store_true", help="shorter run (CI): fewer epochs, faster sampling")
    ap.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    ap.add_argument("--model", default="models/default", help="model folder to reuse or create")
    ap.add_argument("--devices", type=int, default=3, help="simulated boards (default 3, one clean)")
    ap.add_argument("--broker", default="auto", choices=["auto", "mosquitto", "amqtt"])
    ap.add_argument("--period", type=float, default=None, help="seconds between samples")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"faults of the faulty boards (default {','.join(FAULTS)})")


def run(args) -> int:
    """`edgewatch demo`: check the options, then run the whole system."""
    if args.devices < 2:
        print("demo: --devices must be at least 2 (one clean board, one with faults)", file=sys.stderr)
        return 2
    from edgewatch.board.sim import parse_faults
    from edgewatch.core.errors import UserError

    try:
        faults = parse_faults(args.faults)
    except UserError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    if not faults:
        print("demo: --faults: give at least one fault (the demo shows alerts)", file=sys.stderr)
        return 2
    return run_demo(Path(args.out), args.model, args.devices, args.fast, args.broker, args.period,
                    faults)


def main(argv: list[str] | None = None) -> int:
    """`python -m edgewatch.demo`."""
    ap = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
