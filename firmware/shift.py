# The sustained-shift rule of firmware/detector.py, loaded only when a model carries it.
#
# Per channel u = (rolling mean of the last W samples - center) / spread; alert when the
# worst channel's |u| > f (view A) and u'Mu > f*f (view B, Mahalanobis). The constants
# come from the model blob's shift section (docs/model_blob.md); edgewatch.training.export.shiftcal
# calibrates them on the training rows and computes the same test in numpy.
# View A runs in fixed point (firmware/detk.py's units and state block), view B in float
# only once view A fired. A shift that lasts long is a new level, not a passing fault: after
# 512 shifted samples in a row (detector.py) the center moves to the current
# rolling mean (rebase), so a lasting change is not re-reported for ever. Written for viper and plain bytecode alike (detk_plain.py).
import struct
from array import array

import micropython
from micropython import const

BIAS = const(536870912)  # detk.py's bias of signed words, 2**29


def parse(raw, c):
    """(window, factor, center, spread, matrix) from a blob's shift section of C channels.

    Raises ValueError naming what is wrong: the detector refuses such a model."""
    n = 2 * c + c * c
    if len(raw) != 6 + 4 * n:
        raise ValueError("shift calibration: %d bytes, %d channels need %d" % (len(raw), c, 6 + 4 * n))
    w, f = struct.unpack_from("<Hf", raw, 0)
    v = array("f", struct.unpack_from("<%df" % n, raw, 6))
    if w < 2 or not f > 0:
        raise ValueError("shift calibration: window %d and factor %r must be > 1 and > 0" % (w, f))
    for i in range(n):
        x = v[i]
        if x - x != 0 or (c <= i < 2 * c and not x > 0):  # NaN, infinite, or a spread <= 0
            raise ValueError("shift calibration: value %d is %r" % (i, x))
    return w, f, v[:c], v[c:2 * c], v[2 * c:]


def setup(d, sh, ds):
    """The rule's constants into the detector's kernel block (ds: firmware/detset.py)."""
    w, _, center, spread, _ = sh
    m = d.model
    ds.put(d, 23, w)
    ds.put(d, 24, int(d.shift_factor * 1024 + 0.5))
    for j in range(len(d._order)):
        cb = 27 + 22 * j
        sp = spread[j] / m.scale[j]  # the spread in normalised units
        ds.sput(d, cb + 16, ds.fix((center[j] - m.offset[j]) / m.scale[j], 1024))
        # (a spread of ~0, a flat fit series: any move is a shift; clamped to what fits)
        sm, ssh = ds.ms(max(1e-6, min(1 / sp, 1 << 20)), "shift spread")
        ds.put(d, cb + 17, sm)
        ds.sput(d, cb + 18, ssh)
        ds.put(d, cb + 20, int(min(1 << 23, (1 << 28) * min(sp, 1.0))))


@micropython.viper
def view_a(s: ptr32, z: int) -> int:
    """View A in fixed point (firmware/detk.py's state): per channel u = (rolling mean -
    center) / spread, Q10; 1 + the worst channel when its |u| is over the factor, else 0.
    With ``z`` 1 (rebase), each channel's center first becomes its rolling mean."""
    nc = int(s[1])
    wn = int(s[23])
    if int(s[3]) < wn:
        return 0
    pos = int(s[2])
    ring = 27 + 22 * nc
    top = -1
    worst = 0
    for j in range(nc):
        cb = 27 + 22 * j
        tot = 0
        for k in range(wn):
            tot += (int(s[ring + ((pos - 1 - k) & 127) * nc + j]) - BIAS) >> 6
        if tot < 0:
            x = 0 - ((0 - tot) // wn)
        else:
            x = tot // wn
        if z:  # rebase: the rolling mean is the new center
            s[cb + 16] = x + BIAS
        x -= int(s[cb + 16]) - BIAS
        m = int(s[cb + 20])
        if x > m:
            x = m
        elif x < 0 - m:
            x = 0 - m
        m = int(s[cb + 17])
        sh = int(s[cb + 18]) - BIAS
        if sh >= 15:
            x = (x >> 15) * m + (((x & 0x7FFF) * m) >> 15)
            if sh > 15:
                x = (x + (1 << (sh - 16))) >> (sh - 15)
        elif sh >= 0:
            x = (x >> sh) * m + (((x & ((1 << sh) - 1)) * m) >> sh)
        else:
            x = (x * m) << (0 - sh)
        s[cb + 19] = x + BIAS
        if x < 0:
            x = 0 - x
        if x > top:
            top = x
            worst = j
    if top > int(s[24]):
        return worst + 1
    return 0


def rebase(d):
    """The new level: every channel's center := its current rolling mean (view_a with z 1;
    floats: only when a shift has lasted 512 samples in a row)."""
    view_a(d._s, 1)
    m, center = d.model, d.shift[2]
    for j in range(len(d._order)):
        center[j] = m.offset[j] + m.scale[j] * (d._s[27 + 22 * j + 16] - BIAS) / 1024


def judge(d, worst):
    """View B (Mahalanobis) once view A fired for channel `worst`: append a shift alert to
    d.alerts when it holds too (floats: only on this rare path); 1 if it did, else 0."""
    w, _, center, spread, mat = d.shift
    nc = len(d._order)
    u = [(d._s[27 + 22 * j + 19] - BIAS) / 1024 for j in range(nc)]
    f = d.shift_factor
    q = 0.0
    for i in range(nc):
        r = 0.0
        for j in range(nc):
            r += mat[i * nc + j] * u[j]
        q += u[i] * r
    if q <= f * f:  # view B: all channels together (Mahalanobis)
        return 0
    c, h = d._order[worst], f * spread[worst]
    mean = center[worst] + u[worst] * spread[worst]
    d.alerts.append(("shift", d.names[c], mean, center[worst] - h, center[worst] + h,
                     center[worst]))
    return 1
