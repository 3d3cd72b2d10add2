"""The firmware's cost on the board's instruction set: RV32 MicroPython under QEMU (edgewatch/board/rv32.py).

    python -m tools.bench_rv32 [--model DIR ...] [--samples N] [--fast] [--json]

Counts are guest instructions read from the RISC-V `instret` counter
(`time.ticks_cpu()` of this build) under `qemu -icount shift=0`: exact and the
same on any host, unlike microseconds. Implied time assumes the ESP32-C3 at
160 MHz retiring one instruction per cycle (a lower bound: loads, branches
and flash cache misses cost more). Per model (the committed window-10 model of
tests/golden/, and the default TCN and `train --context long`'s, trained briefly here):

- inference: engine.Model.predict_q on the window the detector writes, each the last one
  moved by a sample, as the detector calls it (vouching for that: a streaming model
  computes the newest row of every layer), mean of repeats; checked: the same windows
  unvouched (the engine compares each with the last); replay: one window that is not
  (the first, or a history rewritten), which a streaming model replays row by row;
- detector step: Detector.step (normalise the window, inference, band, device and
  shift rules) on a replayed DHT22 reading; rules: the step less the inference;
- message: App.message (detk.put fills schema.head and _BAND with the numbers; the
  others through schema.telemetry with Detector.fixed); outbox append:
  Outbox.append of its two parts on the littlefs flash (a C block device, as the C3's
  flash driver), with the default 200-slot outbox, online: the records are sent and
  acknowledged between samples (outside the count), as App.run does with the link up.
  (Unacknowledged, the records pile up and every second one of ~290 B starts a new
  segment file, ~300k instructions on littlefs: an outage's cost, the append_full
  figures below, not a sample's online);
- message + append in C: what App.sample runs instead of those two on a board with the C
  module (rv32imc): _nums, Detector.fixed, Outbox.append_tel (one ewkern.tel writing the
  record, header and CRC into the segment; the littlefs write as append's);
- outbox over a run that wraps (median, mean, max instructions): append then peek + ack
  per record while online; 2 x capacity + 50 appends with no ack (an outage: the outbox
  fills and drops its oldest); then the acks that drain the backlog;
- full sample: app.App.sample (read, detector step, messages, outbox records, console
  line), online as the append above;
- full sample on three heap layouts (LAYOUT): the app set up after a buffer of 16, 128 or
  256 B, the same code, and their spread (firmware/app.py's _FRAMES hole keeps it small);
- bytes allocated per detector step / message+append / full sample (gc.mem_alloc
  with collection disabled around the measured call);
- heap: engine + model resident from .mpy; free after the app is set up, and free
  after N samples (collected as App.run does).

Xtensa (the ESP32) cannot be emulated here: its code is only compiled
(tests/test_engine_bitexact.py::test_firmware_compiles_for_the_esp32_emitter).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgewatch.board import rv32

ROOT = Path(__file__).resolve().parent.parent
# samples judged before counting: the model's window and then the history every rule reads
# (the move rule's 60-sample horizon, the shift rule's 40-sample window); with only window
# + 10 (26 for the default model) neither rule had run in the counted steps
WARM_MIN = 128
GOAL_SAMPLE = 160_000  # instructions per full sample step (about 1 ms at 160 MHz)
SLOTS = 200  # the default outbox (firmware/config.py)
GOAL_RULES = 60_000  # instructions per detector step beyond the inference

PHASES = """
from rv32app import *
import time
T = time.ticks_cpu
D = time.ticks_diff
# the harness's own globals and lists before the app: made after it, they would need
# blocks in the heap the app has split (a new name grows the globals dict), and every
# global the loop sets exists before it (growing the dict inside a measured phase would be
# charged to it)
names = ('read', 'step', 'message', 'append', 'tel', 'sample', 'none')
n = len(names)
ins = [0] * n
mem = [0] * n
t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = t8 = t9 = t10 = u1 = u2 = u3 = m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = m8 = 0
TEL = app._tel  # the C module's record writer (rv32imc boards), or None
v = al = msg = j = x = y = d = free_ready = ob = i = None
import binascii
a = make_app(slots=SLOTS)
if a.model_error:  # refused (e.g. no room left at set-up): no figure without the model
    raise RuntimeError(a.model_error)
