"""The model blob contract (docs/model_blob.md): round trip, signing, and refusal of bad blobs.

The same cases run through the CPython reader (edgewatch.training.export.blob.read, which is
firmware/blob.py under CPython) and through the board engine inside the real
MicroPython unix port, which must refuse each with a BlobError naming the cause.
"""

from __future__ import annotations

import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from edgewatch.core import mpy
from edgewatch.training.export import blob, shiftcal
from edgewatch.training.export.bandcal import BandCal, MoveCal
from edgewatch.training.forecast.data import Scaler
from edgewatch.training.forecast.models import default_sizes

KEY = b"ota-test-key-not-a-secret"


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    raw = (tiny_model_dir / "model.ewb").read_bytes()
    tflite = (tiny_model_dir / "model.tflite").read_bytes()
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    return raw, tflite, cfg, Scaler.load(tiny_model_dir / "scaler.json")


def _recrc(body: bytes | bytearray) -> bytes:
    """An unsigned blob whose CRC is right again after a deliberate edit of its body."""
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def test_round_trip_write_read_write(model):
    raw, tflite, cfg, scaler = model
    det = blob.Detector(k=2.5, eps=0.02, sigma_window=12, stuck_samples=40)
    spec = blob.from_tflite(tflite, cfg["channels"], scaler.offset, scaler.scale, det, residual=True)
    written = blob.write(spec)
    back = blob.read(written)
    assert back == spec
    assert blob.write(back) == written
    assert back.names == ["temperature", "humidity"] and back.window == cfg["window"]
    assert (back.detector.sigma_window, back.detector.stuck_samples) == (12, 40)
    assert back.detector.k == 2.5 and abs(back.detector.eps - 0.02) < 1e-9
    assert np.allclose(back.offset, scaler.offset, rtol=1e-6)
    assert back.model_id == blob.model_id_of(tflite)
    assert back.residual is True
    kinds = [op.kind for op in back.ops]
    # one conv per dilation and the first block's 1x1 projection
    n_conv = len(default_sizes("tcn")["dilations"]) + 1
    assert kinds.count(blob.OP_CONV) == n_conv and blob.OP_FC in kinds and blob.OP_ADD in kinds


def test_host_ops_are_named_records_in_the_boards_field_order(model):
    """The host names each op's fields; the tuples stay the board's compact records."""
    raw, tflite, cfg, scaler = model
    spec = blob.read(raw)
    types = {blob.OP_CONV: blob.ConvOp, blob.OP_FC: blob.ConvOp, blob.OP_ADD: blob.AddOp,
             blob.OP_SLICE: blob.SliceOp}
    tensors = spec.tensors
    for op in spec.ops:
        assert type(op) is types[op.kind]
        assert op.dst < len(tensors) and op.src < len(tensors)
        if isinstance(op, blob.ConvOp):
            assert len(op.weights) == op.out_ch * op.kernel * op.in_ch
            assert len(op.bias) == len(op.multiplier) == len(op.shift) == op.out_ch
            assert tensors[op.dst][1] == op.out_ch
        elif isinstance(op, blob.AddOp):
            assert tensors[op.src] == tensors[op.src2] == tensors[op.dst] and op.left_shift == 20
    # positional access is the board's layout: the head is (kind, min, max, src, dst)
    first = spec.ops[0]
    assert tuple(first[:5]) == (first.kind, first.act_min, first.act_max, first.src, first.dst)
    assert blob.write(spec) == raw


def _fit_rows(n=300, seed=3):
    rng = np.random.default_rng(seed)
    return np.array([21.0, 45.0]) + np.cumsum(rng.normal(0, 0.02, (n, 2)), axis=0)


