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
    """One sample. `values` None (failed read) or a list; `pred`/`lo`/`hi` None or lists."""
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
