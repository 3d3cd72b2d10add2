"""The detector inside MicroPython against a numpy rendering of the seed's is_anomalie."""

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy

HEAP = heap_budget("esp32-devkitc-dht22")
OCCUPANCY = Path(mpy.ROOT).parent / "shared" / "data" / "occupancy" / "datatraining.txt"

# A stand-in model (persistence forecast) in the blob's channel order, which differs from
# the sensor's (temperature, humidity), so the channel mapping is exercised too.
MODEL = """
class M:
    window = 6
    names = ['Humidity', 'Temperature']
    model_id = 'abcdef01'
    k = 3.0
    eps = 0.01
    sigma_window = 6
    offset = [16.0, 19.0]
    scale = [23.0, 4.5]
    shift = None
    still = 0
    residual = True  # an output of 0 is the newest input: a persistence forecast
    in_scale, in_zp, out_scale, out_zp = 0.05, 0, 0.01, 0
    def predict_q(self, xq):
        return bytes(2)
"""

PARAMS = {"k": None, "eps": None, "sigma_window": None, "stuck_samples": 1000,
          "dropout_periods": 1}
FALLBACK = {"k": 3.0, "eps": 0.01, "sigma_window": 24}


def _detector_code(params=PARAMS, kind="dht22"):
    return (MODEL + "import detector, sensors, json\n"
            f"d = detector.Detector(list(sensors.NAMES), sensors.RANGES[{kind!r}], "
            f"{json.dumps(params).replace('null', 'None')}, {json.dumps(FALLBACK)})\n")


def test_band_rule_matches_numpy_population_std(tmp_path):
    rows = list(csv.reader(open(OCCUPANCY)))[1 + 2000:1 + 2300]
    x = np.array([[float(r[2]), float(r[3])] for r in rows], dtype=np.float32)  # temp, hum
    for i in (50, 120, 121, 200):  # injected spikes
        x[i, 0] += 1.5
    x[250, 1] -= 4.0
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    code = _detector_code() + """
d.set_model(M())
for row in json.load(open('x.json')):
    al = d.step(row)
    b = [a[1] for a in al if a[0] == 'band']
    print(json.dumps([b, [d.fixed()[2 + 2 * c] / 1000 for c in range(2)] if d.has_band else None,
                  [d.fixed()[3 + 2 * c] / 1000 for c in range(2)] if d.has_band else None]))
"""
    out = [json.loads(line) for line in mpy.run(code=code, heap=HEAP, cwd=tmp_path).stdout.splitlines()]
    offset, scale = np.array([19.0, 16.0]), np.array([4.5, 23.0])  # sensor order
    norm = (x.astype(np.float64) - offset) / scale
    w = 6
    flagged = set()
    for t in range(len(x)):
        got_flags, lo, hi = out[t]
        if t < w:
            assert lo is None and got_flags == []
            continue
        pred = norm[t - 1]
        sigma = norm[t - w:t].std(axis=0)  # population std, as numpy's default
        half = 3.0 * (sigma + 0.01)
        want = [name for c, name in enumerate(("temperature", "humidity"))
                if not (pred[c] - half[c] < norm[t, c] < pred[c] + half[c])]
        assert sorted(got_flags) == sorted(want), t
        assert lo == pytest.approx(((pred - half) * scale + offset).tolist(), abs=2e-3)
        assert hi == pytest.approx(((pred + half) * scale + offset).tolist(), abs=2e-3)
        flagged.update((t, c) for c in got_flags)
    # every injected spike is caught (121 rides on 120's spike, which widened sigma)
    assert {(50, "temperature"), (120, "temperature"), (200, "temperature"),
            (250, "humidity")} <= flagged


def test_fault_rules_name_rule_channel_value_and_band(tmp_path):
    params = dict(PARAMS, stuck_samples=3, dropout_periods=2)
    code = _detector_code(params, "dht11") + """
def show(al):
    print(json.dumps([list(a) for a in al]))
show(d.step([21.0, 40.0]))
show(d.step([21.0, 41.0]))
show(d.step([21.0, 42.0], missed=1))
show(d.step([55.0, 42.0], missed=2))
show(d.step(None))
show(d.step([22.0, 10.0]))
"""
    out = [json.loads(line) for line in mpy.run(code=code, heap=HEAP, cwd=tmp_path).stdout.splitlines()]
    assert out[0] == [] and out[1] == []
    assert out[2] == [["stuck", "temperature", 21.0, None, None, None]]
    assert out[3] == [["dropout", None, 2, None, None, None],
                      ["range", "temperature", 55.0, 0.0, 50.0, None]]
    assert out[4] == [["read", None, None, None, None, None]]
    assert out[5] == [["range", "humidity", 10.0, 20.0, 90.0, None]]


