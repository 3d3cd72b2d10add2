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
and status (rare) are dicts through json.dumps.
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
_HEAD = (b'{"v":1,"device":"%s","epoch":%d,"seq":%d,"t":%s,"model":%s%s%s,"anomaly":%s,'
         b'"faults":%s,"values":{"temperature":%s%s,"humidity":%s%s}')
_BAND = (b',"pred":{"temperature":%de-3,"humidity":%de-3},"band":{"temperature":[%de-3,%de-3],'
         b'"humidity":[%de-3,%de-3]}}')


def telemetry(device, seq, t, values, k, faults, model):
    """One sample, as two bytes (the message is the one, then the other). `values` None
    (failed read) or the list of the sensors.NAMES channels; `k` None (no prediction) or
    Detector.fixed's list: pred, then lo, hi per channel, x 1000."""
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
        b',"pred":null,"band":null}' if k is None else _BAND % tuple(k)


def line(device, seq, t, values, k, faults, names):
    """The sample's console line (App.sample), the fields `edgewatch logs` prints from
    MQTT, without float text: integer hundredths, a reading's round(x * 100) as in the
    telemetry, the prediction's and band's from `k` (Detector.fixed's thousandths, or
    None: no band). One % format: every str built costs a look-up of the qstr pool."""
    v = "ANOMALY " + ",".join(faults) if faults else "ok"
    t = "-" if t is None else t
    try:
        a = [round(values[0] * 100), 0, 0, 0, 0, 0, 0, 0, round(values[1] * 100), 0, 0, 0, 0, 0,
             0, 0]  # value, pred, lo, hi per channel: units and hundredths
    except Exception:  # a failed read (None; NaN, an infinity: null in the telemetry)
        return "%s #%d t=%s %s=- %s=- %s" % (device, seq, t, names[0], names[1], v)
    for j in b"\0\2\4\6\x08\x0a\x0c\x0e" if k else b"\0\x08":
        h = a[j]
        if j & 7:  # thousandths to hundredths: pred 0, lo 0, hi 0, pred 1, lo 1, hi 1
            h = (k[b"\0\0\2\3\0\1\4\5"[j >> 1]] + 5) // 10
        f = -h if h < 0 else h
        a[j] = f // 100 if h >= 0 else -(f // 100) if f >= 100 else "-0"
        a[j + 1] = f % 100
    if k:
        return ("%s #%d t=%s %s=%s.%02d pred=%s.%02d band=%s.%02d..%s.%02d %s=%s.%02d "
                "pred=%s.%02d band=%s.%02d..%s.%02d %s" % (
                    device, seq, t, names[0], a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                    names[1], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15], v))
    return "%s #%d t=%s %s=%s.%02d %s=%s.%02d %s" % (device, seq, t, names[0], a[0], a[1],
                                                  names[1], a[8], a[9], v)


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
