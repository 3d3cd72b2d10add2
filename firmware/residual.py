# The residual band of firmware/detector.py (mode "residual"), loaded only when a model
# carries its calibration (docs/model_blob.md, flag BAND; training/bandcal.py calibrates it).
#
# Per model channel: r = reading - (prediction + slow bias), normalised units.
#   band   |r| >= k*s; s the model's own error scale (mean |r|), adapted from unflagged
#          samples only at rate alpha, kept within [floor, 4 x calibrated]
#   drift  two-sided CUSUM of z = r/s (clipped to +-3: one large residual is the band's to
#          flag, the sums add up the lasting small ones), reference ref, fires above h and
#          restarts from 0 (Page's CUSUM): a lasting drift fires again, a passing one once
#   burst  one-sided CUSUM of |z| (up to k) with reference 3: a run of residuals over 3 s of
#          either sign (a noise burst, repeated jumps), also when none of them leaves the
#          band; fires above the blob's burst limit and restarts from 0 (with k above
#          3 + the limit, one residual between the two fires it alone)
# A flagged channel's reading stays out of the history the model reads (the last good value
# goes in), so the reference does not follow the anomaly; after `reanchor` flagged samples
# in a row the channel's recent history is set to the new level (not a passing fault).
# Fixed point (firmware/detk.py's units and state block): s as Q20, the CUSUM sums and
# z as Q10, the bias as Q23; nothing is allocated per sample. Written for viper and plain
# bytecode alike (firmware/detk_plain.py loads it without the emitter).
import struct

import micropython
from micropython import const

BIAS = const(536870912)  # detk.py's bias of signed words, 2**29

HEAD = "<ffffHH"  # k, CUSUM reference, CUSUM limit, adaptation rate, re-anchor, burst limit


def parse(raw, c):
    """(k, ref, h, alpha, reanchor, scale[c], floor[c], stuck[c], burst) from a blob's band
    section (burst 0: a blob from before the burst rule, which then stays off).

    Raises ValueError naming what is wrong: the detector refuses such a model."""
    if len(raw) != 20 + 10 * c:
        raise ValueError("band calibration: %d bytes, %d channels need %d" % (len(raw), c, 20 + 10 * c))
    kb, kr, h, alpha, re, burst = struct.unpack_from(HEAD, raw, 0)
    v = struct.unpack_from("<%df%dH" % (2 * c, c), raw, 20)
    scale, floor, stuck = v[:c], v[c:2 * c], v[2 * c:]
    # (x - x == 0: finite; detset.put_k takes k under 16384)
    ok = 0 < kb < 16384 and kr >= 0 and kr - kr == 0 and h > 0 and 0 <= alpha < 1 and re >= 1
    for i in range(c):
        ok = (ok and scale[i] > 0 and floor[i] >= 0 and scale[i] - scale[i] == 0
              and floor[i] - floor[i] == 0)
    if not (ok and h - h == 0):
        raise ValueError("band calibration out of range")
    return kb, kr, h, alpha, re, scale, floor, stuck, burst

BIAS_RATE = 1.0 / 128  # training/bandcal.py's: the model's mean residual, tracked this fast


def setup(d, band, ds):
    # -> the parsed calibration; `band` is the blob's raw section (or a parsed tuple).
    # The rule's constants and state into the detector's kernel block (ds: firmware/detset.py).
    if not isinstance(band, tuple):
        band = parse(band, len(d._order))
    kb, kr, h, alpha, re, s0, floor = band[:7]
    ds.put(d, 5, 2)
    ds.put_k(d, kb, "band k")
    ds.put(d, 17, 3072)  # the CUSUM's z clipped to +-3 (Q10; training/export/bandcal.py ZCLIP)
    ds.put(d, 18, int(kr * 1024 + 0.5))
    ds.put(d, 19, min(1 << 28, int(h * 1024 + 0.5)))
    ds.put(d, 20, int(alpha * 32768 + 0.5))
    ds.put(d, 21, re)
    ds.put(d, 16, band[8] * 1024)  # the burst limit (word 16, the seed band's eps), Q10
    top = (1 << 29) - 1
    for j in range(len(d._order)):
        cb = 27 + 22 * j
        cap = min(top, int(4 * s0[j] * 1048576 + 0.5))
        lo = min(cap, max(16, int(floor[j] * 1048576 + 0.5)))
        ds.put(d, cb + 9, max(lo, min(cap, int(s0[j] * 1048576 + 0.5))))
        ds.put(d, cb + 14, lo)
        ds.put(d, cb + 15, cap)
    return band


