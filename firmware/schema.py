"""Builders of the MQTT messages of docs/messages.md (the host parses them in edgewatch.core.schema).

Readings are rounded to 2 decimals and predictions/bands to 3, which bounds a telemetry
message to about 400 bytes (one outbox slot) and keeps single-precision noise out of the
data. A missing reading is null: JSON has no NaN.

The telemetry (once a sample) is written with two bytes % formats, without dicts,
json.dumps or float formatting (a float's text alone costs ~20k instructions on the
C3): each number is an integer with a decimal exponent, the JSON number 2146e-2 for
21.46. A reading x is written as round(x * 100), what round(x, 2) computes inside (NaN
or infinite: null); a prediction or band limit as round(x * 1000) from the detector's
fixed-point state (Detector.fixed, to the last place of the float it replaces). Alerts
and status (rare) are dicts through json.dumps. A sample with a reading, a prediction and
no fault (nearly every one) is not formatted at all on a board: App.message has detk.put
write head()'s text and _BAND's with the numbers in decimal (the same bytes; % formats
cost ~30 k instructions each on RV32, mostly the result's growing buffer on a fragmented
heap). seq and epoch are %s: the same digits for an int, and "%d" marks for head().
"""

import json

VERSION = 1
EPOCH = 0  # the outbox's epoch: the app sets it once at boot; every message carries it


def topic(prefix, device, kind):
    """`<prefix>/<device>/<kind>`, kind in telemetry|alert|status|model."""
    return "%s/%s/%s" % (prefix, device, kind)


def _r(v, nd):
    return None if v is None else round(v, nd)


# the telemetry's two parts, for the channels of sensors.NAMES
_HEAD = (b'{"v":1,"device":"%s","epoch":%s,"seq":%s,"t":%s,"model":%s%s%s,"anomaly":%s,'
         b'"faults":%s,"values":{"temperature":%s%s,"humidity":%s%s}')
_BAND = (b',"pred":{"temperature":%de-3,"humidity":%de-3},"band":{"temperature":[%de-3,%de-3],'
         b'"humidity":[%de-3,%de-3]}}')


def telemetry(device, seq, t, values, k, faults, model):
    """One sample, as two bytes (the message is the one, then the other). `values` None
    (failed read) or the list of the sensors.NAMES channels; `k` None (no prediction) or
    Detector.fixed's list: pred, then lo, hi per channel, x 1000 (its first six numbers)."""
    q = '"'
    if model is None:
        q = ""
        model = "null"
    # round(x, 2) as 2146e-2, or null (no reading, NaN, an infinity)
    v0 = v1 = "null"
    e0 = e1 = ""
    try:
        v0 = round(values[0] * 100)
        e0 = "e-2"
    except Exception:  # TypeError, ValueError, OverflowError
        pass
    try:
        v1 = round(values[1] * 100)
        e1 = "e-2"
    except Exception:
        pass
    return _HEAD % (device, EPOCH, seq, "null" if t is None else t, q, model, q,
                    "true" if faults else "false", json.dumps(faults) if faults else "[]",
                    v0, e0, v1, e1), \
        b',"pred":null,"band":null}' if k is None else _BAND % tuple(k[:6])


def head(device, t, model):
    """The telemetry's first part for a sample with a reading and no fault, with "%d" where
    seq, then t (not None), then each reading x 100 go; its second part is _BAND, with
    Detector.fixed's numbers. detk.put fills both in (App.message): the same bytes as
    telemetry(). Made again only when the model or whether the clock is set changes."""
    q = '"'
    if model is None:
        q = ""
        model = "null"
    return _HEAD % (device, EPOCH, "%d", "null" if t is None else "%d", q, model, q, "false",
                    "[]", "%d", "e-2", "%d", "e-2")


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
