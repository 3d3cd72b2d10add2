"""otaboot.py, the set-up's part of a model update over the air, inside MicroPython (the
firmware as deployed: fwrun.flash), on an App of its own (no config, no network): a model
is stored only once the set-up is through with it; a blob too big for the heap is known
by its identity all the same; a torn model.err is dropped."""

import zlib
from pathlib import Path

from edgewatch.board import fwrun
from edgewatch.core import mpy

GOLDEN = Path(mpy.ROOT) / "tests" / "golden" / "model.ewb"

HEAD = """
import app, os, sys


class Det:
    def set_model(self, m):
        pass


def mk():
    a = object.__new__(app.App)
    a.cfg = {'model_file': 'model.ewb', 'ota_key': None}
    a.new_file = 'model.new'
    a.log = lambda s: None
    a.det = Det()
    a.model = a.model_error = a.pending = a.blob_tag = None
    return a


def load(a):
    import otaboot
    r = otaboot.load(a)
    sys.modules.pop('otaboot', None)
    return r


def files():
    return sorted(n for n in os.listdir() if n.startswith('model.'))


def err():
    with open('model.err') as f:
        return f.read()
"""


def _run(folder, code, heap="512K"):
    out = mpy.run(code=HEAD + code, heap=heap, cwd=folder, **fwrun.FLASH_ENV)
    return [line for line in out.stdout.splitlines() if line.startswith("> ")]


def _other(blob: bytes) -> bytes:
    from edgewatch.training.export.blob import read, write

    spec = read(blob)
    spec.model_id = f"{int(spec.model_id, 16) ^ 0xFFFFFFFF:08x}"
    return write(spec)


def test_a_received_model_is_stored_only_once_the_set_up_is_through(tmp_path):
    """A model that verifies, then the set-up fails after it (the rest finds no room, or
    the board resets): the board must boot its old model again, not the new one into the
    same failure at every restart. It was renamed onto model.ewb as soon as it parsed."""
    folder = fwrun.flash(tmp_path / "b")
    old = GOLDEN.read_bytes()
    new = _other(old)
    (folder / "model.ewb").write_bytes(old)
    (folder / "model.new").write_bytes(new)
    out = _run(folder, """
a = mk()
print('>', load(a), a.restart, a.pending, a.model_id(), files())
# the set-up failed here (App() raised; main.py builds the app again, or a reset)
a = mk()
print('>', load(a), a.restart, a.model_id(), files())
a = mk()  # the reset after the refusal: the old model, and why
print('>', load(a), a.model_error)
print('>', app._REFUSED is not None and app._REFUSED[0], files())
""")
    assert out == [
        f"> True False 1 {_other_id(new)} ['model.err', 'model.ewb', 'model.new']",
        "> True True None ['model.err', 'model.ewb']",
        "> False model: the board did not start with it (out of memory or reset during "
        "its set-up)",
        f"> {len(new)} ['model.err', 'model.ewb']",
    ], out
    assert (folder / "model.ewb").read_bytes() == old

    # the same, but the set-up goes through: commit stores it and forgets every refusal
    (folder / "model.err").unlink()
    (folder / "model.new").write_bytes(new)
    out = _run(folder, """
a = mk()
load(a)
__import__('otaboot').commit(a)
print('>', a.restart, a.pending, a.model_id(), files(), 'otaboot' in sys.modules)
""")
    assert out == [f"> False None {_other_id(new)} ['model.ewb'] False"], out
    assert (folder / "model.ewb").read_bytes() == new


def _other_id(blob: bytes) -> str:
    from edgewatch.training.export.blob import read

    return read(blob).model_id


def test_a_blob_too_big_for_the_heap_is_refused_once(tmp_path):
    """A well-formed blob (its magic) that does not fit in memory at boot: refused with its
    identity in model.err, so its retained copy, delivered again at each connect, is dropped
    without a reset. It was refused with no identity ("0 0 -"): a reset at every connect."""
    folder = fwrun.flash(tmp_path / "b")
    big = b"EWMB" + bytes(range(256)) * 1200  # 307 KB: no room for it in a 256 KB heap
    (folder / "model.new").write_bytes(big)
    crc = zlib.crc32(big)
    out = _run(folder, """
a = mk()
print('>', load(a), a.restart)
print('>', err())
a = mk()
print('>', load(a), a.model_error)
with open('model.new', 'wb') as f:  # the retained copy, received again (in pieces)
    f.write(b'EWMB')
    for i in range(1200):
        f.write(bytes(range(256)))
a.t_status = 'status'
a.pending = (SIZE, CRC, None)
print('>', a.apply_blob(), files())
""".replace("SIZE", str(len(big))).replace("CRC", str(crc)), heap="256K")
    assert out == [
        "> True True",
        f"> {len(big)} {crc} {big[-8:].hex()} model: does not fit in memory",
        "> False model: does not fit in memory",
        "> False ['model.err']",
    ], out


def test_a_torn_model_err_is_dropped(tmp_path):
    folder = fwrun.flash(tmp_path / "b")
    (folder / "model.err").write_bytes(b"12 34")
    out = _run(folder, """
a = mk()
print('>', load(a), a.model_error, files(), app._REFUSED)
""")
    assert out == ["> False None [] None"], out