def test_config_parameters_override_the_blob_and_bad_models_are_refused(tmp_path):
    params = dict(PARAMS, k=5.0, sigma_window=4)
    code = _detector_code(params) + """
d.set_model(M())
print(d.k, d.eps, d.sigma_window)
class Bad(M):
    names = ['pressure', 'temperature']
try:
    d.set_model(Bad())
except detector.ModelMismatch as e:
    print('refused')
print(d.model.model_id)
"""
    out = mpy.run(code=code, heap=HEAP, cwd=tmp_path).stdout.split()
    assert out == ["5.0", "0.01", "4", "refused", "abcdef01"]


@pytest.mark.parametrize("step", [200, 700])
def test_shift_rule_is_the_hosts_ms_ensemble_test(tmp_path, step):
    """The board's shift rule (rolling means, the blob's calibration) gives the host's verdicts
    row for row, names the channel that moved, and is off with shift_factor=0. A shift lasting
    512 samples in a row (shiftcal.REBASE; the 200-row step is shorter) is then the new level,
    on the board as on the host: the episode ends, and the step back is a new one."""
    from edgewatch.training.export import shiftcal

    params = PARAMS
    end = 700 + step
    rows = list(csv.reader(open(OCCUPANCY)))[1:1 + end + 300]
    x = np.array([[float(r[2]), float(r[3])] for r in rows], dtype=np.float32)  # temp, hum
    x[700:end, 0] += 5.0  # a heater left on: a sustained step, no spike at any single row
    x = x.astype(np.float64)
    cal = shiftcal.calibrate(x[:400])
    want = shiftcal.score(cal, x)
    assert want[700:end].any() and not want[:700].any()  # the test itself can fail
    if step > shiftcal.REBASE + shiftcal.WINDOW:  # bounded: the level accepted, the return new
        assert not want[700 + shiftcal.REBASE + shiftcal.WINDOW:end].any() and want[end:].any()
    # blob channel order (humidity, temperature) differs from the sensor's
    perm = [1, 0]
    flat = [*cal.center[perm], *cal.spread[perm], *cal.matrix[np.ix_(perm, perm)].reshape(-1)]
    shift = struct.pack("<Hf", cal.window, cal.factor) + struct.pack(f"<{len(flat)}f", *flat)
    bad = bytearray(shift)
    struct.pack_into("<f", bad, 6 + 4 * 2, -1.0)  # a negative spread
    (tmp_path / "x.txt").write_text("".join(f"{t!r} {h!r}\n" for t, h in x.tolist()))
    code = MODEL.replace("    shift = None\n", f"    shift = {shift!r}\n") + """
import detector, sensors, json
class Bad(M):
    shift = BAD
try:
    detector.Detector(list(sensors.NAMES), sensors.RANGES['dht22'], PARAMS, FALLBACK).set_model(Bad())
except detector.ModelMismatch as e:
    print('refused', 0, json.dumps(str(e)))
for tag, params in (('on', PARAMS), ('off', OFF)):
    d = detector.Detector(list(sensors.NAMES), sensors.RANGES['dht22'], params, FALLBACK)
    d.set_model(M())
    for i, line in enumerate(open('x.txt')):
        for a in d.step([float(v) for v in line.split()]):
            if a[0] == 'shift':
                print(tag, i, json.dumps(list(a)))
"""
    code = (f"PARAMS = {json.dumps(params)}\nOFF = {json.dumps(dict(params, shift_factor=0))}\n"
            f"FALLBACK = {json.dumps(FALLBACK)}\n").replace("null", "None") + f"BAD = {bytes(bad)!r}\n" + code
    lines = [line.split(" ", 2) for line in mpy.run(code=code, heap=HEAP, cwd=tmp_path).stdout.splitlines()]
    assert lines[0] == ["refused", "0", json.dumps("shift calibration: value 2 is -1.0")]
    on = {int(i): json.loads(a) for tag, i, a in lines[1:] if tag == "on"}
    assert len(on) == len(lines) - 1  # one shift alert per row at most, and none when off
    got = np.zeros(len(x), dtype=bool)
    got[list(on)] = True
    np.testing.assert_array_equal(got, want)
    rule, channel, value, lo, hi, pred = on[min(on)]
    assert (rule, channel) == ("shift", "temperature")
    assert value > hi and lo < pred < hi  # the rolling mean left the limits around its usual level
    assert abs(pred - cal.center[0]) < 1e-3


