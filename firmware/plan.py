# The engine's execution plan for a parsed model blob (engine.Model): set-up code, loaded
# when a model is and dropped again after (engine._parse), so its code does not stay in
# the heap. Streaming when the window covers the receptive field: each tensor keeps a
# ring of the newest rows its readers need and a step computes the newest row of every
# op (engine.Model.predict_q); otherwise windowed (plan_window.py, loaded only then).
# (The parser is gone from the heap when this runs on the board: blob.py's op codes are
# repeated here, and BlobError is the engine's.)
import array
import struct

from engine import BlobError

OP_CONV = 1
OP_ADD = 2
OP_FC = 3
WORD = 0xFFFFFFFF


def build(m, b, k):
    """The engine's execution plan of blob b on kernels k, into engine.Model m: streaming
    when the window covers the receptive field, else windowed (see engine.py)."""
    lo = _lowest(b)
    keep = _rings(b, lo)
    m.streaming = keep is not None
    if m.streaming:
        _stream_plan(m, b, k, keep, lo)
    else:  # a model from before convert required the window to cover the receptive field
        import plan_window

        try:
            plan_window.build(m, b, k, _block)
            m._plan = runner(k, m._plan)
        finally:
            import sys

            sys.modules.pop("plan_window", None)
            plan_window.__dict__.clear()


def _lowest(b):
    # Walk the graph backwards: the oldest row of each tensor the output depends on (None:
    # nothing reads it); negative below a conv whose taps read the left padding.
    t = b.tensors
    lo = [None] * len(t)
    lo[b.ops[-1][4]] = 0
    for op in reversed(b.ops):
        kind, src, dst = op[0], op[3], op[4]
        r = lo[dst]
        if r is None:
            continue
        if kind == OP_CONV:
            r -= op[7]
        elif kind == OP_FC:
            r = 0
        elif kind == OP_ADD:
            o = lo[op[5]]
            lo[op[5]] = r if o is None or r < o else o
        else:  # SLICE: from the row it starts in (the streaming test wants it row-aligned)
            r = op[5] // t[src][1]
        o = lo[src]
        lo[src] = r if o is None or r < o else o
    return lo


