"""The board engine on the board's instruction set: 32-bit RISC-V MicroPython under QEMU.

The unix port's viper ints are 64-bit words, so it cannot see arithmetic that
overflows 32 bits; this build (edgewatch.board.rv32: RV32IMC viper, the C3's 80 KiB heap,
littlefs flash) can. Firmware is deployed as on a board: .mpy from
`mpy-cross -march=rv32imc`, copied to the flash. Every output must equal
tflite-micro's bit for bit: golden vectors (C, viper and plain), the committed
golden vectors, the real occupancy test windows, random windows, and the
requantisation cases of tests/test_engine_bitexact.py plus 32-bit edge cases. The
kernels in C (firmware/native/ewkern.c, the native .mpy edgewatch.board.rv32.build_natmod builds,
which the engine prefers) and the viper kernels each go through every input set; a C
build with a deliberately wrong requantisation must fail them.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from edgewatch.training.export.convert import quantize, tflm_run, windows_of
from edgewatch.training.forecast.data import Scaler
from test_engine_bitexact import (
    GOLDEN,
    OCC_TEST,
    PREDICT_Q_GROWTH,
    assert_same,
    golden_vectors,
    random_windows,
    reference_requant,
    requant_cases,
)

from tools.bench_rv32 import LOAD

ENGINE = ["blob", "plan", "plan_window", "kernels", "ewkern", "engine"]
# the engine's kernels: its default (the C module when on the flash), or a module by name
KERNELS = [("default", "ewkern"), ("kernels", "kernels")]

RUN = """
if MODE == 'plain':  # first: it compiles kernels.py's source, the heap's largest need
    import kernels_plain
import engine
blob = open(BLOB, 'rb').read()
K = None  # the engine's default
if MODE == 'plain':
    K = kernels_plain
elif MODE != 'default':
    K = __import__(MODE)
m = engine.Model(blob, kernels=K)
del blob
buf = bytearray(m.window * m.channels)
out = bytearray(m.channels)
with open(INP, 'rb') as f:
    for i in range(COUNT):
        f.readinto(buf)
        y = m.predict_q(buf)
        for j in range(m.channels):
            out[j] = y[j]
        print(out.hex(), end='')
print()
print(m.kernels.__name__)
"""


@pytest.fixture(scope="module")
def board(rv32):
    rv32.put_firmware(ENGINE + ["kernels_plain", "kernels.py"])
    return rv32


def rv32_outputs(board, blob: Path, x_q: np.ndarray, mode: str = "default") -> tuple[np.ndarray, str]:
    """int8 windows [N, W, C] through firmware/engine.py on the RV32 board -> ([N, C] int8, kernels)."""
    x_q = np.ascontiguousarray(x_q, np.int8)
    board.put(blob.read_bytes(), "model.ewb")
    board.put(x_q.tobytes(), "in.bin")
    board.reset()
    code = f"BLOB='model.ewb'\nINP='in.bin'\nMODE={mode!r}\nCOUNT={len(x_q)}\n" + RUN
    out, used = board.run(code).split()
    y = np.frombuffer(bytes.fromhex(out), np.int8).reshape(len(x_q), -1)
    board.run("import os\nos.remove('in.bin')")
    return y, used


def test_golden_vectors_c_viper_and_plain(board, tiny_model_dir):
    x, y = golden_vectors(tiny_model_dir)
    for mode, name in KERNELS + [("plain", "kernels_plain")]:
        got, used = rv32_outputs(board, tiny_model_dir / "model.ewb", x, mode)
        assert used == name
        assert_same(got, y, f"RV32 golden vectors, {mode}")


@pytest.mark.parametrize("mode,name", KERNELS)
def test_committed_golden_vectors(board, mode, name):
    x, y = golden_vectors(GOLDEN)
    got, used = rv32_outputs(board, GOLDEN / "model.ewb", x, mode)
    assert used == name
    assert_same(got, y, f"RV32 committed golden vectors, {name}")


@pytest.mark.parametrize("mode,name", KERNELS)
def test_real_and_random_windows(board, tiny_model_dir, mode, name):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    scaler = Scaler.load(tiny_model_dir / "scaler.json")
    s_in, z_in = json.loads((tiny_model_dir / "convert.json").read_text())["input_quant"]
    _, _, x, _ = windows_of(str(OCC_TEST), cfg["channels"], scaler, cfg["window"], 0.0)
    x_q = np.concatenate([quantize(x, s_in, z_in),
                          random_windows(500, cfg["window"], len(cfg["channels"]))])
    assert len(x_q) >= 1500
    got, used = rv32_outputs(board, tiny_model_dir / "model.ewb", x_q, mode)
    assert used == name
    assert_same(got, tflm_run((tiny_model_dir / "model.tflite").read_bytes(), x_q),
                f"RV32 {name}: {len(x_q) - 500} occupancy test windows + 500 random windows")


# ---------------------------------------------------------------- requantisation

def rv32_requant_cases() -> list[tuple[int, int, int]]:
    """tests/test_engine_bitexact.py's cases, then edges of the 32-bit words."""
    cases = requant_cases()
    # 32-bit edges: accumulators at powers of two and one off them (sign and limb
    # boundaries), multipliers at both ends of [2**30, 2**31), every shift
    rng = random.Random(32)
    accs = sorted({v for k in range(32) for v in ((1 << k) - 1, 1 << k, (1 << k) + 1)
                   if v < (1 << 31)})
    accs = accs + [-a for a in accs if a]
    ms = (1 << 30, (1 << 30) + 1, (1 << 31) - 1, (1 << 31) - 2, 1518500250, 1879048192)
    for s in range(-31, 7):
        lim = ((1 << 31) - 1) >> max(s, 0)
        for acc in accs:
            if abs(acc) <= lim and rng.random() < 0.35:
                cases.append((acc, rng.choice(ms), s))
    return cases


