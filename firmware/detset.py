# The detector's set-up for a model (firmware/detector.py): the fixed-point constants and
# state of its kernels (firmware/detk.py, residual.py, shift.py). Only run when a model is
# set: on a board it is imported then and dropped again (detector.py), so its code does not
# stay in the heap.
import struct
from array import array

# (detk.py's layout: the channel blocks from word 27, 22 words each; signed words biased
# by 2**29)


def ms(f, what):
    """f (> 0) as (M, SH): f = M / 2**SH, 2**14 <= M < 2**15. ValueError when out of range."""
    if not 1e-9 < f < 1 << 30:
        raise ValueError("%s %r out of range" % (what, f))
    sh = 0
    x = f
    while x < 16384:
        x *= 2
        sh += 1
    while x >= 32768:
        x /= 2
        sh -= 1
    m = int(x + 0.5)
    if m >= 32768:
        m, sh = m >> 1, sh - 1
    return m, sh


def put(d, i, v):
    d._s[i] = v  # a word the kernels read as it is (never negative)


def sput(d, i, v):
    d._s[i] = max(-(1 << 29), min((1 << 29) - 1, int(v))) + (1 << 29)  # a biased word


def fix(x, one):
    """x in units of 1/one, rounded, clamped to +-2**28."""
    v = int(x * one + (0.5 if x >= 0 else -0.5))
    return max(-(1 << 28), min(1 << 28, v))


def put_k(d, k, what):
    if not 0 < k < 16384:
        raise ValueError("%s %r out of range" % (what, k))
    m, sh = ms(k, what)
    if sh > 15:  # the kernels take SH <= 15: a k under 0.5 keeps fewer bits
        m, sh = int(k * 32768 + 0.5), 15
    put(d, 14, m)
    put(d, 15, sh)
    put(d, 26, min(1 << 25, int(((1 << 30) - 1) / k)))  # k * this stays within 32 bits


def fill(d, m, band):
    """The seed band's constants for model m, and the ring from the history."""
    order = d._order
    nc = len(order)
    w = m.window
    put(d, 1, nc)
    put(d, 4, w)
    put(d, 5, 1)
    put(d, 6, d.sigma_window)
    put(d, 7, 1 if m.residual else 0)
    sput(d, 8, m.in_zp)
    im, ish = ms(1 / m.in_scale / 65536, "input scale")
    uq = min(1 << 28, int(200 * m.in_scale * 65536))
    if ish < 16:  # an input step under 2**-15 (a flat training series): every input at zp
        im, ish, uq = 16384, 16, 0
    put(d, 9, im)
    put(d, 10, ish)
    if not m.out_scale < 16:
        raise ValueError("%s %r out of range" % ("output scale", m.out_scale))
    om, osh = ms(m.out_scale * 65536, "output scale")
    if osh < 1:  # the kernels take SH >= 1: a larger M (255 * M stays within 32 bits)
        om, osh = int(m.out_scale * 131072 + 0.5), 1
    put(d, 11, om)
    sput(d, 12, osh)
    sput(d, 13, m.out_zp)
    put_k(d, d.k, "k")
    put(d, 16, fix(d.eps, 262144) if d.eps > 0 else 0)
    put(d, 22, w if band is not None else max(w, d.sigma_window))
    put(d, 23, 0)
    put(d, 25, uq)
    for j in range(nc):
        channel(d, m, order, j)
    ring(d, m, order)
    d._rep = (m.offset, m.scale, order)


# fill's parts: each function's code is one block when the module loads, after the model's
# parse has split the heap (a 779-byte fill found no hole on the C3's 80 KB)
def channel(d, m, order, j):
    """Model channel j's constants (fill)."""
    cb = 27 + 22 * j
    for i in range(22):
        put(d, cb + i, 0)
    put(d, cb, order[j])
    off, sc = m.offset[j], m.scale[j]
    big = abs(off) + 4096 * sc  # a plausible reading is within this
    e = 0
    while big >= 2.0 ** (29 + e):
        e += 1
    while e > -149 and big < 2.0 ** (28 + e):
        e -= 1
    sput(d, cb + 1, int(off / 2.0 ** e + (0.5 if off >= 0 else -0.5)))
    sput(d, cb + 2, e)
    mi, si = ms(65536 / sc, "scale")
    put(d, cb + 3, mi)
    sput(d, cb + 4, e - si + 15)
    for k in (5, 6, 7, 8, 12, 16, 19):
        sput(d, cb + k, 0)


