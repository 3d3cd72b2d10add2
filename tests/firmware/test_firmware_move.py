"""The move rule (firmware/moverule.py) inside MicroPython: a temperature drift too
slow for the residual CUSUM is flagged while it develops, because the humidity does not move with it;
the same move made by both channels together (warming air at a steady dew point) is not;
the blob's calibration is read and checked as the board reads it."""

import json

import numpy as np
import pytest
from edgewatch.core import mpy
from edgewatch.training.export import bandcal, blob

from tests.firmware.test_firmware_detector import FALLBACK, HEAP, MODEL, PARAMS

N = 700
SCALE = np.array([23.0, 4.5])  # the stand-in's scaler, model order (Humidity, Temperature)
SLOPE = -2.0  # %RH per °C: the room's humidity falls as its air warms


def _room(drift_from=None, rate=0.005):
    """Temperature and humidity of one air mass: a warming of 1.5 °C over rows 150-300 that
    the humidity follows; with ``drift_from``, the temperature sensor drifts by ``rate`` °C
    a sample from there (the humidity, right, does not follow)."""
    rng = np.random.default_rng(4)
    t = 20.0 + np.clip((np.arange(N) - 150) / 100.0, 0, 1.5)
    h = 40.0 + SLOPE * (t - 20.0)
    t = t + np.round(rng.normal(0, 0.02, N), 3)
    h = h + np.round(rng.normal(0, 0.05, N), 3)
    if drift_from is not None:
        t[drift_from:] += rate * np.arange(1, N - drift_from + 1)
    return np.column_stack([t, h])


def _cal(coupled=True, limit=0.04):
    # model order (Humidity, Temperature); in normalised units the humidity's move is
    # SLOPE * 4.5 / 23 of the temperature's
    b = SLOPE * SCALE[1] / SCALE[0] if coupled else 0.0
    return bandcal.MoveCal(60, np.array([[0.0, b], [1.0 / b if b else 0.0, 0.0]]),
                           np.array([limit, limit]))


def _run(tmp_path, rows, move):
    s = np.mean(np.abs(np.diff(_room(), axis=0)), axis=0)[::-1] / SCALE
    band = (6.0, 0.5, 10.0, 1.0 / 1024, 30, [float(v) for v in s], [0.0, 0.0], [0, 0], 0)
    raw = None if move is None else blob.move_section(move, 2)
    (tmp_path / "x.txt").write_text("".join(f"{a!r} {b!r}\n" for a, b in rows.tolist()))
    code = MODEL.replace("    still = 0\n", f"    still = 0\n    band = {band!r}\n"
                         f"    move = {raw!r}\n") + f"""
import detector, sensors, json
d = detector.Detector(list(sensors.NAMES), sensors.RANGES['dht22'], {PARAMS!r}, {FALLBACK!r})
d.set_model(M())
for line in open('x.txt'):
    al = d.step([float(v) for v in line.split()])
    print(json.dumps([[a[0], a[1]] for a in al]))
""".replace("null", "None")
    out = mpy.run(code=code, heap=HEAP, cwd=tmp_path).stdout.splitlines()
    return [json.loads(line) for line in out]


def _rows(alerts, rule, channel=None):
    return [i for i, a in enumerate(alerts) if any(r == rule and channel in (None, c) for r, c in a)]


def test_a_drift_the_humidity_does_not_follow_is_caught_while_it_develops(tmp_path):
    clean = _room()
    # the coupled warming is what the channels do together: no alert after the start
    assert _rows(_run(tmp_path, clean, _cal())[20:], "drift") == []
    # without the coupling the same warming is a move of each channel alone: flagged,
    # so the coupling (not the limit's size) is what keeps the clean room quiet
    assert _rows(_run(tmp_path, clean, _cal(coupled=False)), "drift")
    faulty = _room(drift_from=400)
    # 0.005 °C a sample is a fifth of the model's mean error: the CUSUM (reference 0.5 s)
    # never adds it up, so without the move rule the drift goes unseen until row 700
    assert _rows(_run(tmp_path, faulty, None), "drift") == []
    caught = _rows(_run(tmp_path, faulty, _cal()), "drift", "temperature")
    # the limit 0.04 x 4.5 = 0.18 °C: 36 samples of drift, less what the two channels'
    # noise (0.02 °C, 0.05 %RH) adds to the net move over the horizon
    assert caught and 405 <= caught[0] <= 460, caught[:5]
    assert all(i >= 400 for i in caught)


def test_the_move_section_carries_the_boards_own_words():
    """The section is in the board's units (Q10 limits, Q12 coefficients, biased words): the
    board copies it as it is; the host clamps what would overflow its 32-bit words (a
    horizon beyond its history is refused: tests/training/test_blob.py)."""
    import struct

    w = struct.unpack("<H6I", blob.move_section(_cal(), 2))
    assert w[:3] == (60, 41, 41) and w[3] - (1 << 29) == -4096  # 0.04 x 1024; the diagonal
    assert w[4] - (1 << 29) == round(SLOPE * SCALE[1] / SCALE[0] * 4096)
    wild = bandcal.MoveCal(60, np.array([[0.0, 40.0], [float("nan"), 0.0]]), np.array([0.0, 1e9]))
    w = struct.unpack("<H6I", blob.move_section(wild, 2))
    assert w[1:3] == (1, (1 << 24) - 1)
    assert [x - (1 << 29) for x in w[3:]] == [-4096, 32767, 0, -4096]


def test_move_calibrate_learns_the_coupling_and_its_limit_from_the_fit_rows():
    rng = np.random.default_rng(1)
    n = 4000
    t = 20 + np.cumsum(rng.normal(0, 0.02, n))
    h = 40 + SLOPE * (t - 20) + rng.normal(0, 0.05, n)
    rows = np.column_stack([t, h])
    cal = bandcal.move_calibrate(rows, np.array([4.5, 23.0]))
    # temperature first here: its move explained by the humidity's, and back
    assert cal.horizon == bandcal.MOVE_H
    assert cal.coef[1, 0] == pytest.approx(SLOPE * 4.5 / 23, rel=0.05)
    assert cal.coef[0, 0] == cal.coef[1, 1] == 0
    d = (rows[60:] - rows[:-60]) / np.array([4.5, 23.0])
    net = np.abs(d - d @ cal.coef.T)
    assert (cal.limit >= net.max(axis=0)).all()  # the budget lies beyond the fit rows' own
    # one channel: nothing to move with; too few rows: no tail to calibrate
    assert bandcal.move_calibrate(rows[:, :1], np.array([4.5])) is None
    assert bandcal.move_calibrate(rows[:200], np.array([4.5, 23.0])) is None

