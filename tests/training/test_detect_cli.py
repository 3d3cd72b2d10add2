"""`edgewatch detect`: a user's CSV through the firmware's own detector, one verdict per row."""

import csv

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
    (d / "model.ewb").write_bytes(detectors.board_blob(det.model(), det.trained["scaler"], list(s.channels), x))
    return d


def _user_csv(path, rows=240):
    """Real occupancy rows with a spike, a failed read and a 5-minute gap; returns their lines."""
    lines = (OCC / "datatest.txt").read_text().splitlines()
    header, body = lines[0], lines[1:rows + 1]
    cells = [b.split(",") for b in body]
    cells[150][2] = str(float(cells[150][2]) + 5.0)         # temperature spike, +5 °C
    cells[170][3] = ""                                      # failed humidity read
    del cells[200:205]                                      # 5 samples never arrived
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
    spike = rows[150]
    assert spike["anomaly"] == "1" and spike["rule"] == "band" and spike["channel"] == "temperature"
    assert not (float(spike["lo"]) < float(spike["value"]) < float(spike["hi"]))
    assert rows[170]["rule"] == "read" and rows[170]["channel"] == "humidity"
    assert rows[200]["rule"] == "dropout"
    quiet = [r for r in rows[20:140] if r["anomaly"] == "0"]
    assert len(quiet) > 30
    for r in quiet:
        assert float(r["temperature_lo"]) < float(r["temperature_pred"]) < float(r["temperature_hi"])
    assert rows[0]["temperature_pred"] == ""  # the window is still filling
    assert float(rows[1]["t"]) - float(rows[0]["t"]) == pytest.approx(59.0)


@pytest.mark.parametrize("case,needle", [
    ("no_dir", "no such folder"),
    ("no_blob", "model.ewb: missing"),
    ("bad_blob", "not a valid model blob"),
    ("no_channel", "no channel 'humidity'"),
    ("bad_sensor", "--sensor: unknown"),
])
def test_user_mistakes_are_one_line(tmp_path, model_dir, capsys, case, needle):
    data = tmp_path / "mine.csv"
    _user_csv(data)
    model = model_dir
    extra = []
    if case == "no_dir":
        model = tmp_path / "nope"
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
    elif case == "bad_sensor":
        extra = ["--sensor", "bme280"]
    rc = main(["detect", "--model", str(model), "--data", str(data),
               "--out", str(tmp_path / "v.csv")] + extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v.csv").exists()