def ring(d, m, order):
    """The history, for this model's scaler: u (Q16) in its channel order (fill)."""
    n = len(d.names)
    nc = len(order)
    for i in range(128):
        row = 27 + 22 * n + i * n
        x = [phys(d, row, c) for c in range(n)]
        for j in range(nc):
            sput(d, row + j, fix((x[order[j]] - m.offset[j]) / m.scale[j], 65536))


def phys(d, row, c):
    """Sensor channel c of the history's row (its first word) in physical units."""
    if d._rep is None:  # no model: the readings' float32 bits
        return struct.unpack("<f", struct.pack("<I", d._s[row + c]))[0]
    off, sc, order = d._rep
    j = order.index(c)
    return (d._s[row + j] - (1 << 29)) / 65536 * sc[j] + off[j]


def unfill(d):
    """The history back to float32 bits in sensor order (no model to normalise for)."""
    if d._rep is None:
        return
    n = len(d.names)
    for i in range(128):
        row = 27 + 22 * n + i * n
        x = [phys(d, row, c) for c in range(n)]
        for c in range(n):
            d._s[row + c] = struct.unpack("<I", struct.pack("<f", x[c]))[0]
    d._rep = None


def init(d, names, limits, params, fallback):
    """Detector.__init__'s state (here: its code leaves the heap after use)."""
    d.names = names
    d.limits = limits
    n = len(names)
    d.params = params  # config detector section: explicit values win over the blob
    d.fallback = fallback
    d.dropout_n = params["dropout_periods"]
    d.gap = params.get("episode_gap") or 20
    d.resend = params.get("resend_samples") or 60
    d._k = d._load("detk")
    # d._in (the reading) and d._s (the kernels' state): allocated by Detector.__init__
    d._s[0] = n
    d._rep = None  # what the history holds: None (float32 bits) or (offset, scale, order)
    d.stuck_lim = [params["stuck_samples"] or 120] * n
    d._post = None  # the band kernel: seedband.seed or residual.judge
    d.band = None  # (k, ref, h, alpha, reanchor, scale0, floor, stuck, burst) in residual mode
    d.send = False  # whether this sample's alerts go out as a message
    d._quiet = 1 << 20  # samples since the last flagged one
    d._sent = 0  # samples since the last message
    d.last = [None] * n
    d.same = [0] * n
    d.has_band = False
    d.alerts = []
    d.model = None
    d._order = None  # model channel j -> sensor channel index
    d._q = bytearray(1)  # the model's int8 input window
    d._streams = d._moves = 0  # a streaming model / its next window moves the last by a sample
    d.shift = None  # (window, factor, center, spread, matrix) in model channel order
    d._shrun = 0  # shifted samples in a row (the new level after 512 of them: detector.py)
    d._mvc = False  # the model carries the move rule (moverule.py)
    f = fallback
    d.k, d.eps, d.sigma_window = f["k"], f["eps"], f["sigma_window"]
    d.still_n = params.get("still_samples") or 0


def set_params(self, model, sh, Mismatch):
    ds = Ds
    p, f = self.params, self.fallback

    def pick(name):
        if p[name] is not None:
            return p[name]
        if model is not None:
            return getattr(model, name)
        return f[name]

    self.k = float(pick("k"))
    self.eps = float(pick("eps"))
    self.sigma_window = int(pick("sigma_window"))
    st = p.get("still_samples")  # None: the model's (0 without one); 0: off
    self.still_n = (model.still if model is not None else 0) if st is None else st
    n = len(self.names)
    band = getattr(model, "band", None) if model is not None else None
    if p.get("band") == "seed":
        band = None
    self.band = band
    for c in range(n):
        self.stuck_lim[c] = p["stuck_samples"] or 120  # detector.STUCK_FALLBACK
    s = self._s
    s[1] = s[5] = 0
    if model is None:
        unfill(self)
        return
    try:
        fill(self, model, band)
        milli(self, model)
        if band is not None:
            rm = self._resmod
            if rm is None:
                rm = self._resmod = self._load("residual")
            band = self.band = rm.setup(self, band, ds)
            self._post = rm.judge
        else:
            self._post = self._load("seedband").seed
        if sh is not None:
            self._shiftmod.setup(self, sh, ds)
    except ValueError as e:
        self.band = None
        s[1] = s[5] = 0
        raise Mismatch(str(e))
    if band is None:
        return
    for j in range(len(self._order)):
        c = self._order[j]
        if not p["stuck_samples"]:  # 0: the channel never moved in training: no limit
            self.stuck_lim[c] = band[7][j] or 1 << 30


