// The engine's int8 kernels in C: a MicroPython dynamic native module (.mpy natmod) for
// ARCH=rv32imc (the ESP32-C3), built by edgewatch.board.natmod. Same functions, arguments
// and parameter blocks as firmware/kernels.py (read its header), the same results bit for
// bit: TensorFlow Lite Micro's reference arithmetic (conv.cc / add.cc, common.h's
// MultiplyByQuantizedMultiplier), on int32_t/int64_t as TFLM computes it. engine.py
// imports this module when the board has it and falls back to the viper kernels.
//
// Parameter blocks (array('I') of two's-complement words, plan.py's _block):
// conv: 0 nrows 1 unused 2 in_ch 3 out_ch 4 kernel 5 dilation 6 pad_left
//   7 input offset (-zp) 8 output zp 9 act min 10 act max 11.. rows, then per output
//   channel bias, multiplier, shift; bias = TFLM's bias + (offset - 128) * sum(weights), so
//   acc = bias + sum over the real taps of (x + 128) * w + (128 - offset) * sum(w of the
//   taps that read the left padding) is TFLM's accumulator.
// add: 0 nrows 1 cols 2 offset1 3 offset2 4 output zp 5 left shift 6 m1 7 s1 8 m2 9 s2
//   10 m_out 11 s_out 12 act min 13 act max 14.. rows
// EWKERN_BROKEN (tests only): the deliberately broken multiply of issue 17 (the product
// kept to 32 bits), to show the bit-exact tests catch it.
#include "py/dynruntime.h"

// SaturatingRoundingDoublingHighMul: (a*b + nudge) / 2**31 truncated, with nudge 2**30 or
// 1 - 2**30 by the product's sign, is floor((a*b + 2**30) / 2**31) for either sign
static inline int32_t srdhm(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    #ifdef EWKERN_BROKEN  // the multiply on 32-bit words, as the unsplit viper one wraps
    return (int32_t)(((uint32_t)a * (uint32_t)b + (1u << 30)) >> 31);
    #else
    return (int32_t)(((int64_t)a * b + (1 << 30)) >> 31);
    #endif
}

// RoundingDivideByPOT: rounds half away from zero
static inline int32_t rdbpot(int32_t x, int e) {
    int32_t mask = (int32_t)((1u << e) - 1u);
    int32_t rem = x & mask;
    int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > thr ? 1 : 0);
}

static inline int32_t mbqm(int32_t x, int32_t m, int32_t s) {
    int ls = s > 0 ? s : 0;
    int rs = s > 0 ? 0 : -s;
    return rdbpot(srdhm((int32_t)((uint32_t)x << ls), m), rs);
}

static inline int32_t clamp(int32_t h, int32_t lo, int32_t hi) {
    if (h < lo) {
        h = lo;
    }
    if (h > hi) {
        h = hi;
    }
    return h;
}

static void *buf(mp_obj_t o, int flags) {
    mp_buffer_info_t b;
    mp_get_buffer_raise(o, &b, flags);
    return b.buf;
}

// sum over n bytes of (x + 128) * w (x, w int8), wrapping as int32
static inline uint32_t mac(const int8_t *x, const int8_t *w, int n) {
    uint32_t acc = 0;
    while (n >= 4) {
        acc += (uint32_t)((x[0] + 128) * w[0] + (x[1] + 128) * w[1]
            + (x[2] + 128) * w[2] + (x[3] + 128) * w[3]);
        x += 4;
        w += 4;
        n -= 4;
    }
    while (n > 0) {
        acc += (uint32_t)((*x++ + 128) * *w++);
        n--;
    }
    return acc;
}

