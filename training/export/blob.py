"""Write, read and sign the firmware model blob (format: docs/model_blob.md).

The writer walks an int8 TFLite flatbuffer and folds its graph into the
board engine's four ops (CONV, ADD, FC, SLICE): PAD feeding a convolution
becomes that convolution's left padding (padding with the input zero point adds
exactly zero to TFLite's integer sum), RESHAPE/EXPAND_DIMS/SQUEEZE are views.
Requantisation multipliers and shifts are computed here, in double precision,
exactly as TensorFlow Lite Micro's Prepare step does, so the board needs no
floating point in its inner loops.

Reading goes through `firmware/blob.py`, the parser the board itself runs, so
the format has a single reader for both runtimes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from edgewatch.core import firmware
from edgewatch.training.export.bandcal import BandCal, MoveCal
from edgewatch.training.export.shiftcal import ShiftCal

fw = firmware.load("blob")
fw_shift = firmware.load("shift")  # the board's own parser of the shift section
fw_res = firmware.load("residual")  # the board's own parser of the band section
BlobError = fw.BlobError
# The most channels the board's detector takes (firmware/detset.py checked(): its kernels
# flag channel j in bits j, 8 + j and 16 + j of one word).
MAX_CHANNELS = 8
VERSION = fw.VERSION
OP_CONV, OP_ADD, OP_FC, OP_SLICE = fw.OP_CONV, fw.OP_ADD, fw.OP_FC, fw.OP_SLICE


# ------------------------------------------------------------------ the ops
# The board reads each op as one compact tuple (firmware/blob.py); on the host the same
# tuples carry names. Field order is the record order of docs/model_blob.md.

class ConvOp(NamedTuple):
    """CONV (1-D, causal, dilated) or FC: int8 weights, int32 biases, per-channel requantisation."""

    kind: int  # OP_CONV or OP_FC
    act_min: int
    act_max: int
    src: int  # input tensor
    dst: int  # output tensor
    kernel: int
    dilation: int
    pad_left: int
    in_ch: int
    out_ch: int
    in_zp: int
    out_zp: int
    weights: bytes  # out_ch x kernel x in_ch int8
    bias: list[int]
    multiplier: list[int]
    shift: list[int]


class AddOp(NamedTuple):
    """Elementwise ADD of two tensors of one shape, TFLite's int8 arithmetic."""

    kind: int  # OP_ADD
    act_min: int
    act_max: int
    src: int
    dst: int
    src2: int
    left_shift: int
    zp1: int
    zp2: int
    zp_out: int
    m1: int
    m2: int
    m_out: int
    s1: int
    s2: int
    s_out: int


class SliceOp(NamedTuple):
    """A contiguous block of the input tensor's elements."""

    kind: int  # OP_SLICE
    act_min: int
    act_max: int
    src: int
    dst: int
    first: int
    count: int


Op = ConvOp | AddOp | SliceOp
HEAD_LEN = 5  # kind, act_min, act_max, src, dst: the record head (fw.OP_HEAD)


class UnsupportedModel(ValueError):
    """The TFLite graph uses an op or a shape the board engine does not run."""


@dataclass
class Detector:
    """Detector parameters stored with the model (the seed's is_anomalie rule + fault rules)."""

    k: float = 3.0
    eps: float = 0.01
    sigma_window: int = 10
    stuck_samples: int = 30


