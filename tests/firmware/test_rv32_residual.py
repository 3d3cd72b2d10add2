"""The residual band's kernel (firmware/residual.py) on the board's instruction set: the same
verdicts and CUSUM state on 32-bit RISC-V MicroPython (QEMU) as on the unix port, whose viper
ints are 64-bit, for residuals far over 100 s under a band k of 1000 (a NAB file's k reached
782): |z| in Q10 then needs care to stay within 32 bits."""

from __future__ import annotations

import json

import numpy as np
from edgewatch.core import mpy

from tests.firmware.test_firmware_detector import FALLBACK, MODEL, PARAMS

S = 0.1  # the model's error scale, normalised units (temperature: 0.45 degC)
RUN = MODEL + """
import detector, json
band = (1000.0, 1.0, 50.0, 0.0, 30, [S, S], [0.0, 0.0], [0, 0], 400)
M.band = band
d = detector.Detector(['temperature', 'humidity'], [(-1e6, 1e6)] * 2, P, F)
d.set_model(M())
s = d._s
for line in open('x.txt'):
    al = d.step([float(v) for v in line.split()])
    print(json.dumps([sorted(a[0] for a in al)] + [s[27 + 22 * j + w] for j in (0, 1) for w in (10, 11, 21)]))
"""


def _rows() -> np.ndarray:
    rng = np.random.default_rng(11)
    t = 20.0 + np.round(rng.normal(0, 0.2, 200), 2)
    h = 40.0 + np.round(rng.normal(0, 1.0, 200), 2)
    x = np.column_stack([t, h])
    # temperature jumps by 300-900 s (135-405 degC) every other sample and back, under k
    x[60:120:2, 0] += S * 4.5 * np.linspace(300, 900, 30)
    return x


def test_residual_kernel_on_rv32_equals_the_unix_port(rv32, tmp_path):
    text = "".join(f"{a!r} {b!r}\n" for a, b in _rows().tolist())
    code = (f"S = {S!r}\nP = {dict(PARAMS, stuck_samples=None)!r}\nF = {FALLBACK!r}\n"
            + RUN.replace("    still = 0\n", "    still = 0\n    band = None\n"))
    (tmp_path / "x.txt").write_text(text)
    unix = [json.loads(v) for v in mpy.run(code=code, heap="96K", cwd=tmp_path).stdout.split("\n") if v]
    rv32.put_firmware(["detector", "detset", "detk", "detk_plain", "residual"])
    rv32.put(text.encode(), "x.txt")
    rv32.reset()
    board = [json.loads(v) for v in rv32.run(code).split("\n") if v.strip()]
    assert len(unix) == len(board) == 200
    # the unix port: the jumps are under the band, the burst CUSUM adds them up
    rules = [r for row in unix for r in row[0]]
    assert "burst" in rules and "band" not in rules, rules
    diff = [(i, u, b) for i, (u, b) in enumerate(zip(unix, board, strict=True)) if u != b]
    assert not diff, diff[:3]
