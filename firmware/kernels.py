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
#   11.. rows to compute, then per output channel: bias, multiplier, shift,
#   where bias = TFLM's bias + (offset - 128) * sum(weights) (plan._block): the
#   MACs then need no offset, sum((x ^ 0x80) * w), computed as
#   sum((x ^ 0x80) * (w ^ 0x80)) - 128 * sum(x ^ 0x80) (the second sum once per row,
#   for every output channel), and taps that read the left padding add
#   (128 - offset) * sum(their weights).
# Parameter block of add:
#   0 nrows 1 cols 2 offset1 3 offset2 4 output zp 5 left shift 6 m1 7 s1
#   8 m2 9 s2 10 m_out 11 s_out 12 act min 13 act max 14.. rows
# sx32(v) = v - ((((v >> 31) & 1) << 16) << 16): on 64-bit it subtracts 2**32
# from a zero-extended negative word; on 32-bit the double shift wraps to 0.
import micropython


@micropython.viper
def conv(x: ptr8, w: ptr8, p: ptr32, y: ptr8):
    nrows = int(p[0])
    in_ch = int(p[2])
    out_ch = int(p[3])
    ks = int(p[4])
    dil = int(p[5])
    pad = int(p[6])
    v = int(p[7])
    po = 0x80 - (v - ((((v >> 31) & 1) << 16) << 16))  # what a padded tap's byte would add
    v = int(p[8])
    out_zp = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[9])
    amin = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[10])
    amax = v - ((((v >> 31) & 1) << 16) << 16)
    kin = ks * in_ch
    flat = 0
    if dil == 1 or ks == 1:  # the real taps' rows are adjacent: one run of bytes
        flat = 1
    # a run: bytes of x read in a row (all taps at once when their rows are adjacent)
    rlen0 = in_ch
    nrun0 = ks
    if flat:
        rlen0 = kin
        nrun0 = 1
    xjump = dil * in_ch - in_ch  # from a tap's run to the next one's (runs of in_ch)
    xa = int(x)  # addresses: the MAC loops walk running pointers (constant offsets are cheapest)
    w0 = int(w)  # weights are [out_ch][ks][in_ch]
    for r in range(nrows):
        # this row's taps, the same for every output channel: taps before k0 read the left
        # padding (the input zero point); the real ones are nrun runs of rlen bytes from xs
        t = int(p[11 + r])
        k0 = 0
        ti = t - pad
        while ti < 0 and k0 < ks:
            ti += dil
            k0 += 1
        rlen = rlen0
        nrun = nrun0
        if k0:
            if flat:
                rlen = kin - k0 * in_ch
            else:
                nrun = ks - k0
        xs = xa + ti * in_ch
        # sum((x ^ 0x80) * w) = sum((x ^ 0x80) * (w ^ 0x80)) - 128 * sum(x ^ 0x80): the
        # second sum once for the row, so a MAC needs no sign of its weight
        x = ptr8(xs)
        sx = 0
        j = nrun
        while j > 0:
            for i in range(rlen):
                sx += x[i] ^ 0x80
            x = ptr8(int(x) + rlen + xjump)
            j -= 1
        sx = sx << 7
        wo = w0
        c = 11 + nrows
        for oc in range(out_ch):
            v = int(p[c])
            acc = v - ((((v >> 31) & 1) << 16) << 16) - sx  # the bias
            m = int(p[c + 1])
            v = int(p[c + 2])
            s = v - ((((v >> 31) & 1) << 16) << 16)
            c += 3
            if k0:  # the padded taps' terms: po * sum(w) over them (bias has the rest)
                w = ptr8(wo)
                j = k0 * in_ch
                v = 0 - (j << 7)  # sum(w) = sum(w ^ 0x80) - 128 * count
                while j:
                    j -= 1
                    v += w[j] ^ 0x80
                acc += po * v
            w = ptr8(wo + k0 * in_ch)
            x = ptr8(xs)
            # 4 MACs a turn, then one at a time
            j = nrun
            while j > 0:
                for i in range(rlen >> 2):
                    acc += ((x[0] ^ 0x80) * (w[0] ^ 0x80) + (x[1] ^ 0x80) * (w[1] ^ 0x80)
                            + (x[2] ^ 0x80) * (w[2] ^ 0x80) + (x[3] ^ 0x80) * (w[3] ^ 0x80))
                    x = ptr8(int(x) + 4)
                    w = ptr8(int(w) + 4)
                i = rlen & 3
                while i:
                    acc += (x[0] ^ 0x80) * (w[0] ^ 0x80)
                    x = ptr8(int(x) + 1)
                    w = ptr8(int(w) + 1)
                    i -= 1
                x = ptr8(int(x) + xjump)
                j -= 1
            wo += kin
            ls = 0
            rs = 0
            if s > 0:
                ls = s
            else:
                rs = 0 - s
            rb = 0  # rounding bit: bit rs-1 of the magnitude (none when rs = 0)
            if rs:
                rb = 1
            rq = rs - rb
            mf = m >> 15
            mh = mf & 0x7FFF
            ml = m & 0x7FFF
            hb = m >> 30
            # MultiplyByQuantizedMultiplier(acc, m, s), inlined here and in the ADD kernel on
            # purpose: a viper-to-viper call goes through the generic call path and would
            # cost more than the whole requantisation, once per output value.
            acc = acc << ls
            neg = 0
            if acc < 0:
                neg = 1
                acc = 0 - acc
            # (acc * m + 2**30 - neg) >> 31, every product and sum below 2**31:
            if acc < 0x8000:  # m = mf*2**15 + ml
                h = (acc * mf + 0x8000 + ((acc * ml - neg) >> 15)) >> 16
            else:  # m = hb*2**30 + mh*2**15 + ml, acc = ah*2**16 + al
                al = acc & 0xFFFF
                p1 = al * mh
                p2 = (acc >> 16) * ml
                h = ((((hb & acc) + 1) << 15) + (p1 & 0xFFFF) + ((p2 & 0x7FFF) << 1)
                     + ((al * ml - neg) >> 15)) >> 16
                h += (acc >> 16) * mh + (p1 >> 16) + (p2 >> 15)
                if hb:
                    h += acc >> 1
            # RoundingDivideByPOT rounds half away from zero: on the magnitude, half up
            h = (h >> rs) + ((h >> rq) & rb)  # (h + 2**(rs-1)) >> rs without overflow
            if neg:
                h = 0 - h
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
    # An input's requantisation: acc = u << ls with |u| < 2**8, and 9 <= ls <= 22 (the
    # engine checks; TFLM uses 20), so with m = mh*2**sh + ml, sh = 31 - ls:
    # (acc * m + 2**30 - neg) >> 31 = u*mh + ((u*ml + 2**(sh-1) - neg) >> sh).
    sh = 31 - int(p[5])
    cr = 1 << (sh - 1)
    m = int(p[6])
    mh1 = m >> sh
    ml1 = m & ((1 << sh) - 1)
    v = int(p[7])
    rs1 = 0 - (v - ((((v >> 31) & 1) << 16) << 16))  # shifts are <= 0 in ADD
    hf1 = 0
    if rs1:
        hf1 = 1 << (rs1 - 1)  # (1 << 31 is negative on 32-bit words)
    m = int(p[8])
    mh2 = m >> sh
    ml2 = m & ((1 << sh) - 1)
    v = int(p[9])
    rs2 = 0 - (v - ((((v >> 31) & 1) << 16) << 16))
    hf2 = 0
    if rs2:
        hf2 = 1 << (rs2 - 1)  # (1 << 31 is negative on 32-bit words)
    m = int(p[10])
    mh = (m >> 15) & 0x7FFF
    ml = m & 0x7FFF
    hb = m >> 30
    v = int(p[11])
    rs = 0 - (v - ((((v >> 31) & 1) << 16) << 16))
    rb = 0
    if rs:
        rb = 1
    rq = rs - rb
    v = int(p[12])
    amin = v - ((((v >> 31) & 1) << 16) << 16)
    v = int(p[13])
    amax = v - ((((v >> 31) & 1) << 16) << 16)
    for r in range(nrows):
        base = int(p[14 + r]) * cols
        for i in range(base, base + cols):
            u = ((a[i] ^ 0x80) - 0x80) + off1
            if u < 0:
                u = 0 - u
                acc = 0 - ((u * mh1 + ((u * ml1 + cr - 1) >> sh) + hf1) >> rs1)
            else:
                acc = (u * mh1 + ((u * ml1 + cr) >> sh) + hf1) >> rs1
            u = ((b[i] ^ 0x80) - 0x80) + off2
            if u < 0:
                u = 0 - u
                acc -= (u * mh2 + ((u * ml2 + cr - 1) >> sh) + hf2) >> rs2
            else:
                acc += (u * mh2 + ((u * ml2 + cr) >> sh) + hf2) >> rs2
            # the sum's requantisation as in conv (acc = ah*2**16 + al, m in limbs)
            neg = 0
            if acc < 0:
                neg = 1
                acc = 0 - acc
            al = acc & 0xFFFF
            p1 = al * mh
            p2 = (acc >> 16) * ml
            h = ((acc >> 16) * mh + (p1 >> 16) + (p2 >> 15)
                 + (((((hb & acc) + 1) << 15) + (p1 & 0xFFFF) + ((p2 & 0x7FFF) << 1)
                     + ((al * ml - neg) >> 15)) >> 16))
            if hb:
                h += acc >> 1
            h = (h >> rs) + ((h >> rq) & rb)  # (h + 2**(rs-1)) >> rs without overflow
            if neg:
                h = 0 - h
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


