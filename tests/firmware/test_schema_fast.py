"""schema.telemetry_fast (the message the app queues) against schema.telemetry (the reference).

Hundreds of messages on the board's instruction set (RV32 MicroPython, single precision:
the same bytes, every one) and on the unix port (double precision: the same bytes but
for numbers json.dumps writes longer than the shortest decimal of the same double,
"0.07000000000000001" for "0.07", docs/messages.md). Values include rounding half-points
(x * 10**d exactly k + 0.5 in binary), negatives, values that round to -0.0, NaN, None,
int readings, values past the fast path's range, failed reads, faults and no band.
"""

from __future__ import annotations

import json
import re

from edgewatch.board.catalog import heap_budget
from edgewatch.core import mpy

CASES = """
import schema
N = ['temperature', 'humidity']
S = [12345]
def r(n):
    S[0] = (S[0] * 1103515245 + 12345) & 0x7FFFFFFF
    return (S[0] >> 8) % n
def val(d):
    c = r(12)
    if c < 3:  # a half-point of x * 10**d: 21.125 -> 2112.5
        return (r(400001) - 200000) / (8 if d == 2 else 16)
    if c < 5:
        return (r(2000001) - 1000000) / 10 ** d
    if c == 5:
        return (r(2001) - 1000) / 10 ** (d + 2)  # small: some round to 0 or -0
    if c == 6:
        return [0.0, -0.0, 0.28039217, -39.99, 100.0, 9999.994, -9999.995][r(7)]
    if c == 7:
        return (r(2000001) - 1000000) / 10 ** (d + 1) + r(1000) / 7.0
    return r(1000001) / 10000.0 - 50
def out(*a):
    print('R' + schema.telemetry(*a))
    m = schema.telemetry_fast(*a)
    print('F' + (m if isinstance(m, str) else bytes(m).decode()))
for i in range(COUNT):
    v = [val(2), val(2)]
    band = r(5) != 0
    p = [val(3), val(3)] if band else None
    lo = [val(3), val(3)] if band else None
    hi = [val(3), val(3)] if band else None
    out('gh-01', i, None if r(2) else 1732372000 + i, N, v, p, lo, hi, [], '3f2a9c1e')
nan = float('nan')
for a in (
    ('gh-01', 1, None, N, None, None, None, None, ['read', 'dropout'], None),
    ('gh-01', 2, 5, N, None, [1.5, 2.5], [1.0, 2.0], [2.0, 3.0], ['read'], 'abcdef01'),
    ('gh-01', 3, None, N, [nan, 48.2], None, None, None, [], None),
    ('gh-01', 4, None, N, [21.5, 48.2], [nan, 1.0], [1.0, 1.0], [1.0, 1.0], [], None),
    ('gh-01', 5, None, N, [21, 48], [21.4567, 48.61], [21.1, 47.9], [21.7, 49.3], [], None),
    ('gh-01', 6, None, N, [21, 48.5], None, None, None, [], None),
    ('gh-01', 7, None, N, [21.5, None], None, None, None, [], None),
    ('gh-01', 8, None, N, [1e9, -1e9], [1e7, 0.0], [-1e30, 0.0], [1e30, 0.0], ['band'], None),
    ('gh-01', 4294967295, 1732372000, N, [-39.99, 100.0], [-123.4567, 99.999], [-130.1234, 95.5],
     [-117.0001, 104.4444], ['band', 'range', 'stuck', 'dropout', 'read'], '3f2a9c1e'),
    ('gh-01', 9, None, N, [True, 0.5], None, None, None, [], None),
    ('gh-01', 10, None, N, [-0.0, 0.0], [-0.0004, 0.0004], [-0.0005, 0.0005], [-0.0015, 0.0015], [], None),
):
    out(*a)
"""

NUM = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf")


def pairs(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    ref = [x[1:] for x in lines if x.startswith("R")]
    fast = [x[1:] for x in lines if x.startswith("F")]
    assert len(ref) == len(fast) > 0
    return list(zip(ref, fast, strict=True))


def test_fast_is_the_reference_on_the_unix_port_to_the_last_double():
    out = mpy.run(code=f"COUNT = 600\n{CASES}", heap=heap_budget("esp32-devkitc-dht22")).stdout
    differ = 0
    for ref, fast in pairs(out):
        if ref == fast:
            continue
        differ += 1
        # the same text but for numbers: json.dumps' longer text of the same double
        assert NUM.sub("#", ref) == NUM.sub("#", fast), (ref, fast)
        for a, b in zip(NUM.findall(ref), NUM.findall(fast), strict=True):
            assert a == b or (float(a) == float(b) and b == repr(float(b))), (a, b, ref)
        assert json.loads(ref) == json.loads(fast)
    assert differ < 600  # most messages are byte for byte the same


def test_fast_is_the_reference_byte_for_byte_on_rv32(rv32):
    rv32.put_firmware(["schema", "msgtpl"])
    rv32.reset()
    out = rv32.run(f"COUNT = 250\n{CASES}")
    got = pairs(out)
    assert len(got) == 261
    for ref, fast in got:
        assert ref == fast
