"""A model update over the air on the board's instruction set, at the C3's 80 KB heap
(RV32 MicroPython under QEMU, the real app.App; edgewatch.board.rv32's harness, no network:
the received file is written as the link writes it, through a 256-byte buffer).

The board resets for a received model and its set-up verifies and loads it (App.apply_blob,
otaboot.py). Swapped in the running heap, the default model did not fit after a window-10
one had run (MemoryError "allocating 1216 bytes"), and other swaps raised out of apply_blob
or left the board with no model (2026-11-27). A refused blob costs a second reset, after
which the old model runs and the status says why; the same blob again is dropped without
one. Each step runs as an imported .mpy (code compiled on the board would split the heap).
"""

from __future__ import annotations

import pytest
from edgewatch.board import rv32 as rv32mod
from edgewatch.core import mpy

from tests.firmware.test_rv32_sample import samples
from tools.bench_rv32 import _run_module

HEAD = """
from rv32app import *


class Link:  # the harness has no network: the status is published nowhere
    def publish(self, *a, **k):
        pass


def mk():
    a = make_app(slots=40)
    a.link = Link()
    a.started = a.last_status = 0
    a.t_status = 'status'
    return a


def run(a, n):
    for i in range(n):
        a.sample(0)
        gc.collect()
        ob = a.outbox
        while ob.depth:
            ob.peek()
            ob.ack()
"""

RECEIVE = HEAD + """
a = mk()
run(a, 150)
from binascii import crc32
buf = bytearray(256)
n = crc = 0
with open('ota.src', 'rb') as src:
    with open('model.new', 'wb') as dst:
        while True:
            k = src.readinto(buf)
            if not k:
                break
            dst.write(memoryview(buf)[:k])
            crc = crc32(memoryview(buf)[:k], crc)
            n += k
buf = None
a.pending = (n, crc, None)
print('reset', a.apply_blob())
"""

BOOT = HEAD + """
a = mk()
print('model', a.model_id(), a.restart)
print('error', a.model_error)
if not a.restart:
    run(a, 150)
    gc.collect()
    print('free', gc.mem_free())
"""


@pytest.fixture(scope="module")
def ota_board(rv32):
    rv32.reset()
    rv32.put_app((mpy.ROOT / "tests" / "golden" / "model.ewb").read_bytes(), samples().tobytes())
    return rv32


def _lines(out: str) -> dict:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()
            if line.split(" ", 1)[0] in ("reset", "model", "error", "free")}


def _receive(board: rv32mod.Board, blob: bytes) -> str:
    board.reset()  # a fresh heap for the transfer
    board.put(blob, "ota.src")
    board.reset()
    return _lines(_run_module(board, "otarecv", RECEIVE))["reset"]


def _boot(board: rv32mod.Board) -> dict:
    board.reset()
    return _lines(_run_module(board, "otaboot_run", BOOT))


def test_models_swap_over_the_air_on_the_c3_heap(ota_board, tiny_model_dir):
    from edgewatch.training.export.blob import read

    golden = (mpy.ROOT / "tests" / "golden" / "model.ewb").read_bytes()
    default = (tiny_model_dir / "model.ewb").read_bytes()
    gid, did = read(golden).model_id, read(default).model_id
    # window-10 model running -> the default model: a reset, then it runs with room left
    assert _receive(ota_board, default) == "True"
    got = _boot(ota_board)
    assert got["model"] == f"{did} False" and got["error"] == "None", got
    assert int(got["free"]) >= 8 * 1024, got
    # a corrupted blob: a reset, refused there, another reset, the default model again
    bad = bytearray(golden)
    bad[len(bad) // 2] ^= 1
    assert _receive(ota_board, bytes(bad)) == "True"
    got = _boot(ota_board)
    assert got["model"] == "None True", got  # refused: the app is built again
    got = _boot(ota_board)
    assert got["model"] == f"{did} False", got
    assert got["error"].startswith("model: blob corrupted"), got
    assert _receive(ota_board, bytes(bad)) == "False"  # the same blob again: no reset
    # the default model running -> the window-10 one
    assert _receive(ota_board, golden) == "True"
    got = _boot(ota_board)
    assert got["model"] == f"{gid} False" and got["error"] == "None", got
    ota_board.reset()
