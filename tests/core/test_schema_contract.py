"""Contract: every message firmware/schema.py builds (inside MicroPython) passes host/core/schema.py."""

import json

from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy
from edgewatch.core.schema import parse

DEV = "gh-01_" + "x" * 26  # the longest device id: 32 characters

BUILD = f"""
import schema
D = {DEV!r}
N = ['temperature', 'humidity']
def out(kind, msg):
    print(schema.topic('edgewatch', D, kind) + '\\t' + msg)
out('telemetry', schema.telemetry(D, 0, None, N, [21.456, 48.2], None, None, None, [], None))
out('telemetry', schema.telemetry(D, 1, 1732372000, N, None, None, None, None, ['read', 'dropout'], 'abcdef01'))
out('telemetry', schema.telemetry(D, 4294967295, 1732372000, N, [-39.99, 100.0], [-123.4567, 99.999],
    [-130.1234, 95.5], [-117.0001, 104.4444], ['band', 'range', 'stuck', 'dropout', 'read'], '3f2a9c1e'))
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
    assert len(out) == 12
    recs = []
    for line in out:
        topic, payload = line.split("\t")
        assert len(payload.encode()) <= 500  # fits an outbox slot (512 bytes with its header)
        recs.append((parse(topic, payload.encode()), json.loads(payload)))
    tel = [r for r, _ in recs if r.kind == "telemetry"]
    assert tel[0].values == {"temperature": 21.46, "humidity": 48.2} and tel[0].pred is None
    assert tel[1].values == {"temperature": None, "humidity": None} and tel[1].anomaly
    assert tel[2].band["temperature"] == (-130.123, -117.0) and tel[2].seq == 4294967295
    alerts = [r for r, _ in recs if r.kind == "alert"]
    assert [a.rule for a in alerts] == ["band", "stuck", "range", "dropout", "read", "read"]
    assert alerts[0].band == (21.1, 21.7) and alerts[0].pred == 21.4 and alerts[0].sample == 9
    assert alerts[3].value == 12 and alerts[4].channel is None
    status = [r for r, _ in recs if r.kind == "status"]
    assert [s.state for s in status] == ["online", "online", "offline"]
    assert status[1].error == "model: bad CRC" and status[1].outbox == 17
    assert recs[-1][1] == {"v": 1, "device": DEV, "state": "offline"}
