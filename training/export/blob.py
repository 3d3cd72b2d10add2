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
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from edgewatch.core import firmware
from edgewatch.training.export.shiftcal import ShiftCal

fw = firmware.load("blob")
fw_shift = firmware.load("shift")  # the board's own parser of the shift section
BlobError = fw.BlobError
VERSION = fw.VERSION
OP_CONV, OP_ADD, OP_FC, OP_SLICE = fw.OP_CONV, fw.OP_ADD, fw.OP_FC, fw.OP_SLICE


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
    ops: list[tuple] = field(default_factory=list)
    residual: bool = False  # prediction = newest input sample + dequantised output
    shift: ShiftCal | None = None  # sustained-shift calibration (flag SHIFT), physical units
    still: int = 0  # whole reading repeated this many times = stuck (flag STILL); 0: no rule

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


def from_tflite(tflite: bytes, names: list[str], offset, scale,
                detector: Detector | None = None, residual: bool = False) -> BlobSpec:
    """Fold an int8, batch-1 TFLite model into a BlobSpec for the board engine.

    `residual`: the TFLite net predicts the change from the newest sample,
    which the engine adds back in float.
    """
    schema, fbu = _schema()
    model = fbu.read_model_from_bytearray(bytearray(tflite))
    if len(model.subgraphs) != 1:
        raise UnsupportedModel("the board engine runs single-subgraph models only")
    g = model.subgraphs[0]
    opnames = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    tens = g.tensors

    def const(i):
        buf = model.buffers[tens[i].buffer].data
        if buf is None or len(buf) == 0:
            return None
        dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
                 schema.TensorType.INT64: np.int64}.get(tens[i].type)
        if dtype is None:
            raise UnsupportedModel(f"tensor {i} has a type the board engine does not use")
        return np.frombuffer(bytes(buf), dtype=dtype).reshape(tuple(tens[i].shape))

    def qp(i):
        q = tens[i].quantization
        if q is None or q.scale is None or tens[i].type != schema.TensorType.INT8:
            raise UnsupportedModel(f"tensor {tens[i].name!r} is not int8-quantised (full-integer model needed)")
        return _f32(q.scale[0]), int(q.zeroPoint[0])

    def rc(i):
        shape = [int(d) for d in tens[i].shape]
        if len(shape) == 0 or shape[0] != 1:
            raise UnsupportedModel(f"tensor {tens[i].name!r} has shape {shape}: convert with batch size 1")
        f = shape[-1] if len(shape) > 1 else 1
        return int(np.prod(shape)) // f, f

    in_idx, out_idx = int(g.inputs[0]), int(g.outputs[0])
    window, channels = rc(in_idx)
    if channels != len(names):
        raise UnsupportedModel(f"model takes {channels} channels but {len(names)} names were given")
    # alias: tflite tensor -> (engine tensor id, pad_left) ; engine tensors are (rows, cols)
    etensors: list[tuple[int, int]] = [(window, channels)]
    alias: dict[int, tuple[int, int]] = {in_idx: (0, 0)}
    eqp: dict[int, tuple[float, int]] = {0: qp(in_idx)}
    ops: list[tuple] = []

    def new_tensor(i):
        etensors.append(rc(i))
        alias[i] = (len(etensors) - 1, 0)
        eqp[len(etensors) - 1] = qp(i)
        return len(etensors) - 1

    def src(i, allow_pad=False):
        if i not in alias:
            raise UnsupportedModel(f"tensor {tens[i].name!r} is used before it is computed")
        e, pad = alias[i]
        if pad and not allow_pad:
            raise UnsupportedModel("PAD feeds an op other than a convolution")
        return e, pad

    for n, op in enumerate(g.operators):
        oc = model.operatorCodes[op.opcodeIndex]
        name = opnames.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), str(oc.builtinCode))
        ins, outs = [int(x) for x in op.inputs], [int(x) for x in op.outputs]
        opt = op.builtinOptions
        if name in ("RESHAPE", "EXPAND_DIMS", "SQUEEZE"):
            alias[outs[0]] = src(ins[0], allow_pad=True)
            continue
        if name == "PAD":
            e, pad0 = src(ins[0])
            p = const(ins[1]).reshape(-1, 2)
            # only the time axis (second to last) may be padded, and only on the left
            if p.shape[0] < 2 or p[:, 1].any() or p[:-2, 0].any() or p[-1, 0]:
                raise UnsupportedModel(f"op {n}: PAD other than causal left padding of time")
            if qp(ins[0]) != qp(outs[0]):
                raise UnsupportedModel(f"op {n}: PAD changes quantisation")
            alias[outs[0]] = (e, pad0 + int(p[-2, 0]))
            continue
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            e_in, pad = src(ins[0], allow_pad=(name == "CONV_2D"))
            w = const(ins[1])
            b = const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            wq = tens[ins[1]].quantization
            wscales = [_f32(s) for s in wq.scale]
            if any(int(z) != 0 for z in wq.zeroPoint):
                raise UnsupportedModel(f"op {n}: weights are not symmetric int8")
            s_in, zp_in = eqp[e_in]
            e_out = new_tensor(outs[0])
            s_out, zp_out = eqp[e_out]
            if name == "CONV_2D":
                if opt.strideW != 1 or opt.strideH != 1 or opt.padding != schema.Padding.VALID:
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
            ops.append((kind, lo, hi, e_in, e_out, int(ks), dil, int(pad), int(in_ch), int(out_ch),
                        zp_in, zp_out, w.astype(np.int8).tobytes(), bias,
                        [m for m, _ in mq], [s for _, s in mq]))
            continue
        if name == "ADD":
            e1, _ = src(ins[0])
            e2, _ = src(ins[1])
            if etensors[e1] != etensors[e2]:
                raise UnsupportedModel(f"op {n}: ADD with broadcasting is not supported")
            (s1, z1), (s2, z2) = eqp[e1], eqp[e2]
            e_out = new_tensor(outs[0])
            so, zo = eqp[e_out]
            left = 20  # TFLM uses 20 for int8
            twice_max = 2 * float(max(np.float32(s1), np.float32(s2)))
            m1 = quantize_multiplier(float(s1) / twice_max)
            m2 = quantize_multiplier(float(s2) / twice_max)
            mo = quantize_multiplier(twice_max / ((1 << left) * float(so)))
            lo, hi = activation_range(int(opt.fusedActivationFunction), so, zo)
            ops.append((OP_ADD, lo, hi, e1, e_out, e2, left, z1, z2, zo,
                        m1[0], m2[0], mo[0], m1[1], m2[1], mo[1]))
            continue
        if name == "STRIDED_SLICE":
            e_in, _ = src(ins[0])
            shape = tuple(int(d) for d in tens[ins[0]].shape)
            idx = np.arange(int(np.prod(shape))).reshape(shape)
            sel = _strided_slice(idx, const(ins[1]), const(ins[2]), const(ins[3]), opt).reshape(-1)
            first, count = int(sel[0]), int(sel.size)
            if not np.array_equal(sel, np.arange(first, first + count)):
                raise UnsupportedModel(f"op {n}: STRIDED_SLICE must select a contiguous block")
            if qp(ins[0]) != qp(outs[0]):
                raise UnsupportedModel(f"op {n}: STRIDED_SLICE changes quantisation")
            e_out = new_tensor(outs[0])
            ops.append((OP_SLICE, -128, 127, e_in, e_out, first, count))
            continue
        raise UnsupportedModel(
            f"op {n} is {name}, which the board engine does not run "
            "(it runs the TCN op set: CONV_2D, ADD, PAD, FULLY_CONNECTED, STRIDED_SLICE, RESHAPE)")
    if not ops or out_idx not in alias or alias[out_idx][0] != ops[-1][4]:
        raise UnsupportedModel("the graph output is not produced by its last op")
    s_out, zp_out = eqp[ops[-1][4]]
    s_in, zp_in = eqp[0]
    d = detector or Detector(sigma_window=window)
    # stored as float32: keep exactly what the board will read, so specs round-trip
    det = Detector(_f32(d.k), _f32(d.eps), int(d.sigma_window), int(d.stuck_samples))
    return BlobSpec(model_id=model_id_of(tflite), window=window, names=list(names),
                    offset=[_f32(v) for v in offset], scale=[_f32(v) for v in scale],
                    detector=det, in_scale=s_in, in_zp=zp_in, out_scale=s_out, out_zp=zp_out,
                    tensors=etensors, ops=ops, residual=bool(residual))


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
        parts.append(struct.pack(fw.OP_HEAD, *op[:5]))
        kind = op[0]
        if kind in (OP_CONV, OP_FC):
            oc = op[9]
            parts.append(struct.pack(fw.CONV_TAIL, *op[5:12]))
            parts.append(bytes(op[12]))
            parts.append(struct.pack(f"<{oc}i{oc}i{oc}b", *op[13], *op[14], *op[15]))
        elif kind == OP_ADD:
            parts.append(struct.pack(fw.ADD_TAIL, *op[5:16]))
        elif kind == OP_SLICE:
            parts.append(struct.pack(fw.SLICE_TAIL, *op[5:7]))
        else:
            raise ValueError(f"unknown op kind {kind}")
    flags = fw.FLAG_RESIDUAL if spec.residual else 0
    if spec.shift is not None:
        parts.append(shift_section(spec.shift, c))
        flags |= fw.FLAG_SHIFT
    if spec.still:
        parts.append(struct.pack("<H", spec.still))
        flags |= fw.FLAG_STILL
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


