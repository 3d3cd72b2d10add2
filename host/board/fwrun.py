"""Run the real firmware (firmware/main.py) as a simulated board under the MicroPython unix port.

The firmware runs as a board runs it: main.py as source, every other module
precompiled by mpy-cross (`build_mpy`). A folder plays the board's flash: config.json, board.json (resolved by
host/board/catalog.py, as `make deploy` writes it), optionally model.ewb and the
simulation description sim.json read by the stand-ins in host/board/standins/
(replayed CSV, injected faults). The process runs with the board's heap budget.

    flash = prepare(tmp / "dev1", "dev1", "esp32-devkitc-dht22", f"mqtt://127.0.0.1:{port}",
                    sim={"csv": occupancy, "start": 2000}, period_ms=50, stop_after=400)
    proc = start(flash, "esp32-devkitc-dht22")
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from edgewatch.board.catalog import heap_budget, load_board
from edgewatch.core import mpy

MAIN = mpy.FIRMWARE / "main.py"
BUILD = mpy.ROOT / "build" / "firmware-mpy"
# mpy-cross -march for this host, so viper kernels load as native code like on the board
_MARCH = {"x86_64": "x64", "AMD64": "x64", "i686": "x86", "armv7l": "armv7m"}


def _mpy_cross() -> str:
    here = Path(mpy.micropython_binary()).parent / "mpy-cross"
    return str(here) if here.exists() else (shutil.which("mpy-cross") or "mpy-cross")


def build_mpy(dest: Path = BUILD) -> list[Path]:
    """Precompile the firmware (all but main.py), the stand-ins and umqtt with mpy-cross.

    This is what `make deploy` puts on a board (and what `mpremote mip` installs for
    umqtt): bytecode that loads without the compiler's parse-tree peak, which at a
    96 KB heap decides whether the app and the engine fit. Rebuilt when a source is
    newer. Returns the folders for MICROPYPATH, before the source folders."""
    march = _MARCH.get(platform.machine())
    if not (mpy.MPLIB / "umqtt" / "simple.py").exists():  # `make setup` normally did this
        from edgewatch.board.fetch_mplib import fetch

        fetch(str(mpy.MPLIB))
    out = []
    for src_dir, name, skip in ((mpy.STANDINS, "standins", set()),
                                (mpy.FIRMWARE, "firmware", {"main.py"}),
                                (mpy.MPLIB, "mplib", set())):
        target = dest / name
        out.append(target)
        for src in sorted(src_dir.rglob("*.py")):
            if src.name in skip or src.name == "__init__.py":
                continue
            obj = target / src.relative_to(src_dir).with_suffix(".mpy")
            if obj.exists() and obj.stat().st_mtime >= src.stat().st_mtime:
                continue
            obj.parent.mkdir(parents=True, exist_ok=True)
            if src.parent != src_dir:  # a package (umqtt): its __init__ as source
                (obj.parent / "__init__.py").touch()
            tmp = obj.with_suffix(f".{os.getpid()}.tmp")
            argv = [_mpy_cross(), "-o", str(tmp), str(src)]
            if march:
                argv.insert(1, f"-march={march}")
            subprocess.run(argv, check=True, capture_output=True)
            os.replace(tmp, obj)  # atomic: parallel test runs may build at once
    # main.py runs as source, as on a board, from beside the compiled modules: a script's
    # own folder comes first on sys.path, and firmware/ would shadow them with sources
    main = dest / "firmware" / "main.py"
    if not main.exists() or main.read_bytes() != MAIN.read_bytes():
        tmp = main.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(MAIN.read_bytes())
        os.replace(tmp, main)
    return out


def prepare(folder, device: str, board: str, broker: str, sim: dict | None = None,
            model: str | os.PathLike | None = None, **config) -> Path:
    """Write a board's flash folder; `config` adds/overrides config.json keys."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"device": device, "board": board, "broker": broker}
    cfg.update(config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    (folder / "board.json").write_text(json.dumps(load_board(board), indent=1))
    (folder / "sim.json").write_text(json.dumps(sim or {}, indent=1))
    if model is not None:
        shutil.copy(model, folder / "model.ewb")
    return folder


def start(folder, board: str, heap: str | None = None, sim_file: str = "sim.json",
          log: str = "console.log") -> subprocess.Popen:
    """Start firmware/main.py in `folder` with the board's heap budget.

    The board's console (stdout+stderr) goes to `folder/log` (appended), so a long run
    never blocks on a full pipe; read it with `console(folder)`."""
    folder = Path(folder)
    out = open(folder / log, "ab")
    try:
        paths = build_mpy()
        return subprocess.Popen(mpy.command(paths[1] / "main.py", heap=heap or heap_budget(board)),
                                cwd=folder, env=mpy.env(paths, EDGEWATCH_SIM=str(folder / sim_file)),
                                stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def console(folder, log: str = "console.log") -> str:
    """What the board printed so far."""
    p = Path(folder) / log
    return p.read_text(errors="replace") if p.exists() else ""


class Listener:
    """A paho subscriber collecting every message under `topic` as (topic, payload, retain, dup).

    With `persistent` (needs a client_id) its session survives a broker restart with
    persistence, so nothing published while it reconnects is lost to it."""

    def __init__(self, port: int, topic: str = "edgewatch/#", client_id: str = "",
                 persistent: bool = False, user: tuple[str, str] | None = None):
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool, bool]] = []
        self._lock = threading.Lock()
        self._last = 0.0
        ready = threading.Event()
        # persistent: a broker restarted with persistence keeps queueing for us while we reconnect
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=not persistent)
        self.c.reconnect_delay_set(0.2, 1)
        if user:
            self.c.username_pw_set(*user)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(topic, qos=1)
        if not ready.wait(10):
            raise RuntimeError(f"no SUBACK from the broker on port {port}")

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), bool(msg.dup)))
            self._last = time.monotonic()

    def settle(self, quiet: float = 0.5, timeout: float = 15.0) -> None:
        """Wait until nothing has arrived for ``quiet`` seconds (at most ``timeout``).

        After the board's process has ended, what it published is at the broker but may
        still be on its way to us; on a loaded machine a fixed sleep can cut that off."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with self._lock:
                last = max(self._last, start)
            if time.monotonic() - last >= quiet:
                return
            time.sleep(0.05)

    def json(self, kind: str, redelivered: bool = True) -> list[dict]:
        """Decoded JSON messages whose topic ends with /<kind>, in arrival order.

        ``redelivered=False`` leaves out the broker's own resends to us (DUP flag: after a
        broker restart it resends what we may not have acknowledged), so what is left is
        every copy the publisher sent."""
        with self._lock:
            return [json.loads(p) for t, p, _, dup in self.messages
                    if t.endswith("/" + kind) and (redelivered or not dup)]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish with QoS 1 and wait for the PUBACK."""
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def run(folder, board: str, timeout: float = 120, heap: str | None = None) -> subprocess.CompletedProcess:
    """Run the firmware to completion (config `stop_after`); return the CompletedProcess."""
    folder = Path(folder)
    paths = build_mpy()
    return mpy.run(script=paths[1] / "main.py", heap=heap or heap_budget(board), cwd=folder,
                   timeout=timeout, extra_path=paths, check=False,
                   EDGEWATCH_SIM=str(folder / "sim.json"))