@dataclass
class BlobSpec:
    """Everything a blob holds, in CPython types; `write` and `read` round-trip it."""

    model_id: str
    window: int
    names: list[str]
    offset: list[float]
    scale: list[float]
    detector: Detector
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    tensors: list[tuple[int, int]]
    ops: list[Op] = field(default_factory=list)
    residual: bool = False  # prediction = newest input sample + dequantised output
    shift: ShiftCal | None = None  # sustained-shift calibration (flag SHIFT), physical units
    still: int = 0  # whole reading repeated this many times = stuck (flag STILL); 0: no rule
    band: BandCal | None = None  # the residual band's calibration (flag BAND)

    @property
    def channels(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------- arithmetic

def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real = m * 2**(shift-31), m in [2**30, 2**31)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    # TfLiteRound rounds half away from zero; q > 0 here.
    q_fixed = int(math.floor(q * (1 << 31) + 0.5))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def _f32(x) -> float:
    return float(np.float32(x))


def activation_range(act: int, scale: float, zp: int) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized for int8 (0 none, 1 RELU, 2 RELU_N1_TO_1, 3 RELU6)."""
    def q(f):
        # float32 division and TfLiteRound (half away from zero), as in TFLite
        v = float(np.float32(f) / np.float32(scale))
        return zp + int(math.copysign(math.floor(abs(v) + 0.5), v))
    if act == 0:
        return -128, 127
    if act == 1:
        return max(-128, q(0.0)), 127
    if act == 2:
        return max(-128, q(-1.0)), min(127, q(1.0))
    if act == 3:
        return max(-128, q(0.0)), min(127, q(6.0))
    raise UnsupportedModel(f"fused activation {act} is not supported by the board engine")


# ------------------------------------------------------------ tflite -> spec

def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    return schema, flatbuffer_utils


def model_id_of(tflite: bytes) -> str:
    """8 hex chars naming a model: the start of the SHA-256 of its .tflite bytes."""
    return hashlib.sha256(tflite).hexdigest()[:8]


class _Graph:
    """One TFLite subgraph being folded into the board engine's tensors and ops."""

    def __init__(self, tflite: bytes):
        self.schema, fbu = _schema()
        self.model = fbu.read_model_from_bytearray(bytearray(tflite))
        if len(self.model.subgraphs) != 1:
            raise UnsupportedModel("the board engine runs single-subgraph models only")
        self.g = self.model.subgraphs[0]
        self.tens = self.g.tensors
        self.opnames = {v: k for k, v in vars(self.schema.BuiltinOperator).items() if not k.startswith("_")}
        # alias: tflite tensor -> (engine tensor id, pad_left) ; engine tensors are (rows, cols)
        self.etensors: list[tuple[int, int]] = []
        self.alias: dict[int, tuple[int, int]] = {}
        self.eqp: dict[int, tuple[float, int]] = {}
        self.ops: list[Op] = []

    def const(self, i):
        schema, tens = self.schema, self.tens
        buf = self.model.buffers[tens[i].buffer].data
        if buf is None or len(buf) == 0:
            return None
        dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
                 schema.TensorType.INT64: np.int64}.get(tens[i].type)
        if dtype is None:
            raise UnsupportedModel(f"tensor {i} has a type the board engine does not use")
        return np.frombuffer(bytes(buf), dtype=dtype).reshape(tuple(tens[i].shape))

    def qp(self, i):
        q = self.tens[i].quantization
        if q is None or q.scale is None or self.tens[i].type != self.schema.TensorType.INT8:
            raise UnsupportedModel(f"tensor {self.tens[i].name!r} is not int8-quantised (full-integer model needed)")
        return _f32(q.scale[0]), int(q.zeroPoint[0])

    def rc(self, i):
        shape = [int(d) for d in self.tens[i].shape]
        if len(shape) == 0 or shape[0] != 1:
            raise UnsupportedModel(f"tensor {self.tens[i].name!r} has shape {shape}: convert with batch size 1")
        f = shape[-1] if len(shape) > 1 else 1
        return int(np.prod(shape)) // f, f

    def new_tensor(self, i):
        self.etensors.append(self.rc(i))
        self.alias[i] = (len(self.etensors) - 1, 0)
        self.eqp[len(self.etensors) - 1] = self.qp(i)
        return len(self.etensors) - 1

    def src(self, i, allow_pad=False):
        if i not in self.alias:
            raise UnsupportedModel(f"tensor {self.tens[i].name!r} is used before it is computed")
        e, pad = self.alias[i]
        if pad and not allow_pad:
            raise UnsupportedModel("PAD feeds an op other than a convolution")
        return e, pad