def sign(blob: bytes, key: bytes | str) -> bytes:
    """Sign a blob for OTA: set the signed flag, fix length and CRC, append HMAC-SHA256(key)."""
    if not key:
        raise ValueError("an empty signing key signs nothing")
    body_len = fw.check(blob)  # refuses a corrupted blob rather than signing it
    flags = struct.unpack_from("<H", blob, 6)[0] | fw.FLAG_SIGNED
    body = bytearray(blob[:body_len])
    struct.pack_into("<HI", body, 6, flags, body_len + fw.CRC_LEN + fw.MAC_LEN)
    signed = bytes(body) + struct.pack("<I", zlib.crc32(body))
    return signed + fw.hmac_sha256(key, signed)


def read(blob: bytes, key: bytes | str | None = None) -> BlobSpec:
    """Check and parse a blob with the firmware's own parser; raises BlobError."""
    b = fw.Blob(bytes(blob), key)
    ops = []
    for op in b.ops:
        if op[0] in (OP_CONV, OP_FC):
            n = op[9]
            op = op[:12] + (bytes(op[12]), list(struct.unpack(f"<{n}i", op[13])),
                            list(struct.unpack(f"<{n}i", op[14])), list(struct.unpack(f"<{n}b", op[15])))
        ops.append(tuple(op))
    return BlobSpec(model_id=b.model_id, window=b.window, names=b.names, offset=b.offset,
                    scale=b.scale, detector=Detector(b.k, b.eps, b.sigma_window, b.stuck_samples),
                    in_scale=b.in_scale, in_zp=b.in_zp, out_scale=b.out_scale, out_zp=b.out_zp,
                    tensors=[tuple(t) for t in b.tensors], ops=ops, residual=b.residual,
                    shift=None if b.shift is None else _shift_cal(b.shift, b.channels),
                    still=b.still)


def _shift_cal(raw, c: int) -> ShiftCal:
    try:
        w, f, center, spread, matrix = fw_shift.parse(raw, c)
    except ValueError as exc:
        raise BlobError(f"blob malformed: {exc}") from None
    return ShiftCal(w, f, np.array(center, np.float64), np.array(spread, np.float64),
                    np.array(matrix, np.float64).reshape(c, c))


def is_signed(blob: bytes) -> bool:
    """Whether the blob carries an HMAC trailer (flag bit 0)."""
    return len(blob) >= 8 and bool(struct.unpack_from("<H", blob, 6)[0] & fw.FLAG_SIGNED)
