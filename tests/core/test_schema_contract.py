"""Contract: every message firmware/schema.py builds (inside MicroPython) passes host/core/schema.py,
epoch included (the outbox's, set once by the app; absent in older firmware's messages = 0)."""

import json

from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy
from edgewatch.core.schema import parse

DEV = "gh-01_" + "x" * 26  # the longest device id: 32 characters

BUILD = f"""
import schema
schema.EPOCH = 2147483647
D = {DEV!r}
N = ['temperature', 'humidity']
def out(kind, msg):
    print(schema.topic('edgewatch', D, kind) + '\\t' + msg)
def tel(*args):  # the telemetry comes in two parts (the outbox record is the one, then the other)
    m = schema.telemetry(*args)
    return (m[0] + m[1]).decode()
out('telemetry', tel(D, 0, None, [21.456, 48.2], None, [], None))
out('telemetry', tel(D, 1, 1732372000, None, None, ['read', 'dropout'], 'abcdef01'))
# pred, lo, hi as Detector.fixed gives them: x 1000, pred per channel, then lo, hi per channel
out('telemetry', tel(D, 4294967295, 1732372000, [-39.99, 100.0],
    [-123457, 99999, -130123, -117000, 95500, 104444],
    ['band', 'range', 'stuck', 'dropout', 'read'], '3f2a9c1e'))
out('telemetry', tel(D, 2, None, [float('nan'), -0.004], None, [], None))
for i, a in enumerate([('band', 'temperature', 35.2, 21.1, 21.7, 21.4), ('stuck', 'humidity', 40.0, None, None, None),
          ('range', 'temperature', 150.0, -40.0, 80.0, None), ('dropout', None, 12, None, None, None),
          ('read', None, None, None, None, None), ('read', 'humidity', None, None, None, None)]):
    out('alert', schema.alert(D, 10 + i, None if i % 2 else 1732372000, 9, a, 'abcdef01' if i else None))
out('status', schema.status(D, 15, None, '0.1.0', None, 61234, 0, 0, 3605))
out('status', schema.status(D, 16, 1732372000, '0.1.0', '3f2a9c1e', 1234, 17, 3, 0, 'model: bad CRC'))
print(schema.topic('edgewatch', D, 'status') + '\\t' + schema.will(D))
"""


def test_every_firmware_message_passes_the_host_parser():
    out = mpy.run(code=BUILD, heap=heap_budget("esp32-devkitc-dht22")).stdout.splitlines()
    assert len(out) == 13
    recs = []
    for line in out:
        topic, payload = line.split("\t")
        assert len(payload.encode()) <= 500  # fits an outbox slot (512 bytes with its header)
        recs.append((parse(topic, payload.encode()), json.loads(payload)))
    tel = [r for r, _ in recs if r.kind == "telemetry"]
    assert tel[0].values == {"temperature": 21.46, "humidity": 48.2} and tel[0].pred is None
    assert tel[1].values == {"temperature": None, "humidity": None} and tel[1].anomaly
    assert tel[2].band["temperature"] == (-130.123, -117.0) and tel[2].seq == 4294967295
    assert tel[2].pred == {"temperature": -123.457, "humidity": 99.999}
    assert tel[2].band["humidity"] == (95.5, 104.444) and tel[2].values["temperature"] == -39.99
    assert tel[3].values == {"temperature": None, "humidity": 0.0}  # NaN: null, as no reading
    alerts = [r for r, _ in recs if r.kind == "alert"]
    assert [a.rule for a in alerts] == ["band", "stuck", "range", "dropout", "read", "read"]
    assert alerts[0].band == (21.1, 21.7) and alerts[0].pred == 21.4 and alerts[0].sample == 9
    assert alerts[3].value == 12 and alerts[4].channel is None
    status = [r for r, _ in recs if r.kind == "status"]
    assert [s.state for s in status] == ["online", "online", "offline"]
    assert status[1].error == "model: bad CRC" and status[1].outbox == 17
    assert recs[-1][1] == {"v": 1, "device": DEV, "state": "offline"}
    for rec, obj in recs[:-1]:  # every board message carries the epoch, and the host reads it
        assert obj["epoch"] == 2147483647 and rec.epoch == 2147483647
    assert recs[-1][0].epoch is None