import schema  # after the model, as App.setup imports it
for i in range(WARM):  # fill the detector's history (window, sigma window), no records yet
    a.det.step(a.reader.read(), 0)
gc.collect()
free_ready = gc.mem_free()
d = a.det
# the app's first sample before the measured ones: its head made, and the frames' hole
# (firmware/app.py, _FRAMES) freed, as on a board
a.sample(0)
while a.outbox.depth:
    a.outbox.peek()
    a.outbox.ack()
for i in range(K):
    gc.collect()
    if GCOFF:
        gc.disable()
    m0 = gc.mem_alloc()
    t0 = T()
    v = a.reader.read()
    t1 = T()
    m1 = gc.mem_alloc()
    u1 = T()  # gc.mem_alloc walks the heap: not part of the phase timed next
    al = d.step(v, 0)
    t2 = T()
    m2 = gc.mem_alloc()
    u2 = T()
    msg = a.message(a.outbox.next_seq, None, v, [], a.model_id())
    t3 = T()
    m3 = gc.mem_alloc()
    u3 = T()
    a.outbox.append(outbox.TELEMETRY, msg[0], msg[1])
    t4 = T()
    m4 = gc.mem_alloc()
    msg = al = None
    gc.enable()
    while a.outbox.depth:  # online, as App.run: each record sent (PUBACKed) before the next
        a.outbox.peek()
        a.outbox.ack()
    # message + append as App.sample does them on a board with the C module: one ewkern.tel
    gc.collect()
    if GCOFF:
        gc.disable()
    m7 = gc.mem_alloc()
    t9 = T()
    if TEL is not None and a._nums(a.outbox.next_seq, None, v, (), a.model_id()):
        a.outbox.append_tel(TEL, a._tt, len(a._th), app._MW, d.fixed())
    t10 = T()
    m8 = gc.mem_alloc()
    v = None
    gc.enable()
    while a.outbox.depth:
        a.outbox.peek()
        a.outbox.ack()
    gc.collect()
    if GCOFF:
        gc.disable()
    m5 = gc.mem_alloc()
    t5 = T()
    a.sample(0)
    t6 = T()
    m6 = gc.mem_alloc()
    t7 = T()
    t8 = T()
    gc.enable()
    while a.outbox.depth:
        a.outbox.peek()
        a.outbox.ack()
    for j, (x, y) in enumerate(((t0, t1), (u1, t2), (u2, t3), (u3, t4), (t9, t10), (t5, t6), (t7, t8))):
        ins[j] += D(y, x)
    for j, (x, y) in enumerate(((m0, m1), (m1, m2), (m2, m3), (m3, m4), (m7, m8), (m5, m6))):
        mem[j] += y - x
