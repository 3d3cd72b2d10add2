"""tools/bench_host.py runs end to end at a small size (the figures come from `make bench`)."""

from tools.bench_host import bench


def test_bench_host_small():
    r = bench(devices=40, per_device=3, alerts=30, rate=60.0)
    assert r["collector_messages"] == 3 * 40 * 3 == r["collector_rows_in_db"]
    assert r["collector_live_msgs_per_s"] > 0 and r["collector_backlog_msgs_per_s"] > 0
    assert r["bridge_sms_requests"] == 30
    assert 0 < r["bridge_latency_ms_p50"] <= r["bridge_latency_ms_p99"] <= r["bridge_latency_ms_max"]
    # the bare peers of the same run: every message handled by each, the ratios computed
    assert r["peers_messages"] == 40 * 3
    for k in ("", "backlog_"):
        assert r[f"collector_{k}cpu_s_per_1000"] > 0 and r[f"bare_subscriber_{k}cpu_s_per_1000"] > 0
    assert r["collector_cpu_ratio"] == round(r["collector_cpu_s_per_1000"]
                                             / r["bare_subscriber_cpu_s_per_1000"], 2)
    assert r["bridge_sms_at_rate"] == r["bare_poster_sms_at_rate"] == 30
    assert r["bridge_p99_ratio"] > 0