def _block(head, rows, chan=None, w=None):
    # A kernel's parameter block (array of 32-bit two's-complement words),
    # filled in place: no intermediate lists on a heap that may be nearly full.
    # A conv's bias takes its input offset in (TFLM's optimised kernels do the
    # same): sum((x + off) * w) = sum((x ^ 0x80) * w) + (off - 128) * sum(w), so
    # the kernel's multiply-accumulate needs no offset (see kernels.conv).
    n = len(head) + len(rows) + (3 * len(chan[0]) // 4 if chan else 0)
    p = array.array("I", range(n))
    i = 0
    for v in head:
        p[i] = v & WORD
        i += 1
    for v in rows:
        p[i] = v
        i += 1
    if chan:
        bias, mult, shift = chan
        per = len(w) // len(shift)
        off = head[7] - 128
        for c in range(len(shift)):
            sw = 0
            for j in range(c * per, c * per + per):
                sw += (w[j] ^ 0x80) - 0x80
            # (not blob.word: holding a function of the parser would keep it in memory)
            p[i] = (struct.unpack_from("<i", bias, 4 * c)[0] + off * sw) & WORD
            p[i + 1] = struct.unpack_from("<i", mult, 4 * c)[0]
            p[i + 2] = ((shift[c] ^ 0x80) - 0x80) & WORD
            i += 3
    return p


def _rings(b, lo):
    # Rows of each tensor a streaming step keeps, or None when the output reads the
    # left padding (a window shorter than the receptive field) or a slice that is not
    # the newest rows: such a graph runs windowed.
    t = b.tensors
    keep = [1] * len(t)
    for op in reversed(b.ops):
        kind, src, dst = op[0], op[3], op[4]
        if lo[dst] is None:
            continue
        if kind == OP_CONV:
            if lo[dst] < op[7]:  # its first tap reads the padding
                return None
            keep[src] = max(keep[src], (op[5] - 1) * op[6] + 1)
        elif kind == OP_FC:
            keep[src] = max(keep[src], t[src][0])
        elif kind != OP_ADD:  # SLICE
            cols = t[src][1]
            n = op[6] // cols
            if op[5] % cols or op[6] % cols or op[5] + op[6] != t[src][0] * cols or keep[dst] > n:
                return None
            keep[src] = max(keep[src], n)  # the slice is a view of these rows
    return keep


def _stream(b, keep, lo):
    # The rings (one buffer, each 4-byte aligned; a slice's output is a view of its
    # input's newest rows) and the moves' block for kernels.rings: per ring that keeps
    # more than one row, its offset, row bytes and bytes moved; then the input's newest row.
    t = b.tensors
    views = set(op[4] for op in b.ops if op[0] > OP_FC and lo[op[4]] is not None)
    off = []
    top = 0
    for i in range(len(t)):
        off.append(top)
        if i not in views:
            top += (keep[i] * t[i][1] + 3) & ~3
    mv = memoryview(bytearray(top + 4))  # + 4: a move reads up to 3 bytes past its ring
    ring = [None if i in views else mv[off[i]:off[i] + keep[i] * t[i][1]] for i in range(len(t))]
    for op in b.ops:
        if op[4] in views:
            src = ring[op[3]]
            ring[op[4]] = src[len(src) - op[6]:]
    n = 0
    for i in range(len(t)):
        if i not in views and keep[i] > 1:
            n += 1
    d = array.array("I", range(3 * n + 3))
    d[0] = n
    j = 1
    for i in range(len(t)):
        if i not in views and keep[i] > 1:
            d[j] = off[i]
            d[j + 1] = t[i][1]
            d[j + 2] = ((keep[i] - 1) * t[i][1] + 3) & ~3
            j += 3
    d[j] = off[0] + (keep[0] - 1) * t[0][1]
    d[j + 1] = t[0][1]
    return ring, mv, d


def runner(k, plan):
    # the engine calls each record of its plan: where the kernels can run a whole plan in
    # one call (ewkern.run, C), one record doing so (a call from bytecode costs ~700
    # instructions on RV32, more than a small op's work)
    run = getattr(k, "run", None)
    return plan if run is None else [(run, plan, 0, 0, 0)]


def _newest(r, cols, n=1):
    return r[len(r) - n * cols:]


def _stream_plan(m, b, k, keep, lo):
    # The step's start, one call (kernels.rings: the rings' moves and the input row), then
    # one record per op, (kernel, a, b, c, d) for kernel(a, b, c, d): its newest row.
    t = b.tensors
    ops = b.ops
    ring, arena, d = _stream(b, keep, lo)
    m._out = ring[ops[-1][4]]
    # one list of the exact size (no regrowth), and each op's record let go once planned
    plan = [None] * sum(1 for op in ops if lo[op[4]] is not None and op[0] <= OP_FC)
    n = 0
    for j in range(len(ops)):
        op = ops[j]
        ops[j] = None
        kind, amin, amax, src, dst = op[:5]
        if lo[dst] is None or kind > OP_FC:  # a slice is a view (_stream)
            continue
        y = _newest(ring[dst], t[dst][1])
        if kind == OP_CONV:  # the newest output row: taps on the newest rows, no padding
            x = _newest(ring[src], t[src][1], (op[5] - 1) * op[6] + 1)
            p = _block((1, 0, op[8], op[9], op[5], op[6], 0, -op[10], op[11], amin, amax),
                       (0,), op[13:16], op[12])
            plan[n] = (k.conv, x, op[12], p, y)
        elif kind == OP_FC:
            p = _block((1, 0, op[8], op[9], op[5], op[6], op[7], -op[10], op[11], amin, amax),
                       (0,), op[13:16], op[12])
            plan[n] = (k.conv, ring[src], op[12], p, y)
        else:
            if not 9 <= op[6] <= 22:  # kernels.add's exact input rescale needs this (TFLM: 20)
                raise BlobError("blob malformed: ADD left shift %d outside 9..22" % op[6])
            p = _block((1, t[dst][1], -op[7], -op[8], op[9], op[6], op[10], op[13], op[11],
                        op[14], op[12], op[15], amin, amax), (0,))
            plan[n] = (k.add, p, _newest(ring[src], t[src][1]), _newest(ring[op[5]], t[op[5]][1]), y)
        n += 1
    m._plan = runner(k, plan)
    m._in = bytearray(b.window * b.channels)  # the window as given
    m._prev = bytearray(len(m._in))  # the window of the last step
    m._ring = (k.rings, arena, m._in, d)
    m._warm = False  # the rings hold a window's rows
    m._held = False  # _prev holds that window
    m.replays = 0  # windows that were not the last one moved by a sample
    m._same = k.same