@micropython.viper
def rings(x: ptr32, y: ptr32, d: ptr32, first: int):
    # A streaming step's start (engine.Model), in one call: every ring moves one row back,
    # then the input row at `first` of the window y enters. x: the rings' buffer; d
    # (plan.py): the number of moves; per move the ring's offset in x, its row's bytes
    # (step) and the bytes to move (count, a multiple of 4): a[o + i] = a[o + step + i]
    # for i < count; then the newest input row's offset in x and its bytes. Word by word
    # when step is a multiple of 4 (the rings start 4-byte aligned), four words a turn on
    # x and y (the two locals the emitter keeps in registers), else byte by byte (the
    # input's few bytes).
    a = int(x)
    src = int(y)
    n = int(d[0])
    k = 1
    while n > 0:
        o = a + int(d[k])
        step = int(d[k + 1])
        count = int(d[k + 2])
        k += 3
        n -= 1
        if step & 3:
            b = ptr8(o)
            for i in range(count):
                b[i] = b[step + i]
        else:
            x = ptr32(o)
            y = ptr32(o + step)
            i = count >> 4
            while i > 0:
                x[0] = y[0]
                x[1] = y[1]
                x[2] = y[2]
                x[3] = y[3]
                x = ptr32(int(x) + 16)
                y = ptr32(int(y) + 16)
                i -= 1
            i = (count >> 2) & 3
            while i > 0:
                x[0] = y[0]
                x = ptr32(int(x) + 4)
                y = ptr32(int(y) + 4)
                i -= 1
    b = ptr8(a + int(d[k]))
    q = ptr8(src + first)
    for i in range(int(d[k + 1])):
        b[i] = q[i]


@micropython.viper
def same(a: ptr8, b: ptr8, first: int, count: int) -> int:
    # 1 when a[first + i] == b[i] for every i < count, else 0
    for i in range(count):
        if a[first + i] != b[i]:
            return 0
    return 1

