# The residual band of firmware/detector.py (mode "residual"), loaded only when a model
# carries its calibration (docs/model_blob.md, flag BAND; training/bandcal.py calibrates it).
#
# Per model channel: r = reading - (prediction + slow bias), normalised units.
#   band   |r| >= k*s; s the model's own error scale (mean |r|), adapted from unflagged
#          samples only at rate alpha, kept within [floor, 4 x calibrated]
#   drift  two-sided CUSUM of z = r/s (clipped to +-k), reference ref, fires above h
# A flagged channel's reading stays out of the history the model reads (the last good value
# goes in), so the reference does not follow the anomaly; after `reanchor` flagged samples
# in a row the channel's recent history is set to the new level (not a passing fault).
# The rule runs in fixed point in firmware/detk.py (post); this module parses the
# calibration and sets the kernels' constants when the model is set; nothing per sample.
import struct

HEAD = "<ffffHH"  # k, CUSUM reference, CUSUM limit, adaptation rate, re-anchor, 0


def parse(raw, c):
    """(k, ref, h, alpha, reanchor, scale[c], floor[c], stuck[c]) from a blob's band section.

    Raises ValueError naming what is wrong: the detector refuses such a model."""
    if len(raw) != 20 + 10 * c:
        raise ValueError("band calibration: %d bytes, %d channels need %d" % (len(raw), c, 20 + 10 * c))
    kb, kr, h, alpha, re, _ = struct.unpack_from(HEAD, raw, 0)
    v = struct.unpack_from("<%df%dH" % (2 * c, c), raw, 20)
    scale, floor, stuck = v[:c], v[c:2 * c], v[2 * c:]
    ok = kb > 0 and kr >= 0 and h > 0 and 0 <= alpha < 1 and re >= 1
    for i in range(c):
        ok = ok and scale[i] > 0 and floor[i] >= 0 and scale[i] - scale[i] == 0
    if not (ok and kb - kb == 0 and h - h == 0):
        raise ValueError("band calibration out of range")
    return kb, kr, h, alpha, re, scale, floor, stuck

BIAS_RATE = 1.0 / 128  # training/bandcal.py's: the model's mean residual, tracked this fast


def setup(d, band):
    # -> the parsed calibration; `band` is the blob's raw section (or a parsed tuple).
    # Writes the rule's constants and state into the detector's kernel block (firmware/detk.py:
    # the rule itself runs there, in fixed point, allocating nothing per sample).
    if not isinstance(band, tuple):
        band = parse(band, len(d._order))
    kb, kr, h, alpha, re, s0, floor = band[:7]
    put = d._put
    put(5, 2)
    d._k_put(kb, "band k")
    put(17, int(kb * 1024 + 0.5))
    put(18, int(kr * 1024 + 0.5))
    put(19, min(1 << 28, int(h * 1024 + 0.5)))
    put(20, int(alpha * 32768 + 0.5))
    put(21, re)
    top = (1 << 30) - 1
    for j in range(len(d._order)):
        cb = 32 + 24 * j
        cap = min(top, int(4 * s0[j] * 1048576 + 0.5))
        lo = min(cap, max(16, int(floor[j] * 1048576 + 0.5)))
        put(cb + 9, max(lo, min(cap, int(s0[j] * 1048576 + 0.5))))
        put(cb + 14, lo)
        put(cb + 15, cap)
    return band