def _view(gr: _Graph, n: int, ins, outs, opt) -> None:
    """RESHAPE, EXPAND_DIMS, SQUEEZE: the same engine tensor under another shape."""
    gr.alias[outs[0]] = gr.src(ins[0], allow_pad=True)


def _pad(gr: _Graph, n: int, ins, outs, opt) -> None:
    """PAD becomes the next convolution's left padding (the input zero point adds exactly zero)."""
    e, pad0 = gr.src(ins[0])
    p = gr.const(ins[1]).reshape(-1, 2)
    # only the time axis (second to last) may be padded, and only on the left
    if p.shape[0] < 2 or p[:, 1].any() or p[:-2, 0].any() or p[-1, 0]:
        raise UnsupportedModel(f"op {n}: PAD other than causal left padding of time")
    if gr.qp(ins[0]) != gr.qp(outs[0]):
        raise UnsupportedModel(f"op {n}: PAD changes quantisation")
    gr.alias[outs[0]] = (e, pad0 + int(p[-2, 0]))


def _weighted(gr: _Graph, n: int, ins, outs, opt, conv: bool) -> ConvOp:
    """CONV_2D (1-D, stride 1, VALID after the folded PAD) or FULLY_CONNECTED."""
    tens = gr.tens
    e_in, pad = gr.src(ins[0], allow_pad=conv)
    w = gr.const(ins[1])
    b = gr.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    wq = tens[ins[1]].quantization
    wscales = [_f32(s) for s in wq.scale]
    if any(int(z) != 0 for z in wq.zeroPoint):
        raise UnsupportedModel(f"op {n}: weights are not symmetric int8")
    s_in, zp_in = gr.eqp[e_in]
    e_out = gr.new_tensor(outs[0])
    s_out, zp_out = gr.eqp[e_out]
    if conv:
        if opt.strideW != 1 or opt.strideH != 1 or opt.padding != gr.schema.Padding.VALID:
            raise UnsupportedModel(f"op {n}: only stride 1 VALID convolutions (causal padding)")
        out_ch, kh, ks, in_ch = w.shape
        if kh != 1 or int(tens[ins[0]].shape[1]) != 1:
            raise UnsupportedModel(f"op {n}: only 1-D (height 1) convolutions")
        dil = int(opt.dilationWFactor)
        kind = OP_CONV
        # per-channel: double(input) * double(filter[c]) / double(output)
        reals = [float(s_in) * ws / float(s_out) for ws in
                 (wscales if len(wscales) > 1 else wscales * out_ch)]
    else:
        out_ch, in_ch = w.shape
        ks, dil, pad = 1, 1, 0
        kind = OP_FC
        if len(wscales) > 1:
            reals = [float(s_in) * ws / float(s_out) for ws in wscales]
        else:  # GetQuantizedConvolutionMultipler: float product, then double
            reals = [float(np.float32(s_in) * np.float32(wscales[0])) / float(s_out)] * out_ch
    mq = [quantize_multiplier(r) for r in reals]
    lo, hi = activation_range(int(opt.fusedActivationFunction), s_out, zp_out)
    bias = [int(v) for v in (b.reshape(-1) if b is not None else np.zeros(out_ch, np.int32))]
    return ConvOp(kind, lo, hi, e_in, e_out, int(ks), dil, int(pad), int(in_ch), int(out_ch),
                  zp_in, zp_out, w.astype(np.int8).tobytes(), bias,
                  [m for m, _ in mq], [s for _, s in mq])


def _conv(gr: _Graph, n: int, ins, outs, opt) -> ConvOp:
    return _weighted(gr, n, ins, outs, opt, conv=True)


def _fc(gr: _Graph, n: int, ins, outs, opt) -> ConvOp:
    return _weighted(gr, n, ins, outs, opt, conv=False)


