# int8 inference of an edgewatch model blob on the board (docs/model_blob.md).
#
# Model(blob, key=None) checks the blob (CRC32, and HMAC-SHA256 when a key is
# given) and refuses a bad one with BlobError before anything is used. All
# buffers are allocated here, once: predict_q() allocates nothing; predict()
# only the floats it is given and returns. The int8 results equal TensorFlow
# Lite Micro's bit for bit (tests/test_engine_bitexact.py).
#
# Only the time steps the output depends on are computed: with the default
# causal TCN that is about a quarter of the convolution work.
import array
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


def _parse(raw, key):
    import blob

    blob.BlobError = BlobError  # a re-imported parser raises the class callers catch
    try:
        return blob.Blob(raw, key)
    finally:
        # On the board the parser is precompiled (.mpy, host/deploy.py): loading it
        # again for the next model compiles nothing, so free its ~8 KB until then.
        # From source (the host tests) it stays: recompiling needs a ~40 KB peak.
        if getattr(blob, "__file__", "").endswith(".mpy"):
            sys.modules.pop("blob", None)


def _words(values):
    return array.array("I", [v & _WORD for v in values])


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
        self._inv_in = 1.0 / b.in_scale
        k = kernels or default_kernels()
        self.kernels = k
        self._copy = k.copy
        bufs = [bytearray(r * c) for r, c in b.tensors]
        need = _needed_rows(b)
        plan = []
        for op in b.ops:
            kind, amin, amax, src, dst = op[:5]
            rows = sorted(need[dst] or ())
            if not rows:
                continue  # nothing downstream reads this op
            if kind == OP_CONV or kind == OP_FC:
                chan = []
                for i in range(op[9]):
                    chan += (op[13][i], op[14][i], op[15][i])
                p = _words([len(rows), 0, op[8], op[9], op[5], op[6], op[7], -op[10], op[11],
                            amin, amax] + rows + chan)
                plan.append((k.conv, p, bufs[src], bufs[dst], op[12]))
            elif kind == OP_ADD:
                p = _words([len(rows), b.tensors[dst][1], -op[7], -op[8], op[9], op[6],
                            op[10], op[13], op[11], op[14], op[12], op[15], amin, amax] + rows)
                plan.append((k.add, p, bufs[src], bufs[op[5]], bufs[dst]))
            else:
                plan.append((k.copy, bufs[src], bufs[dst], op[5], op[6]))
        self._plan = plan
        self._in = bufs[0]
        self._out = bufs[b.ops[-1][4]]
        self._n_in = len(self._in)

    def predict_q(self, xq):
        """int8 window (window*channels bytes, oldest first, channel-interleaved) -> int8 output.

        Returns the model's own output buffer (bytearray of `channels` int8
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
            # round() rounds half to even, as training/convert.py quantises
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
