# int8 inference of an edgewatch model blob on the board (docs/model_blob.md).
#
# Model(blob, key=None) checks the blob (CRC32, and HMAC-SHA256 when a key is
# given) and refuses a bad one with BlobError before anything is used. All
# buffers are allocated here, once: predict_q() allocates nothing; predict()
# only the floats it is given and returns. The int8 results equal TensorFlow
# Lite Micro's bit for bit (tests/firmware/test_engine_bitexact.py).
#
# Streaming: when the window covers the model's receptive field (edgewatch convert
# refuses a model whose window is shorter), each tensor keeps only the newest rows its
# readers need (a ring) and a step computes only the newest row of every op. A window
# that is the previous one moved by one sample costs one step; any other window (the
# first, or a history the caller rewrote) is replayed row by row. Both give the windowed
# result bit for bit: no row a step reads ever depended on the window's left padding.
# A model whose output reads the padding runs windowed, computing only the time steps
# the output depends on.
import sys

from blob import BlobError

try:
    # the kernels in C (firmware/native/ewkern.c, a native .mpy built for rv32imc, the
    # ESP32-C3): only where deployed; the viper module is then never loaded (heap)
    import ewkern as _fast
except (ImportError, ValueError):  # absent, or an .mpy of another architecture
    _fast = None
if _fast is None:
    # the failed import's garbage collected first: the viper code is long-lived, and
    # placed behind that garbage it would leave a hole (2.5 KB less free after set-up on
    # RV32); outside the except clause, whose exception would be kept alive
    import gc

    gc.collect()
    try:
        import kernels as _fast  # SyntaxError on ports without the native emitter
    except (ImportError, SyntaxError, ValueError):
        _fast = None


def default_kernels():
    """The C kernels where deployed (ewkern), else viper kernels where the emitter exists,
    else the same code as bytecode."""
    if _fast is not None:
        return _fast
    import kernels_plain

    return kernels_plain


def _drop(name):
    # a precompiled set-up module out of the heap until it is needed again: popped, and
    # emptied (the GC scans conservatively, and one stale word pointing at the module would
    # otherwise keep all its code). From source (the host tests) it stays: recompiling it
    # for every model would need the compiler's peak each time.
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", "").endswith(".mpy"):
        sys.modules.pop(name, None)
        mod.__dict__.clear()


def _free_parser():
    # On the board the parser is precompiled (.mpy, edgewatch.board.deploy): loading it
    # again for the next model compiles nothing, so free its ~9 KB until then.
    # From source (the host tests) it stays: recompiling needs a ~40 KB peak.
    _drop("blob")  # (seen on RV32: a stale word kept 7.6 KB of its code)


_free_parser()  # a board may run for weeks before its first model arrives


def _parse(raw, key, m, k):
    # the blob parsed and checked, and m's plan on kernels k (plan.py, dropped after use).
    # The planner's code first, while the heap is in fewer pieces; the parser's code is
    # dropped before the plan is built, whose buffers take the room it leaves.
    import plan

    try:
        import blob

        blob.BlobError = BlobError  # a re-imported parser raises the class callers catch
        try:
            b = blob.Blob(raw, key)
        finally:
            _free_parser()
        blob = None
        plan.build(m, b, k)
    finally:
        _drop("plan")
    b.ops = b.tensors = None  # a conservative GC may meet stale words pointing at them
    return b


class Model:
    """A loaded int8 model: predict the next sample of every channel from a window."""

    def __init__(self, blob, key=None, kernels=None):
        k = kernels or default_kernels()  # first: the fallback compiles source, a heap's largest need
        b = _parse(blob, key, self, k)
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
        self.move = b.move  # the move rule's (firmware/moverule.py), or None
        self.still = b.still  # whole reading unchanged this many samples: stuck (0: no such rule)
        self._inv_in = 1.0 / b.in_scale
        self.kernels = k
        self._copy = k.copy
        self._n_in = len(self._in)

    def predict_q(self, xq, moved=0):
        """int8 window (window*channels bytes, oldest first, channel-interleaved) -> int8 output.

        Returns a view of the model's own output buffer (`channels` int8
        values as bytes), overwritten by the next call. `moved`: the caller vouches that
        the window is the last one moved by a sample (only its newest row is read then;
        the detector's window, firmware/detector.py); without it the engine checks.
        """
        if len(xq) != self._n_in:
            raise ValueError("predict_q wants %d int8 values" % self._n_in)
        n = self._n_in
        if xq is not self._in:
            self._copy(xq, self._in, 0, n)
        if not self.streaming:
            for f, a, b, z, d in self._plan:
                f(a, b, z, d)
            return self._out
        c = self.channels
        i = n - c  # the newest row: one step
        if moved and self._warm:
            moved = 1
        elif self._warm and self._held and self._same(self._prev, self._in, c, i):
            moved = 0  # the last window moved by one sample
        else:  # another window: replay it row by row
            moved = i = 0
            self._warm = True
            self.replays += 1
        # A step: every ring moves one row back and the input row at i enters
        # (kernels.rings, one call), then each op computes its newest row. Inline, and
        # records unpacked: a call from bytecode costs ~1k instructions on RV32.
        r, a, b, d = self._ring
        while i < n:  # (a range with a step would allocate)
            r(a, b, d, i)
            for f, x, y, z, w in self._plan:
                f(x, y, z, w)
            i += c
        if moved:
            self._held = False  # _prev is no longer the window the rings were built from
        else:
            self._copy(self._in, self._prev, 0, n)
            self._held = True
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
