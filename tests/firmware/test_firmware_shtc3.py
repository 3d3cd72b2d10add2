"""SHTC3 driver and sensor retries, run inside MicroPython against the emulated I2C device."""

import json

import pytest
from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy

HEAP = heap_budget("esp32-devkitc-shtc3")


def _run(tmp_path, code, sim=None):
    (tmp_path / "sim.json").write_text(json.dumps(sim or {}))
    return mpy.run(code=code, heap=HEAP, cwd=tmp_path, EDGEWATCH_SIM=str(tmp_path / "sim.json")).stdout


@pytest.fixture
def csv(tmp_path):
    p = tmp_path / "th.csv"
    p.write_text("temperature,humidity\n21.5,40.25\n-12.3,99.5\n30.0,10.0\n22.0,41.0\n")
    return p


def test_crc8_matches_the_datasheet_example(tmp_path):
    out = _run(tmp_path, "import shtc3; print(hex(shtc3.crc8(b'\\xbe\\xef')), "
                         "hex(shtc3.crc8(b'\\x00\\x00')), hex(shtc3.crc8(b'\\x00\\xbe\\xef', 1)))")
    # datasheet: 0xBEEF -> 0x92; 0x0000 -> 0x81 (init 0xFF, poly 0x31)
    assert out.split() == ["0x92", "0x81", "0x92"]


def test_measure_through_the_bus_converts_like_the_datasheet(tmp_path, csv):
    code = """
import machine, shtc3
i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))
s = shtc3.SHTC3(i2c)
print(hex(s.read_id()))
out = [0, 0]
for _ in range(3):
    s.measure(out)
    print('%.3f %.3f' % (out[0], out[1]))
try:
    i2c.writeto(0x70, b'\\x78\\x66')   # measuring without wake-up: the sleeping part NACKs
    print('no nack')
except OSError as e:
    print('nack', e.errno)
"""
    lines = _run(tmp_path, code, {"csv": str(csv)}).split()
    assert lines[0] == "0x807"
    got = [float(x) for x in lines[1:7]]
    want = [21.5, 40.25, -12.3, 99.5, 30.0, 10.0]
    # 16-bit words: 175/65536 degC and 100/65536 %RH per step
    assert got == pytest.approx(want, abs=0.003)
    assert lines[7:] == ["nack", "19"]


def test_bad_crc_is_retried_then_reported_as_a_fault_not_a_value(tmp_path, csv):
    code = """
import machine, sensors
s = sensors.make_sensor('shtc3', {'pins': {'sda': 21, 'scl': 22}}, machine)
r = sensors.Reader(s, 'shtc3', retries=3, retry_ms=0)
v = r.read()
print('A', v, r.failed_attempts)
v = r.read()
print('B', v, r.failed_attempts, type(r.error).__name__)
v = r.read()
print('C', v, r.failed_attempts)
v = r.read()
print('D', v, r.failed_attempts, type(r.error).__name__)
"""
    sim = {"csv": str(csv), "faults": [
        {"kind": "crc", "row": 0, "attempts": 2},    # recovered by the third attempt
        {"kind": "crc", "row": 1, "attempts": 6},    # 4 attempts fail: fault; then 2 more + ok
        {"kind": "fail", "row": 2, "attempts": 9}]}  # NACKed reads
    out = _run(tmp_path, code, sim).splitlines()
    a = out[0].split(" ", 1)
    assert a[0] == "A" and a[1].startswith("[21.5") and a[1].endswith(" 2")
    assert out[1] == "B None 6 CRCError"
    assert out[2].startswith("C [-12.") and out[2].endswith(" 8")
    assert out[3] == "D None 12 OSError"


def test_dht_failures_are_bounded_and_reported(tmp_path, csv):
    code = """
import machine, sensors
s = sensors.make_sensor('dht22', {'pins': {'dht': 4}}, machine)
r = sensors.Reader(s, 'dht22', retries=2, retry_ms=0)
print(r.read(), r.failed_attempts)
print(r.read(), r.failed_attempts, r.error)
print(r.read(), r.failed_attempts)
"""
    sim = {"csv": str(csv), "faults": [{"kind": "fail", "row": 1, "attempts": 3},
                                        {"kind": "crc", "row": 1, "attempts": 4}]}
    out = _run(tmp_path, code, sim).splitlines()
    assert out[0] == "[21.5, 40.2] 0" or out[0] == "[21.5, 40.3] 0"
    assert out[1] == "None 3 [Errno 110] ETIMEDOUT"
    # attempts 4..: the checksum fault (attempt 4) then a good read of row 1
    assert out[2] == "[-12.3, 99.5] 4"