def test_shift_calibration_round_trips_and_bad_ones_are_refused(model):
    raw, tflite, cfg, scaler = model
    cal = shiftcal.calibrate(_fit_rows())
    spec = blob.from_tflite(tflite, cfg["channels"], scaler.offset, scaler.scale, residual=True)
    plain = blob.write(spec)
    spec.shift = cal
    written = blob.write(spec)
    assert len(written) == len(plain) + 6 + 4 * (2 + 2 + 4)  # window, factor, C+C+C*C floats
    back = blob.read(written)
    assert (back.shift.window, back.shift.factor) == (40, 3.0)
    for name in ("center", "spread", "matrix"):
        np.testing.assert_allclose(getattr(back.shift, name), getattr(cal, name), rtol=1e-6)
    assert blob.write(back) == written
    assert blob.read(plain).shift is None
    spec.still = 32
    assert blob.read(blob.write(spec)).still == 32 and blob.read(written).still == 0
    for bad, words in ((dict(spread=np.array([1.0, 0.0])), "value 3 is 0.0"),
                       (dict(factor=-1.0), "factor"),
                       (dict(matrix=np.full((2, 2), np.nan)), "value 4 is nan"),
                       (dict(center=np.array([np.inf, 1.0])), "value 0 is inf")):
        spec.shift = shiftcal.ShiftCal(**{**cal.__dict__, **bad})
        with pytest.raises(blob.BlobError, match=words):
            blob.read(blob.write(spec))


def test_band_calibration_out_of_range_is_refused(model):
    """A band section the board could not run is refused with one reason, by the parser the
    board runs: k the kernels cannot hold (under 16384), a reference or floor not finite."""
    raw, tflite, cfg, scaler = model
    spec = blob.from_tflite(tflite, cfg["channels"], scaler.offset, scaler.scale, residual=True)
    good = BandCal(6.0, 1.0, 12.0, 1 / 512, 30, [0.02, 0.03], [0.001, 0.001], [120, 120], 20)
    spec.band = good
    back = blob.read(blob.write(spec)).band
    assert (back.k, back.ref, back.burst, back.stuck) == (6.0, 1.0, 20, [120, 120])
    for bad in (dict(k=16384.0), dict(k=float("inf")), dict(ref=float("inf")), dict(ref=float("nan")),
                dict(floor=[0.001, float("inf")]), dict(floor=[float("nan"), 0.001]),
                dict(scale=[0.02, 0.0]), dict(h=float("inf"))):
        spec.band = BandCal(**{**good.__dict__, **bad})
        with pytest.raises(blob.BlobError, match="band calibration out of range"):
            blob.read(blob.write(spec))


def test_move_calibration_round_trips_beside_the_band(model):
    """The move rule's section (flag MOVE) follows the band's and reads back as written, in
    the board's units (Q10 limits, Q12 coefficients)."""
    raw, tflite, cfg, scaler = model
    spec = blob.from_tflite(tflite, cfg["channels"], scaler.offset, scaler.scale, residual=True)
    mv = MoveCal(60, np.array([[0.0, -0.4], [-2.5, 0.0]]), np.array([0.05, 0.2]))
    spec.band = BandCal(6.0, 1.0, 12.0, 1 / 512, 30, [0.02, 0.03], [0.001, 0.001], [120, 120],
                        20, move=mv)
    out = blob.write(spec)
    assert struct.unpack_from("<H", out, 6)[0] & blob.fw.FLAG_MOVE
    back = blob.read(out).band.move
    # in the board's units: coefficients to 1/4096, limits to 1/1024
    assert back.horizon == 60 and np.allclose(back.coef, mv.coef, atol=1 / 8192)
    assert np.allclose(back.limit, mv.limit, atol=1 / 2048)
    spec.band.move = None  # without it: no flag, 2 + 4 x 6 bytes fewer
    plain = blob.write(spec)
    assert not struct.unpack_from("<H", plain, 6)[0] & blob.fw.FLAG_MOVE
    assert len(out) - len(plain) == 2 + 4 * 6 and blob.read(plain).band.move is None
    # a horizon the board's 128-sample history cannot span: the blob is refused
    spec.band.move = mv._replace(horizon=128)
    with pytest.raises(blob.BlobError, match="move calibration horizon not in 2..127"):
        blob.read(blob.write(spec))


