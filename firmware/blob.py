# Parse and check an edgewatch model blob (format: docs/model_blob.md).
#
# Runs unchanged on MicroPython (the board's engine loads models with it) and
# on CPython (edgewatch.training.export.blob reads blobs back through this very module), so
# the format has one reader. Everything wrong with a blob is a BlobError whose
# message says what is wrong; nothing here trusts a length before checking it.
import binascii
import hashlib
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

VERSION = const(1)
FLAG_SIGNED = const(1)
FLAG_RESIDUAL = const(2)  # prediction = newest input sample + dequantised output
FLAG_SHIFT = const(4)  # a sustained-shift calibration follows the ops
FLAG_STILL = const(8)  # a u16 follows: whole reading unchanged this many samples = stuck
FLAG_OTA = const(16)  # signed for OTA: version u32 + key version u16 + 2 reserved before the HMAC
FLAG_BAND = const(32)  # the residual band's calibration follows (docs/model_blob.md)
FLAG_MOVE = const(64)  # the move rule's calibration follows (firmware/moverule.py)
FLAGS_KNOWN = const(127)
OP_CONV = const(1)
OP_ADD = const(2)
OP_FC = const(3)
OP_SLICE = const(4)
MAGIC = b"EWMB"
CRC_LEN = const(4)
MAX_ACTIVATIONS = const(32768)  # more can never fit a board's heap
MAC_LEN = const(32)
OTA_LEN = const(8)
OTA_FILE = "ota.ver"  # on the board: the highest OTA version whose signature held
HEADER = "<4sHHI4sHHBBxx"  # magic version flags length model_id window channels n_tensors n_ops
HEADER_LEN = const(24)
IOQ = "<fbfb"  # input scale, input zero point, output scale, output zero point
DETECTOR = "<ffHH"  # k, eps, sigma_window, stuck_samples
OP_HEAD = "<BbbBB"  # opcode, activation min, activation max, input tensor, output tensor
CONV_TAIL = "<BBBHHbb"  # kernel, dilation, pad_left, in_ch, out_ch, in_zp, out_zp
ADD_TAIL = "<BBbbbiiibbb"  # in2, left_shift, zp1, zp2, zp_out, m1, m2, m_out, s1, s2, s_out
SLICE_TAIL = "<HH"  # first element, element count


class BlobError(ValueError):
    """The model blob is malformed, corrupted, of another version or wrongly signed."""


def hmac_sha256(key, msg):
    """HMAC-SHA256 (RFC 2104) from hashlib.sha256, which both runtimes have."""
    if isinstance(key, str):
        key = key.encode()
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def _same(a, b):
    # Compare every byte so the time taken does not tell where a forged MAC differs.
    diff = len(a) ^ len(b)
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


def crc32(data):
    return binascii.crc32(data) & 0xFFFFFFFF


def check(blob, key=None):
    """Check magic, version, length, CRC32 and (with a non-empty `key`) the HMAC; return the body length."""
    n = len(blob)
    if n < HEADER_LEN + CRC_LEN:
        raise BlobError("blob truncated: %d bytes, a header alone is %d" % (n, HEADER_LEN))
    magic, version, flags, length = struct.unpack_from("<4sHHI", blob, 0)
    if magic != MAGIC:
        raise BlobError("not an edgewatch model blob (bad magic)")
    if version != VERSION:
        raise BlobError("blob format version %d, this engine reads version %d" % (version, VERSION))
    if length != n:
        raise BlobError("blob truncated or padded: header says %d bytes, got %d" % (length, n))
    signed = flags & FLAG_SIGNED
    if flags & FLAG_OTA and not signed:
        raise BlobError("blob has an OTA version but no signature")
    mac = n - MAC_LEN if signed else n  # the HMAC covers everything before it
    body = mac - CRC_LEN - (OTA_LEN if flags & FLAG_OTA else 0)
    if body < HEADER_LEN:
        raise BlobError("blob truncated: no room for its trailer")
    mv = memoryview(blob)
    (crc,) = struct.unpack_from("<I", blob, body)
    if crc != crc32(mv[:body]):
        raise BlobError("blob corrupted: CRC32 mismatch")
    if isinstance(key, tuple):  # the board's OTA path: (key or None, key version)
        _ota(blob, mv, flags, mac, key)
    elif key:  # None or empty: no key configured (sign() refuses empty keys)
        if not signed:
            raise BlobError("blob is not signed but a signing key is configured")
        if not _same(hmac_sha256(key, mv[:mac]), mv[mac:]):
            raise BlobError("blob signature does not match the key")
    return body


