# The seed's band of firmware/detector.py (mode "seed": a model without the residual band's
# calibration, or `band: seed` in the config), loaded only for such a model: the boards whose
# models carry the residual band (residual.py) keep its native code off the heap.
# firmware/detk.py's units, state block and rules for code that runs two ways (viper, and
# plain bytecode through detk_plain.py).
import micropython
from micropython import const

_BIAS = const(536870912)  # detk.py's bias of signed words, 2**29


@micropython.viper  # noqa: F821
def seed(s: ptr32, b: ptr32, z: int, o: ptr8) -> int:
    """The seed's band on the model's int8 output o: outside pred +- k*(sigma + eps), sigma
    the population std of the last sigma-window samples. Bit j: channel j flagged.
    Fills pred/lo/hi."""
    nc = int(s[1])
    pos = int(s[2])
    ring = 27 + 22 * nc
    newest = ring + ((pos - 1) & 127) * nc
    om = int(s[11])
    osh = int(s[12]) - _BIAS  # >= 1
    ozp = int(s[13]) - _BIAS
    km = int(s[14])
    ksh = int(s[15])
    sw = int(s[6])
    flags = 0
    for j in range(nc):
        cb = 27 + 22 * j
        p = (((int(o[j]) ^ 0x80) - 0x80) - ozp) * om
        p = (p + (1 << (osh - 1))) >> osh
        if int(s[7]):
            p += int(s[newest + j]) - _BIAS
        # deviations from the window's minimum (sigma is shift-invariant), in 13 bits:
        # pass 0 the range, 1 the mean, 2 the variance
        lo = 1 << 29
        hi = 0 - lo
        sh = 0
        tot = 0
        v2 = 0
        for ph in range(3):
            for k in range(sw):
                w = int(s[ring + ((pos - 1 - k) & 127) * nc + j])
                if ph == 0:
                    if w < lo:
                        lo = w
                    if w > hi:
                        hi = w
                elif ph == 1:
                    tot += (w - lo) >> sh
                else:
                    w = (((w - lo) >> sh) << 2) - tot
                    v2 += (w * w) >> 6
            if ph == 0:
                while ((hi - lo) >> sh) >= 8192:
                    sh += 1
            elif ph == 1:
                tot = (tot << 2) // sw  # the mean, Q2
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
        w = int(s[26])  # the largest sigma + eps that k can multiply
        sig = w  # sigma + eps, Q18
        if sh < 12:
            sig = (r << (sh + 1)) + int(s[16])
        if sig > w:
            sig = w
        half = (sig >> ksh) * km + (((sig & ((1 << ksh) - 1)) * km) >> ksh)
        half = (half + 2) >> 2
        if p > (1 << 28):
            p = 1 << 28
        elif p < 0 - (1 << 28):
            p = 0 - (1 << 28)
        s[cb + 6] = p + _BIAS
        s[cb + 7] = p - half + _BIAS
        s[cb + 8] = p + half + _BIAS
        u = int(s[cb + 5]) - _BIAS
        if not (p - half < u and u < p + half):
            flags |= 1 << j
    # the reading into the history
    for j in range(nc):
        s[ring + pos * nc + j] = s[27 + 22 * j + 5]
    s[2] = (pos + 1) & 127
    if int(s[3]) < 128:
        s[3] = int(s[3]) + 1
    return flags
