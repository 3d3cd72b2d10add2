# int8 kernels of the model engine, bit-exact with TensorFlow Lite Micro's
# reference kernels (conv.cc / fully_connected.cc / add.cc and common.h's
# MultiplyByQuantizedMultiplier with its double rounding).
#
# Written once, run two ways: compiled by the viper emitter (this module), or
# as plain bytecode by kernels_plain.py, which compiles this same source
# without the decorators on ports that lack the native emitter. So:
# - only operations whose results are the same in both worlds: every
#   intermediate stays inside signed 32 bits (the 32x32->64 bit product of the
#   requantisation is done in 11-bit limbs), since viper ints are machine words
#   (32-bit on the ESP32, 64-bit on the unix port);
# - parameter blocks are array('I') of two's-complement words, read back
#   signed with sx32 below (viper's ptr32 loads zero-extend on 64-bit machines);
# - at most 4 arguments per function (viper's limit on some ports);
# - nothing allocates: no floats, no slices, no objects.
#
# Parameter block of conv (also FC, as a 1x1 conv over one row):
#   0 nrows 1 unused 2 in_ch 3 out_ch 4 kernel 5 dilation 6 pad_left
#   7 input offset (-zp) 8 output zp 9 act min 10 act max
#   11.. rows to compute, then per output channel: bias, multiplier, shift
# Parameter block of add:
#   0 nrows 1 cols 2 offset1 3 offset2 4 output zp 5 left shift 6 m1 7 s1
#   8 m2 9 s2 10 m_out 11 s_out 12 act min 13 act max 14.. rows
# sx32(v) = v - ((((v >> 31) & 1) << 16) << 16): on 64-bit it subtracts 2**32
# from a zero-extended negative word; on 32-bit the double shift wraps to 0.
import micropython


@micropython.viper
def conv(p: ptr32, x: ptr8, y: ptr8, w: ptr8):
    nrows = int(p[0])
    in_ch = int(p[2])
    out_ch = int(p[3])
    ks = int(p[4])
    dil = int(p[5])
    pad = int(p[6])
    v = int(p[7])
    in_off = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[8])
    out_zp = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[9])
    amin = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[10])
    amax = v - ((((v >> 31) & 1) << 16) << 16)
    chan = 11 + nrows
    for r in range(nrows):
        t = int(p[11 + r])
        for oc in range(out_ch):
            v = int(p[chan + 3 * oc])
            acc = v - ((((v >> 31) & 1) << 16) << 16)
            wb = oc * ks * in_ch
            for k in range(ks):
                ti = t + k * dil - pad
                if ti >= 0:
                    xb = ti * in_ch
                    wk = wb + k * in_ch
                    for ic in range(in_ch):
                        acc += (((x[xb + ic] ^ 0x80) - 0x80) + in_off) * ((w[wk + ic] ^ 0x80) - 0x80)
            m = int(p[chan + 3 * oc + 1])
            v = int(p[chan + 3 * oc + 2])
            s = v - ((((v >> 31) & 1) << 16) << 16)
            # MultiplyByQuantizedMultiplier(acc, m, s), inlined here and in the ADD kernel on
            # purpose: a viper-to-viper call goes through the generic call path and would
            # cost more than the whole requantisation, once per output value.
            rs = 0
            if s > 0:
                acc = acc << s
            else:
                rs = 0 - s
            neg = 0
            if acc < 0:
                neg = 1
                acc = 0 - acc
            c = 0x3FFFFFFF + 1 - neg  # 2**30 - neg; 2**30 itself is no small int on 32-bit ports
            u0 = acc & 0x7FF
            u1 = (acc >> 11) & 0x7FF
            u2 = acc >> 22
            m0 = m & 0x7FF
            m1 = (m >> 11) & 0x7FF
            m2 = m >> 22
            q = u0 * m0 + (c & 0x7FF)
            q = (q >> 11) + u0 * m1 + u1 * m0 + ((c >> 11) & 0x7FF)
            q = (q >> 11) + u0 * m2 + u1 * m1 + u2 * m0 + (c >> 22)
            l2 = q & 0x7FF
            q = (q >> 11) + u1 * m2 + u2 * m1
            l3 = q & 0x7FF
            q = (q >> 11) + u2 * m2
            h = (q << 13) + (l3 << 2) + (l2 >> 9)
            if neg:
                h = 0 - h
            mask = (1 << rs) - 1
            thr = mask >> 1
            if h < 0:
                thr += 1
            if (h & mask) > thr:
                h = (h >> rs) + 1
            else:
                h = h >> rs
            h += out_zp
            if h < amin:
                h = amin
            if h > amax:
                h = amax
            y[t * out_ch + oc] = h & 0xFF


@micropython.viper
def add(p: ptr32, a: ptr8, b: ptr8, y: ptr8):
    nrows = int(p[0])
    cols = int(p[1])
    v = int(p[2])
    off1 = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[3])
    off2 = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[4])
    out_zp = v - ((((v >> 31) & 1) << 16) << 16)
    ls = int(p[5])
    v = int(p[12])
    amin = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[13])
    amax = v - ((((v >> 31) & 1) << 16) << 16)
    for r in range(nrows):
        base = int(p[14 + r]) * cols
        for i in range(base, base + cols):
            first = 0
            h = 0
            # three requantisations: input 1, input 2, then their sum
            for j in range(3):
                if j == 0:
                    acc = (((a[i] ^ 0x80) - 0x80) + off1) << ls
                elif j == 1:
                    first = h
                    acc = (((b[i] ^ 0x80) - 0x80) + off2) << ls
                else:
                    acc = first + h
                m = int(p[6 + 2 * j])
                v = int(p[7 + 2 * j])
                rs = 0 - (v - ((((v >> 31) & 1) << 16) << 16))  # shifts are <= 0 in ADD
                neg = 0
                if acc < 0:
                    neg = 1
                    acc = 0 - acc
                c = 0x3FFFFFFF + 1 - neg  # 2**30 - neg; 2**30 itself is no small int on 32-bit ports
                u0 = acc & 0x7FF
                u1 = (acc >> 11) & 0x7FF
                u2 = acc >> 22
                m0 = m & 0x7FF
                m1 = (m >> 11) & 0x7FF
                m2 = m >> 22
                q = u0 * m0 + (c & 0x7FF)
                q = (q >> 11) + u0 * m1 + u1 * m0 + ((c >> 11) & 0x7FF)
                q = (q >> 11) + u0 * m2 + u1 * m1 + u2 * m0 + (c >> 22)
                l2 = q & 0x7FF
                q = (q >> 11) + u1 * m2 + u2 * m1
                l3 = q & 0x7FF
                q = (q >> 11) + u2 * m2
                h = (q << 13) + (l3 << 2) + (l2 >> 9)
                if neg:
                    h = 0 - h
                mask = (1 << rs) - 1
                thr = mask >> 1
                if h < 0:
                    thr += 1
                if (h & mask) > thr:
                    h = (h >> rs) + 1
                else:
                    h = h >> rs
            h += out_zp
            if h < amin:
                h = amin
            if h > amax:
                h = amax
            y[i] = h & 0xFF


@micropython.viper
def copy(src: ptr8, dst: ptr8, first: int, count: int):
    for i in range(count):
        dst[i] = src[first + i]