def _ota(blob, mv, flags, mac, key):
    # A model received over the air by a board (config.py makes its ota_key the tuple
    # (key, key version), or (None, 0) for a board without a key that does not allow
    # unsigned models): signed for OTA under this board's key and key version, and newer
    # than the highest version whose signature held (OTA_FILE): an older one is a
    # rollback. Here, in the parser the engine frees after each load, it costs a running
    # board no memory.
    k, kv = key
    if not k:
        raise BlobError("no ota_key on this board (ota_unsigned is false)")
    if not flags & FLAG_OTA:
        raise BlobError("not signed with an OTA version")
    if not _same(hmac_sha256(k, mv[:mac]), mv[mac:mac + MAC_LEN]):
        raise BlobError("blob signature does not match this board's key")
    v, bkv = struct.unpack_from("<IH", blob, mac - OTA_LEN)
    if bkv != kv:
        raise BlobError("signed with key version %d, this board has %d" % (bkv, kv))
    try:
        with open(OTA_FILE) as f:
            top = int(f.read())
    except (OSError, ValueError):
        top = 0
    if v <= top:
        raise BlobError("version %d is not newer than %d (a rollback)" % (v, top))
    with open(OTA_FILE, "w") as f:
        f.write("%d" % v)


class _Reader:
    def __init__(self, blob, end):
        self.b = blob
        self.mv = memoryview(blob)
        self.pos = 0
        self.end = end

    def take(self, n, what):
        if n < 0 or self.pos + n > self.end:
            raise BlobError("blob malformed: %s runs past the end" % what)
        p = self.pos
        self.pos = p + n
        return p

    def unpack(self, fmt, what):
        return struct.unpack_from(fmt, self.b, self.take(struct.calcsize(fmt), what))

    def array(self, fmt, count, what):
        return list(self.unpack("<%d%s" % (count, fmt), what))

    def view(self, n, what):
        p = self.take(n, what)
        return self.mv[p : p + n]


def _parse(self, blob, key):
    end = check(blob, key)
    r = _Reader(blob, end)
    h = r.unpack(HEADER, "header")
    self.version = h[1]
    self.flags = h[2]
    if h[2] & ~FLAGS_KNOWN:
        raise BlobError("blob uses flags 0x%x, which this engine does not know" % h[2])
    self.residual = bool(h[2] & FLAG_RESIDUAL)
    self.model_id = binascii.hexlify(h[4]).decode()
    self.window = h[5]
    c = self.channels = h[6]
    nt = h[7]
    nops = h[8]
    if self.window < 1 or c < 1 or nt < 2 or nops < 1:
        raise BlobError("blob malformed: window, channels, tensors and ops must be >= 1")
    self.in_scale, self.in_zp, self.out_scale, self.out_zp = r.unpack(IOQ, "io quantisation")
    names = []
    for _ in range(c):
        (ln,) = r.unpack("<B", "channel name")
        try:
            names.append(bytes(r.view(ln, "channel name")).decode())
        except UnicodeError:
            raise BlobError("blob malformed: channel name is not UTF-8")
    self.names = names
    self.offset = r.array("f", c, "scaler")
    self.scale = r.array("f", c, "scaler")
    self.k, self.eps, self.sigma_window, self.stuck_samples = r.unpack(DETECTOR, "detector")
    self.tensors = [r.unpack("<HH", "tensor table") for _ in range(nt)]
    ops = []
    for i in range(nops):
        head = r.unpack(OP_HEAD, "op %d" % i)
        op, src, dst = head[0], head[3], head[4]
        if src >= nt or dst >= nt:
            raise BlobError("blob malformed: op %d names a tensor out of range" % i)
        if op == OP_CONV or op == OP_FC:
            t = r.unpack(CONV_TAIL, "op %d" % i)
            ks, oc = t[0], t[4]
            w = r.view(oc * ks * t[3], "op %d weights" % i)
            # views into the blob, not lists: a load must fit a busy board's heap
            rest = (w, r.view(4 * oc, "op %d bias" % i), r.view(4 * oc, "op %d" % i),
                    r.view(oc, "op %d" % i))
        elif op == OP_ADD:
            t = r.unpack(ADD_TAIL, "op %d" % i)
            if t[0] >= nt:
                raise BlobError("blob malformed: op %d names a tensor out of range" % i)
            rest = ()
        elif op == OP_SLICE:
            t = r.unpack(SLICE_TAIL, "op %d" % i)
            rest = ()
        else:
            raise BlobError("blob uses op type %d, which this engine does not know" % op)
        ops.append(head + t + rest)
    # the sustained-shift calibration stays raw bytes here: firmware/shift.py parses
    # and checks it when a detector takes the model (boards without it never pay)
    self.shift = r.view(6 + 4 * (2 * c + c * c), "shift") if h[2] & FLAG_SHIFT else None
    self.still = r.unpack("<H", "still")[0] if h[2] & FLAG_STILL else 0
    # the residual band's calibration stays raw bytes here: firmware/residual.py parses
    # and checks it when a detector takes the model
    self.band = r.view(20 + 10 * c, "band") if h[2] & FLAG_BAND else None
    # the move rule's (firmware/moverule.py put copies it; the history holds 128 samples)
    self.move = r.view(2 + 4 * (c * c + c), "move") if h[2] & FLAG_MOVE else None
    if self.move is not None and not 2 <= (self.move[0] | self.move[1] << 8) < 128:
        raise BlobError("blob malformed: move calibration horizon not in 2..127")
    if r.pos != end:
        raise BlobError("blob malformed: %d unexplained bytes before the trailer" % (end - r.pos))
    self.ops = ops
    _check_shapes(self)


