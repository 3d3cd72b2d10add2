"""tools/bench_rv32.py: the board's instruction counts, as `make bench` reports them."""

from __future__ import annotations

from edgewatch.board import rv32
from edgewatch.core import mpy

from tools import bench, bench_rv32

GOLDEN = mpy.ROOT / "tests" / "golden" / "model.ewb"


def test_bench_rv32_figures_and_their_section(rv32_runtime):
    r = bench_rv32.bench(fast=True, models=[GOLDEN], k=2, steps=10)
    (row,) = r["records"]
    assert r["heap"] == 81920 and r["micropython"].startswith("1.29.0")
    # the committed model's inference (windowed): ~60k instructions on RV32 with the C
    # kernels the bench deploys (firmware/native/ewkern.c), ~240k with the viper ones
    assert 20_000 < row["instr_inference"] < 5_000_000
    # the detector step holds the inference; the full sample holds the step
    assert row["instr_inference"] < row["instr_detector_step"] < row["instr_sample"]
    # (to the rounding: the bench divides by 160e6 and multiplies by 1e6, so a count ending in
    # ...5 may round either way: 445,784 gives 2786.1 there, 2786.2 as / 160)
    assert abs(row["us_sample_at_160MHz"] - row["instr_sample"] / 160) <= 0.05 + 1e-9
    # (18 KB as tests/firmware/test_rv32_engine.py, was 17, 16: the streaming step's code,
    # ~0.7 KB, then the faster kernels (one ring-move call, the row's input sum, ~0.3 KB)
    # are resident for every model; the free heap below is the budget that matters)
    assert 0 < row["heap_engine_model_mpy_B"] <= 18 * 1024
    assert row["heap_free_after_10_samples_B"] >= 8 * 1024
    for key in ("alloc_detector_step_B", "alloc_message_append_B", "alloc_sample_B"):
        assert row[key] >= 0
    md = "\n".join(bench.rv32_section({"result": r, "seconds": r["seconds"]}))
    assert "| instr_inference | " in md and "Nothing here ran on a physical board" in md


def test_instruction_counts_are_deterministic(rv32_runtime):
    """The same work on two fresh boards: the same count, to the instruction."""
    counts = []
    for _ in range(2):
        with rv32.Board.start(rv32_runtime) as b:
            b.put_firmware(["blob", "plan", "plan_window", "kernels", "engine"])
            b.put(GOLDEN.read_bytes(), "model.ewb")
            counts.append(b.instructions(
                "m.predict_q(buf)", repeat=3,
                setup="import engine\nm = engine.Model(open('model.ewb', 'rb').read())\n"
                      "buf = bytearray(m.window * m.channels)\nm.predict_q(buf)"))
    assert counts[0] == counts[1] > 100_000, counts
