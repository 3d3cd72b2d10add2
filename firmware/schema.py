"""Builders of the MQTT messages of docs/messages.md (the host parses them in edgewatch.core.schema).

Each builder returns the JSON text of one message. Readings are rounded to 2
decimals and predictions/bands to 3, which bounds a telemetry message to about
400 bytes (one outbox slot) and keeps single-precision noise out of the data.
A missing reading is null: JSON has no NaN.
"""

import json

VERSION = 1
EPOCH = 0  # the outbox's epoch: the app sets it once at boot; every message carries it


def topic(prefix, device, kind):
    """`<prefix>/<device>/<kind>`, kind in telemetry|alert|status|model."""
    return "%s/%s/%s" % (prefix, device, kind)


def _r(v, nd):
    return None if v is None else round(v, nd)


def telemetry(device, seq, t, names, values, pred, lo, hi, faults, model):
    """One sample. `values` None (failed read) or a list; `pred`/`lo`/`hi` None or lists.

    The reference builder: telemetry_fast gives the same message for a fraction of the cost."""
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


def alert(device, seq, t, sample, a, model):
    """One alert from a detector tuple `a` = (rule, channel, value, lo, hi, pred)."""
    rule, channel, value, lo, hi, pred = a
    if rule == "dropout":
        value = int(value)  # missed periods
    elif value is not None:
        value = _r(value, 2)
    band = None if lo is None else [_r(lo, 3), _r(hi, 3)]
    return json.dumps({"v": VERSION, "device": device, "epoch": EPOCH, "seq": seq, "t": t,
                       "sample": sample,
                       "rule": rule, "channel": channel, "value": value, "band": band,
                       "pred": _r(pred, 3), "model": model})


def status(device, seq, t, fw, model, heap_free, outbox, dropped, uptime, error=None):
    """The retained `online` status; `error` e.g. "model: bad CRC" after a refused model."""
    msg = {"v": VERSION, "device": device, "epoch": EPOCH, "seq": seq, "t": t,
           "state": "online", "fw": fw,
           "model": model, "heap_free": heap_free, "outbox": outbox, "dropped": dropped,
           "uptime": uptime}
    if error:
        msg["error"] = error
    return json.dumps(msg)


def will(device):
    """The last will: the broker publishes it (retained) when the board vanishes."""
    return json.dumps({"v": VERSION, "device": device, "state": "offline"})




# -- the telemetry message without json.dumps or float formatting (once per sample) ----
# telemetry_fast writes telemetry()'s message into one buffer allocated once: a reading
# or prediction becomes k = round(x * 10**d), what round(x, d) computes inside, written
# with its decimal point by kernels.telemetry_text (viper; plain bytecode on ports
# without the native emitter) into a template made by telemetry() itself, so keys come
# in json.dumps' order on every port. A number is the shortest decimal of k / 10**d: on
# the boards (single precision) the bytes json.dumps writes; on the unix port (double)
# json.dumps writes some as "0.07000000000000001", the same double. NaN, |k| >= 10**6,
# a message over _CAP and the like are written by telemetry() itself.
try:
    import kernels as _k
except (ImportError, SyntaxError, ValueError):
    import kernels_plain as _k

_CAP = 500  # the largest message an outbox slot holds (512 bytes with its header)
_S = 987650000  # the template's sentinels (telemetry() writes ints unchanged)
_T = -0x10000000  # a slot's text in _FT: null, -0.0, false, []; or true, the faults
_FT = b"null\0-0.0\0false\0[]\0"
_st = None  # names, device, EPOCH, band, model, template, slots, buffer


def _template(device, names, band, model):
    n = len(names)
    N = 4 * n
    z = [[_S + c * n + i for i in range(n)] if band or not c else None for c in range(4)]
    t = telemetry(device, _S + N, _S + N + 1, names, z[0], z[1], z[2], z[3], ["@"], model)
    for j in range(N + 4):  # decimals, seq, t, faults, anomaly
        tok = str(_S + j) if j < N + 2 else '["@"]' if j < N + 3 else '"anomaly": true'
        if n > 30 or t.count(tok) > 1:
            return None  # a device id or model holding a sentinel: telemetry() writes
        t = t.replace(tok, tok[:-4] * (j > N + 2) + chr(2 + (j >= n) - 2 * (j >= N)) + chr(j))
    return bytes((_CAP & 0xFF, _CAP >> 8)) + t.encode() + b"\0"


def _odd(x, y, k):
    # an int reading (written as it is) or a decimal that rounds to 0 (-0.0 or 0.0)
    if k is not y:
        return _T - 5 if y < 0 or str(y)[0] == "-" else 0
    if type(x) is int and -0x10000000 < x < 0x10000000:
        return x + 0x20000000
    raise ValueError


def telemetry_fast(device, seq, t, names, values, pred, lo, hi, faults, model):
    """telemetry() as a memoryview of bytes, valid until the next call (else as a str)."""
    global _st
    band = pred is not None
    st = _st
    if st is None or st[0] is not names or st[1] != device or st[2] != EPOCH or \
            st[3] is not band or st[4] != model:
        _st = st = (names, device, EPOCH, band, model, _template(device, names, band, model),
                    [0] * (4 * len(names) + 4), st[7] if st else memoryview(bytearray(_CAP)))
    if st[5]:
        n = len(names)
        s = st[6]
        rnd = round
        ft = _FT
        try:
            j = 0
            m = 100
            for c in (values, pred, lo, hi) if band else (values,):
                for i in range(n):
                    if c is None:  # a failed read
                        k = _T
                    else:
                        x = c[i]
                        y = x * m
                        k = rnd(y)  # NaN, inf, None raise: telemetry() writes them
                        if k is y or not k:
                            k = _odd(x, y, k)
                    s[j + i] = k
                j += n
                m = 1000
            j = 4 * n
            s[j] = seq
            s[j + 1] = _T if t is None else t
            s[j + 2] = _T - 16  # the faults: [] or after true
            s[j + 3] = _T - 10  # the anomaly: false or true
            if faults:
                ft = b"null\0-0.0\0true\0\0" + json.dumps(faults).encode() + b"\0"
            n = _k.telemetry_text(st[7], st[5], s, ft)
        except (TypeError, ValueError, OverflowError):
            n = -1
        if n >= 0:
            return st[7][:n]
    return telemetry(device, seq, t, names, values, pred, lo, hi, faults, model)