def _check_shapes(self):
    # The engine's inner loops index raw buffers without bounds checks, so
    # every size they will use is checked here, once, against the tensor table.
    t = self.tensors
    size = 0
    for r, c in t:
        size += r * c
    if size > MAX_ACTIVATIONS:
        raise BlobError("blob malformed: %d bytes of activations, at most %d" % (size, MAX_ACTIVATIONS))
    if t[0] != (self.window, self.channels):
        raise BlobError("blob malformed: input tensor is not window x channels")
    for i, op in enumerate(self.ops):
        kind, amin, amax, src, dst = op[:5]
        (r_in, c_in), (r_out, c_out) = t[src], t[dst]
        ok = amin <= amax
        if kind == OP_CONV:
            ks, dil, pad, in_ch, out_ch = op[5:10]
            ok = ok and ks >= 1 and dil >= 1 and c_in == in_ch and c_out == out_ch
            ok = ok and r_out == r_in + pad - dil * (ks - 1) and r_out >= 1
        elif kind == OP_FC:
            ok = ok and op[5] == 1 and r_in * c_in == op[8] and r_out * c_out == op[9]
        elif kind == OP_ADD:
            ok = ok and t[op[5]] == t[src] == t[dst] and op[6] <= 30
        else:
            ok = ok and op[5] + op[6] <= r_in * c_in and r_out * c_out == op[6]
        if kind in (OP_CONV, OP_FC):
            n = op[9]
            ok = ok and all(-31 <= s <= 30 for s in struct.unpack("<%db" % n, op[15]))
            ok = ok and all(m >= 0 for m in struct.unpack("<%di" % n, op[14]))
        elif kind == OP_ADD:
            ok = ok and all(-31 <= s <= 0 for s in op[13:16]) and min(op[10:13]) >= 0
        if not ok:
            raise BlobError("blob malformed: op %d does not fit its tensors" % i)
    if t[self.ops[-1][4]] != (1, self.channels):
        raise BlobError("blob malformed: the last op does not give one value per channel")


class Blob:
    """A checked, parsed blob: header fields, scaler, detector, tensors and ops.

    ops are tuples: (OP_CONV|OP_FC, amin, amax, src, dst, kernel, dilation, pad,
    in_ch, out_ch, in_zp, out_zp, weights, bias, mult, shift),
    (OP_ADD, amin, amax, src, dst, src2, left_shift, zp1, zp2, zp_out, m1, m2,
    m_out, s1, s2, s_out), (OP_SLICE, amin, amax, src, dst, first, count).
    weights, bias (int32), mult (int32) and shift (int8) are memoryviews into
    the blob (little-endian).
    """

    def __init__(self, blob, key=None):
        # the parse is module code: the board drops the module (engine._free_parser) and
        # keeps only this object's fields and a class without code
        _parse(self, blob, key)