REQUANT = """
import array
K = __import__(MODE)
n = CHUNK
p = array.array('I', bytes(4 * (12 + 3 * n)))
y = bytearray(n)
x = bytearray(1)
w = bytearray(n)
with open('cases.bin', 'rb') as f:
    while f.readinto(p):
        K.conv(x, w, p, y)
        print(y[:p[3]].hex(), end='')
print()
"""


def requant_on_board(board, mode: str, cases, chunk: int = 400) -> bytes:
    """Each case through conv's requantisation (1x1 conv, weight 0: acc = bias) on the board."""
    blocks = []
    for i in range(0, len(cases), chunk):
        part = cases[i:i + chunk]
        p = [1, 0, 1, len(part), 1, 1, 0, 0, 0, -(1 << 31), (1 << 31) - 1, 0]
        for acc, m, s in part:
            p += [acc, m, s]
        p += [0] * (3 * (chunk - len(part)))
        blocks.append(struct.pack(f"<{len(p)}I", *(v & 0xFFFFFFFF for v in p)))
    board.put(b"".join(blocks), "cases.bin")
    board.reset()
    out = board.run(f"MODE={mode!r}\nCHUNK={chunk}\n" + REQUANT).strip()
    board.run("import os\nos.remove('cases.bin')")
    return bytes.fromhex(out)


@pytest.mark.parametrize("mode", ["ewkern", "kernels", "kernels_plain"])
def test_requantisation_on_32_bit_words(board, mode):
    cases = rv32_requant_cases()
    if mode == "kernels_plain":
        cases = cases[::5]  # bytecode has unbounded ints: the viper path is the one at risk
    got = requant_on_board(board, mode, cases)
    want = bytes((reference_requant(*c) & 0xFF) for c in cases)
    assert len(got) == len(cases)
    bad = [i for i in range(len(cases)) if got[i] != want[i]]
    assert not bad, (f"RV32 {mode}: {len(bad)} of {len(cases)} cases differ, first "
                     f"{cases[bad[0]]}: {got[bad[0]]} vs {want[bad[0]]}")


def test_a_broken_c_requantisation_fails_the_checks(board, tiny_model_dir):
    """The checks above catch a C kernel whose requantisation is wrong: ewkern.c built with
    EWKERN_BROKEN (issue 17's broken multiply: the product kept to 32 bits) differs on the
    requantisation cases and on the golden vectors."""
    from edgewatch.board import rv32

    board.put(rv32.build_natmod(broken=True, runtime=board.runtime).read_bytes(), "ewkern_broken.mpy")
    try:
        cases = rv32_requant_cases()
        got = requant_on_board(board, "ewkern_broken", cases)
        want = bytes((reference_requant(*c) & 0xFF) for c in cases)
        assert len(got) == len(cases)
        assert sum(got[i] != want[i] for i in range(len(cases))) > len(cases) // 2
        x, y = golden_vectors(tiny_model_dir)
        got, used = rv32_outputs(board, tiny_model_dir / "model.ewb", x, "ewkern_broken")
        assert used == "ewkern_broken"
        with pytest.raises(AssertionError):
            assert_same(got, y, "RV32 golden vectors, broken C requantisation")
    finally:
        board.run("import os\nos.remove('ewkern_broken.mpy')")


