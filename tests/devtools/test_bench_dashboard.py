"""tools/bench_dashboard.py end to end at a small size (the figures come from `make bench`)."""

from tools.bench import dashboard_goals
from tools.bench_dashboard import bench


def test_bench_dashboard_small():
    res = bench(dbs=("sqlite",), devices=20, rows=4000, repeat=3, screenshots=None)
    [r] = res["records"]
    assert "error" not in r, r
    assert r["rows"] >= 4000 and 0 < r["chart points"] <= 1500
    for what in ("fleet", "chart"):
        assert r[f"{what} sql ms"] > 0 and r[f"{what} server ms"] > 0
        assert r[f"{what} ratio"] == r[f"{what} server ms"] / r[f"{what} sql ms"]
    goals = "\n".join(dashboard_goals(res))
    assert "sqlite: fleet server time ≤ 2 × its bare SQL (20 devices, 4,0" in goals
