# Fixed-point kernels of the detector (firmware/detector.py): the per-sample rules in
# 32-bit integers, so a step allocates nothing (every float operation allocates a boxed
# float on the boards' MicroPython). The residual band's kernel is in residual.py, the
# shift rule's in shift.py and the seed's band in seedband.py, each loaded only for a model
# that uses it.
#
# Written once, run two ways (as kernels.py): compiled by the viper emitter, or as plain
# bytecode by detk_plain.py (ports without the emitter, and CPython for the host's scorer).
# So: every intermediate stays within signed 32 bits; a state word that can be negative is
# stored biased, v + 2**29 (never negative: the same in array('I') everywhere); no shift by
# 32 or more; division only of non-negative numbers; at most 4 arguments.
#
# Units: u = (value - offset) / scale, the model's normalised units, as Q16 (u * 65536),
# clamped to +-2**28. A reading enters as its float32 bits (an array('f') seen as words),
# as an integer in the channel's units of 2**E (E set so that offset +- 4096 scales stay
# under 2**29), less the offset in those units, times 65536/scale. A constant
# factor f is (M, SH): f = M / 2**SH, 2**14 <= M < 2**15 (detector.py's _ms).
#
# State block s (detector.py lays it out; [b]: biased; header words 0..26):
#   0 n  1 nc  2 pos  3 count  4 window  5 mode (0 none, 1 seed, 2 residual)  6 sigma window
#   7 residual model (adds the newest input)  8 input zp [b]  9/10 1/in_scale/65536 (M, SH)
#   11/12 out_scale*65536 (M, SH >= 1 [b])  13 output zp [b]  14/15 k (M, SH <= 15; k < 16384)  16 eps (Q18; mode 2: the burst limit, Q10)
#   17 k (Q10)  18 CUSUM ref (Q10)  19 CUSUM limit (Q10)  20 alpha (Q15)  21 re-anchor
#   22 need  23 shift window  24 shift factor (Q10)  25 u clamp before quantising
#   26 the largest s or sigma + eps (Q18) that k multiplies within 32 bits
#   27.. per model channel j, 22 words: 0 sensor channel  1 offset in units of 2**E [b]
#   2 E [b]  3/4 65536/scale as M and the shift from units of 2**E (SH - 15 - E) [b]  5 u now [b]  6 pred 7 lo 8 hi (Q16 [b])  9 s (Q20)
#   10 gp 11 gn (Q10)  12 bias (Q23 [b])  13 flagged run  14 s floor 15 s cap (Q20)
#   16 shift center (Q10 [b])  17/18 1/spread (M, SH [b])  19 shift u (Q10 [b])
#   20 clamp before 1/spread  21 burst CUSUM (Q10)
#   then the ring, the history: 128 (detector.py) rows of n words, row = position:
#   u (Q16 [b]) in model channel order with a model, else the readings' float32 bits
#   then the move rule's constants (moverule.py; else unused):
#   H, limit[c] (Q10), coef[c*c] (Q12 [b]; -1 on the diagonal)
# (micropython.viper and const are the compiler's own: no import, no module globals; the
# underscore keeps the constant out of the module's dict)
_BIAS = const(536870912)  # noqa: F821 -- 2**29


