"""Pictures people read: time on the x axis, alert labels that never overlap, y limits a single
spike cannot flatten, every panel titled, an empty panel that says why (training/plots.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from edgewatch.training.forecast.plots import label_alerts, merge_events, reading_panel, robust_ylim  # noqa: E402

T0 = 1_795_600_000.0


def _board():
    rng = np.random.default_rng(0)
    times = [T0 + 60 * i for i in range(300)]
    hum = list(40 + rng.normal(0, 0.5, 300))
    hum[100] = 120.0  # one spike, far outside the rest
    alerts = [(times[100], "band", 120.0), (times[101], "range", 120.0)]
    alerts += [(times[i], "stuck", 40.0) for i in range(150, 190)]  # a stuck run: 40 alerts
    alerts += [(times[i], "read", None) for i in (200, 201, 202)]
    alerts += [(times[102], "band", 41.0), (times[103], "shift", 41.0)]
    return times, hum, alerts


def test_panel_has_time_axis_robust_limits_and_separate_labels():
    times, hum, alerts = _board()
    fig, ax = plt.subplots(figsize=(7, 3))
    events = reading_panel(ax, times, hum, "gh-02 humidity — faults: spike, stuck", "%RH",
                           alerts=alerts)
    fig.tight_layout()
    labels = label_alerts(ax, events)
    fig.canvas.draw()
    # time on x: the axis holds dates of the samples, formatted as clock times
    x0, x1 = ax.get_xlim()
    first, last = mdates.num2date(x0).timestamp(), mdates.num2date(x1).timestamp()
    assert first <= times[0] + 60 and last >= times[-1] - 60 and last - first < 2 * 300 * 60
    assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    assert all(":" in t.get_text() for t in ax.get_xticklabels() if t.get_text())
    assert ax.get_xlabel() == "time (UTC)"
    # one 120 %RH spike does not flatten the panel: the normal readings fill most of it
    lo, hi = ax.get_ylim()
    assert hi < 60 and lo > 30 and (max(h for h in hum if h < 100) - min(hum)) / (hi - lo) > 0.5
    assert any(t.get_text().startswith("▲ 120") for t in ax.texts)  # the spike is still shown
    # labels: the stuck run is one label, and no two labels overlap
    texts = [t.get_text() for t in labels]
    assert "stuck ×40" in texts and texts.count("stuck") == 0 and "read ×3" in texts
    boxes = [t.get_window_extent() for t in labels]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i], texts[j])
    # every label sits inside the axes' horizontal extent
    ab = ax.get_window_extent()
    assert all(ab.x0 - 1 <= b.x0 <= ab.x1 for b in boxes)
    assert ax.get_title()
    plt.close(fig)


def test_empty_panel_says_why():
    fig, ax = plt.subplots()
    assert reading_panel(ax, [], [], "gh-03 humidity", "%RH",
                         empty_note="no humidity readings stored for gh-03") == []
    assert [t.get_text() for t in ax.texts] == ["no humidity readings stored for gh-03"]
    assert ax.get_title() == "gh-03 humidity"
    plt.close(fig)


def test_helpers():
    assert robust_ylim([20.0] * 98 + [21.0, 120.0])[1] < 30
    assert merge_events([(1, "stuck"), (2, "stuck"), (2.5, "band"), (9, "stuck")], 2) == [
        (1, "stuck", 2), (2.5, "band", 1), (9, "stuck", 1)]


def test_bench_strips_are_titled_and_an_empty_one_says_so():
    from tools.bench import _strips

    fig, axes = plt.subplots(2, 1)
    _strips(axes, {"board": np.r_[np.zeros(10), np.ones(5), np.zeros(5), np.ones(2)],
                   "iforest": np.zeros(22)})
    assert axes[0].get_title(loc="left") == "board: 2 alert episodes"
    assert axes[1].get_title(loc="left") == "iforest: 0 alert episodes"
    assert [t.get_text() for t in axes[1].texts] == ["iforest raised no alert on this file"]
    assert not axes[0].texts
    plt.close(fig)