def _add(gr: _Graph, n: int, ins, outs, opt) -> AddOp:
    """ADD of two same-shape tensors, with TFLM's int8 rescaling (left shift 20)."""
    e1, _ = gr.src(ins[0])
    e2, _ = gr.src(ins[1])
    if gr.etensors[e1] != gr.etensors[e2]:
        raise UnsupportedModel(f"op {n}: ADD with broadcasting is not supported")
    (s1, z1), (s2, z2) = gr.eqp[e1], gr.eqp[e2]
    e_out = gr.new_tensor(outs[0])
    so, zo = gr.eqp[e_out]
    left = 20  # TFLM uses 20 for int8
    twice_max = 2 * float(max(np.float32(s1), np.float32(s2)))
    m1 = quantize_multiplier(float(s1) / twice_max)
    m2 = quantize_multiplier(float(s2) / twice_max)
    mo = quantize_multiplier(twice_max / ((1 << left) * float(so)))
    lo, hi = activation_range(int(opt.fusedActivationFunction), so, zo)
    return AddOp(OP_ADD, lo, hi, e1, e_out, e2, left, z1, z2, zo,
                 m1[0], m2[0], mo[0], m1[1], m2[1], mo[1])


def _slice(gr: _Graph, n: int, ins, outs, opt) -> SliceOp:
    """STRIDED_SLICE that selects one contiguous block of elements."""
    e_in, _ = gr.src(ins[0])
    shape = tuple(int(d) for d in gr.tens[ins[0]].shape)
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    sel = _strided_slice(idx, gr.const(ins[1]), gr.const(ins[2]), gr.const(ins[3]), opt).reshape(-1)
    first, count = int(sel[0]), int(sel.size)
    if not np.array_equal(sel, np.arange(first, first + count)):
        raise UnsupportedModel(f"op {n}: STRIDED_SLICE must select a contiguous block")
    if gr.qp(ins[0]) != gr.qp(outs[0]):
        raise UnsupportedModel(f"op {n}: STRIDED_SLICE changes quantisation")
    e_out = gr.new_tensor(outs[0])
    return SliceOp(OP_SLICE, -128, 127, e_in, e_out, first, count)


# TFLite op name -> its folding; a fold returns the engine op it emits, or None (a view)
_FOLDS = {"RESHAPE": _view, "EXPAND_DIMS": _view, "SQUEEZE": _view, "PAD": _pad,
          "CONV_2D": _conv, "FULLY_CONNECTED": _fc, "ADD": _add, "STRIDED_SLICE": _slice}


def from_tflite(tflite: bytes, names: list[str], offset, scale,
                detector: Detector | None = None, residual: bool = False) -> BlobSpec:
    """Fold an int8, batch-1 TFLite model into a BlobSpec for the board engine.

    `residual`: the TFLite net predicts the change from the newest sample,
    which the engine adds back in float.
    """
    gr = _Graph(tflite)
    g = gr.g
    in_idx, out_idx = int(g.inputs[0]), int(g.outputs[0])
    window, channels = gr.rc(in_idx)
    if channels != len(names):
        raise UnsupportedModel(f"model takes {channels} channels but {len(names)} names were given")
    gr.etensors.append((window, channels))
    gr.alias[in_idx] = (0, 0)
    gr.eqp[0] = gr.qp(in_idx)
    for n, op in enumerate(g.operators):
        oc = gr.model.operatorCodes[op.opcodeIndex]
        name = gr.opnames.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), str(oc.builtinCode))
        fold = _FOLDS.get(name)
        if fold is None:
            raise UnsupportedModel(
                f"op {n} is {name}, which the board engine does not run "
                "(it runs the TCN op set: CONV_2D, ADD, PAD, FULLY_CONNECTED, STRIDED_SLICE, RESHAPE)")
        emitted = fold(gr, n, [int(x) for x in op.inputs], [int(x) for x in op.outputs], op.builtinOptions)
        if emitted is not None:
            gr.ops.append(emitted)
    ops = gr.ops
    if not ops or out_idx not in gr.alias or gr.alias[out_idx][0] != ops[-1].dst:
        raise UnsupportedModel("the graph output is not produced by its last op")
    s_out, zp_out = gr.eqp[ops[-1].dst]
    s_in, zp_in = gr.eqp[0]
    d = detector or Detector(sigma_window=window)
    # stored as float32: keep exactly what the board will read, so specs round-trip
    det = Detector(_f32(d.k), _f32(d.eps), int(d.sigma_window), int(d.stuck_samples))
    return BlobSpec(model_id=model_id_of(tflite), window=window, names=list(names),
                    offset=[_f32(v) for v in offset], scale=[_f32(v) for v in scale],
                    detector=det, in_scale=s_in, in_zp=zp_in, out_scale=s_out, out_zp=zp_out,
                    tensors=gr.etensors, ops=ops, residual=bool(residual))


