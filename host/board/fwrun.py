"""Run the real firmware (firmware/main.py) as a simulated board under the MicroPython unix port.

The firmware runs as a board runs it: main.py as source, every other module
precompiled by mpy-cross (`build_mpy`), copied into a folder that plays the board's flash
(`flash`; the process runs from it with a board's sys.path), with config.json, board.json (resolved by
host/board/catalog.py, as `make deploy` writes it), optionally model.ewb and the
simulation description sim.json read by the stand-ins in host/board/standins/
(replayed CSV, injected faults). The process runs with the board's heap budget.

    flash = prepare(tmp / "dev1", "dev1", "esp32-devkitc-dht22", f"mqtt://127.0.0.1:{port}",
                    sim={"csv": occupancy, "start": 2000}, period_ms=50, stop_after=400)
    proc = start(flash, "esp32-devkitc-dht22")
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgewatch.board.catalog import load_board
from edgewatch.core import mpy
from edgewatch.core.schema import DEFAULT_PREFIX

MAIN = mpy.FIRMWARE / "main.py"
BUILD = mpy.ROOT / "build" / "firmware-mpy"
# mpy-cross -march for this host, so viper kernels load as native code like on the board
_MARCH = {"x86_64": "x64", "AMD64": "x64", "i686": "x86", "armv7l": "armv7m"}


def build_mpy(dest: Path = BUILD) -> list[Path]:
    """Precompile the firmware (all but main.py), the stand-ins and umqtt with mpy-cross.

    This is what `make deploy` puts on a board (and what `mpremote mip` installs for
    umqtt): bytecode that loads without the compiler's parse-tree peak, which at a
    96 KB heap decides whether the app and the engine fit. Rebuilt when a source is
    newer. Returns the folders (stand-ins, firmware, umqtt) that `flash` copies to a board."""
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
            if mpy.is_fresh(src, obj):
                continue
            obj.parent.mkdir(parents=True, exist_ok=True)
            if src.parent != src_dir:  # a package (umqtt): its __init__ as source
                (obj.parent / "__init__.py").touch()
            mpy.cross_compile(src, obj, march, src.relative_to(src_dir).as_posix())
            mpy.stamp(src, obj)
    # main.py runs as source, as on a board, from beside the compiled modules: a script's
    # own folder comes first on sys.path, and firmware/ would shadow them with sources
    main = dest / "firmware" / "main.py"
    if not main.exists() or main.read_bytes() != MAIN.read_bytes():
        tmp = main.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(MAIN.read_bytes())
        os.replace(tmp, main)
    return out


def flash(folder) -> Path:
    """Put build_mpy's modules (the firmware with main.py, the stand-ins, umqtt) into the
    board's flash folder, as `make deploy` puts them on a board; a board runs from there with
    sys.path ['', '.frozen', 'lib'] (FLASH_ENV), a board's own. So no module path and no module's
    __file__ names a host folder: each is a string on MicroPython's heap, and with the
    checkout's absolute path in them the heap's layout, and what fits at a board's budget,
    depended on where the repository was cloned (tests/firmware/test_rv32_sample.py)."""
    folder = Path(folder)
    for built in build_mpy():
        shutil.copytree(built, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.tmp"))
    return folder


# a board's sys.path after its flash folder (''): the frozen modules, then /lib (mip's place)
FLASH_ENV = {"MICROPYPATH": os.pathsep.join((".frozen", "lib"))}


# the stand-ins a simulated board loads (C modules in a real board's ROM, outside the heap)
ROM_MODULES = ("machine", "dht", "network", "simboard", "sim_flash", "sim_i2c")


@functools.lru_cache(maxsize=1)
def standins_heap() -> int:
    """Bytes of MicroPython heap the host stand-ins (machine, dht, network, ...) take once loaded.

    On a board these are C modules outside the heap; measured here in one short run, from a
    flash folder as the boards run."""
    import tempfile

    code = ("import gc\ngc.collect()\na = gc.mem_alloc()\n"
            f"import {', '.join(ROM_MODULES)}\n"
            "gc.collect()\nprint(gc.mem_alloc() - a)\n")
    with tempfile.TemporaryDirectory() as d:
        out = mpy.run(code=code, heap="256K", cwd=flash(d), timeout=60, **FLASH_ENV)
    return int(out.stdout.split()[-1])


# The unix port here is 64-bit: its objects' pointers, and its GC blocks (32 B, a board's 16 B),
# are twice a board's. The same firmware set-up and 30 samples (host/board/rv32.py's harness)
# took 82,240 B here against 63,936 B on RV32 with the window-10 model, 86,528 against
# 69,040 with the default one (2026-11-27): 1.25-1.29 x. A simulated board gets its budget
# times the lower bound, so it is as strict as the board, not a quarter stricter; the
# 32-bit budgets themselves are held on RV32 (the C3's 80 KB: tests/firmware/test_rv32_*.py)
WORD_FACTOR = (5, 4) if sys.maxsize > 1 << 32 else (1, 1)


def sim_heap(budget: int) -> str:
    """`-X heapsize=` of a simulated board: its heap budget (scaled to this port's word size,
    WORD_FACTOR) plus what the stand-ins take, so the firmware gets the board's budget (the
    stand-ins, about 20 KB, would otherwise come out of it and make every simulated board
    stricter than the real one by that much)."""
    return str(int(budget) * WORD_FACTOR[0] // WORD_FACTOR[1] + standins_heap())


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
    folder = flash(folder)
    out = open(folder / log, "ab")
    try:
        return subprocess.Popen(mpy.command(folder / "main.py", heap=heap or sim_heap(load_board(board)["heap_budget"])),
                                cwd=folder, env=mpy.env(None, EDGEWATCH_SIM=str(folder / sim_file), **FLASH_ENV),
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

    def __init__(self, port: int, topic: str = f"{DEFAULT_PREFIX}/#", client_id: str = "",
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
    folder = flash(folder)
    return mpy.run(script=folder / "main.py", heap=heap or sim_heap(load_board(board)["heap_budget"]), cwd=folder,
                   timeout=timeout, check=False, EDGEWATCH_SIM=str(folder / "sim.json"), **FLASH_ENV)
