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
# State is allocated once, here, when the model is set; nothing per sample.
import struct
from array import array

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
    # -> the parsed calibration; `band` is the blob's raw section (or a parsed tuple)
    if not isinstance(band, tuple):
        band = parse(band, len(d._order))
    nc = len(d._order)
    d.s = array("f", band[5])
    d.gp = array("f", bytes(4 * nc))
    d.gn = array("f", bytes(4 * nc))
    d.mu = array("f", bytes(4 * nc))  # the model's slow bias (mean residual of unflagged)
    d.run = [0] * nc
    return band


def judge(self, values, pred):
    # the residual band, CUSUM drift and masking of flagged readings (see the top)
    self.has_band = True
    m, order, b = self.model, self._order, self.band
    kb, kr, h, alpha, reanchor, s0, floor = b[0], b[1], b[2], b[3], b[4], b[5], b[6]
    for j in range(len(order)):
        c = order[j]
        off, sc = m.offset[j], m.scale[j]
        p = pred[j] + self.mu[j]  # the model's forecast less its slow bias
        r = (values[c] - off) / sc - p
        s = self.s[j]
        half = kb * s
        self.pred[c] = p * sc + off
        self.lo[c] = (p - half) * sc + off
        self.hi[c] = (p + half) * sc + off
        z = r / s
        if z > kb:
            z = kb
        elif z < -kb:
            z = -kb
        gp = self.gp[j] + z - kr
        gn = self.gn[j] - z - kr
        self.gp[j] = gp if gp > 0 else 0.0
        self.gn[j] = gn if gn > 0 else 0.0
        bad = False
        if not (-half < r < half):
            self.alerts.append(("band", self.names[c], values[c], self.lo[c], self.hi[c],
                                self.pred[c]))
            bad = True
        if gp > h or gn > h:
            self.alerts.append(("drift", self.names[c], values[c], self.lo[c], self.hi[c],
                                self.pred[c]))
            bad = True
        if not bad:
            self.run[j] = 0
            self.mu[j] += BIAS_RATE * r
            a = r if r > 0 else -r
            s += alpha * (a - s)
            lo, hi = floor[j], 4.0 * s0[j]
            self.s[j] = lo if s < lo else (hi if s > hi else s)
            continue
        self.run[j] += 1
        if self.run[j] < reanchor:
            # the reference does not follow the anomaly: the model sees the last good value
            self._in[c] = self._at(1, c)
            continue
        # flagged this long: a new level, not a passing fault; the model starts from it
        self.run[j] = 0
        self.gp[j] = self.gn[j] = 0.0
        n = len(self.names)
        cap = len(self.hist) // n
        for back in range(1, m.window + 1):
            self.hist[((self.pos - back) % cap) * n + c] = values[c]

