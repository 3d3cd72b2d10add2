# The sustained-shift rule of firmware/detector.py, loaded only when a model carries it.
#
# Per channel u = (rolling mean of the last W samples - center) / spread; alert when the
# worst channel's |u| > f (view A) and u'Mu > f*f (view B, Mahalanobis). The constants
# come from the model blob's shift section (docs/model_blob.md); edgewatch.training.export.shiftcal
# calibrates them on the training rows and computes the same test in numpy.
import struct
from array import array


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


def judge(d):
    """Append a shift alert to d.alerts when the rolling means moved (see detector.py)."""
    w, _, center, spread, mat = d.shift
    if d.count < w:
        return
    order, u = d._order, d._u
    nc = len(order)
    top = -1.0
    worst = mean = 0
    for j in range(nc):
        c = order[j]
        s = 0.0
        for back in range(1, w + 1):
            s += d._at(back, c)
        m = s / w
        x = (m - center[j]) / spread[j]
        u[j] = x
        if abs(x) > top:
            top, worst, mean = abs(x), j, m
    f = d.shift_factor
    if top <= f:  # view A: the worst channel alone
        return
    q = 0.0
    for i in range(nc):
        r = 0.0
        for j in range(nc):
            r += mat[i * nc + j] * u[j]
        q += u[i] * r
    if q <= f * f:  # view B: all channels together (Mahalanobis)
        return
    c, h = order[worst], f * spread[worst]
    d.alerts.append(("shift", d.names[c], mean, center[worst] - h, center[worst] + h,
                     center[worst]))
