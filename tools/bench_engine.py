"""Speed and memory of the board engine on the MicroPython unix port.

    python -m tools.bench_engine [--model DIR] [--fast]

`bench()` runs firmware/engine.py inside the real `micropython` at the
board's heap budget and returns a dict: microseconds per inference of the
model (time.ticks_us over repeats; viper kernels, plain-bytecode fallback,
and the float `predict()` path), heap held by engine + model (gc.mem_alloc
delta over import, load and the blob bytes, from source and from .mpy
files as a deployment would copy), heap growth while inferring, blob size.
The model is models/default if converted, else the committed default-size
model in tests/golden/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from edgewatch.board.catalog import load_board
from edgewatch.core import mpy

ROOT = Path(__file__).resolve().parent.parent
BOARD = "esp32-devkitc-dht22"

SCRIPT = """
import gc, time
gc.collect()
a0 = gc.mem_alloc()
import engine
blob = open(BLOB, 'rb').read()
m = engine.Model(blob)
i = t = dt = a1 = a2 = peak = 0
gc.collect()
a1 = gc.mem_alloc()
buf = bytearray(m.window * m.channels)
for i in range(len(buf)):
    buf[i] = (i * 37) & 0xFF
m.predict_q(buf)
gc.collect()
a1 = gc.mem_alloc()
t = time.ticks_us()
for i in range(N):
    m.predict_q(buf)
dt = time.ticks_diff(time.ticks_us(), t)
a2 = gc.mem_alloc()
print('viper_us', dt / N)
print('resident', a1 - a0)
print('growth', a2 - a1)
win = [0.5] * len(buf)
t = time.ticks_us()
for i in range(N):
    m.predict(win)
print('predict_us', time.ticks_diff(time.ticks_us(), t) / N)
if PLAIN:
    import kernels_plain
    p = engine.Model(blob, kernels=kernels_plain)
    t = time.ticks_us()
    for i in range(PLAIN):
        p.predict_q(buf)
    print('plain_us', time.ticks_diff(time.ticks_us(), t) / PLAIN)
"""


def _run(blob: Path, heap: str, repeats: int, plain: int, path: Path | None = None) -> dict:
    code = f"BLOB={str(blob)!r}\nN={repeats}\nPLAIN={plain}\n" + SCRIPT
    argv = mpy.command(code=code, heap=heap)
    env = mpy.env()
    if path is not None:  # compiled firmware only: precompiled .mpy files first
        env["MICROPYPATH"] = str(path)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"micropython failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return {k: float(v) for k, v in (line.split() for line in proc.stdout.splitlines())}


def _mpy_dir(tmp: Path) -> Path:
    exe = Path(mpy.micropython_binary()).with_name("mpy-cross")
    for name in ("engine", "blob", "plan", "plan_window", "kernels"):
        subprocess.run([str(exe), "-march=x64", "-o", str(tmp / f"{name}.mpy"),
                        str(mpy.FIRMWARE / f"{name}.py")], check=True, capture_output=True)
    return tmp


def default_blob(model_dir: Path | None = None) -> Path:
    """model.ewb of `model_dir`, models/default, or the committed default-size model."""
    for d in ([Path(model_dir)] if model_dir else []) + [ROOT / "models" / "default", ROOT / "tests" / "golden"]:
        if (d / "model.ewb").is_file():
            return d / "model.ewb"
    raise FileNotFoundError("no model.ewb: run `make train convert`")


def bench(fast: bool = False, model_dir: Path | None = None) -> dict:
    """Engine figures on the unix port at the board's heap budget (see module docstring)."""
    blob = default_blob(model_dir)
    budget = load_board(BOARD)["heap_budget"]
    heap = f"{budget // 1024}K"
    repeats, plain = (300, 10) if fast else (3000, 100)
    src = _run(blob, heap, repeats, plain)
    with tempfile.TemporaryDirectory() as tmp:
        comp = _run(blob, heap, repeats, 0, _mpy_dir(Path(tmp)))
    return {
        "model": str(blob.relative_to(ROOT) if blob.is_relative_to(ROOT) else blob),
        "board": BOARD, "heap_budget_bytes": budget, "repeats": repeats,
        "blob_bytes": blob.stat().st_size,
        "us_per_inference_viper": round(src["viper_us"], 1),
        "us_per_inference_viper_mpy": round(comp["viper_us"], 1),
        "us_per_inference_plain": round(src["plain_us"], 1),
        "us_per_predict_float": round(src["predict_us"], 1),
        "heap_engine_model_bytes": int(src["resident"]),
        "heap_engine_model_mpy_bytes": int(comp["resident"]),
        "heap_growth_during_inference_bytes": int(src["growth"]),
        "goal_us": 1000, "goal_heap_bytes": 16 * 1024, "goal_blob_bytes": 16 * 1024,
    }


def main(argv: list[str] | None = None) -> int:
    """Print bench() as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder with model.ewb")
    p.add_argument("--fast", action="store_true", help="fewer repeats")
    args = p.parse_args(argv)
    print(json.dumps(bench(args.fast, args.model), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
