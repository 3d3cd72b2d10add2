# int8 inference of an edgewatch model blob on the board (docs/model_blob.md).
#
# Model(blob, key=None) checks the blob (CRC32, and HMAC-SHA256 when a key is
# given) and refuses a bad one with BlobError before anything is used. All
# buffers are allocated here, once: predict_q() allocates nothing; predict()
# only the floats it is given and returns. The int8 results equal TensorFlow
# Lite Micro's bit for bit (tests/firmware/test_engine_bitexact.py).
#
# Only the time steps the output depends on are computed: with the default
# causal TCN that is about a quarter of the convolution work.
import array
import struct
import sys

from blob import OP_ADD, OP_CONV, OP_FC, BlobError

try:
    import kernels as _fast  # SyntaxError on ports without the native emitter
except (ImportError, SyntaxError, ValueError):
    _fast = None

_WORD = 0xFFFFFFFF


def default_kernels():
    """viper kernels where the emitter exists, else the same code as bytecode."""
    if _fast is not None:
        return _fast
    import kernels_plain

    return kernels_plain


def _free_parser():
    # On the board the parser is precompiled (.mpy, edgewatch.board.deploy): loading it
    # again for the next model compiles nothing, so free its ~9 KB until then.
    # From source (the host tests) it stays: recompiling needs a ~40 KB peak.
    b = sys.modules.get("blob")
    if b is not None and getattr(b, "__file__", "").endswith(".mpy"):
        sys.modules.pop("blob", None)
        # and empty it: the GC scans conservatively, and one stale word pointing at
        # the module would otherwise keep all its code (seen on RV32: 7.6 KB kept)
        b.__dict__.clear()


_free_parser()  # a board may run for weeks before its first model arrives


def _parse(raw, key):
    import blob

    blob.BlobError = BlobError  # a re-imported parser raises the class callers catch
    try:
        return blob.Blob(raw, key)
    finally:
        _free_parser()