@micropython.viper  # noqa: F821
def pre(s: ptr32, b: ptr32, q: ptr8, z: int) -> int:
    """u now of every model channel from the reading's bits b; the int8 window into q
    (oldest first; z = 1: only its newest row, for a streaming model whose last window
    this one moves by a sample) when the history is long enough: then 1 (the band kernel, seed or
    residual.judge, then puts the sample into the history), else 0 (the sample goes
    into the history here)."""
    nc = int(s[1])
    lim = 1 << 28
    for j in range(nc):
        cb = 27 + 22 * j
        v = int(b[int(s[cb])])
        e = (v >> 23) & 0xFF
        mv = (v & 0x7FFFFF) | 0x800000  # (a denormal reads as 2**-126: no matter here)
        if (v >> 31) & 1:
            mv = 0 - mv
        # the value in the channel's units of 2**E (under 2**29 for any plausible value)
        a = e - 150 - (int(s[cb + 2]) - _BIAS)
        x = 0
        if a > 5:
            x = lim << 1
            if mv < 0:
                x = 0 - x
        elif a >= 0:
            x = mv << a
        elif a > -31:
            x = mv >> (0 - a)
        d = x - (int(s[cb + 1]) - _BIAS)
        mi = int(s[cb + 3])
        t = (d >> 15) * mi + (((d & 0x7FFF) * mi) >> 15)
        sh = int(s[cb + 4]) - _BIAS
        u = 0
        if sh >= 0:
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
        s[cb + 5] = u + _BIAS
    pos = int(s[2])
    if nc == 0 or int(s[3]) < int(s[22]):
        # no band this sample: the reading goes into the history now (else after the band)
        n = int(s[0])
        r = 27 + 22 * n + pos * n
        if nc == 0:
            for c in range(n):
                s[r + c] = b[c]
        for j in range(nc):
            s[r + j] = s[27 + 22 * j + 5]
        s[2] = (pos + 1) & 127
        if int(s[3]) < 128:
            s[3] = int(s[3]) + 1
        return 0
    wn = int(s[4])
    ring = 27 + 22 * nc
    zp = int(s[8]) - _BIAS
    im = int(s[9])
    ish = int(s[10]) - 15
    uq = int(s[25])
    i = 0
    t0 = 0
    if z:
        t0 = wn - 1
        i = t0 * nc
    for t in range(t0, wn):
        r = ring + ((pos - wn + t) & 127) * nc
        for j in range(nc):
            x = int(s[r + j]) - _BIAS
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


@micropython.viper  # noqa: F821
def milli(s: ptr32, k: ptr32):
    """pred, lo, hi of every model channel as integers round(x * 1000), x in physical
    units, into k (Detector.fixed's layout: pred at the sensor channel c, lo and hi at
    n + 2c and n + 2c + 1) from their Q16 words, by the per-channel factors detset.milli
    put after them (k[3n + 3j ...]: M, F + 32, O [b]): (u * M / 2**30 + O) / 2**F rounded,
    where M / 2**30 = scale * 1000 / 65536 * 2**F and O = offset * 1000 * 2**F; the product
    in 15-bit limbs, each part rounded, every intermediate within 32 bits: the same on
    every port. Within 2**-F of the exact value when F > 0 (a scale under 32 units; 2**-F
    thousandths, the sum's own step, above)."""
    n = int(s[0])
    for j in range(int(s[1])):
        cb = 27 + 22 * j
        p = 3 * n + 3 * j
        m = int(k[p])
        mh = m >> 15
        ml = m & 0x7FFF
        f = int(k[p + 1]) - 32
        o = int(k[p + 2]) - _BIAS
        if f > 0:
            o += 1 << (f - 1)
        c = int(s[cb])
        d = n + 2 * c - 1
        for i in range(3):
            x = int(s[cb + 6 + i]) - _BIAS
            t = (x >> 15) * ml + ((((x & 0x7FFF) * ml) + 0x4000) >> 15)
            x = (x >> 15) * mh + ((((x & 0x7FFF) * mh) + 0x4000) >> 15) + ((t + 0x4000) >> 15) + o
            if f > 0:
                x = x >> f
            else:
                x = x << (0 - f)
            if i:
                k[d + i] = x
            else:
                k[c] = x


@micropython.viper  # noqa: F821
def put(o: ptr8, t: ptr8, a: ptr32, nt: int) -> int:
    """Text t (nt bytes) into o with each "%d" in it replaced by the next of a's numbers,
    in decimal (the telemetry: App.message). Returns the length written; o holds nt + 11
    bytes a number (the caller checks). Here, not in schema: a native block loaded with the
    rules' while the heap is in one piece."""
    ia = 0
    n = 0
    i = 0
    h = 32768
    top = h * h + (h * h - 1)  # 2**31 - 1 (a literal that big is an object to the emitter)
    while i < nt:
        c = int(t[i])
        i += 1
        if c != 37:  # "%"
            o[n] = c
            n += 1
            continue
        i += 1  # its "d"
        v = int(a[ia])
        ia += 1
        if v > top:  # a 64-bit emitter reads the word unsigned: back to signed
            v = v - top - top - 2
        if v < 0:
            o[n] = 45  # "-"
            n += 1
            v = 0 - v
        p = 1000000000
        while p > v and p > 1:
            p = p // 10
        while p > 0:
            o[n] = 48 + v // p
            n += 1
            v = v % p
            p = p // 10
    return n