def test_whole_reading_stuck_rule_from_the_blob(tmp_path):
    """A model with still = 4: the fifth identical reading in a row (4 repeats) is a stuck
    alert for the device, on every sample while it stays; one channel changing resets it; the
    per-channel rule keeps its own limit; still_samples = 0 turns it off."""
    code = MODEL.replace("    still = 0\n", "    still = 4\n") + f"""
import detector, sensors, json
ROWS = [[20.0, 50.0]] * 9 + [[20.0, 50.5]] + [[20.0, 50.5]] * 5
for st in (None, 0):
    params = dict({PARAMS!r}, still_samples=st)
    d = detector.Detector(list(sensors.NAMES), sensors.RANGES['dht22'], params, {FALLBACK!r})
    d.set_model(M())
    print(json.dumps([[list(a) for a in d.step(r) if a[0] == 'stuck'] for r in ROWS]))
""".replace("null", "None")
    on, off = (json.loads(line) for line in mpy.run(code=code, heap=HEAP, cwd=tmp_path).stdout.splitlines())
    fired = {i: a for i, a in enumerate(on) if a}
    assert fired == {i: [["stuck", None, r, None, None, None]]
                     for i, r in [(4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (13, 4), (14, 5)]}
    assert not any(off)


def test_plain_fallback_gives_the_viper_kernels_verdicts(tmp_path):
    """Ports without the native emitter run the same kernels as bytecode (detk_plain.py):
    the same alerts and bands, row for row, as the viper kernels."""
    rows = list(csv.reader(open(OCCUPANCY)))[1 + 2000:1 + 2200]
    x = np.array([[float(r[2]), float(r[3])] for r in rows], dtype=np.float32)
    x[50, 0] += 1.5
    x[150, 1] -= 4.0
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    code = MODEL + """
import detector, detk_plain, sensors, json
for loader in (None, detk_plain):
    d = detector.Detector(list(sensors.NAMES), sensors.RANGES['dht22'], PARAMS, FALLBACK, loader=loader)
    d.set_model(M())
    print(type(d._k.pre).__name__)
    for row in json.load(open('x.json')):
        al = d.step(row)
        print(json.dumps([[list(a) for a in al], [d.fixed()[2 + 2 * c] / 1000 for c in range(2)] if d.has_band else None]))
"""
    code = code.replace("PARAMS", json.dumps(PARAMS).replace("null", "None"))
    code = code.replace("FALLBACK", json.dumps(FALLBACK))
    lines = mpy.run(code=code, heap="512K", cwd=tmp_path).stdout.splitlines()
    half = len(lines) // 2
    assert lines[0] != lines[half]  # the native kernel, then the bytecode one
    viper, plain = [json.loads(x) for x in lines[1:half]], [json.loads(x) for x in lines[half + 1:]]
    assert len(viper) == len(x) and viper == plain
    assert sum(len(r[0]) for r in viper) >= 2  # the spikes were flagged


MILLI = """
d.set_model(M())
s, n = d._s, 2
for line in open('x.txt'):
    d.step([float(v) for v in line.split()])
    if not d.has_band:
        continue
    k = d.fixed()
    m = d.model
    worst = 0
    for j in range(2):  # the float formula the integers replace
        f, o, c = m.scale[j] * 1000 / 65536, m.offset[j] * 1000, d._order[j]
        for w, at in ((0, c), (1, n + 2 * c), (2, n + 2 * c + 1)):
            worst = max(worst, abs(k[at] - round((s[33 + 22 * j + w] - 536870912) * f + o)))
    print(k[0], k[1], k[2], k[3], k[4], k[5], worst)
"""


@pytest.mark.parametrize("scale,offset,bound", [
    ((23.0, 4.5), (16.0, 19.0), 1),        # the stand-in's
    ((5.1, 0.37), (41.7, 22.3), 1),        # occupancy-like
    ((0.013, 31.9), (-250.0, 1e5), 1),     # a tiny scale; a large offset
    ((300.0, 4.5), (16.0, 19.0), 8),       # a scale over 32 units: steps of 2**-F = 8
])
def test_fixed_in_integers_matches_the_float_formula_and_cpython(tmp_path, scale, offset, bound):
    """Detector.fixed's numbers (the telemetry's pred/lo/hi x 1000) come from detk.milli in
    32-bit integers (nothing allocated, the same on every port): within one thousandth of
    the float formula (a scale over 32 units: the integers' coarser step), and equal on the
    MicroPython unix port and in CPython (detk_plain, the host's scorer)."""
    import os
    import subprocess
    import sys

    rows = list(csv.reader(open(OCCUPANCY)))[1 + 2000:1 + 2200]
    x = [[float(r[2]), float(r[3])] for r in rows]
    for i in (50, 120):
        x[i][0] += 1.5
    (tmp_path / "x.txt").write_text("".join(f"{a!r} {b!r}\n" for a, b in x))
    model = MODEL.replace("offset = [16.0, 19.0]", f"offset = {list(offset)}").replace(
        "scale = [23.0, 4.5]", f"scale = {list(scale)}")
    code = (model + "import detector, sensors\n"
            f"d = detector.Detector(list(sensors.NAMES), sensors.RANGES['dht22'], "
            f"{json.dumps(PARAMS).replace('null', 'None')}, {json.dumps(FALLBACK)}{{}})\n" + MILLI)
    out = mpy.run(code=code.replace("{}", ""), heap=HEAP, cwd=tmp_path).stdout.split("\n")
    rows = [[int(v) for v in line.split()] for line in out if line]
    assert len(rows) > 150
    assert max(r[6] for r in rows) <= bound, [r for r in rows if r[6] > bound][:3]
    res = subprocess.run([sys.executable, "-c", "import detk_plain\n" + code.replace(
        "{}", ", loader=detk_plain")], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(mpy.ROOT) / "firmware")})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n") == out  # the same integers in CPython
