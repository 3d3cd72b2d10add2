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

    The reference builder, in msgtpl.py (loaded for the call, then dropped):
    telemetry_fast gives the same message for a fraction of the cost."""
    return _tpl().telemetry(device, seq, t, names, values, pred, lo, hi, faults, model)


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
# telemetry_fast gives telemetry()'s bytes: a template made once by telemetry() itself
# (so keys come in json.dumps' order on every port) is filled by one bytes % call. A
# reading or prediction x becomes k = round(x * 10**d), what round(x, d) computes
# inside, written as sign, integer part and decimals without trailing zeros: the
# shortest decimal of k / 10**d. On the boards (single precision) that is the text
# json.dumps writes; on the unix port (double) json.dumps writes some values longer
# ("0.07000000000000001", the same double). NaN, None in a list, |k| >= 10**6 and the
# like are written by telemetry() itself.
_st = None  # names, device, EPOCH, band, model, int readings, template, slots, args


def _tpl():
    # msgtpl.py: loaded when needed and dropped again, so its code stays off the heap
    import sys

    import msgtpl
    del sys.modules["msgtpl"]
    msgtpl.EPOCH = EPOCH
    return msgtpl


def telemetry_fast(device, seq, t, names, values, pred, lo, hi, faults, model):
    """telemetry() as bytes, for a fraction of the cost."""
    global _st
    band = pred is not None
    ints = 2 if values is None else type(values[0]) is int  # values: null, ints, floats
    st = _st
    if st is None or st[0] is not names or st[1] != device or st[2] != EPOCH or \
            st[3] is not band or st[4] != model or st[5] != ints:
        _st = st = (names, device, EPOCH, band, model, ints) + (
            _tpl().template(device, names, band, model, ints) or (None,))
    if st[6]:
        tpl, slot, a = st[6:]
        n = len(names)
        rnd = round
        try:
            if ints:  # (telemetry() writes an int reading as it is)
                for i in range(n):
                    x = b"null" if values is None else values[i]
                    if ints is True and type(x) is not int:
                        raise TypeError
                    a[slot[i]] = x
            j, m, d = (n, 1000, 3) if ints else (0, 100, 2)  # first slot, 10**d, d
            for c in (pred, lo, hi) if ints else (values, pred, lo, hi):
                if not band and j >= n:
                    break
                for i in range(n):
                    b = slot[j]
                    j += 1
                    x = c[i]
                    y = x * m
                    k = rnd(y)  # NaN, inf, None raise: telemetry() writes them
                    if k is y:
                        raise TypeError  # an int among floats
                    neg = k < 0 or not k and (y < 0 or str(y)[0] == "-")  # -0.0 too
                    if neg:
                        k = -k
                    if k >= 1000000:
                        raise ValueError
                    f = k % m
                    k //= m
                    a[b] = (-k if k else b"-0") if neg else k
                    w = d
                    while w > 1 and not f % 10:
                        f //= 10
                        w -= 1
                    a[b + 1] = w
                    a[b + 2] = f
                m = 1000
                d = 3
            j = 4 * n
            a[slot[j]] = seq
            a[slot[j + 1]] = b"null" if t is None else t
            a[slot[j + 2]] = json.dumps(faults).encode() if faults else b"[]"
            a[slot[j + 3]] = b"true" if faults else b"false"
            return tpl % tuple(a)
        except (TypeError, ValueError, OverflowError):
            pass
    return telemetry(device, seq, t, names, values, pred, lo, hi, faults, model)
