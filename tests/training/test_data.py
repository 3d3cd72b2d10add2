"""edgewatch.training.forecast.data on the real shared files, the collector's database, and every bad input.

Bad input goes through the real `edgewatch train` CLI in a subprocess: exit 2,
exactly one line on stderr naming the file and the line, never a traceback.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgewatch.core.errors import UserError
from edgewatch.core.schema import parse_telemetry
from edgewatch.core.store import Store
from edgewatch.training.forecast.data import (
    Scaler,
    chrono_split,
    load,
    make_windows,
    require_rows,
    shared_data,
)
from edgewatch.training.forecast.train import DEFAULT_WINDOW
from sklearn.preprocessing import MinMaxScaler, StandardScaler

DATA = shared_data()
OCC = DATA / "occupancy" / "datatraining.txt"


def test_occupancy_training_file():
    s = load(OCC)
    assert len(s) == 8143 and s.channels == ["temperature", "humidity"]
    assert s.values.dtype == np.float32 and s.values.shape == (8143, 2)
    np.testing.assert_allclose(s.values[0], [23.18, 27.272], rtol=1e-6)
    np.testing.assert_allclose(s.values[-1], [21.1, 36.2], rtol=1e-6)
    assert s.timestamps[0] == pytest.approx(1423072260.0)  # 2015-02-04 17:51:00 UTC
    assert np.median(np.diff(s.timestamps)) == 60.0
    assert s.lines[0] == 2 and s.lines[-1] == 8144  # editor lines: header is line 1
    assert s.labels["occupancy"].sum() > 0


def test_occupancy_other_channels_by_name():
    s = load(DATA / "occupancy" / "datatest.txt", channels="CO2,Humidity")
    assert s.channels == ["co2", "humidity"] and len(s) == 2665
    np.testing.assert_allclose(s.values[0], [749.2, 26.272], rtol=1e-6)


def test_skab_file_with_labels():
    s = load(DATA / "skab" / "valve1" / "0.csv")
    assert len(s.channels) == 8 and s.channels[0] == "accelerometer1rms"
    assert "volume_flow_raterms" in s.channels
    assert set(s.labels) == {"anomaly", "changepoint"}
    assert 0 < s.labels["anomaly"].sum() < len(s)
    assert s.labels["changepoint"].sum() >= 1
    assert np.all(np.diff(s.timestamps) > 0)
    one = load(DATA / "skab" / "valve1" / "0.csv", channels=["Temperature"])
    np.testing.assert_allclose(one.values[:2, 0], [79.3366, 79.5158], rtol=1e-6)


def test_nab_files_keep_published_order_and_windows():
    s = load(DATA / "nab" / "machine_temperature_system_failure.csv")
    assert s.channels == ["value"] and len(s) == 22695
    # the published file repeats one hour at line 10151; NAB scores rows in file order
    assert (np.diff(s.timestamps) < 0).sum() == 1
    assert s.lines[np.flatnonzero(np.diff(s.timestamps) < 0)[0] + 1] == 10151
    lab = s.labels["anomaly"]
    starts = np.flatnonzero(np.diff(np.r_[0, lab]) == 1)
    assert len(starts) == 4  # the four labelled windows of windows.json
    amb = load(DATA / "nab" / "ambient_temperature_system_failure.csv")
    assert len(amb) == 7267 and amb.labels["anomaly"].sum() > 0


def test_a_timestamp_value_file_out_of_order_is_refused_unless_nab_lists_it(tmp_path):
    """Only NAB's published files keep their order; a user's `timestamp,value` file shuffled
    was trained on and judged as it came, where any other header is refused."""
    lines = (DATA / "nab" / "ambient_temperature_system_failure.csv").read_text().splitlines()
    body = lines[1:200]
    body[50], body[51] = body[51], body[50]
    mine = tmp_path / "mine.csv"
    mine.write_text("\n".join([lines[0], *body]) + "\n")
    with pytest.raises(UserError, match="line 53: timestamp goes backwards"):
        load(mine)
    (tmp_path / "windows.json").write_text('{"realKnownCause/mine.csv": []}')
    assert len(load(mine)) == 199  # listed by a windows.json beside it: NAB's order kept


def test_generic_csv_drops_missing_rows(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("time,temp,rh,anomaly\n2026-01-01T00:00:00Z,20.5,50\n"
                 "2026-01-01T00:01:00Z,,51,0\n2026-01-01T00:02:00Z,20.7,null,0\n"
                 "2026-01-01T00:03:00Z,20.8,52,1\n"
                 .replace(",50\n", ",50,0\n"))
    s = load(f)
    assert s.channels == ["temp", "rh"] and len(s) == 2 and s.dropped == 2
    assert list(s.lines) == [2, 5] and list(s.labels["anomaly"]) == [0.0, 1.0]
    raw = load(f, dropna=False)
    assert len(raw) == 4 and np.isnan(raw.values[1, 0]) and np.isnan(raw.values[2, 1])


def test_unnamed_columns_are_not_channels(tmp_path):
    """A trailing delimiter (an empty last column: every row was dropped as missing) and a
    pandas index (an unnamed first column of row numbers: the model learnt to count) are
    not channels."""
    rows = [f"2026-01-01 00:{i:02d}:00,{20 + i * 0.01:.2f},{50 - i * 0.01:.2f}" for i in range(30)]
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("timestamp,temperature,humidity,\n" + "".join(r + ",\n" for r in rows))
    index = tmp_path / "index.csv"
    index.write_text(",timestamp,temperature,humidity\n"
                     + "".join(f"{i},{r}\n" for i, r in enumerate(rows)))
    for f in (trailing, index):
        s = load(f)
        assert s.channels == ["temperature", "humidity"] and len(s) == 30 and s.dropped == 0, f
        assert s.values[29, 0] == np.float32(20.29)


def test_scaler_is_standardise_then_minmax_and_round_trips(tmp_path):
    s = load(OCC)
    sc = Scaler.fit(s.values, s.channels)
    norm = sc.transform(s.values)
    # the seed's two steps, done by scikit-learn, equal our single affine map
    ref = MinMaxScaler().fit_transform(StandardScaler().fit_transform(s.values.astype(float)))
    np.testing.assert_allclose(norm, ref, atol=1e-6)
    assert norm.min() == pytest.approx(0.0, abs=1e-7) and norm.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(sc.inverse(norm), s.values, atol=1e-4)
    sc.save(tmp_path / "scaler.json")
    d = json.loads((tmp_path / "scaler.json").read_text())
    assert d["channels"] == ["temperature", "humidity"]
    x = s.values[123].astype(float)
    np.testing.assert_allclose((x - np.array(d["offset"])) / np.array(d["scale"]), norm[123], atol=1e-6)
    back = Scaler.load(tmp_path / "scaler.json")
    np.testing.assert_array_equal(back.transform(s.values), norm)


def test_windows_and_chronological_split():
    v = np.arange(30, dtype=np.float32).reshape(15, 2)
    x, y = make_windows(v, 4)
    assert x.shape == (11, 4, 2) and y.shape == (11, 2)
    np.testing.assert_array_equal(x[0], v[0:4])
    np.testing.assert_array_equal(y[0], v[4])
    np.testing.assert_array_equal(y[-1], v[-1])
    xt, xv, yt, yv = chrono_split(x, y)
    assert len(xt) == 9 and len(xv) == 2
    np.testing.assert_array_equal(yv[0], v[13])  # validation is the latest part
    with pytest.raises(ValueError):
        make_windows(v[:4], 4)


def test_require_rows_names_file_and_last_line():
    s = load(OCC).take(slice(0, 12))
    with pytest.raises(UserError, match=r"datatraining.txt line 13: only 12 usable rows"):
        require_rows(s, 10)
    require_rows(load(OCC).take(slice(0, 15)), 10)


def test_collector_database(tmp_path):
    db = tmp_path / "ew.db"
    store = Store(f"sqlite:///{db}")
    recs = []
    for i in range(20):
        t = None if i == 7 else 1_764_000_000 + 60 * i  # no board clock: arrival time is stored
        vals = {"temperature": 20 + 0.1 * i, "humidity": None if i == 3 else 50.0 - i}
        recs.append((parse_telemetry(json.dumps({"v": 1, "device": "gh-01", "seq": 100 + i, "t": t,
                                                 "values": vals, "anomaly": i == 5, "faults": []})),
                     1_764_000_000 + 60 * i + 0.5))
    other = json.dumps({"v": 1, "device": "gh-02", "seq": 1, "t": 1_764_000_000,
                        "values": {"temperature": 30.0}, "anomaly": False, "faults": []})
    store.write(recs + [(parse_telemetry(other), 1_764_000_000)], [])
    store.close()

    s = load(f"sqlite:///{db}", device="gh-01")
    assert s.channels == ["humidity", "temperature"]
    assert len(s) == 19 and s.dropped == 1  # the null humidity row
    np.testing.assert_allclose(s.values[:3, 1], [20.0, 20.1, 20.2], rtol=1e-6)
    assert np.all(np.diff(s.timestamps) > 0)
    assert s.labels["anomaly"].sum() == 1
    t = load(str(db) + "?device=gh-01", channels="temperature")
    assert t.channels == ["temperature"] and len(t) == 20
    with pytest.raises(UserError, match="choose a device"):
        load(f"sqlite:///{db}")
    with pytest.raises(UserError, match="no rows for device 'nope'"):
        load(f"sqlite:///{db}", device="nope")


# ---------------------------------------------------------------- bad input via the CLI

EDGEWATCH = Path(sys.executable).parent / "edgewatch"  # the installed console script


def _cli(*args, cwd=None):
    return subprocess.run([str(EDGEWATCH), *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _rows(n, start=0):
    return "".join(f"2026-01-01 {(start + i) // 60:02d}:{(start + i) % 60:02d}:00,{20 + i * 0.01:.2f},"
                   f"{50 - i * 0.01:.2f}\n" for i in range(n))


HEADER = "timestamp,temperature,humidity\n"

BAD = {
    # name: (file text, extra args, strings the one line must contain)
    "non_numeric": (HEADER + _rows(30) + "2026-01-01 00:30:00,21.5,wet\n" + _rows(20, 31),
                    [], ["line 32", "humidity", "'wet'"]),
    "out_of_order": (HEADER + _rows(40) + "2026-01-01 00:10:30,20.0,50.0\n" + _rows(10, 41),
                     [], ["line 42", "backwards", "line 41"]),
    "too_few_rows": (HEADER + _rows(12), [], ["line 13", "only 12 usable rows", f"window of {DEFAULT_WINDOW}"]),
    "missing_column": (HEADER + _rows(40), ["--channels", "temperature,pressure"],
                       ["line 1", "no channel 'pressure'"]),
    "ragged_row": (HEADER + _rows(20) + "2026-01-01 00:20:00,21.0\n", [], ["line 22", "2 fields"]),
    "bad_timestamp": (HEADER + _rows(5) + "yesterday,20.0,50.0\n", [], ["line 7", "'yesterday'"]),
    "no_time_column": ("temperature,humidity\n20.0,50.0\n", [], ["line 1", "no timestamp column"]),
    "empty_file": ("", [], ["line 1", "empty file"]),
    "only_header": (HEADER, [], ["line 2", "no data rows"]),
    "infinite": (HEADER + _rows(3) + "2026-01-01 00:03:00,inf,50.0\n", [], ["line 5", "infinite"]),
    # a double, but an infinity as float32: it was dropped as if the read had failed
    # one name for two columns: the first was fed to the model twice (the blob kept one name,
    # detect then died in the firmware with a traceback)
    "twin_columns": ("timestamp,temp,temp\n" + _rows(40), [], ["line 1", "columns 2 and 3",
                                                            "'temp'"]),
    "twin_channels": (HEADER + _rows(40), ["--channels", "humidity,Humidity"],
                      ["line 1", "'humidity' asked for twice"]),
    "beyond_float32": (HEADER + _rows(30) + "2026-01-01 00:30:00,21.5,-1e300\n" + _rows(20, 31),
                       [], ["line 32", "'humidity' has -1e+300", "beyond the float32 range"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_naming_file_and_row(case, tmp_path):
    text, extra, needles = BAD[case]
    f = tmp_path / f"{case}.csv"
    f.write_text(text)
    r = _cli("train", "--data", f, "--out", tmp_path / "model", *extra)
    line = _one_line_error(r, f"{case}.csv", *needles)
    assert line.startswith("edgewatch train: ")
    assert not (tmp_path / "model").exists()  # nothing half-written


def test_bad_input_missing_file_and_database(tmp_path):
    _one_line_error(_cli("train", "--data", tmp_path / "nope.csv"), "nope.csv", "no such file")
    _one_line_error(_cli("compare", "--data", tmp_path / "nope.db"), "nope.db",
                    "no such database file")
    _one_line_error(_cli("train", "--data", tmp_path), str(tmp_path), "folder")
    _one_line_error(_cli("train", "--data", OCC, "--arch", "transformer"), "--arch", "transformer")
    _one_line_error(_cli("train", "--data", OCC, "--window", "0"), "--window")
    _one_line_error(_cli("compare", "--data", OCC, "--repeat", "0"), "--repeat")
    _one_line_error(_cli("compare", "--data", OCC, "--seeds", "0"), "--seeds")
    _one_line_error(_cli("train", "--data", OCC, "--size", "filters"), "--size", "KEY=VALUE")
    # a file as --out: said after the whole training run (minutes), naming no option
    r = _cli("train", "--data", OCC, "--out", OCC)
    _one_line_error(r, f"--out {OCC}: exists and is not a folder")
    assert "training" not in r.stdout


def test_parquet_like_edgewatch_export_writes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = 1_764_000_000_000_000
    stamps = [t0 + i * 60_000_000 for i in (0, 1, 2, 4, 3)]  # row 5 goes back in time
    table = pa.table({"timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
                      "temperature": [20.0, float("nan"), 20.2, 20.3, 20.4],
                      "humidity": [50.0, 51.0, 52.0, 53.0, 54.0],
                      "anomaly": pa.array([0, 0, 1, 0, 0], pa.int8())})
    pq.write_table(table.slice(0, 4), tmp_path / "ok.parquet")
    s = load(tmp_path / "ok.parquet")
    assert s.channels == ["temperature", "humidity"] and len(s) == 3 and s.dropped == 1
    assert s.timestamps[0] == 1_764_000_000.0 and list(s.labels["anomaly"]) == [0, 1, 0]
    pq.write_table(table, tmp_path / "back.parquet")
    _one_line_error(_cli("train", "--data", tmp_path / "back.parquet"), "back.parquet", "row 5",
                    "backwards")
    (tmp_path / "junk.parquet").write_text("timestamp,temperature\n")
    _one_line_error(_cli("train", "--data", tmp_path / "junk.parquet"), "junk.parquet",
                    "not a readable Parquet file")