def checked(self, model, Mismatch):
    """(channel order, shift calibration or None) of `model` for this detector, or
    Mismatch (set_model's first part: a function's code is one block, see fill)."""
    lower = [s.lower() for s in self.names]
    order = []
    for name in model.names:
        if name.lower() not in lower:
            raise Mismatch("channels %s do not match sensor %s"
                           % (",".join(model.names), ",".join(self.names)))
        order.append(lower.index(name.lower()))
    if len(order) != len(self.names) or len(order) > 8:  # (8: the kernels' flag bits)
        raise Mismatch("model has %d channels, sensor %d" % (len(order), len(self.names)))
    sw = self.params["sigma_window"] or model.sigma_window
    if getattr(model, "band", None) is not None and self.params.get("band") != "seed":
        sw = 1  # the residual band keeps no sigma window
    if model.window > 128 or sw > 128:
        raise Mismatch("window %d / sigma window %d over %d" % (model.window, sw, 128))
    f = self.params.get("shift_factor")
    sh = model.shift
    if sh is not None and f != 0:
        if self._shiftmod is None:
            self._shiftmod = self._load("shift")  # boards whose models lack it never load it
        try:
            sh = self._shiftmod.parse(sh, len(order))
        except ValueError as e:
            raise Mismatch(str(e))
        if sh[0] > 64:
            raise Mismatch("%s %r out of range" % ("shift window", sh[0]))
        self.shift_factor = sh[1] if f is None else f
    else:
        sh = None
    return order, sh


def set_model(self, model, Mismatch):
    """Use `model` (engine.Model) for the band rule, or None for rules only."""
    if model is None:
        self.model, self._order, self._q, self.shift = None, None, bytearray(1), None
        set_params(self, None, None, Mismatch)
        return
    order, sh = checked(self, model, Mismatch)
    old = self.model, self._order, self._q, self.shift
    self._order = order
    # the model's input window: the engine's own input buffer when it has one (no copy)
    q = getattr(model, "_in", None)
    self._q = q if q is not None and len(q) == model.window * len(order) else \
        bytearray(model.window * len(order))
    self.model = model
    self.shift = None
    self._streams = 1 if getattr(model, "streaming", False) else 0
    self._moves = 0  # the first window after a model is set: written whole, checked
    try:
        set_params(self, model, sh, Mismatch)
    except Exception:  # Mismatch, MemoryError: the detector keeps the model it had
        self.model, self._order, self._q, self.shift = old
        set_params(self, self.model, self.shift, Mismatch)
        raise
    self.shift = sh


def milli(d, m):
    """detk.milli's factors for model m (Detector.fixed), after its 3n numbers in d.ints:
    per channel M, F + 32, O (biased) with F the most fraction bits (-24 ... 24) that keep
    M < 2**30 and |O| < 2**29. In integers from the float32 scale and offset scaled by
    2**24 (exact): the same factors on every port, float32 or double."""
    k = d.ints
    n = len(d._order)
    for j in range(n):
        a = int(m.scale[j] * 16777216) * 1000  # scale * 1000 * 2**24
        b = int(m.offset[j] * 16777216) * 1000  # offset * 1000 * 2**24
        e = -24
        while e < 24 and a << 24 + e + 1 < 1 << 64 and abs(b) << 24 + e + 1 < 1 << 77:
            e += 1
        p = 3 * n + 3 * j
        k[p] = ((a << 24 + e) + (1 << 33)) >> 34  # scale * 1000 / 65536 * 2**(F + 30)
        k[p + 1] = e + 32
        k[p + 2] = (((b << 24 + e) + (1 << 47)) >> 48) + (1 << 29)  # biased (detk.py)


class Ds:
    """The helpers residual.setup and shift.setup use."""

    put = staticmethod(put)
    sput = staticmethod(sput)
    ms = staticmethod(ms)
    fix = staticmethod(fix)
    put_k = staticmethod(put_k)