@micropython.viper
def judge(s: ptr32, b: ptr32, z: int, o: ptr8) -> int:
    """The residual band, CUSUM drift and burst, and masking on the model's int8 output o (see
    the top), in fixed point (firmware/detk.py's state block and units). Bit j: channel j
    outside its band; bit 8+j: drift; bit 16+j: burst; 1 << 24: a channel re-anchored (the
    history was rewritten). Fills pred/lo/hi."""
    nc = int(s[1])
    pos = int(s[2])
    ring = 27 + 22 * nc
    prev = (pos - 1) & 127
    om = int(s[11])
    osh = int(s[12]) - BIAS  # >= 1
    ozp = int(s[13]) - BIAS
    km = int(s[14])
    ksh = int(s[15])
    kb = int(s[17])
    kr = int(s[18])
    hb = int(s[16])  # the burst limit (Q10; 0: no burst rule)
    kq = km << 10 >> ksh  # k, Q10 (km < 2**15, ksh <= 15)
    flags = 0
    for j in range(nc):
        cb = 27 + 22 * j
        p = (((int(o[j]) ^ 0x80) - 0x80) - ozp) * om
        p = (p + (1 << (osh - 1))) >> osh
        if int(s[7]):
            p += int(s[ring + prev * nc + j]) - BIAS
        mu = int(s[cb + 12]) - BIAS  # the slow bias, Q23
        p += (mu + 64) >> 7
        if p > (1 << 28):
            p = 1 << 28
        elif p < 0 - (1 << 28):
            p = 0 - (1 << 28)
        u = int(s[cb + 5]) - BIAS
        r = u - p
        s20 = int(s[cb + 9])
        x = s20 >> 2  # s, Q18
        if x > int(s[26]):
            x = int(s[26])
        half = (x >> ksh) * km + (((x & ((1 << ksh) - 1)) * km) >> ksh)
        half = (half + 2) >> 2
        s[cb + 6] = p + BIAS
        s[cb + 7] = p - half + BIAS
        s[cb + 8] = p + half + BIAS
        # z = r / s clipped to +-3 (s[17], set by setup), Q10
        a = r
        if a < 0:
            a = 0 - r
        # |z| in Q10: za up to k (the burst's), z up to the clip (the drift's)
        za = kq
        z = kb
        if a < half:
            x = s20 >> 4
            if x < 1:
                x = 1
            # a << 10 a small int on a 32-bit port (a < 2**20: the bytecode path of
            # detk_plain allocates a long int above 2**30), x under 2**14; a / x = |z| < k
            # < 2**14 stays, so x stays >= 32
            while x >= 16384 or a >= 1048576:
                x >>= 1
                a >>= 1
            x = (a << 10) // x
            if x < za:  # (the divisor's floors can carry it past k)
                za = x
            if x < z:
                z = x
        if r < 0:
            z = 0 - z
        gp = int(s[cb + 10]) + z - kr
        gn = int(s[cb + 11]) - z - kr
        bad = 0
        if not (0 - half < r and r < half):
            flags |= 1 << j
            bad = 1
        x = int(s[19])
        if gp > x or gn > x:
            flags |= 1 << (8 + j)
            bad = 1
            gp = 0  # Page's CUSUM restarts at its alarm: a lasting drift fires again
            gn = 0
        if hb:
            # burst: CUSUM of |z| (up to k) over the clip, a run of large residuals of
            # either sign that no single one of them puts outside the band
            x = int(s[cb + 21]) + za - kb
            if x < 0:
                x = 0
            if x > hb:
                flags |= 1 << (16 + j)
                bad = 1
                x = 0
            s[cb + 21] = x
        if gp < 0:
            gp = 0
        elif gp > (1 << 28):
            gp = 1 << 28
        if gn < 0:
            gn = 0
        elif gn > (1 << 28):
            gn = 1 << 28
        s[cb + 10] = gp
        s[cb + 11] = gn
        if not bad:
            s[cb + 13] = 0
            mu += r  # += r/128 in Q16
            if mu > (1 << 28):
                mu = 1 << 28
            elif mu < 0 - (1 << 28):
                mu = 0 - (1 << 28)
            s[cb + 12] = mu + BIAS
            a = r
            if a < 0:
                a = 0 - r
            if a > (1 << 25):
                a = 1 << 25
            x = (a << 4) - s20
            a = int(s[20])
            # rounded: floored, s settled 16384 / a Q20 units under the mean |r| (256 at
            # alpha 1/512), and |z| read large against bandcal's float s
            s20 += (x >> 15) * a + (((x & 0x7FFF) * a + 16384) >> 15)
            x = int(s[cb + 14])
            if s20 < x:
                s20 = x
            x = int(s[cb + 15])
            if s20 > x:
                s20 = x
            s[cb + 9] = s20
            continue
        x = int(s[cb + 13]) + 1
        if x < int(s[21]):
            # the reference does not follow the anomaly: the model sees the last good value
            s[cb + 13] = x
            s[cb + 5] = s[ring + prev * nc + j]
            continue
        # flagged this long: a new level, not a passing fault; the model starts from it
        s[cb + 13] = 0
        s[cb + 10] = 0
        s[cb + 11] = 0
        s[cb + 21] = 0
        for k in range(int(s[4])):
            s[ring + ((pos - 1 - k) & 127) * nc + j] = u + BIAS
        flags |= 1 << 24  # the history was rewritten: the model's next window is not a move
    # the reading (or the held value) into the history
    for j in range(nc):
        s[ring + pos * nc + j] = s[27 + 22 * j + 5]
    s[2] = (pos + 1) & 127
    if int(s[3]) < 128:
        s[3] = int(s[3]) + 1
    return flags
