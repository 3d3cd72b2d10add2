"""Server-side scoring gives the alerts the board would: host (TFLM + firmware detector in CPython)
against the board's own engine and detector running in the MicroPython unix port."""

from __future__ import annotations

import csv
import json
import signal
import threading

import paho.mqtt.client as mqtt
import pytest
from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy
from edgewatch.core.schema import parse, parse_telemetry
from edgewatch.services.broker import DEVICE_ACL, Broker
from edgewatch.services.scoring import HostModel, Scorer, alert_seq
from hostkit import HOST_PW, Board, service_env, spawn, telemetry, wait_until

OCCUPANCY = mpy.ROOT.parent / "shared" / "data" / "occupancy" / "datatest.txt"
HEAP = heap_budget("esp32-devkitc-dht22")


def _series(n=370):
    # (the faults come after the model's window of 128 has filled)
    rows = list(csv.reader(open(OCCUPANCY)))[1:1 + n]
    x = [[float(r[2]), float(r[3])] for r in rows]  # temperature, humidity
    for i in (190, 260, 261, 330):
        if i < n:
            x[i][0] += 1.2  # spikes
    if n > 300:
        x[300][1] -= 5.0
    x[220] = [None, x[220][1]]  # a failed read stays out of the history, on both sides
    x[230][0] = 95.0  # physically impossible for a DHT22: out of the history too
    return x


def _host_alerts(model_dir, x):
    sc = Scorer(HostModel(model_dir), "dht22")
    out = []
    for i, (t, h) in enumerate(x):
        rec = parse_telemetry(telemetry("gh-01", i, temperature=t, humidity=h))
        out += sc.step(rec)
    return out


def _board_alerts(model_dir, x, tmp_path):
    # one row per line (a whole JSON list would not fit the board's heap from source)
    (tmp_path / "x.txt").write_text("".join(f"{json.dumps(t)},{json.dumps(h)}\n" for t, h in x))
    (tmp_path / "model.ewb").write_bytes((model_dir / "model.ewb").read_bytes())
    code = """
import json, engine, detector, sensors
m = engine.Model(open('model.ewb', 'rb').read())
d = detector.Detector(list(sensors.NAMES), sensors.RANGES['dht22'],
    {'k': None, 'eps': None, 'sigma_window': None, 'stuck_samples': 1000000000,
     'dropout_periods': 1000000000}, {'k': 3.0, 'eps': 0.01, 'sigma_window': 10})
d.set_model(m)
i = -1
for line in open('x.txt'):
    i += 1
    row = [None if v == 'null' else float(v) for v in line.strip().split(',')]
    vals = None if row[0] is None and row[1] is None else row
    for a in d.step(vals):
        if a[0] in ('band', 'shift', 'drift', 'burst'):
            print(json.dumps([i, a[0], a[1], a[2], a[3], a[4], a[5]]))
"""
    out = mpy.run(code=code, heap=HEAP, cwd=tmp_path).stdout.splitlines()
    return [json.loads(line) for line in out]


def test_host_scoring_equals_the_board(tiny_model_dir, tmp_path):
    x = _series()
    host = _host_alerts(tiny_model_dir, x)
    board = _board_alerts(tiny_model_dir, x, tmp_path)
    assert board, "the injected spikes must give the board some band alerts"
    assert [(a["sample"], a["rule"], a["channel"]) for a in host] == [tuple(b[:3]) for b in board]
    for a, b in zip(host, board, strict=True):
        assert a["value"] == pytest.approx(b[3], abs=1e-4)
        assert a["band"] == pytest.approx(b[4:6], abs=1e-3)
        assert a["pred"] == pytest.approx(b[6], abs=1e-3)
    assert {190, 330} <= {a["sample"] for a in host if a["channel"] == "temperature"}
    assert 300 in {a["sample"] for a in host if a["channel"] == "humidity"}
    model_id = HostModel(tiny_model_dir).model_id
    index = {}
    for a in host:  # the board's format, and seqs that never collide with the board's own
        rec = parse("edgewatch/gh-01/alert", json.dumps(a))
        assert rec.model == model_id and rec.seq >= 2**62
        i = index[rec.sample] = index.get(rec.sample, -1) + 1  # the sample's i-th alert
        assert rec.seq == alert_seq(rec.sample, i) and i < 16


def test_replayed_telemetry_is_not_scored_twice(tiny_model_dir):
    sc = Scorer(HostModel(tiny_model_dir), "dht22")
    x = _series(250)
    first = []
    for i, (t, h) in enumerate(x):
        first += sc.step(parse_telemetry(telemetry("gh-01", i, temperature=t, humidity=h)))
    assert first
    again = [sc.step(parse_telemetry(telemetry("gh-01", i, temperature=t, humidity=h)))
             for i, (t, h) in enumerate(x)]
    assert not any(again)


def test_edgewatch_score_publishes_alerts_for_a_modelless_board(tiny_model_dir, tmp_path):
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW, "gh-09": "pw"},
                acl=DEVICE_ACL) as broker:
        log = tmp_path / "score.log"
        env = service_env(EDGEWATCH_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
                          MQTT_USERNAME="edgewatch", MQTT_PASSWORD=HOST_PW)
        p = spawn(["score", "--model", str(tiny_model_dir)], env, log)
        got, lock = [], threading.Lock()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch")
        sub.username_pw_set("edgewatch", HOST_PW)
        sub.on_message = lambda c, u, m: (lock.acquire(), got.append(m), lock.release())
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("edgewatch/+/alert", 1)
        sub.loop_start()
        dev = Board(broker, "gh-09", "pw")
        try:
            wait_until(lambda: p.poll() is not None or "scoring with model" in log.read_text(),
                       timeout=60, what="scorer start")
            assert p.poll() is None, log.read_text()[-2000:]
            x = _series(250)
            for i, (t, h) in enumerate(x):
                dev.publish("telemetry", telemetry("gh-09", i, temperature=t, humidity=h))
            # a board that runs its own model is left alone
            dev.publish("telemetry", dict(telemetry("gh-09", 500, temperature=60.0),
                                          model="3f2a9c1e"))
            want = [(a["sample"], a["channel"]) for a in _host_alerts(tiny_model_dir, x)]
            assert want
            wait_until(lambda: len(got) >= len(want), timeout=20, what="alerts")
            recs = [parse(m.topic, m.payload) for m in got]
            assert [(r.sample, r.channel) for r in recs] == want
            assert all(r.device == "gh-09" and r.rule in ("band", "drift", "burst") for r in recs)
        finally:
            dev.close()
            sub.loop_stop()
            p.send_signal(signal.SIGTERM)
            assert p.wait(20) == 0