gc.collect()
print('ready', free_ready)
for j in range(n):
    print(names[j], ins[j] // K - ins[n - 1] // K, mem[j] // K)
"""

# The telemetry record of the model's app (for OUTBOX), in hex: a run of its own, since
# PHASES' code leaves a long-context model's app no room to spare
MSG = """
from rv32app import *
a = make_app(slots=SLOTS)
import binascii
import schema
d = a.det
for i in range(WARM):
    d.step(a.reader.read(), 0)
msg = schema.telemetry(a.device, a.outbox.next_seq, None, a.reader.read(), d.fixed(), [],
                       a.model_id())
msg = msg[0] + msg[1]
print('msg', end='')
for j in range(0, len(msg), 32):  # in small pieces: the heap has no big block to spare
    print('', binascii.hexlify(msg[j:j + 32]).decode(), end='')
print()
"""

# The outbox over a run that wraps, with the telemetry record PHASES built (MSG, hex), on an
# app without a model: the counts' arrays need room the model's app does not leave
OUTBOX = """
from rv32app import *
import binascii
import time
T = time.ticks_cpu
D = time.ticks_diff
from array import array
X1 = array('i', bytes(4 * WRAP))
X2 = array('i', bytes(4 * WRAP))
a = make_app(slots=SLOTS, model='none.ewb')
msg = binascii.unhexlify(MSG)
ob = a.outbox
t0 = t1 = t2 = t3 = m0 = 0
def stats(name, xs, k):  # the raw counts: median, mean and max are taken on the host
    print('obraw', name, end='')
    for i in range(k):
        print('', xs[i], end='')
    print()
while ob.depth:  # online: each record sent (PUBACKed) before the next sample
    ob.peek()
    ob.ack()
al = 0
for i in range(WRAP):
    gc.collect()
    gc.disable()
    m0 = gc.mem_alloc()
    t0 = T()
    ob.append(outbox.TELEMETRY, msg)
    t1 = T()
    al += gc.mem_alloc() - m0
    gc.enable()
    ob.peek()
    t2 = T()
    ob.ack()
    t3 = T()
    X1[i] = D(t1, t0)
    X2[i] = D(t3, t2)
stats('append_online', X1, WRAP)
stats('ack_online', X2, WRAP)
print('ob alloc', al // WRAP, 0, 0)
for i in range(WRAP):  # an outage: the outbox fills, wraps and drops its oldest
    t0 = T()
    ob.append(outbox.TELEMETRY, msg)
    X1[i] = D(T(), t0)
stats('append_full', X1, WRAP)
k = 0  # the link is back: the backlog drains
while ob.depth:
    ob.peek()
    t0 = T()
    ob.ack()
    X2[k] = D(T(), t0)
    k += 1
stats('ack_backlog', X2, k)
print('ob len', len(msg), ob.dropped, 0, 0)
"""

# The engine and the flash's model.ewb loaded on a collected heap (after `import gc`):
# a1 - a0 is what stays resident (tests/firmware/test_rv32_engine.py measures it too).
LOAD = """gc.collect()
a0 = gc.mem_alloc()
import engine
m = engine.Model(open('model.ewb', 'rb').read())
gc.collect()
a1 = gc.mem_alloc()
"""

INFER = """
import gc, time
""" + LOAD + """c = m.channels
n = m.window * c
buf = m._in  # where the detector writes the window (firmware/detk.py pre)
seq = bytearray(n + R * c)  # a series: each window is the last one moved by a sample
for i in range(len(seq)):
    seq[i] = (i * 37 + (i * i) // 7) & 0xFF
T = time.ticks_cpu
D = time.ticks_diff
m._copy(seq, buf, 0, n)
m.predict_q(buf)
tot = chk = t0 = t1 = 0
for i in range(R):  # as the detector calls it: it vouches that the window moved by a sample
    m._copy(seq, buf, (i + 1) * c, n)  # the next window, written as the detector does
    t0 = T()
    m.predict_q(buf, 1)
    tot += D(T(), t0)
m._copy(seq, buf, 0, n)
m.predict_q(buf)
for i in range(R):  # unvouched: the engine compares the window with the last one
    m._copy(seq, buf, (i + 1) * c, n)
    t0 = T()
    m.predict_q(buf)
    chk += D(T(), t0)
for i in range(R):  # the timer's own cost
    t0 = T()
    t1 = D(T(), t0)
    tot -= t1
    chk -= t1
# a window that is not the last one moved by a sample (the first, or a rewritten history)
m._copy(seq, buf, 0, n)
t0 = T()
m.predict_q(buf)
t1 = T()
print(a1 - a0, tot // R, m.model_id, m.window, D(t1, t0), getattr(m, 'streaming', False), chk // R)
"""

LONG = """
from rv32app import *
a = make_app(slots=16)
for i in range(STEPS):
    a.sample(0)
    gc.collect()
print(gc.mem_free())
"""


# The full sample again on other heap layouts: a buffer of PAD bytes made before the app's
# set-up moves where each of its blocks lands (and so where the holes fall), nothing else.
# The first figures of this bench (2026-11-27) moved by up to ~15 % that way, with the
# same code: the call frames MicroPython puts on the heap searched its holes (py/gc.c
# gc_alloc), which firmware/app.py's _FRAMES hole now spares them
LAYOUT = """
from rv32app import *
import time
T = time.ticks_cpu
D = time.ticks_diff
t0 = tot = i = 0
pad = bytearray(PAD)
a = make_app(slots=SLOTS)
if a.model_error:  # refused (e.g. no room left at set-up): no figure without the model
    raise RuntimeError(a.model_error)
for i in range(WARM):  # the detector's history filled, as PHASES
    a.det.step(a.reader.read(), 0)
ob = a.outbox
for i in range(K + 1):  # the app's first sample (it frees the frames' hole), then K counted
    while ob.depth:  # online, as App.run: each record sent before the next sample
        ob.peek()
        ob.ack()
    gc.collect()  # as App.run does after each sample
    t0 = T()
    a.sample(0)
    if i:
        tot += D(T(), t0)
print('layout', tot // K)
"""
PADS = (16, 128, 256)


def sample_layouts(board: rv32.Board, window: int, pads=PADS, k: int = 4,
                   slots: int = SLOTS) -> list[int]:
    """App.sample's instructions (mean of k) on the app set up after a buffer of each of
    `pads` bytes, its model's `window` filled first (the board's flash holding put_app's
    files)."""
    out = []
    for pad in pads:
        board.reset()
        text = board.run(f"PAD = {pad}\nK = {k}\nSLOTS = {slots}\nWARM = {window + 10}\n"
                         + LAYOUT)
        out.append(int(next(line.split()[1] for line in text.splitlines()
                            if line.startswith("layout "))))
    board.reset()
    return out


def _samples(n: int = 400):
    import numpy as np
    from edgewatch.training.forecast.data import load_occupancy, shared_data

    ser = load_occupancy(shared_data() / "occupancy" / "datatest.txt", ["temperature", "humidity"])
    return (np.round(ser.values[:n].astype(np.float64) * 10) / 10).astype(np.float32).tobytes()


def default_models(work: Path) -> list[Path]:
    """The committed window-10 model of tests/golden/ (windowed: its window is shorter than
    its receptive field) and, trained here briefly on the occupancy data (the weights do not
    change the counts), the default TCN and `train --context long`'s, both streamed."""
    from edgewatch.training.export.convert import quick_model
    from edgewatch.training.forecast.train import CONTEXTS

    out = [ROOT / "tests" / "golden" / "model.ewb"]
    for ctx in ("short", "long"):
        window, sizes = CONTEXTS[ctx]
        out.append(quick_model(work / ctx, rows=2000, epochs=1, window=window, sizes=sizes,
                               max_eval=50) / "model.ewb")
    return out


def _run_module(board: rv32.Board, name: str, code: str) -> str:
    """Run `code` on the board as an imported .mpy (`-march=rv32imc`), not compiled there:
    the compiler's own blocks would split the heap before the app is set up (as the
    harness rv32app.mpy, host/board/rv32.py's put_app)."""
    src = rv32.BUILD / "mpy" / f"{name}.py"
    if not src.exists() or src.read_text() != code:
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(code)
    board.put(board.runtime.compile(src, src.with_suffix(".mpy")).read_bytes(), f"{name}.mpy")
    return board.run(f"import {name}")


def bench_model(board: rv32.Board, blob: Path, k: int, steps: int) -> dict:
    board.reset()  # a fresh heap for the file transfer (the last model's app may fill it)
    board.put_app(blob.read_bytes(), _samples())
    board.reset()
    resident, infer, model_id, window, replay, streaming, checked = board.run(
        f"R = {max(k, 10)}\n" + INFER).split()
    board.reset()
    # the detector's history filled (the model's window, the sigma window) before counting
    # The phases' code compiled on the board, else as an imported .mpy (_run_module): the two
    # leave the app's set-up different holes, and on the C3's 80 KB it has few bytes to spare
    # (the app alone sets up; the harness's code is what it is short of). With collection
    # off first; when the phases' allocations, all held then, find no block on this model's
    # heap (the app collects as it goes): counts with collection on, no bytes.
    lines, allocs, err = [], False, None
    for gcoff in (1, 0):
        for compiled in (False, True):
            code = f"SLOTS = {SLOTS}\nWARM = {WARM_MIN + int(window)}\nK = {k}\nGCOFF = {gcoff}\n" + PHASES
            try:
                lines = (_run_module(board, "bench_phases", code) if compiled
                         else board.run(code)).splitlines()
                allocs = gcoff == 1
                break
            except rv32.BoardError as e:
                if "MemoryError" not in str(e) and "does not fit in memory" not in str(e):
                    raise
                err = e
                board.reset()  # and the flash as it was: the failed set-up may have left files
                board.run("import outbox_boot\noutbox_boot.erase('outbox.bin')")
                board.reset()
        if lines:
            break
    if not lines:
        raise err
    board.reset()
    # a record to replay (no counts): as an imported .mpy, so the compiler's blocks never
    # split the heap the app sets up in (compiled on the board it failed a make bench with
    # MemoryError in Outbox.__init__)
    msg = "".join(next(line.split()[1:] for line in _run_module(
        board, "bench_msg", f"SLOTS = {SLOTS}\nWARM = {int(window) + 10}\n" + MSG).splitlines()
        if line.startswith("msg ")))
    board.reset()
    lines += board.run(f"SLOTS = {SLOTS}\nWRAP = {2 * SLOTS + 50}\nMSG = {msg!r}\n"
                       + OUTBOX).splitlines()
    ph = {}
    ob = {}
    for line in lines:
        parts = line.split()
        if parts[0] == "msg":
            continue
        if parts[0] == "ob":
            ob[parts[1]] = [int(x) for x in parts[2:]]
        elif parts[0] == "obraw":
            xs = sorted(int(x) for x in parts[2:])
            ob[parts[1]] = [xs[len(xs) // 2], sum(xs) // len(xs), xs[-1], len(xs)]
        elif parts[0] == "ready":
            free_ready = int(parts[1])
        elif len(parts) == 3:
            ph[parts[0]] = (int(parts[1]), int(parts[2]))
    board.reset()
    layouts = sample_layouts(board, int(window), k=k)
    free_after = int(board.run(f"STEPS = {steps}\n" + LONG).split()[-1])
    board.run("import outbox_boot\noutbox_boot.erase('outbox.bin')")
    sample = ph["sample"][0]
    return {
        "model": (str(blob.relative_to(ROOT)) if blob.is_relative_to(ROOT)
                  else f"train --context {blob.parent.name}" if blob.parent.name in ("short", "long")
                  else str(blob)),
        "model_id": model_id, "window": int(window),
        "streaming": streaming == "True",
        "instr_inference": int(infer),
        # the window compared with the last one by the engine (a caller that does not vouch)
        "instr_inference_checked": int(checked),
        # a window that is not the last one moved by a sample: replayed row by row (streaming)
        "instr_inference_replay": int(replay),
        "instr_detector_step": ph["step"][0],
        # the rules (window, band, device and shift rules): the step less the inference
        "instr_rules": ph["step"][0] - int(infer),
        "instr_read": ph["read"][0],
        "instr_message": ph["message"][0],
        "instr_outbox_append": ph["append"][0],
        # both in one C call (ewkern.tel, Outbox.append_tel), as App.sample writes a record on
        # an rv32imc board with the C module; None without it (the ESP32's path is the two above)
        "instr_message_append_c": ph["tel"][0] if ph["tel"][0] > 0 else None,
        **{f"instr_outbox_{name}_{stat}": ob[name][i] for name in
           ("append_online", "ack_online", "append_full", "ack_backlog")
           for i, stat in enumerate(("median", "mean", "max"))},
        "outbox_record_B": ob["len"][0],
        "alloc_outbox_append_online_B": ob["alloc"][0],
        "outbox_runs": f"{ob['append_online'][3]} appends+acks online, then {ob['append_full'][3]} "
                       f"appends into a {SLOTS}-record outbox ({ob['len'][1]} dropped), "
                       f"{ob['ack_backlog'][3]} acks draining it",
        "instr_sample": sample,
        # how the harness's phases ran (see above): compiled on the board ("source") or
        # imported as .mpy, collection off or on. The two ways leave the app's set-up other
        # holes: before firmware/app.py's _FRAMES hole the same firmware counted 153,651
        # (source) and 172,079 (mpy) instructions a sample, the frames' search of the holes
        "phases_run": ("mpy" if compiled else "source") + (" gc-off" if gcoff else " gc-on"),
        # the full sample on the app set up after a buffer of each of PADS bytes (LAYOUT):
        # where the heap's holes fall, with the same code
        "instr_sample_layouts": "/".join(str(x) for x in layouts) + f" (pads {PADS} B)",
        "layout_spread_pct": round(100 * (max(layouts) - min(layouts)) / min(layouts), 2),
        "us_sample_at_160MHz": round(sample / rv32.CLOCK_HZ * 1e6, 1),
        "us_inference_at_160MHz": round(int(infer) / rv32.CLOCK_HZ * 1e6, 1),
        # the step allocates nothing, so nothing can start a collection inside it: exact either
        # way; None: not measurable with collection off on this model's heap (see above)
        "alloc_detector_step_B": ph["step"][1],
        "alloc_message_append_B": ph["message"][1] + ph["append"][1] if allocs else None,
        "alloc_sample_B": ph["sample"][1] if allocs else None,
        "heap_engine_model_mpy_B": int(resident),
        "heap_free_app_ready_B": free_ready,
        f"heap_free_after_{steps}_samples_B": free_after,
        "goal_sample_le_160000": sample <= GOAL_SAMPLE,
        "goal_step_alloc_0": ph["step"][1] == 0,
        "goal_rules_le_60000": ph["step"][0] - int(infer) <= GOAL_RULES,
    }


def bench(fast: bool = False, models: list[Path] | None = None, k: int | None = None,
          steps: int | None = None) -> dict:
    """Figures per model (see the module docstring) and the build's facts."""
    t0 = time.monotonic()
    rt = rv32.build()
    k = k or (3 if fast else 8)
    steps = steps or (30 if fast else 1000)
    rows = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for blob in models or default_models(Path(tmp)):
            # a board of its own per model: its flash as fresh as the first model's (the
            # files a model's runs leave change littlefs's and so the heap's layout, and
            # the app's set-up has few bytes to spare)
            with rv32.Board.start(rt) as board:
                rows.append(bench_model(board, blob, k, steps))
    info = rv32.build_info()
    return {"records": rows, "micropython": rt.version, "heap": rt.heap,
            "build_seconds": info.get("build_seconds"), "seconds": round(time.monotonic() - t0, 1),
            "isa": "RV32IMC (ESP32-C3), qemu -icount shift=0; Xtensa (ESP32) not emulated"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_rv32", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", help="model folder or .ewb (repeatable)")
    p.add_argument("--samples", type=int, default=None, help="samples for the heap figure (1000)")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    models = None
    if args.model:
        models = []
        for m in args.model:
            path = Path(m)
            path = path / "model.ewb" if path.is_dir() else path
            if not path.is_file():
                print(f"bench_rv32: no model blob at {path}", file=sys.stderr)
                return 2
            models.append(path.resolve())
    try:
        res = bench(args.fast, models, steps=args.samples)
    except rv32.BuildError as e:
        print(f"bench_rv32: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"MicroPython {res['micropython']} RV32, heap {res['heap']} B, {res['isa']}")
    for r in res["records"]:
        for key, v in r.items():
            print(f"{key:32s} {v}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
