# Fixed-point kernels of the detector (firmware/detector.py): every per-sample rule in
# 32-bit integers, so a step allocates nothing (a float operation allocates a boxed float
# on the boards' MicroPython).
#
# Written once, run two ways (as kernels.py): compiled by the viper emitter, or as plain
# bytecode by detk_plain.py (ports without the emitter, and CPython for the host's scorer).
# So: every intermediate stays within signed 32 bits, state words are array('I') read back
# signed with sx32 (v - ((((v >> 31) & 1) << 16) << 16)) and stored masked with
# m32 = ((1 << 16) << 16) - 1 (all ones on 32-bit, 2**32 - 1 elsewhere), no shift by 32 or
# more, division only of non-negative numbers, at most 4 arguments.
#
# Units: u = (value - offset) / scale, the model's normalised units, as Q16 (u * 65536),
# clamped to +-2**28. The reading enters as its float32 bits (array('f') seen as words):
# value - offset is taken exactly on the aligned mantissas, then times 65536/scale.
# Constants c*x are (M, SH): x*M / 2**SH with 2**14 <= M < 2**15 (detector.py's _ms).
#
# State block s (detector.py lays it out; CH = 32 words per header):
#   0 n  1 nc  2 pos  3 count  4 window  5 mode (0 none, 1 seed, 2 residual)  6 sigma window
#   7 residual model (adds the newest input)  8 input zp  9/10 1/in_scale (M, SH) over Q16
#   11/12 out_scale*65536 (M, SH)  13 output zp  14/15 k (M, SH)  16 eps (Q18)
#   17 k (Q10)  18 CUSUM ref (Q10)  19 CUSUM limit (Q10)  20 alpha (Q15)  21 re-anchor
#   22 need  23 shift window  24 shift factor (Q10)  25 u clamp before quantising
#   32.. per model channel j, 24 words: 0 sensor channel  1/2 offset mantissa, exponent
#   3/4 65536/scale (M, SH)  5 u now  6 pred 7 lo 8 hi (Q16)  9 s (Q20)  10 gp 11 gn (Q10)
#   12 bias (Q23)  13 flagged run  14 s floor 15 s cap (Q20)  16 shift center (Q10)
#   17/18 1/spread (M, SH)  19 shift u (Q10)  20 clamp before 1/spread
#   then the ring: CAPACITY x nc words of u (Q16), row = detector position
import micropython
from micropython import const

CAP = const(64)  # detector.CAPACITY


@micropython.viper
def pre(s: ptr32, b: ptr32, q: ptr8, z: int) -> int:
    """u now of every model channel from the reading's bits b; the int8 window into q
    (oldest first) when the history is long enough. 1 when it is, else 0."""
    m32 = ((1 << 16) << 16) - 1
    nc = int(s[1])
    lim = 1 << 28
    for j in range(nc):
        cb = 32 + 24 * j
        v = int(b[int(s[cb])])
        e = (v >> 23) & 0xFF
        mv = v & 0x7FFFFF
        if e == 0:
            e = 1
        else:
            mv = mv | 0x800000
        if (v >> 31) & 1:
            mv = 0 - mv
        ev = e - 150
        w = int(s[cb + 1])
        mo = w - ((((w >> 31) & 1) << 16) << 16)
        w = int(s[cb + 2])
        eo = w - ((((w >> 31) & 1) << 16) << 16)
        ee = ev
        if eo > ee:
            ee = eo
        ee -= 5
        a = ev - ee
        x = 0
        if a >= 0:
            x = mv << a
        elif a > -31:
            x = mv >> (0 - a)
        a = eo - ee
        y = 0
        if a >= 0:
            y = mo << a
        elif a > -31:
            y = mo >> (0 - a)
        d = x - y
        mi = int(s[cb + 3])
        w = int(s[cb + 4])
        si = w - ((((w >> 31) & 1) << 16) << 16)
        t = (d >> 15) * mi + (((d & 0x7FFF) * mi) >> 15)
        sh = ee - si + 15
        u = 0
        if e == 255:
            u = lim
            if mv < 0:
                u = 0 - lim
        elif sh >= 0:
            if sh > 28 or t > (lim >> sh):
                u = lim
            elif t < 0 - (lim >> sh):
                u = 0 - lim
            else:
                u = t << sh
        elif sh > -31:
            sh = 0 - sh
            u = (t + (1 << (sh - 1))) >> sh
        if u > lim:
            u = lim
        elif u < 0 - lim:
            u = 0 - lim
        s[cb + 5] = u & m32
    wn = int(s[4])
    cnt = int(s[3])
    if nc == 0 or cnt < int(s[22]):
        return 0
    pos = int(s[2])
    ring = 32 + 24 * nc
    zp = int(s[8])
    zp = zp - ((((zp >> 31) & 1) << 16) << 16)
    im = int(s[9])
    ish = int(s[10]) - 15
    uq = int(s[25])
    i = 0
    for t in range(wn):
        r = ring + ((pos - wn + t + CAP) % CAP) * nc
        for j in range(nc):
            x = int(s[r + j])
            x = x - ((((x >> 31) & 1) << 16) << 16)
            if x > uq:
                x = uq
            elif x < 0 - uq:
                x = 0 - uq
            x = (x >> 15) * im + (((x & 0x7FFF) * im) >> 15)
            x = ((x + (1 << (ish - 1))) >> ish) + zp
            if x < -128:
                x = -128
            elif x > 127:
                x = 127
            q[i] = x & 0xFF
            i += 1
    return 1