def _strided_slice(x, begin, end, strides, opt):
    """Apply a TFLite STRIDED_SLICE (masks included) to numpy array x with TensorFlow itself."""
    import tensorflow as tf
    return tf.strided_slice(
        x, begin.tolist(), end.tolist(), strides.tolist(), begin_mask=opt.beginMask,
        end_mask=opt.endMask, ellipsis_mask=opt.ellipsisMask, new_axis_mask=opt.newAxisMask,
        shrink_axis_mask=opt.shrinkAxisMask).numpy()


# ------------------------------------------------------------------- writing

def write(spec: BlobSpec) -> bytes:
    """Serialise a BlobSpec into an unsigned blob (CRC32 trailer)."""
    if len(spec.ops) > 255 or len(spec.tensors) > 255:
        raise UnsupportedModel("more than 255 ops or tensors")
    parts = [b"", struct.pack(fw.IOQ, spec.in_scale, spec.in_zp, spec.out_scale, spec.out_zp)]
    for name in spec.names:
        raw = name.encode()
        if len(raw) > 255:
            raise ValueError(f"channel name too long: {name!r}")
        parts.append(struct.pack("<B", len(raw)) + raw)
    c = spec.channels
    parts.append(struct.pack(f"<{c}f{c}f", *spec.offset, *spec.scale))
    d = spec.detector
    parts.append(struct.pack(fw.DETECTOR, d.k, d.eps, d.sigma_window, d.stuck_samples))
    parts += [struct.pack("<HH", *t) for t in spec.tensors]
    for op in spec.ops:
        parts.append(struct.pack(fw.OP_HEAD, *op[:HEAD_LEN]))
        if isinstance(op, ConvOp):
            oc = op.out_ch
            parts.append(struct.pack(fw.CONV_TAIL, *op[HEAD_LEN:op._fields.index("weights")]))
            parts.append(bytes(op.weights))
            parts.append(struct.pack(f"<{oc}i{oc}i{oc}b", *op.bias, *op.multiplier, *op.shift))
        elif isinstance(op, AddOp):
            parts.append(struct.pack(fw.ADD_TAIL, *op[HEAD_LEN:]))
        elif isinstance(op, SliceOp):
            parts.append(struct.pack(fw.SLICE_TAIL, *op[HEAD_LEN:]))
        else:
            raise ValueError(f"unknown op {op!r}")
    flags = fw.FLAG_RESIDUAL if spec.residual else 0
    if spec.shift is not None:
        parts.append(shift_section(spec.shift, c))
        flags |= fw.FLAG_SHIFT
    if spec.still:
        parts.append(struct.pack("<H", spec.still))
        flags |= fw.FLAG_STILL
    if spec.band is not None:
        parts.append(band_section(spec.band, c))
        flags |= fw.FLAG_BAND
        if spec.band.move is not None:
            parts.append(move_section(spec.band.move, c))
            flags |= fw.FLAG_MOVE
    length = fw.HEADER_LEN + sum(len(p) for p in parts) + fw.CRC_LEN
    parts[0] = struct.pack(fw.HEADER, fw.MAGIC, VERSION, flags, length, bytes.fromhex(spec.model_id),
                           spec.window, c, len(spec.tensors), len(spec.ops))
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def shift_section(sh: ShiftCal, channels: int) -> bytes:
    """The blob's shift section (docs/model_blob.md), as firmware/shift.py parses it."""
    flat = [*np.ravel(sh.center), *np.ravel(sh.spread), *np.ravel(sh.matrix)]
    c = channels
    if len(flat) != 2 * c + c * c:
        raise ValueError(f"shift calibration has {len(flat)} values, {c} channels need {2 * c + c * c}")
    return struct.pack("<Hf", sh.window, sh.factor) + struct.pack(f"<{len(flat)}f", *flat)


