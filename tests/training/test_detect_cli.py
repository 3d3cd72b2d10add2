"""`edgewatch detect`: a user's CSV through the firmware's own detector, one verdict per row."""

import csv
from pathlib import Path

import numpy as np
import pytest
from edgewatch.cli import main
from edgewatch.training.evaluation import detectors
from edgewatch.training.forecast.data import load_occupancy, shared_data

OCC = shared_data() / "occupancy"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny TCN trained on real occupancy rows, written as the board blob model.ewb."""
    s = load_occupancy(OCC / "datatraining.txt")
    fit = s.values[:1500].astype(np.float64)
    det = detectors.BoardDetector(epochs=1)
    det.fit(fit, list(s.channels))
    x, _ = det.windows(fit, det.trained["scaler"])
    d = tmp_path_factory.mktemp("model")
    (d / "model.ewb").write_bytes(detectors.fit_board_blob(det.model(), det.trained["scaler"], list(s.channels), x))
    return d


def _user_csv(path, rows=390):
    """Real occupancy rows with a spike, a failed read and a 5-minute gap; returns their lines."""
    lines = (OCC / "datatest.txt").read_text().splitlines()
    header, body = lines[0], lines[1:rows + 1]
    cells = [b.split(",") for b in body]
    # (after the model's window of 128 has filled)
    cells[300][2] = str(float(cells[300][2]) + 5.0)         # temperature spike, +5 °C
    cells[320][3] = ""                                      # failed humidity read
    del cells[350:355]                                      # 5 samples never arrived
    path.write_text("\n".join([header] + [",".join(c) for c in cells]) + "\n")
    return cells


def test_one_verdict_per_row_with_rule_channel_value_band(tmp_path, model_dir, capsys):
    data = tmp_path / "mine.csv"
    cells = _user_csv(data)
    out = tmp_path / "verdicts.csv"
    rc = main(["detect", "--model", str(model_dir), "--data", str(data), "--out", str(out),
               "--sensor", "dht22"])
    assert rc == 0
    assert "anomalous" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(cells)
    spike = rows[300]
    assert spike["anomaly"] == "1" and spike["rule"] == "band" and spike["channel"] == "temperature"
    assert not (float(spike["lo"]) < float(spike["value"]) < float(spike["hi"]))
    assert all(len(r["value"]) <= 8 for r in rows)  # 6 significant digits, no float32 noise
    assert rows[320]["rule"] == "read" and rows[320]["channel"] == "humidity"
    assert rows[350]["rule"] == "dropout"
    # the alert column: rows on which the board sends a message, one per episode
    sent = [i for i, r in enumerate(rows) if r["alert"] == "1"]
    assert 300 in sent and all(rows[i]["anomaly"] == "1" for i in sent)
    assert not any(rows[i]["alert"] == "1" for i in range(301, 310) if rows[i]["anomaly"] == "1")
    quiet = [r for r in rows[150:290] if r["anomaly"] == "0"]
    assert len(quiet) > 30
    for r in quiet:
        assert float(r["temperature_lo"]) < float(r["temperature_pred"]) < float(r["temperature_hi"])
    assert rows[0]["temperature_pred"] == ""  # the window is still filling
    # the input's own timestamps, and every row's readings (not only on alert rows)
    assert [r["t"] for r in rows[:2]] == [c[1].strip('"') for c in cells[:2]]
    assert rows[0]["t"].startswith("2015-02-02 14:19")
    for r, c in zip(rows, cells, strict=True):
        assert r["temperature"] == ("" if c[2] == "" else f"{float(c[2]):.6g}")
        assert r["humidity"] == ("" if c[3] == "" else f"{float(c[3]):.6g}")


def test_readings_beyond_the_detectors_fixed_point_are_range_alerts(tmp_path, model_dir):
    """The detector clamps a reading to 4096 of the model's spans from its offset: a file in
    millidegrees (an hwmon/thermal_zone log) then read as 'ok' row after row, each reading
    ~20,000 beside a band of ~17,000 °C. Such readings are range alerts, as an impossible
    reading on a board, and those within reach are judged as before."""
    data = tmp_path / "milli.csv"
    cells = _user_csv(data)
    header = data.read_text().splitlines()[0]
    for c in cells[100:]:
        c[2] = f"{float(c[2]) * 1000:g}"
    data.write_text("\n".join([header] + [",".join(c) for c in cells]) + "\n")
    out = tmp_path / "v.csv"
    assert main(["detect", "--model", str(model_dir), "--data", str(data), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert all(r["anomaly"] == "1" and "range:temperature" in r["alerts"] for r in rows[100:])
    assert all(float(r["hi"]) < float(r["value"]) for r in rows[100:] if r["rule"] == "range")
    assert sum(r["anomaly"] == "1" for r in rows[:100]) < 10  # the degrees: judged, quiet


def test_database_source_with_device(tmp_path, model_dir, capsys):
    import json

    from edgewatch.core.schema import parse
    from edgewatch.core.store import Store
    from hostkit import telemetry

    url = f"sqlite:///{tmp_path}/ew.db"
    store = Store(url)
    occ = (OCC / "datatest.txt").read_text().splitlines()[1:201]  # more than the window (128)
    recs = []
    for dev in ("gh-01", "gh-02"):
        for seq, line in enumerate(occ):
            c = line.split(",")
            msg = telemetry(dev, seq, t=1732372000 + 60 * seq, temperature=float(c[2]),
                            humidity=float(c[3]))
            recs.append((parse(f"edgewatch/{dev}/telemetry", json.dumps(msg)), 1.8e9))
    store.write(recs, [])
    store.close()
    out = tmp_path / "v.csv"
    assert main(["detect", "--model", str(model_dir), "--data", url, "--device", "gh-02",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(occ) and rows[0]["t"] == "2024-11-23T14:26:40Z"
    capsys.readouterr()
    assert main(["detect", "--model", str(model_dir), "--data", url, "--out", str(out)]) == 2
    assert "--device" in capsys.readouterr().err


def test_a_reading_beyond_float32_is_one_line_from_a_csv_and_from_a_database(tmp_path, model_dir,
                                                                             capsys):
    """1e300 is a double but no float32 (no board reads it): detect made it an infinity, a
    `range` alert on "inf" with the row's reading blank and numpy's overflow warning on
    stderr. A CSV and the collector's database (one written before the collector refused such
    values) now give the same one line naming the row and channel, exit 2. A float32 beyond the
    detector's limits stays what the firmware makes of it: a `range` alert."""
    import json

    from edgewatch.core.schema import parse
    from edgewatch.core.store import Store
    from hostkit import telemetry

    data, out = tmp_path / "mine.csv", tmp_path / "v.csv"
    cells = _user_csv(data)
    header = (OCC / "datatest.txt").read_text().splitlines()[0]
    url = f"sqlite:///{tmp_path}/ew.db"
    store = Store(url)
    store.write([(parse("edgewatch/gh-01/telemetry", json.dumps(
        telemetry("gh-01", seq, t=1732372000 + 60 * seq, temperature=float(c[2]),
                  humidity=float(c[3]) if c[3] else None))), 1.8e9)
        for seq, c in enumerate(cells)], [])
    store.query(f"UPDATE {{telemetry}} SET humidity = {-1e300!r} WHERE seq = 150")
    store.close()

    def one_line(source, *extra):
        rc = main(["detect", "--model", str(model_dir), "--data", source, "--out", str(out),
                   *extra])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        return err.strip()

    for value in ("1e300", "-1e39"):
        cells[150][3] = value
        data.write_text("\n".join([header] + [",".join(c) for c in cells]) + "\n")
        err = one_line(str(data))
        assert err.startswith(f"edgewatch detect: {data} line 152: column 'Humidity' has "
                              f"{float(value):.6g}, beyond the float32 range"), err
    err = one_line(url, "--device", "gh-01")
    assert f"{url} device gh-01 row 151: column 'humidity' has -1e+300, beyond the float32 " \
        "range" in err, err
    assert not out.exists()
    cells[150][3] = "3e38"  # a float32: the range rule's, as on a board
    data.write_text("\n".join([header] + [",".join(c) for c in cells]) + "\n")
    assert main(["detect", "--model", str(model_dir), "--data", str(data), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    row = list(csv.DictReader(out.open()))[150]
    assert (row["rule"], row["channel"], row["value"], row["humidity"]) == \
        ("range", "humidity", "3e+38", "3e+38")


@pytest.mark.parametrize("case,needle", [
    ("no_dir", "no such folder"),
    ("no_blob", "model.ewb: missing"),
    ("model_is_file", "a file, not a model folder"),
    ("bad_blob", "not a valid model blob"),
    ("no_channel", "no channel 'humidity'"),
    ("bad_sensor", "--sensor: unknown"),
    ("out_is_folder", "a folder; name the verdict CSV"),
    ("out_unwritable", "/proc/self/v.csv: not writable"),
    ("out_under_a_file", "cannot write (Not a directory)"),
    ("out_is_data", "is the --data file; name another verdict CSV"),
    ("dropout_zero", "--dropout-periods: must be >= 1 (got 0)"),
    ("twin_columns", "columns 2 and 4 are both named 'temperature'; rename one"),
    ("inf_stamp", "line 3: column 'date' has 'inf', not a date/time or Unix seconds"),
    ("nan_stamp", "line 3: column 'date' has 'nan', not a date/time or Unix seconds"),
])
def test_user_mistakes_are_one_line(tmp_path, model_dir, capsys, case, needle):
    data = tmp_path / "mine.csv"
    _user_csv(data)
    model = model_dir
    extra = []
    if case == "no_dir":
        model = tmp_path / "nope"
    elif case == "model_is_file":  # (was "no such folder", of a file that is there)
        model = model_dir / "model.ewb"
    elif case == "no_blob":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "bad_blob":
        model = tmp_path / "bad"
        model.mkdir()
        raw = bytearray((model_dir / "model.ewb").read_bytes())
        raw[40] ^= 0xFF
        (model / "model.ewb").write_bytes(bytes(raw))
    elif case == "no_channel":
        data.write_text("timestamp,temperature\n2015-02-02 14:19:00,23.7\n")
    elif case == "twin_columns":  # the first was read for the model, unnoticed
        data.write_text(data.read_text().replace('"Light"', '"temperature"', 1))
    elif case == "bad_sensor":
        extra = ["--sensor", "bme280"]
    elif case == "dropout_zero":  # 0 is not "the default": it is a mistake
        extra = ["--dropout-periods", "0"]
    elif case in ("inf_stamp", "nan_stamp"):  # no time: a traceback (inf), or silently no
        lines = data.read_text().splitlines()  # dropout rule for the whole file (nan)
        cells = lines[2].split(",")
        cells[1] = case[:3]
        lines[2] = ",".join(cells)
        data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "v.csv"
    if case == "out_is_folder":
        out.mkdir()
    elif case == "out_unwritable":  # a parent that exists and takes no files (even for root)
        out = Path("/proc/self/v.csv")
    elif case == "out_under_a_file":  # passes the early checks; open() itself fails
        out = data / "v.csv"
    elif case == "out_is_data":  # the verdicts overwrote the user's readings
        out = data
        before = data.read_bytes()
    rc = main(["detect", "--model", str(model), "--data", str(data), "--out", str(out)] + extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.csv").is_file()
    if case == "out_is_data":
        assert data.read_bytes() == before


def test_timestamps_rounded_to_the_second_are_not_dropouts(tmp_path, model_dir):
    """SKAB's sensors sample every ~1.047 s and write whole seconds, so one interval in ~20
    reads 2 s: rounding, not a missed sample. Only the real gap (5 samples) is a dropout."""
    from datetime import datetime, timedelta

    lines = (OCC / "datatest.txt").read_text().splitlines()
    cells = [b.split(",") for b in lines[1:421]]
    t0 = datetime(2020, 3, 9, 10, 14, 33)
    stamps = [t0 + timedelta(seconds=round(i * 1.047)) for i in range(len(cells))]
    keep = [i for i in range(len(cells)) if not 300 <= i < 305]
    body = [f'"{i}","{stamps[i]:%Y-%m-%d %H:%M:%S}",{cells[i][2]},{cells[i][3]}' for i in keep]
    data = tmp_path / "rounded.csv"
    data.write_text('"date","Temperature","Humidity"\n' + "\n".join(body) + "\n")
    assert sum(1 for i in range(1, 300) if (stamps[i] - stamps[i - 1]).seconds == 2) >= 10
    out = tmp_path / "v.csv"
    assert main(["detect", "--model", str(model_dir), "--data", str(data), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    drops = [i for i, r in enumerate(rows) if "dropout:" in r["alerts"]]
    assert drops == [300]


def test_missed_periods_by_timestamp_step():
    from edgewatch.training.evaluation.replay import missed_periods

    # one sample a minute, whole seconds: one missed sample is a dropout
    t = np.delete(np.arange(400) * 60.0 + 1.7e9, [200])
    assert np.flatnonzero(missed_periods(t)).tolist() == [200]
    # 1.047 s in whole seconds: rounding is not a gap; two missed samples are
    t = np.round(np.arange(2000) * 1.047)
    assert not missed_periods(t).any()
    m = missed_periods(np.delete(t, [900, 901]))
    assert np.flatnonzero(m).tolist() == [900] and m[900] >= 2
    # 1.047 s in milliseconds: the plain rule, one missed sample counts
    t = np.round(np.arange(2000) * 1.047, 3)
    assert np.flatnonzero(missed_periods(np.delete(t, [900]))).tolist() == [900]
    # an exact period on the whole-second grid needs no slack: one missed sample counts
    for period in (1.0, 2.0):
        t = np.arange(600) * period + 1.7e9
        assert np.flatnonzero(missed_periods(np.delete(t, [300]))).tolist() == [300], period
    # one stray stamp off the grid does not turn 1.047 s rounding back into dropouts
    t = np.round(np.arange(2000) * 1.047)
    t[500] += 0.5
    assert not missed_periods(t).any()
    # 62.8 s stamped to the whole minute: rounding is not a gap; two missed samples are
    t = np.floor((np.arange(2000) * 62.8 + 1.7e9) / 60) * 60
    assert not missed_periods(t).any()
    m = missed_periods(np.delete(t, [900, 901]))
    assert np.flatnonzero(m).tolist() == [900] and m[900] >= 2
    # epoch milliseconds (as numbers: the file's unit) in whole seconds, 1.047 s apart
    t = np.round(np.arange(2000) * 1.047) * 1000 + 1.7e12
    assert not missed_periods(t).any()
    # an exact 5-minute period in whole minutes: one missed sample counts
    t = np.arange(600) * 300.0 + 1.7e9
    assert np.flatnonzero(missed_periods(np.delete(t, [300]))).tolist() == [300]


def _nine_channels(path, rows=300):
    """SKAB's 8 sensors and a ninth column: (values, names), written to `path` as a CSV."""
    from edgewatch.training.forecast.data import load_skab

    s = load_skab(shared_data() / "skab" / "valve1" / "1.csv")
    vals = np.c_[s.values[:rows], s.values[:rows, 4:5] + 1.5].astype(np.float64)
    names = list(s.channels) + ["temperature2"]
    path.write_text("timestamp," + ",".join(names) + "\n" + "".join(
        f"{1_600_000_000 + i},{','.join(f'{v:.6g}' for v in row)}\n" for i, row in enumerate(vals)))
    return vals, names


def test_a_model_of_more_channels_than_the_board_takes_is_one_line(tmp_path, capsys):
    """The board's detector takes at most 8 channels (its flag bits): a blob of 9 made detect
    end in a MicroPython traceback ('model has 9 channels, sensor 9'), exit 1."""
    data = tmp_path / "nine.csv"
    vals, names = _nine_channels(data)
    det = detectors.BoardDetector(epochs=1)
    det.fit(vals, names)
    x, _ = det.windows(vals, det.trained["scaler"])
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.ewb").write_bytes(detectors.fit_board_blob(det.model(), det.trained["scaler"],
                                                               names, x))
    out = tmp_path / "v.csv"
    rc = main(["detect", "--model", str(model), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.ewb: 9 channels; the board's detector takes at most 8" in err
    assert not out.exists()


def test_a_channel_named_like_a_verdict_column_keeps_both(tmp_path):
    """NAB's files have one channel, 'value': the verdict CSV had two 'value' columns (the
    alert's and the reading), and csv.DictReader gave the reading as the alert's value."""
    from edgewatch.training.forecast.data import load

    nab = load(shared_data() / "nab" / "ambient_temperature_system_failure.csv")
    vals = nab.values[:700].astype(np.float64)
    det = detectors.BoardDetector(epochs=1)
    det.fit(vals[:500], ["value"])
    x, _ = det.windows(vals[:500], det.trained["scaler"])
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.ewb").write_bytes(detectors.fit_board_blob(det.model(), det.trained["scaler"],
                                                               ["value"], x))
    data = tmp_path / "mine.csv"
    vals[600] += 40.0  # a spike: an alert whose value is the reading, beside a band
    data.write_text("timestamp,value\n" + "".join(f"{1_373_000_000 + 3600 * i},{v[0]:.6g}\n"
                                                  for i, v in enumerate(vals)))
    out = tmp_path / "v.csv"
    assert main(["detect", "--model", str(model), "--data", str(data), "--out", str(out)]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)), header
    assert header[10:] == ["value_reading", "value_pred", "value_lo", "value_hi"]
    rows = list(csv.DictReader(out.open()))
    assert all(r["value"] == "" for r in rows if r["anomaly"] == "0")
    assert all(r["value_reading"] == f"{v[0]:.6g}" for r, v in zip(rows, vals, strict=True))


def test_a_blob_the_firmware_refuses_is_one_line(tmp_path, capsys):
    """One glitch of 1e30 in the training rows gives a channel a scale the board's detector
    refuses at load: detect ended in a MicroPython traceback ('ModelMismatch: scale ... out
    of range'), exit 1."""
    s = load_occupancy(OCC / "datatraining.txt")
    fit = s.values[:600].astype(np.float64)
    fit[300, 0] = 1e30
    det = detectors.BoardDetector(epochs=1)
    det.fit(fit, list(s.channels))
    x, _ = det.windows(fit, det.trained["scaler"])
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.ewb").write_bytes(detectors.fit_board_blob(det.model(), det.trained["scaler"],
                                                               list(s.channels), x))
    data = tmp_path / "mine.csv"
    _user_csv(data)
    out = tmp_path / "v.csv"
    rc = main(["detect", "--model", str(model), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.ewb: the board's detector refuses this model (scale " in err
    assert not out.exists()
