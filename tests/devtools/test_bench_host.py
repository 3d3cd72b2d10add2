"""tools/bench_host.py runs end to end at a small size (the figures come from `make bench`)."""

from tools.bench_host import bench


def test_bench_host_small():
    r = bench(devices=40, per_device=3, alerts=30, rate=60.0)
    assert r["collector_messages"] == 3 * 40 * 3 == r["collector_rows_in_db"]
    assert r["collector_live_msgs_per_s"] > 0 and r["collector_backlog_msgs_per_s"] > 0
    assert r["bridge_sms_requests"] == 30
    assert 0 < r["bridge_latency_ms_p50"] <= r["bridge_latency_ms_p99"] <= r["bridge_latency_ms_max"]
