"""The greenhouse generator and the fault injector: physics, sensor resolution, labels, seeds."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgewatch.training.forecast.data import load, load_occupancy, shared_data
from edgewatch.training.forecast.generate import (
    FAULT_KINDS,
    SENSORS,
    generate,
    inject_faults,
    write_csv,
)

EDGEWATCH = Path(sys.executable).parent / "edgewatch"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_humidity_falls_as_temperature_rises(seed):
    s, _ = generate(days=5, period=300, seed=seed)
    t, h = s.values[:, 0].astype(float), s.values[:, 1].astype(float)
    assert np.corrcoef(t, h)[0, 1] < -0.6
    hours = (s.timestamps % 86400) / 3600
    afternoon, night = t[(hours >= 13) & (hours < 16)].mean(), t[(hours >= 3) & (hours < 6)].mean()
    assert afternoon - night > 3.0  # a diurnal cycle, warmest in the afternoon
    daily_means = t.reshape(5, -1).mean(axis=1)
    assert np.ptp(daily_means) > 0.2  # days differ from one another
    assert 0 < h.min() and h.max() <= 100 and -10 < t.min() and t.max() < 50


@pytest.mark.parametrize("sensor,decimals", [("dht22", 1), ("shtc3", 2), ("dht11", 0)])
def test_sensor_resolution_in_values_and_file(sensor, decimals, tmp_path):
    s, _ = generate(days=1, period=60, sensor=sensor, seed=3)
    res = SENSORS[sensor].resolution[0]
    steps = s.values.astype(float) / res
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    write_csv(s, tmp_path / "g.csv", SENSORS[sensor].resolution)
    cells = [line.split(",")[1:3] for line in (tmp_path / "g.csv").read_text().splitlines()[1:]]
    assert all(len(c.partition(".")[2]) == decimals for row in cells for c in row)
    if sensor == "dht11":  # its datasheet range: 0-50 °C, 20-90 %RH
        assert s.values[:, 0].min() >= 0 and s.values[:, 0].max() <= 50
        assert s.values[:, 1].min() >= 20 and s.values[:, 1].max() <= 90
    if sensor == "shtc3":  # finer than a DHT22: more distinct readings
        assert len(np.unique(s.values[:, 0])) > 3 * len(np.unique(np.round(s.values[:, 0], 1))) / 2


def test_injected_faults_change_exactly_the_labelled_spans():
    rng = np.random.default_rng(5)
    x = np.column_stack([np.sin(np.arange(5000) / 50.0) * 3 + 20, np.cos(np.arange(5000) / 70.0) * 5 + 50])
    out, labels, events = inject_faults(x, list(FAULT_KINDS), rng, count=2,
                                        names=["temperature", "humidity"])
    assert sorted(e["kind"] for e in events) == sorted(list(FAULT_KINDS) * 2)
    mask = np.zeros(len(x), dtype=bool)
    for e in events:
        span = slice(e["start"], e["end"])
        assert set(labels[span]) == {e["kind"]}
        mask[span] = True
        if e["kind"] == "dropout":
            assert np.isnan(out[span]).all() and e["mode"] in ("rows", "nan")
        elif e["kind"] == "stuck":
            assert (out[span] == x[e["start"] - 1]).all() and e["channel"] is None
        else:
            ch = ["temperature", "humidity"].index(e["channel"])
            assert not np.allclose(out[span, ch], x[span, ch])
            assert np.array_equal(out[span, 1 - ch], x[span, 1 - ch])
        if e["kind"] == "spike":
            assert np.abs(out[span, ch] - x[span, ch]).min() > 2 * np.std(x[:, ch]) * 0.99
    assert np.array_equal(labels != "", mask)
    np.testing.assert_array_equal(out[~mask], x[~mask])  # nothing outside the spans moved
    starts = sorted(e["start"] for e in events)
    ends = sorted(e["end"] for e in events)
    assert all(s - e >= 30 for s, e in zip(starts[1:], ends[:-1], strict=True))  # apart by the margin


def test_injector_works_on_real_occupancy_data():
    s = load_occupancy(shared_data() / "occupancy" / "datatraining.txt")
    test = s.values[6500:]
    out, labels, events = inject_faults(test, ["spike", "drift"], np.random.default_rng(0), count=3,
                                        names=s.channels)
    assert out.shape == test.shape and len(events) == 6
    assert (labels != "").sum() == sum(e["end"] - e["start"] for e in events)


def test_cli_file_labels_match_events_and_seed_reproduces(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    args = ["generate", "--days", "3", "--period", "60", "--faults", "all", "--count", "1"]
    for out, seed in ((a, 4), (b, 4), (c, 5)):
        r = subprocess.run([str(EDGEWATCH), *args, "--seed", str(seed), "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()  # same seed, same file
    assert a.read_bytes() != c.read_bytes()
    assert "wrote" in r.stdout and "dropout" in r.stdout

    series, events = generate(days=3, period=60, faults="all", count=1, seed=4)
    got = load(a, dropna=False)
    assert got.channels == ["temperature", "humidity"]
    omitted = sum(e["end"] - e["start"] for e in events if e["mode"] == "rows")
    assert len(got) == len(series) - omitted  # "rows" dropouts are gaps in time
    kept = ~series.labels["omit"]
    np.testing.assert_array_equal(got.timestamps, series.timestamps[kept])
    np.testing.assert_array_equal(got.labels["anomaly"], series.labels["anomaly"][kept])
    np.testing.assert_array_equal(got.labels["fault"], series.labels["fault"][kept])
    for e in events:
        rows = (got.timestamps >= series.timestamps[e["start"]]) & (got.timestamps < series.timestamps[e["end"] - 1] + 1)
        assert set(got.labels["fault"][rows]) <= {e["kind"]}
        if e["kind"] == "dropout" and e["mode"] == "nan":
            assert np.isnan(got.values[rows]).all() and rows.sum() == e["end"] - e["start"]
    # the training loader drops the failed reads and keeps everything else
    clean = load(a)
    assert len(clean) == len(got) - int(np.isnan(got.values).any(axis=1).sum())


@pytest.mark.parametrize("argv,needle", [
    (["--faults", "spike,meteor"], "unknown kind 'meteor'"),
    (["--sensor", "bme280"], "unknown sensor 'bme280'"),
    (["--days", "0"], "--days and --period must be positive"),
    (["--start", "soon"], "--start"),
    (["--days", "0.1", "--faults", "all", "--count", "5"], "cannot place"),
])
def test_cli_bad_options_one_line(argv, needle, tmp_path):
    r = subprocess.run([str(EDGEWATCH), "generate", "--out", str(tmp_path / "x.csv"), *argv],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "x.csv").exists()
