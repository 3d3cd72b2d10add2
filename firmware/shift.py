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


def setup(d, sh):
    """The rule's constants into the detector's kernel block (firmware/detk.py, view A)."""
    w, _, center, spread, _ = sh
    m, put = d.model, d._put
    put(23, w)
    put(24, int(d.shift_factor * 1024 + 0.5))
    for j in range(len(d._order)):
        cb = 32 + 24 * j
        sp = spread[j] / m.scale[j]  # the spread in normalised units
        put(cb + 16, max(-(1 << 28), min(1 << 28, int((center[j] - m.offset[j]) / m.scale[j] * 1024))))
        sm, ssh = d._ms(1 / sp, "shift spread")
        put(cb + 17, sm)
        put(cb + 18, ssh)
        put(cb + 20, int(min(1 << 23, (1 << 29) * min(sp, 1.0))))


def judge(d, worst):
    """View B (Mahalanobis) once view A fired for channel `worst` (firmware/detk.py's shift
    left u per channel, Q10): append a shift alert to d.alerts when it holds too."""
    w, _, center, spread, mat = d.shift
    nc = len(d._order)
    u = [d._word(32 + 24 * j + 19) / 1024 for j in range(nc)]
    f = d.shift_factor
    q = 0.0
    for i in range(nc):
        r = 0.0
        for j in range(nc):
            r += mat[i * nc + j] * u[j]
        q += u[i] * r
    if q <= f * f:  # view B: all channels together (Mahalanobis)
        return
    c, h = d._order[worst], f * spread[worst]
    mean = center[worst] + u[worst] * spread[worst]
    d.alerts.append(("shift", d.names[c], mean, center[worst] - h, center[worst] + h,
                     center[worst]))