def band_section(b: BandCal, channels: int) -> bytes:
    """The blob's band section (docs/model_blob.md), as firmware/residual.py parses it."""
    c = channels
    return (struct.pack(fw_res.HEAD, b.k, b.ref, b.h, b.alpha, b.reanchor, b.burst)
            + struct.pack(f"<{c}f{c}f{c}H", *b.scale, *b.floor, *b.stuck))


def move_section(m, channels: int) -> bytes:
    """The blob's move section (docs/model_blob.md) as the board's own words, which
    firmware/moverule.py put copies as they are: horizon u16, limit u32[C] (Q10,
    normalised units, 1 ... 2**24 - 1), coef u32[C×C] (Q12 within +-32767, row-major, -4096
    on the diagonal: the rule sums -net; biased by 2**29, as detk.py stores a word that can
    be negative)."""
    c = channels
    coef = np.asarray(m.coef, np.float64).reshape(-1)
    lim = np.asarray(m.limit, np.float64).reshape(-1)
    if len(coef) != c * c or len(lim) != c:
        raise ValueError(f"move calibration has {len(coef)} + {len(lim)} values, {c} channels "
                         f"need {c * c} + {c}")
    q = np.clip(np.round(np.nan_to_num(coef) * 4096), -32767, 32767).astype(int).reshape(c, c)
    np.fill_diagonal(q, -4096)
    ql = np.clip(np.round(np.nan_to_num(lim, nan=0.0) * 1024), 1, (1 << 24) - 1).astype(int)
    return struct.pack(f"<H{c}I{c * c}I", m.horizon, *ql.tolist(), *(q.ravel() + (1 << 29)).tolist())


def _move_cal(raw, c: int) -> MoveCal:
    w = struct.unpack(f"<H{c + c * c}I", bytes(raw))
    coef = (np.array(w[1 + c:], np.float64) - (1 << 29)).reshape(c, c) / 4096
    np.fill_diagonal(coef, 0.0)
    return MoveCal(w[0], coef, np.array(w[1:1 + c], np.float64) / 1024)


def derive_key(master: bytes, device: str, key_version: int = 1) -> bytes:
    """The OTA key of one board: HMAC-SHA256(fleet master key, "edgewatch-ota/<version>/<device>").

    Only this derived key goes on the board (config.json ``ota_key``), so a blob signed
    for one board is refused by every other, and a stolen board can sign for itself only.
    ``key_version`` goes into the derivation and the blob, so the master key can be rotated.
    """
    if not master:
        raise ValueError("an empty master key derives nothing")
    return hmac.new(master, f"edgewatch-ota/{key_version}/{device}".encode(), "sha256").digest()