@micropython.viper
def post(s: ptr32, b: ptr32, h: ptr32, o: ptr8) -> int:
    """The band rule on the model's int8 output o: seed (sigma window) or residual (band,
    CUSUM drift, masking and re-anchoring of flagged readings). Bit j: channel j outside
    its band; bit 8+j: drift. Fills pred/lo/hi."""
    m32 = ((1 << 16) << 16) - 1
    nc = int(s[1])
    n = int(s[0])
    pos = int(s[2])
    mode = int(s[5])
    ring = 32 + 24 * nc
    newest = ring + ((pos + CAP - 1) % CAP) * nc
    om = int(s[11])
    w = int(s[12])
    osh = w - ((((w >> 31) & 1) << 16) << 16)
    w = int(s[13])
    ozp = w - ((((w >> 31) & 1) << 16) << 16)
    km = int(s[14])
    ksh = int(s[15])
    ka = ksh
    if ka > 15:
        ka = 15
    kmask = (1 << ka) - 1
    flags = 0
    for j in range(nc):
        cb = 32 + 24 * j
        c = int(s[cb])
        w = int(o[j])
        p = (((w ^ 0x80) - 0x80) - ozp) * om
        if osh > 0:
            p = (p + (1 << (osh - 1))) >> osh
        elif osh < 0:
            p = p << (0 - osh)
        if int(s[7]):
            w = int(s[newest + j])
            p += w - ((((w >> 31) & 1) << 16) << 16)
        w = int(s[cb + 5])
        u = w - ((((w >> 31) & 1) << 16) << 16)
        if mode == 1:
            # seed: population std of the last sigma-window samples (shift-invariant:
            # deviations from their minimum, scaled to 13 bits)
            sw = int(s[6])
            lo = 1 << 30
            hi = 0 - lo
            for k in range(sw):
                w = int(s[ring + ((pos + CAP - 1 - k) % CAP) * nc + j])
                w = w - ((((w >> 31) & 1) << 16) << 16)
                if w < lo:
                    lo = w
                if w > hi:
                    hi = w
            sh = 0
            while ((hi - lo) >> sh) >= 8192:
                sh += 1
            tot = 0
            for k in range(sw):
                w = int(s[ring + ((pos + CAP - 1 - k) % CAP) * nc + j])
                w = w - ((((w >> 31) & 1) << 16) << 16)
                tot += (w - lo) >> sh
            mean = (tot << 2) // sw
            v2 = 0
            for k in range(sw):
                w = int(s[ring + ((pos + CAP - 1 - k) % CAP) * nc + j])
                w = w - ((((w >> 31) & 1) << 16) << 16)
                dv = (((w - lo) >> sh) << 2) - mean
                v2 += (dv * dv) >> 6
            v2 = ((v2 + (sw >> 1)) // sw) << 4
            r = 0
            bit = 1 << 28
            while bit > v2:
                bit >>= 2
            while bit:
                if v2 >= r + bit:
                    v2 -= r + bit
                    r = (r >> 1) + bit
                else:
                    r >>= 1
                bit >>= 2
            if v2 > r:
                r += 1  # to the nearest
            # sigma + eps, Q18
            sig = 1 << 25
            if sh < 12:
                sig = (r << (sh + 1)) + int(s[16])
            if sig > (1 << 25):
                sig = 1 << 25
            half = (sig >> ka) * km + (((sig & kmask) * km) >> ka)
            if ksh > 15:
                half = (half + (1 << (ksh - 16))) >> (ksh - 15)
            half = (half + 2) >> 2
            s[cb + 6] = p & m32
            s[cb + 7] = (p - half) & m32
            s[cb + 8] = (p + half) & m32
            if not (p - half < u and u < p + half):
                flags |= 1 << j
            continue
        # residual band
        w = int(s[cb + 12])
        mu = w - ((((w >> 31) & 1) << 16) << 16)
        p += (mu + 64) >> 7
        r = u - p
        if r > (1 << 29):
            r = 1 << 29
        elif r < 0 - (1 << 29):
            r = 0 - (1 << 29)
        s20 = int(s[cb + 9])
        sc = s20 >> 2  # Q18
        if sc > (1 << 25):
            sc = 1 << 25
        half = (sc >> ka) * km + (((sc & kmask) * km) >> ka)
        if ksh > 15:
            half = (half + (1 << (ksh - 16))) >> (ksh - 15)
        half = (half + 2) >> 2
        sc = s20 >> 4
        if sc < 1:
            sc = 1
        s[cb + 6] = p & m32
        s[cb + 7] = (p - half) & m32
        s[cb + 8] = (p + half) & m32
        a = r
        if a < 0:
            a = 0 - r
        kb = int(s[17])
        if a >= half:
            zz = kb
        else:
            ss = sc
            while ss >= 16384:
                ss >>= 1
                a >>= 1
            if a > (1 << 20):
                a = 1 << 20
            zz = (a << 10) // ss
            if zz > kb:
                zz = kb
        if r < 0:
            zz = 0 - zz
        w = int(s[cb + 10])
        gp = w + zz - int(s[18])
        w = int(s[cb + 11])
        gn = w - zz - int(s[18])
        bad = 0
        if not (0 - half < r and r < half):
            flags |= 1 << j
            bad = 1
        hh = int(s[19])
        if gp > hh or gn > hh:
            flags |= 1 << (8 + j)
            bad = 1
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
            mu += r
            if mu > (1 << 29):
                mu = 1 << 29
            elif mu < 0 - (1 << 29):
                mu = 0 - (1 << 29)
            s[cb + 12] = mu & m32
            a = r
            if a < 0:
                a = 0 - r
            if a > (1 << 25):
                a = 1 << 25
            x = (a << 4) - s20
            al = int(s[20])
            s20 += (x >> 15) * al + (((x & 0x7FFF) * al) >> 15)
            w = int(s[cb + 14])
            if s20 < w:
                s20 = w
            w = int(s[cb + 15])
            if s20 > w:
                s20 = w
            s[cb + 9] = s20
            continue
        run = int(s[cb + 13]) + 1
        prev = (pos + CAP - 1) % CAP
        if run < int(s[21]):
            # the reference does not follow the anomaly: the model sees the last good value
            s[cb + 13] = run
            b[c] = h[prev * n + c]
            s[cb + 5] = s[ring + prev * nc + j]
            continue
        # flagged this long: a new level, not a passing fault; the model starts from it
        s[cb + 13] = 0
        s[cb + 10] = 0
        s[cb + 11] = 0
        for k in range(int(s[4])):
            i = (pos + CAP - 1 - k) % CAP
            h[i * n + c] = b[c]
            s[ring + i * nc + j] = u & m32
    return flags


@micropython.viper
def push(s: ptr32, b: ptr32, h: ptr32, z: int) -> int:
    """The reading (bits b, possibly masked) into the history h and u now into the ring."""
    n = int(s[0])
    nc = int(s[1])
    pos = int(s[2])
    for c in range(n):
        h[pos * n + c] = b[c]
    ring = 32 + 24 * nc + pos * nc
    for j in range(nc):
        s[ring + j] = s[32 + 24 * j + 5]
    pos += 1
    if pos >= CAP:
        pos = 0
    s[2] = pos
    if int(s[3]) < CAP:
        s[3] = int(s[3]) + 1
    return pos


@micropython.viper
def shift(s: ptr32, z: int) -> int:
    """View A of the shift rule: per channel u = (rolling mean - center) / spread (Q10);
    1 + the worst channel when its |u| is over the factor, else 0."""
    m32 = ((1 << 16) << 16) - 1
    nc = int(s[1])
    wn = int(s[23])
    if int(s[3]) < wn:
        return 0
    pos = int(s[2])
    ring = 32 + 24 * nc
    top = -1
    worst = 0
    for j in range(nc):
        cb = 32 + 24 * j
        tot = 0
        for k in range(wn):
            w = int(s[ring + ((pos + CAP - 1 - k) % CAP) * nc + j])
            w = w - ((((w >> 31) & 1) << 16) << 16)
            tot += w >> 6
        if tot < 0:
            mean = 0 - ((0 - tot) // wn)
        else:
            mean = tot // wn
        w = int(s[cb + 16])
        x = mean - (w - ((((w >> 31) & 1) << 16) << 16))
        xl = int(s[cb + 20])
        if x > xl:
            x = xl
        elif x < 0 - xl:
            x = 0 - xl
        m = int(s[cb + 17])
        sh = int(s[cb + 18])
        w = sh
        if w > 15:
            w = 15
        x = (x >> w) * m + (((x & ((1 << w) - 1)) * m) >> w)
        if sh > 15:
            x = (x + (1 << (sh - 16))) >> (sh - 15)
        s[cb + 19] = x & m32
        if x < 0:
            x = 0 - x
        if x > top:
            top = x
            worst = j
    if top > int(s[24]):
        return worst + 1
    return 0