def test_messages_without_epoch_are_epoch_0_and_a_bad_epoch_is_refused():
    import pytest
    from edgewatch.core.schema import SchemaError, parse_alert, parse_telemetry
    from hostkit import alert, telemetry

    assert parse_telemetry(telemetry("gh-01", 5)).epoch == 0  # firmware from before epochs
    assert parse_alert(alert("gh-01", 5)).epoch == 0
    for bad in (-1, 2**32, "7", 1.5, True):
        with pytest.raises(SchemaError, match="epoch"):
            parse_telemetry({**telemetry("gh-01", 5), "epoch": bad})


CONSOLE = """
import app, schema
w = app._write  # App.sample's console writer (stdout, bytes as they are)
K = [-123457, 99999, -130123, -117000, 95504, 104444]
for v, k, f in (([21.456, 48.2], None, []), (None, None, ['read']), ([-39.99, 100.0], K, ['band']),
                ([-0.04, 0.0], K, []), ([float('nan'), 3.0], None, [])):
    m = schema.telemetry('gh-01', 7, 1732372000, v, k, f, None)
    w(m[0])
    w(m[1])
    w(b'\\n')
    print('|' + (m[0] + m[1]).decode())
"""


def test_the_console_line_is_the_record_edgewatch_logs_prints():
    """App's per-sample console line (App.sample, app._write) is the telemetry record as queued, byte
    for byte: the host parses it, and `edgewatch logs` (and the simulator's echo) renders it
    with the fields to the hundredth."""
    from edgewatch.services.logs import line

    # (app.py from source: its compilation needs more than a board's heap)
    out = mpy.run(code=CONSOLE, heap="1M").stdout.splitlines()
    assert len(out) == 10
    rendered = []
    for console, sent in zip(out[0::2], out[1::2], strict=True):
        assert sent == "|" + console  # nothing formatted a second time
        rendered.append(line(parse("edgewatch/gh-01/telemetry", console.encode())).split(" ", 2)[2])
    assert rendered == [
        "gh-01 #7 temperature=21.46 humidity=48.20 ok",
        "gh-01 #7 temperature=- humidity=- ANOMALY read",
        "gh-01 #7 temperature=-39.99 pred=-123.46 band=-130.12..-117.00 humidity=100.00 pred=100.00 "
        "band=95.50..104.44 ANOMALY band",
        "gh-01 #7 temperature=-0.04 pred=-123.46 band=-130.12..-117.00 humidity=0.00 pred=100.00 "
        "band=95.50..104.44 ok",
        "gh-01 #7 temperature=- humidity=3.00 ok"], rendered


FILLED = f"""
import schema, detk
from array import array
schema.EPOCH = 2147483647
D = {DEV!r}
buf = bytearray(516)
K = array('i', [-123457, 99999, -130123, -117000, 95504, 104444])
for seq, t, model, v in ((7, None, None, [21.456, 48.2]), (2**30 - 1, 2**31 - 1, '3f2a9c1e', [-39.99, 100.0]),
                         (0, 1732372000, 'abcdef01', [-0.04, 0.0]), (10, None, '0123abcd', [0.0, -5.5])):
    h = schema.head(D, t, model)
    a = array('i', [seq] + ([] if t is None else [t]) + [round(v[0] * 100), round(v[1] * 100)])
    n = detk.put(buf, h, a, len(h))
    n += detk.put(memoryview(buf)[n:], schema._BAND, K, len(schema._BAND))
    m = schema.telemetry(D, seq, t, v, K, [], model)
    print(bytes(buf[:n]) == m[0] + m[1], bytes(buf[:n]).decode())
"""


def test_the_filled_telemetry_is_the_formatted_one():
    """App.message's path for a sample with a reading, a prediction and no fault: detk.put
    fills schema.head's text and schema._BAND's with the numbers (negative ones, the
    largest seq and t it takes, the longest device id), byte for byte the
    telemetry schema.telemetry formats, which the host parses."""
    out = mpy.run(code=FILLED, heap=heap_budget("esp32-devkitc-dht22")).stdout.splitlines()
    assert len(out) == 4
    for ln in out:
        same, payload = ln.split(" ", 1)
        assert same == "True", ln
        rec = parse(f"edgewatch/{DEV}/telemetry", payload.encode())
        assert rec.pred and rec.band and not rec.faults
    assert '"temperature":-3999e-2' in out[1] and '"seq":1073741823,"t":2147483647' in out[1]