def test_convert_wrote_a_blob_the_reader_accepts(model):
    raw, tflite, cfg, _ = model
    spec = blob.read(raw)
    assert spec.model_id == blob.model_id_of(tflite)
    assert len(raw) <= 16 * 1024
    assert not blob.is_signed(raw)
    assert spec.shift is not None and spec.shift.window == shiftcal.WINDOW  # convert calibrates it
    assert spec.still >= 5  # and the whole-reading stuck limit


def test_sign_and_verify(model):
    raw = model[0]
    signed = blob.sign(raw, KEY)
    assert blob.is_signed(signed) and len(signed) == len(raw) + 32
    assert blob.read(signed, KEY).ops == blob.read(raw).ops
    assert blob.read(signed).model_id == blob.read(raw).model_id  # CRC alone still checks
    with pytest.raises(blob.BlobError, match="signature does not match"):
        blob.read(signed, b"another key")
    with pytest.raises(blob.BlobError, match="not signed"):
        blob.read(raw, KEY)
    with pytest.raises(ValueError):
        blob.sign(raw, b"")


def tamper_cases(raw: bytes) -> dict[str, tuple[bytes, bytes | None, str]]:
    """name -> (blob, key, expected words of the BlobError)."""
    body = bytearray(raw[:-4])
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x10
    version = bytearray(body)
    struct.pack_into("<H", version, 4, 2)
    flags = bytearray(body)
    flags[6] |= 0x80  # a flag bit no reader knows (bit 7): refused, never guessed at
    magic = bytearray(body)
    magic[0:4] = b"XXXX"
    bad_tensor = bytearray(body)
    # first op's source tensor: header, io quant, names, scaler, detector, tensor table, then op head
    spec = blob.read(raw)
    pos = 24 + 10 + sum(1 + len(n.encode()) for n in spec.names) + 8 * spec.channels + 12 \
        + 4 * len(spec.tensors)
    bad_tensor[pos + 3] = 250
    signed = blob.sign(raw, KEY)
    forged = bytearray(signed)
    forged[-1] ^= 0x01
    return {
        "flipped": (bytes(flipped), None, "CRC32 mismatch"),
        "truncated": (raw[:-7], None, "truncated"),
        "tiny": (raw[:10], None, "truncated"),
        "version": (_recrc(version), None, "version 2"),
        "flags": (_recrc(flags), None, "does not know"),
        "magic": (_recrc(magic), None, "bad magic"),
        "tensor": (_recrc(bad_tensor), None, "out of range"),
        "wrong_key": (signed, b"another key", "signature does not match"),
        "forged_mac": (bytes(forged), KEY, "signature does not match"),
        "unsigned_with_key": (raw, KEY, "not signed"),
    }


def test_tampered_blobs_refused_in_cpython(model):
    for name, (data, key, words) in tamper_cases(model[0]).items():
        with pytest.raises(blob.BlobError, match=words):
            blob.read(data, key)
        assert name


MP_CHECK = """
import engine
for name in NAMES:
    data = open(DIR + '/' + name + '.bin', 'rb').read()
    k = open(DIR + '/' + name + '.key', 'rb').read() or None
    try:
        engine.Model(data, k)
        print(name, 'ACCEPTED')
    except engine.BlobError as e:
        print(name, 'BlobError', e)
"""