def _block(head, rows, chan=None, w=None):
    # A kernel's parameter block (array of 32-bit two's-complement words),
    # filled in place: no intermediate lists on a heap that may be nearly full.
    # A conv's bias takes its input offset in (TFLM's optimised kernels do the
    # same): sum((x + off) * w) = sum((x ^ 0x80) * w) + (off - 128) * sum(w), so
    # the kernel's multiply-accumulate needs no offset (see kernels.conv).
    n = len(head) + len(rows) + (3 * len(chan[0]) // 4 if chan else 0)
    p = array.array("I", range(n))
    i = 0
    for v in head:
        p[i] = v & _WORD
        i += 1
    for v in rows:
        p[i] = v
        i += 1
    if chan:
        bias, mult, shift = chan
        per = len(w) // len(shift)
        off = head[7] - 128
        for c in range(len(shift)):
            sw = 0
            for j in range(c * per, c * per + per):
                sw += (w[j] ^ 0x80) - 0x80
            # (not blob.word: holding a function of the parser would keep it in memory)
            p[i] = (struct.unpack_from("<i", bias, 4 * c)[0] + off * sw) & _WORD
            p[i + 1] = struct.unpack_from("<i", mult, 4 * c)[0]
            p[i + 2] = ((shift[c] ^ 0x80) - 0x80) & _WORD
            i += 3
    return p


def _arena(b):
    # One buffer for all activations; a tensor reuses the bytes of tensors whose
    # last reader has run (first fit over [producer, last reader] intervals).
    ops = b.ops
    life = [[-1, -1] for _ in b.tensors]
    for j in range(len(ops)):
        op = ops[j]
        life[op[4]][0] = j
        for t in (op[3], op[5]) if op[0] == OP_ADD else (op[3],):
            life[t][1] = j
    life[0][0] = -1
    life[ops[-1][4]][1] = len(ops)
    place = []
    top = 0
    for t in range(len(b.tensors)):
        size = b.tensors[t][0] * b.tensors[t][1]
        s0, e0 = life[t]
        off = 0
        moved = True
        while moved:
            moved = False
            for u in range(t):
                s1, e1 = life[u]
                o1 = place[u]
                size1 = b.tensors[u][0] * b.tensors[u][1]
                if s0 <= e1 and s1 <= e0 and off < o1 + size1 and o1 < off + size:
                    off = o1 + size1
                    moved = True
        place.append(off)
        top = max(top, off + size)
    mv = memoryview(bytearray(top))
    return [mv[place[t]:place[t] + b.tensors[t][0] * b.tensors[t][1]] for t in range(len(place))]


def _needed_rows(b):
    # Walk the graph backwards: which rows (time steps) of each tensor does the
    # output depend on? A causal conv reads rows t - pad + k*dilation.
    need = [None] * len(b.tensors)
    last = b.ops[-1][4]
    need[last] = set(range(b.tensors[last][0]))
    for op in reversed(b.ops):
        kind, src, dst = op[0], op[3], op[4]
        rows = need[dst]
        if not rows:
            continue
        got = need[src] if need[src] is not None else set()
        if kind == OP_CONV:
            for t in rows:
                for k in range(op[5]):
                    ti = t + k * op[6] - op[7]
                    if ti >= 0:
                        got.add(ti)
        elif kind == OP_ADD:
            got |= rows
            other = need[op[5]] if need[op[5]] is not None else set()
            need[op[5]] = other | rows
        elif kind == OP_FC:
            got |= set(range(b.tensors[src][0]))
        else:  # SLICE: element range -> rows
            cols = b.tensors[src][1]
            got |= set(range(op[5] // cols, (op[5] + op[6] - 1) // cols + 1))
        need[src] = got
    return need


class Model:
    """A loaded int8 model: predict the next sample of every channel from a window."""

    def __init__(self, blob, key=None, kernels=None):
        k = kernels or default_kernels()  # first: the fallback compiles source, a heap's largest need
        b = _parse(blob, key)
        self.window = b.window
        self.channels = b.channels
        self.names = b.names
        self.model_id = b.model_id
        self.k = b.k
        self.eps = b.eps
        self.sigma_window = b.sigma_window
        self.stuck_samples = b.stuck_samples
        self.offset = b.offset
        self.scale = b.scale
        self.in_scale = b.in_scale
        self.in_zp = b.in_zp
        self.out_scale = b.out_scale
        self.out_zp = b.out_zp
        self.residual = b.residual
        self.shift = b.shift  # raw sustained-shift section (firmware/shift.py), or None
        self.band = b.band  # the residual band's calibration (firmware/blob.py), or None
        self.still = b.still  # whole reading unchanged this many samples: stuck (0: no such rule)
        self._inv_in = 1.0 / b.in_scale
        self.kernels = k
        self._copy = k.copy
        bufs = _arena(b)
        need = _needed_rows(b)
        plan = []
        for op in b.ops:
            kind, amin, amax, src, dst = op[:5]
            rows = sorted(need[dst] or ())
            if not rows:
                continue  # nothing downstream reads this op
            if kind == OP_FC:
                rows = [0]  # one row of in_ch = all input elements, whatever the shapes
            if kind == OP_CONV or kind == OP_FC:
                p = _block((len(rows), 0, op[8], op[9], op[5], op[6], op[7], -op[10], op[11],
                            amin, amax), rows, op[13:16], op[12])
                plan.append((k.conv, p, bufs[src], bufs[dst], op[12]))
            elif kind == OP_ADD:
                if not 9 <= op[6] <= 22:  # kernels.add's exact input rescale needs this (TFLM: 20)
                    raise BlobError("blob malformed: ADD left shift %d outside 9..22" % op[6])
                p = _block((len(rows), b.tensors[dst][1], -op[7], -op[8], op[9], op[6],
                            op[10], op[13], op[11], op[14], op[12], op[15], amin, amax), rows)
                plan.append((k.add, p, bufs[src], bufs[op[5]], bufs[dst]))
            else:
                plan.append((k.copy, bufs[src], bufs[dst], op[5], op[6]))
        self._plan = plan
        self._in = bufs[0]
        self._out = bufs[b.ops[-1][4]]
        self._n_in = len(self._in)
        b.ops = b.tensors = need = None  # a conservative GC may meet stale words pointing at them

    def predict_q(self, xq):
        """int8 window (window*channels bytes, oldest first, channel-interleaved) -> int8 output.

        Returns a view of the model's own output buffer (`channels` int8
        values as bytes), overwritten by the next call.
        """
        if len(xq) != self._n_in:
            raise ValueError("predict_q wants %d int8 values" % self._n_in)
        if xq is not self._in:
            self._copy(xq, self._in, 0, self._n_in)
        for step in self._plan:
            step[0](step[1], step[2], step[3], step[4])
        return self._out

    def predict(self, norm_window):
        """Normalised window (window*channels floats, oldest first) -> list of normalised predictions."""
        n = self._n_in
        if len(norm_window) != n:
            raise ValueError("predict wants %d values (window %d x %d channels)"
                             % (n, self.window, self.channels))
        inv = self._inv_in
        zp = self.in_zp
        buf = self._in
        for i in range(n):
            v = norm_window[i] * inv
            if v != v:
                raise ValueError("predict: NaN at position %d" % i)
            if v > 1000.0:  # far outside int8 anyway; keeps round() from overflowing
                v = 1000.0
            elif v < -1000.0:
                v = -1000.0
            # round() rounds half to even, as edgewatch.training.export.convert quantises
            q = round(v) + zp
            if q < -128:
                q = -128
            elif q > 127:
                q = 127
            buf[i] = q & 0xFF
        out = self.predict_q(buf)
        s = self.out_scale
        z = self.out_zp
        pred = [(((b ^ 0x80) - 0x80) - z) * s for b in out]
        if self.residual:
            # The int8 net gives the change; the newest sample is added in float,
            # so it is not coarsened to the int8 grid nor clipped to its range.
            last = n - self.channels
            for c in range(self.channels):
                pred[c] += norm_window[last + c]
        return pred


__all__ = ["Model", "BlobError", "default_kernels"]