// conv(x, w, p, y)
static mp_obj_t conv(size_t n_args, const mp_obj_t *args) {
    const int8_t *x = buf(args[0], MP_BUFFER_READ);
    const int8_t *w = buf(args[1], MP_BUFFER_READ);
    const int32_t *p = buf(args[2], MP_BUFFER_READ);
    int8_t *y = buf(args[3], MP_BUFFER_WRITE);
    int nrows = p[0], in_ch = p[2], out_ch = p[3], ks = p[4], dil = p[5], pad = p[6];
    int32_t po = 128 - p[7], out_zp = p[8], amin = p[9], amax = p[10];
    int kin = ks * in_ch;
    for (int r = 0; r < nrows; r++) {
        int t = p[11 + r];
        // taps before k0 read the left padding; tap k reads row ti + (k - k0) * dil
        int k0 = 0, ti = t - pad;
        while (ti < 0 && k0 < ks) {
            ti += dil;
            k0++;
        }
        const int8_t *xs = x + ti * in_ch;
        const int32_t *c = p + 11 + nrows;
        const int8_t *wo = w;
        int8_t *yr = y + t * out_ch;
        for (int oc = 0; oc < out_ch; oc++, c += 3, wo += kin) {
            uint32_t acc = (uint32_t)c[0];
            if (k0) {
                int32_t sw = 0;
                for (int j = 0; j < k0 * in_ch; j++) {
                    sw += wo[j];
                }
                acc += (uint32_t)(po * sw);
            }
            if (dil == 1 || ks == 1) {
                acc += mac(xs, wo + k0 * in_ch, kin - k0 * in_ch);
            } else {
                const int8_t *xk = xs;
                for (int k = k0; k < ks; k++, xk += dil * in_ch) {
                    acc += mac(xk, wo + k * in_ch, in_ch);
                }
            }
            yr[oc] = (int8_t)clamp(mbqm((int32_t)acc, c[1], c[2]) + out_zp, amin, amax);
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(conv_obj, 4, 4, conv);

// add(p, a, b, y)
static mp_obj_t add(size_t n_args, const mp_obj_t *args) {
    const int32_t *p = buf(args[0], MP_BUFFER_READ);
    const int8_t *a = buf(args[1], MP_BUFFER_READ);
    const int8_t *b = buf(args[2], MP_BUFFER_READ);
    int8_t *y = buf(args[3], MP_BUFFER_WRITE);
    int nrows = p[0], cols = p[1], ls = p[5];
    int32_t off1 = p[2], off2 = p[3], out_zp = p[4];
    int32_t m1 = p[6], s1 = p[7], m2 = p[8], s2 = p[9], mo = p[10], so = p[11];
    int32_t amin = p[12], amax = p[13];
    for (int r = 0; r < nrows; r++) {
        int base = p[14 + r] * cols;
        for (int i = base; i < base + cols; i++) {
            int32_t u1 = (int32_t)((uint32_t)(a[i] + off1) << ls);
            int32_t u2 = (int32_t)((uint32_t)(b[i] + off2) << ls);
            int32_t sum = (int32_t)((uint32_t)rdbpot(srdhm(u1, m1), -s1)
                + (uint32_t)rdbpot(srdhm(u2, m2), -s2));
            y[i] = (int8_t)clamp(rdbpot(srdhm(sum, mo), -so) + out_zp, amin, amax);
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(add_obj, 4, 4, add);

// copy(src, dst, first, count): dst[i] = src[first + i]
static mp_obj_t copy(size_t n_args, const mp_obj_t *args) {
    const uint8_t *src = buf(args[0], MP_BUFFER_READ);
    uint8_t *dst = buf(args[1], MP_BUFFER_WRITE);
    memmove(dst, src + mp_obj_get_int(args[2]), mp_obj_get_int(args[3]));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(copy_obj, 4, 4, copy);

// rings(x, y, d, first): every ring moves one row back, then the input row at `first` of
// the window y enters (kernels.rings; d: moves, then per move offset, step, count; then
// the newest input row's offset in x and its bytes)
static mp_obj_t rings(size_t n_args, const mp_obj_t *args) {
    uint8_t *a = buf(args[0], MP_BUFFER_WRITE);
    const uint8_t *src = buf(args[1], MP_BUFFER_READ);
    const int32_t *d = buf(args[2], MP_BUFFER_READ);
    int n = d[0];
    d++;
    for (; n > 0; n--, d += 3) {
        memmove(a + d[0], a + d[0] + d[1], d[2]);
    }
    memmove(a + d[0], src + mp_obj_get_int(args[3]), d[1]);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(rings_obj, 4, 4, rings);

// same(a, b, first, count): 1 when a[first + i] == b[i] for every i < count, else 0
static mp_obj_t same(size_t n_args, const mp_obj_t *args) {
    const uint8_t *a = buf(args[0], MP_BUFFER_READ);
    const uint8_t *b = buf(args[1], MP_BUFFER_READ);
    a += mp_obj_get_int(args[2]);
    int n = mp_obj_get_int(args[3]);
    for (int i = 0; i < n; i++) {
        if (a[i] != b[i]) {
            return MP_OBJ_NEW_SMALL_INT(0);
        }
    }
    return MP_OBJ_NEW_SMALL_INT(1);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(same_obj, 4, 4, same);

// run(plan, _, _, _): every record (f, a, b, c, d) of the list plan, f(a, b, c, d), in one
// call from the engine (plan.py hands it the ops' records as one record): a call from
// bytecode costs hundreds of instructions on RV32, more than a small op's work
static mp_obj_t run(size_t n_args, const mp_obj_t *args) {
    size_t n, k;
    mp_obj_t *plan, *rec;
    mp_obj_get_array(args[0], &n, &plan);
    for (size_t i = 0; i < n; i++) {
        mp_obj_get_array(plan[i], &k, &rec);
        if (k != 5) {
            mp_raise_ValueError(MP_ERROR_TEXT("run: records are (f, a, b, c, d)"));
        }
        if (rec[0] == MP_OBJ_FROM_PTR(&conv_obj)) {
            conv(4, rec + 1);
        } else if (rec[0] == MP_OBJ_FROM_PTR(&add_obj)) {
            add(4, rec + 1);
        } else {
            mp_call_function_n_kw(rec[0], 4, 0, rec + 1);
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(run_obj, 4, 4, run);

// CRC-32 of zlib (binascii.crc32's) over n bytes, continuing c, a nibble at a time
static uint32_t crc32n(uint32_t c, const uint8_t *p, size_t n) {
    static const uint32_t nib[16] = {
        0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158,
        0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4,
        0xa00ae278, 0xbdbdf21c};
    c = ~c;
    while (n--) {
        c ^= *p++;
        c = (c >> 4) ^ nib[c & 15];
        c = (c >> 4) ^ nib[c & 15];
    }
    return ~c;
}

static inline void le32(uint8_t *o, uint32_t v) {
    o[0] = v;
    o[1] = v >> 8;
    o[2] = v >> 16;
    o[3] = v >> 24;
}

// tel(seg, at, tpl, lh, head, band, kind, seq, dropped) -> end: the outbox record of one
// telemetry message written straight into the segment seg at `at` (firmware/outbox.py's
// layout: 0xA5, kind, length u16, seq u32, dropped u32, CRC-32 u32 of those 12 bytes and
// the payload, then the payload): the payload is tpl's text with each "%d" replaced by the
// next number in decimal, from the array('i') head while in tpl's first lh bytes, then from
// band (detk.put's job, and App.message's, in one call). Returns the payload's end in seg.
static mp_obj_t tel(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t sb, tb, hb, bb;
    mp_get_buffer_raise(args[0], &sb, MP_BUFFER_WRITE);
    mp_int_t at = mp_obj_get_int(args[1]);
    mp_get_buffer_raise(args[2], &tb, MP_BUFFER_READ);
    mp_int_t lh = mp_obj_get_int(args[3]);
    mp_get_buffer_raise(args[4], &hb, MP_BUFFER_READ);
    mp_get_buffer_raise(args[5], &bb, MP_BUFFER_READ);
    if (at < 0 || (size_t)at + 16 > sb.len) {
        mp_raise_ValueError(MP_ERROR_TEXT("tel: record outside the segment"));
    }
    uint8_t *rec = (uint8_t *)sb.buf + at;
    uint8_t *o = rec + 16;
    uint8_t *end = (uint8_t *)sb.buf + sb.len;
    const uint8_t *t = tb.buf;
    const int32_t *hv = hb.buf, *bv = bb.buf;
    size_t nh = hb.len / 4, nb = bb.len / 4, ih = 0, ib = 0;
    for (size_t i = 0; i < tb.len; i++) {
        uint8_t c = t[i];
        if (c != '%') {
            if (o >= end) {
                goto full;
            }
            *o++ = c;
            continue;
        }
        int32_t v;
        if ((mp_int_t)i < lh) {
            if (ih >= nh) {
                goto many;
            }
            v = hv[ih++];
        } else {
            if (ib >= nb) {
                goto many;
            }
            v = bv[ib++];
        }
        i++;  // its "d"
        if (end - o < 11) {
            goto full;
        }
        uint32_t u = (uint32_t)v;
        if (v < 0) {
            *o++ = '-';
            u = 0u - u;
        }
        uint8_t d[10];
        int k = 0;
        do {
            d[k++] = '0' + u % 10;
            u /= 10;
        } while (u);
        while (k) {
            *o++ = d[--k];
        }
    }
    size_t n = o - (rec + 16);
    if (n > 0xFFFF) {
        goto full;
    }
    rec[0] = 0xA5;
    rec[1] = mp_obj_get_int(args[6]);
    rec[2] = n;
    rec[3] = n >> 8;
    le32(rec + 4, mp_obj_get_int(args[7]));
    le32(rec + 8, mp_obj_get_int(args[8]));
    le32(rec + 12, crc32n(crc32n(0, rec, 12), rec + 16, n));
    return MP_OBJ_NEW_SMALL_INT(at + 16 + n);
full:
    mp_raise_ValueError(MP_ERROR_TEXT("tel: record over the segment"));
many:
    mp_raise_ValueError(MP_ERROR_TEXT("tel: more %d than numbers"));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(tel_obj, 9, 9, tel);

mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY
    mp_store_global(MP_QSTR_conv, MP_OBJ_FROM_PTR(&conv_obj));
    mp_store_global(MP_QSTR_add, MP_OBJ_FROM_PTR(&add_obj));
    mp_store_global(MP_QSTR_copy, MP_OBJ_FROM_PTR(&copy_obj));
    mp_store_global(MP_QSTR_rings, MP_OBJ_FROM_PTR(&rings_obj));
    mp_store_global(MP_QSTR_same, MP_OBJ_FROM_PTR(&same_obj));
    mp_store_global(MP_QSTR_run, MP_OBJ_FROM_PTR(&run_obj));
    mp_store_global(MP_QSTR_tel, MP_OBJ_FROM_PTR(&tel_obj));
    MP_DYNRUNTIME_INIT_EXIT
}
