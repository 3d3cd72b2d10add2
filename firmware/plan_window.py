# The engine's windowed plan (engine.Model), for a model whose window is shorter than its
# receptive field (convert refuses those now; boards may still hold one): the rows the
# output depends on, computed in one arena whose tensors share bytes once read.
# Loaded by plan.py only for such a model, and dropped again.
from engine import BlobError

OP_CONV = 1
OP_ADD = 2
OP_FC = 3


def build(m, b, k, block):
    _window_plan(m, b, k, _needed_rows(b), block)


def _arena(b):
    # One buffer for all activations; a tensor reuses the bytes of tensors whose
    # last reader has run (first fit over [producer, last reader] intervals).
    ops = b.ops
    life = [[-1, -1] for _ in b.tensors]
    for j in range(len(ops)):
        op = ops[j]
        life[op[4]][0] = j
        for t in (op[3], op[5]) if op[0] == OP_ADD else (op[3],):
            life[t][1] = j
    life[0][0] = -1
    life[ops[-1][4]][1] = len(ops)
    place = []
    top = 0
    for t in range(len(b.tensors)):
        size = b.tensors[t][0] * b.tensors[t][1]
        s0, e0 = life[t]
        off = 0
        moved = True
        while moved:
            moved = False
            for u in range(t):
                s1, e1 = life[u]
                o1 = place[u]
                size1 = b.tensors[u][0] * b.tensors[u][1]
                if s0 <= e1 and s1 <= e0 and off < o1 + size1 and o1 < off + size:
                    off = o1 + size1
                    moved = True
        place.append(off)
        top = max(top, off + size)
    mv = memoryview(bytearray(top))
    return [mv[place[t]:place[t] + b.tensors[t][0] * b.tensors[t][1]] for t in range(len(place))]


def _needed_rows(b):
    # Walk the graph backwards: which rows (time steps) of each tensor does the
    # output depend on? A causal conv reads rows t - pad + k*dilation.
    need = [None] * len(b.tensors)
    last = b.ops[-1][4]
    need[last] = set(range(b.tensors[last][0]))
    for op in reversed(b.ops):
        kind, src, dst = op[0], op[3], op[4]
        rows = need[dst]
        if not rows:
            continue
        got = need[src] if need[src] is not None else set()
        if kind == OP_CONV:
            for t in rows:
                for k in range(op[5]):
                    ti = t + k * op[6] - op[7]
                    if ti >= 0:
                        got.add(ti)
        elif kind == OP_ADD:
            got |= rows
            other = need[op[5]] if need[op[5]] is not None else set()
            need[op[5]] = other | rows
        elif kind == OP_FC:
            got |= set(range(b.tensors[src][0]))
        else:  # SLICE: element range -> rows
            cols = b.tensors[src][1]
            got |= set(range(op[5] // cols, (op[5] + op[6] - 1) // cols + 1))
        need[src] = got
    return need


def _window_plan(m, b, k, need, _block):
    bufs = _arena(b)
    plan = []
    for op in b.ops:
        kind, amin, amax, src, dst = op[:5]
        rows = sorted(need[dst] or ())
        if not rows:
            continue  # nothing downstream reads this op
        if kind == OP_FC:
            rows = [0]  # one row of in_ch = all input elements, whatever the shapes
        if kind == OP_CONV or kind == OP_FC:
            p = _block((len(rows), 0, op[8], op[9], op[5], op[6], op[7], -op[10], op[11],
                        amin, amax), rows, op[13:16], op[12])
            plan.append((k.conv, bufs[src], op[12], p, bufs[dst]))
        elif kind == OP_ADD:
            if not 9 <= op[6] <= 22:  # kernels.add's exact input rescale needs this (TFLM: 20)
                raise BlobError("blob malformed: ADD left shift %d outside 9..22" % op[6])
            p = _block((len(rows), b.tensors[dst][1], -op[7], -op[8], op[9], op[6],
                        op[10], op[13], op[11], op[14], op[12], op[15], amin, amax), rows)
            plan.append((k.add, p, bufs[src], bufs[op[5]], bufs[dst]))
        else:
            plan.append((k.copy, bufs[src], bufs[dst], op[5], op[6]))
    m._plan = plan
    m._in = bufs[0]
    m._out = bufs[b.ops[-1][4]]
    m.replays = 0