# ---------------------------------------------------------------- memory

MEMORY = """
import gc
i = a2 = a3 = buf = 0
CALLS = 200
""" + LOAD + PREDICT_Q_GROWTH + """
gc.collect()
print(a1 - a0, a3 - a2, gc.mem_free())
"""


def test_engine_heap_from_mpy_at_c3_budget(rv32_runtime, tiny_model_dir):
    """On a fresh board: engine + model resident from .mpy, and predict_q allocates nothing."""
    from edgewatch.board import rv32 as rv32mod

    with rv32mod.Board.start(rv32_runtime) as b:
        b.put_firmware(ENGINE)
        b.put((tiny_model_dir / "model.ewb").read_bytes(), "model.ewb")
        resident, growth, free = map(int, b.run(MEMORY).split())
    assert rv32_runtime.heap == 81920
    assert growth == 0, f"predict_q allocated {growth} bytes over 200 calls on RV32"
    # 18 KB (was 16): the streaming step's code (engine._step, kernels.shift/same, ~0.7 KB)
    # and the default model's rings and last window (~1 KB) replace the windowed arena
    # (the app's figure with every module: tools/bench_rv32)
    assert 0 < resident <= 18 * 1024, resident
    assert free >= 48 * 1024, free


# ---------------------------------------------------------------- float path

QUANTISE = """
import array
import engine
m = engine.Model(open('model.ewb', 'rb').read())
n = m.window * m.channels
w = array.array('f', bytes(4 * n))
q = bytearray(n)


def grab(xq):  # what predict() hands to the int8 net: its quantised input
    q[:] = xq
    return m._out


m.predict_q = grab
with open('vals.bin', 'rb') as f:
    while f.readinto(w) == 4 * n:
        m.predict(w)
        print(q.hex(), end='')
print()
print(round(0.28039217 * (1.0 / 0.003921569)))
"""


def half_points(scale: float) -> np.ndarray:
    """float32 inputs whose float32 product with 1/scale sits at or next to k + 0.5."""
    inv = np.float32(1.0) / np.float32(scale)
    out = []
    for k in range(-135, 135):
        x = np.float32((k + 0.5) / float(inv))
        for _ in range(4):
            x = np.nextafter(x, np.float32(-np.inf))
        for _ in range(9):
            out.append(x)
            x = np.nextafter(x, np.float32(np.inf))
    return np.array(out, np.float32)


def test_half_point_quantisation_agrees_with_the_host(board, tiny_model_dir):
    """engine.predict() on the board and convert.quantize on the host: the same int8."""
    s_in, z_in = json.loads((tiny_model_dir / "convert.json").read_text())["input_quant"]
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    n = cfg["window"] * len(cfg["channels"])
    vals = half_points(s_in)
    vals = np.concatenate([vals, np.zeros(-len(vals) % n, np.float32)])
    want = quantize(vals, s_in, z_in)
    board.put(vals.tobytes(), "vals.bin")
    board.put((tiny_model_dir / "model.ewb").read_bytes(), "model.ewb")
    board.reset()
    out, example = board.run(QUANTISE).split()
    got = np.frombuffer(bytes.fromhex(out), np.int8)
    assert len(got) == len(vals)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{bad.size} of {len(vals)} half-point inputs quantise differently, "
                           f"first {vals[bad[0]]!r}: board {got[bad[0]]} host {want[bad[0]]}")
    f64 = np.clip(np.rint(vals.astype(np.float64) * (1.0 / s_in)) + z_in, -128, 127)
    assert (f64 != want).sum() > 50  # the inputs do sit where float64 rounds the other way
    # the example: single precision gives 72 (float64: 71), board and host alike
    assert int(example) == 72 == int(quantize([0.28039217], 0.003921569, 0)[0])