def sign(blob: bytes, key: bytes | str, ota_version: int | None = None,
         key_version: int = 1) -> bytes:
    """Sign a blob: set the signed flag, fix length and CRC, append HMAC-SHA256(key).

    With ``ota_version`` (a number the board must see grow: it refuses anything not
    newer than what it accepted) the OTA flag is set and ``version u32, key_version u16,
    0 u16`` go between the CRC and the HMAC, inside what the HMAC covers.
    """
    if not key:
        raise ValueError("an empty signing key signs nothing")
    body_len = fw.check(blob)  # refuses a corrupted blob rather than signing it
    ota = b""
    flags = struct.unpack_from("<H", blob, 6)[0] & ~fw.FLAG_OTA | fw.FLAG_SIGNED
    if ota_version is not None:
        if not 0 < ota_version < 2**32 or not 0 < key_version < 2**16:
            raise ValueError(f"OTA version {ota_version} / key version {key_version} out of range")
        ota = struct.pack("<IHH", ota_version, key_version, 0)
        flags |= fw.FLAG_OTA
    body = bytearray(blob[:body_len])
    struct.pack_into("<HI", body, 6, flags, body_len + fw.CRC_LEN + len(ota) + fw.MAC_LEN)
    signed = bytes(body) + struct.pack("<I", zlib.crc32(body)) + ota
    return signed + fw.hmac_sha256(key, signed)


def read(blob: bytes, key: bytes | str | None = None) -> BlobSpec:
    """Check and parse a blob with the firmware's own parser; raises BlobError."""
    b = fw.Blob(bytes(blob), key)
    ops: list[Op] = []
    for raw in b.ops:  # the board's compact tuples, named
        kind = raw[0]
        if kind in (OP_CONV, OP_FC):
            head = ConvOp(*raw)
            n = head.out_ch
            ops.append(head._replace(weights=bytes(head.weights),
                                     bias=list(struct.unpack(f"<{n}i", head.bias)),
                                     multiplier=list(struct.unpack(f"<{n}i", head.multiplier)),
                                     shift=list(struct.unpack(f"<{n}b", head.shift))))
        elif kind == OP_ADD:
            ops.append(AddOp(*raw))
        elif kind == OP_SLICE:
            ops.append(SliceOp(*raw))
        else:
            raise BlobError(f"blob malformed: unknown op kind {kind}")
    return BlobSpec(model_id=b.model_id, window=b.window, names=b.names, offset=b.offset,
                    scale=b.scale, detector=Detector(b.k, b.eps, b.sigma_window, b.stuck_samples),
                    in_scale=b.in_scale, in_zp=b.in_zp, out_scale=b.out_scale, out_zp=b.out_zp,
                    tensors=[tuple(t) for t in b.tensors], ops=ops, residual=b.residual,
                    shift=None if b.shift is None else _shift_cal(b.shift, b.channels),
                    still=b.still, band=None if b.band is None else _band_cal(b.band, b.channels,
                                                                              b.move))


def _shift_cal(raw, c: int) -> ShiftCal:
    try:
        w, f, center, spread, matrix = fw_shift.parse(raw, c)
    except ValueError as exc:
        raise BlobError(f"blob malformed: {exc}") from None
    return ShiftCal(w, f, np.array(center, np.float64), np.array(spread, np.float64),
                    np.array(matrix, np.float64).reshape(c, c))


def _band_cal(raw, c: int, move=None) -> BandCal:
    try:
        v = fw_res.parse(raw, c)
    except ValueError as exc:
        raise BlobError(f"blob malformed: {exc}") from None
    m = None if move is None else _move_cal(move, c)
    return BandCal(v[0], v[1], v[2], v[3], v[4], list(v[5]), list(v[6]), list(v[7]), v[8],
                   move=m)


def ota_version(blob: bytes) -> int | None:
    """The OTA version a signed blob carries (see sign), or None; read without the key, only
    to choose the next version: the board checks the HMAC."""
    if len(blob) < 16 + fw.MAC_LEN or not struct.unpack_from("<H", blob, 6)[0] & fw.FLAG_OTA:
        return None
    return struct.unpack_from("<I", blob, len(blob) - fw.MAC_LEN - 8)[0]


def is_signed(blob: bytes) -> bool:
    """Whether the blob carries an HMAC trailer (flag bit 0)."""
    return len(blob) >= 8 and bool(struct.unpack_from("<H", blob, 6)[0] & fw.FLAG_SIGNED)