@pytest.mark.parametrize("compiled", [False, True], ids=["source", "mpy"])
def test_tampered_blobs_refused_on_the_board(model, tmp_path, compiled):
    """From source and precompiled as deployed (.mpy: the parser is freed and re-imported per load)."""
    raw = model[0]
    extra = []
    if compiled:
        exe = Path(mpy.micropython_binary()).with_name("mpy-cross")
        (tmp_path / "mpy").mkdir()
        for name in ("engine", "blob", "plan", "plan_window", "kernels"):
            subprocess.run([str(exe), "-march=x64", "-o", str(tmp_path / "mpy" / f"{name}.mpy"),
                            str(mpy.FIRMWARE / f"{name}.py")], check=True, capture_output=True)
        extra = [tmp_path / "mpy"]
    cases = tamper_cases(raw)
    cases["good"] = (raw, None, "ACCEPTED")
    cases["good_signed"] = (blob.sign(raw, KEY), KEY, "ACCEPTED")
    for name, (data, key, _) in cases.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
        (tmp_path / f"{name}.key").write_bytes(key or b"")
    code = f"NAMES = {sorted(cases)!r}\nDIR = {str(tmp_path)!r}\n" + MP_CHECK
    if compiled:
        code += "import sys\nprint('parser', 'blob' in sys.modules)\n"
    out = mpy.run(code=code, heap="80K", extra_path=extra).stdout.splitlines()
    if compiled:
        assert out.pop() == "parser False"  # freed after each load
    got = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out}
    assert set(got) == set(cases)
    for name, (_, _, words) in cases.items():
        assert words in got[name], (name, got[name])
        if words != "ACCEPTED":
            assert got[name].startswith("BlobError"), (name, got[name])


FUZZ = """
import engine, gc
ok = bad = 0
m = None
for i in range(COUNT):
    m = None  # as the app does: the running model is freed before another is parsed
    gc.collect()
    data = open(DIR + '/f%d.bin' % i, 'rb').read()
    try:
        m = engine.Model(data)
        m.predict_q(bytearray(m.window * m.channels))
        ok += 1
    except engine.BlobError:
        bad += 1
print(ok, bad)
"""


def test_corrupted_but_crc_valid_blobs_never_crash_the_engine(model, tmp_path):
    """The viper loops have no bounds checks: every size they use must be checked at load.

    Blobs with random bytes changed after the header (CRC recomputed, so only the
    structural checks stand between them and the kernels) either load and run or
    are refused with a BlobError; the MicroPython process must never die.
    """
    raw = model[0]
    rng = np.random.default_rng(9)
    start = 4  # everything after the magic
    count = 300
    for i in range(count):
        body = bytearray(raw[:-4])
        for _ in range(int(rng.integers(1, 4))):
            body[int(rng.integers(start, len(body)))] = int(rng.integers(0, 256))
        (tmp_path / f"f{i}.bin").write_bytes(_recrc(body))
    code = f"COUNT={count}\nDIR={str(tmp_path)!r}\n" + FUZZ
    proc = mpy.run(code=code, heap="80K", check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    ok, refused = map(int, proc.stdout.split())
    assert ok + refused == count and refused > 0


def test_ota_signing_binds_version_and_device(model):
    raw = model[0]
    master = bytes(range(32))
    ka, kb = blob.derive_key(master, "gh-01"), blob.derive_key(master, "gh-02")
    assert len({ka, kb, blob.derive_key(master, "gh-01", 2), master}) == 4
    signed = blob.sign(raw, ka, 1234, 1)
    assert len(signed) == len(raw) + 8 + 32 and signed[-40:-32] == struct.pack("<IHH", 1234, 1, 0)
    assert blob.read(signed, ka).ops == blob.read(raw).ops
    for other in (kb, master):  # signed for gh-01: no other board's key opens it
        with pytest.raises(blob.BlobError, match="signature does not match"):
            blob.read(signed, other)
    older = bytearray(signed)  # the version is inside what the HMAC covers
    older[-40] -= 1
    with pytest.raises(blob.BlobError, match="signature does not match"):
        blob.read(bytes(older), ka)
    resigned = blob.sign(signed, ka, 1235, 1)  # re-signing replaces the trailer
    assert len(resigned) == len(signed) and blob.read(resigned, ka).model_id
    unsigned_ota = bytearray(raw[:-4])
    unsigned_ota[6] |= 0x10
    with pytest.raises(blob.BlobError, match="OTA version but no signature"):
        blob.read(_recrc(unsigned_ota))
