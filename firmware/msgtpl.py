"""The reference telemetry builder, and the template of schema.telemetry_fast made with it.

schema.py loads this module when it needs it (the fast path's template at the first
sample, when the band appears or the model changes; a message the fast path does not
write) and drops it again, so that its code does not stay on the board's heap.
"""

import json

from schema import VERSION, _r

EPOCH = 0  # schema.EPOCH, set by schema when it loads this module

_S = 987650000  # the sentinels (telemetry() writes ints unchanged)


def telemetry(device, seq, t, names, values, pred, lo, hi, faults, model):
    """schema.telemetry"""
    vals, p, band = {}, None, None
    for i in range(len(names)):
        vals[names[i]] = None if values is None else _r(values[i], 2)
    if pred is not None:
        p, band = {}, {}
        for i in range(len(names)):
            p[names[i]] = _r(pred[i], 3)
            band[names[i]] = [_r(lo[i], 3), _r(hi[i], 3)]
    return json.dumps({"v": VERSION, "device": device, "epoch": EPOCH, "seq": seq, "t": t,
                       "values": vals,
                       "pred": p, "band": band, "anomaly": bool(faults), "faults": faults,
                       "model": model})


def template(device, names, band, model, ints):
    """(template bytes, first argument of each slot, argument list) or None."""
    # bytes constants: str ones would stay on the heap as qstrs after this module is dropped
    n = len(names)
    N = 4 * n
    z = [[_S + c * n + i for i in range(n)] if band or not c else None for c in range(4)]
    t = telemetry(device, _S + N, _S + N + 1, names, z[0], z[1], z[2], z[3], ["@"], model)
    t = t.encode().replace(b"%", b"%%")
    toks = [str(_S + j).encode() for j in range(N + 2)] + [b'["@"]', b'"anomaly": true']
    at = []  # (position, slot)
    for j in range(N + 4):  # decimals, seq, t, faults, anomaly
        e = t.find(toks[j])
        if e >= 0:
            if t.find(toks[j], e + 1) >= 0:
                return None  # a device id or model holding a sentinel: telemetry() writes
            at.append((e, j))
    at.sort()
    slot = bytearray(N + 4)  # slot -> its first argument
    k = 0
    for e, j in at:
        slot[j] = k
        k += 1 if j >= N or (ints and j < n) else 3
    for j in range(N + 4):
        f = b"%s" if j >= N or (ints and j < n) else b"%s.%0*d"
        t = t.replace(toks[j], f if j < N + 3 else b'"anomaly": %s', 1)
    return t, bytes(slot), [0] * k
