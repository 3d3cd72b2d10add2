"""`edgewatch export`: the collector's rows as CSV/Parquet that the training loaders read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from edgewatch.cli import main
from edgewatch.core.schema import parse
from edgewatch.core.store import Store
from hostkit import telemetry


def _fill(url):
    s = Store(url)
    recs = []
    for seq in range(30):
        msg = telemetry("gh-01", seq, t=1732372000 + 60 * seq, temperature=20 + seq * 0.25,
                        humidity=40.0 + seq)
        msg["anomaly"] = seq == 17
        if seq == 5:
            msg["values"]["temperature"] = None
        recs.append((parse("edgewatch/gh-01/telemetry", json.dumps(msg)), 1.8e9))
    recs.append((parse("edgewatch/other/telemetry",
                       json.dumps(telemetry("other", 1, pressure=1000.0))), 1.8e9))
    s.write(recs, [])
    s.close()


def test_csv_and_parquet_round_trip_through_the_training_loaders(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/ew.db"
    _fill(url)
    out = tmp_path / "gh.csv"
    assert main(["export", "--db", url, "--device", "gh-01", "--out", str(out)]) == 0
    assert "wrote 30 rows of gh-01 (humidity, temperature)" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,humidity,temperature,anomaly"
    assert lines[1] == "2024-11-23T14:26:40Z,40.0,20.0,0"
    assert lines[6] == "2024-11-23T14:31:40Z,45.0,,0"  # the failed read stays empty
    from edgewatch.training.forecast.data import load_csv, load_db

    s = load_csv(out, dropna=False)
    assert sorted(s.channels) == ["humidity", "temperature"]
    t_idx = s.channels.index("temperature")
    assert s.values.shape == (30, 2) and np.isnan(s.values[5, t_idx])
    assert s.values[29, t_idx] == pytest.approx(27.25)
    assert s.timestamps[0] == 1732372000 and s.labels["anomaly"][17] == 1
    db = load_db(url, device="gh-01", channels=["temperature", "humidity"], dropna=False)
    assert np.allclose(db.values[:, 1], s.values[:, s.channels.index("humidity")])

    pq_out = tmp_path / "gh.parquet"
    assert main(["export", "--db", url, "--device", "gh-01", "--out", str(pq_out),
                 "--since", "2024-11-23T14:36:40Z", "--channels", "temperature"]) == 0
    import pyarrow.parquet as pq

    tab = pq.read_table(pq_out).to_pydict()
    assert list(tab) == ["timestamp", "temperature", "anomaly"]
    assert len(tab["temperature"]) == 20 and tab["temperature"][0] == pytest.approx(22.5)
    assert tab["timestamp"][0].timestamp() == 1732372000 + 600


@pytest.mark.parametrize("args,message", [
    (["--out", "x.csv"], "choose a device with --device (gh-01, other)"),
    (["--device", "nobody", "--out", "x.csv"], "no rows for device 'nobody'"),
    (["--device", "gh-01", "--out", "x.txt"], "give a .csv or .parquet"),
    (["--device", "gh-01", "--out", "x.csv", "--channels", "co2"], "no channel 'co2'"),
    (["--device", "gh-01", "--out", "x.csv", "--since", "yesterday"], "not a date"),
    # were tracebacks
    (["--device", "gh-01", "--out", "{tmp}"], "--out {tmp}: is a folder"),
    (["--device", "gh-01", "--out", "{tmp}", "--format", "csv"], "--out {tmp}: is a folder"),
    (["--device", "gh-01", "--out", "/proc/version.csv"], "--out /proc/version.csv: cannot write"),
])
def test_mistakes_are_one_line(tmp_path, capsys, args, message):
    url = f"sqlite:///{tmp_path}/ew.db"
    _fill(url)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    message = message.replace("{tmp}", str(tmp_path))
    assert main(["export", "--db", url, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgewatch export: ") and message in err and "\n" not in err


def test_missing_database_is_not_created(tmp_path, capsys):
    assert main(["export", "--db", f"sqlite:///{tmp_path}/none.db", "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "no such database file" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
