"""`edgewatch train` and `edgewatch compare` on a tiny slice: artefacts, honest metrics, determinism."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgewatch.training.forecast.data import load, shared_data
from edgewatch.training.forecast.generate import SENSORS, generate, write_csv

EDGEWATCH = Path(sys.executable).parent / "edgewatch"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    """One day of generated DHT22 readings every 2 minutes (720 rows)."""
    path = tmp_path_factory.mktemp("data") / "greenhouse.csv"
    series, _ = generate(days=1, period=120, sensor="dht22", seed=11)
    write_csv(series, path, SENSORS["dht22"].resolution)
    return path


def _run(*args):
    r = subprocess.run([str(EDGEWATCH), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return r


def test_train_cli_writes_every_artefact_with_true_metrics(tiny_csv, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.ewb").write_bytes(b"blob of an older model")  # must not survive retraining
    r = _run("train", "--data", tiny_csv, "--arch", "tcn", "--epochs", "2", "--window", "8",
             "--out", out, "--seed", "3")
    assert "validation RMSE temperature" in r.stdout and str(out) in r.stdout
    assert "Epoch 2/2" in r.stdout  # the per-epoch progress line
    assert not (out / "model.ewb").exists() and "removed 1 outputs" in r.stdout
    for name in ("model.keras", "config.json", "scaler.json", "metrics.json", "loss.png",
                 "pred_temperature.png", "pred_humidity.png"):
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "tcn" and config["window"] == 8 and config["epochs"] == 2
    assert config["channels"] == ["temperature", "humidity"] and config["seed"] == 3
    assert config["sizes"]["filters"] > 0 and config["data"] == str(tiny_csv)
    scaler = json.loads((out / "scaler.json").read_text())
    assert len(scaler["offset"]) == len(scaler["scale"]) == 2
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["rmse"]) == {"temperature", "humidity"}
    assert len(m["history"]["loss"]) == len(m["history"]["val_loss"]) == 2
    assert m["train_seconds"] > 0 and m["params"] > 100 and m["epochs"] == 2
    assert m["train_windows"] + m["val_windows"] == m["rows"] - 8

    # The saved model and scaler reproduce the reported RMSE on the validation split.
    import keras
    from edgewatch.training.forecast.data import Scaler
    from edgewatch.training.forecast.train import prepare

    series = load(tiny_csv)
    _, _, (x_va, y_va), _ = prepare(series, 8)
    sc = Scaler.load(out / "scaler.json")
    model = keras.models.load_model(out / "model.keras")
    assert model.count_params() == m["params"]
    pred = sc.inverse(model.predict(x_va, verbose=0))
    rmse = np.sqrt(np.mean((pred - sc.inverse(y_va)) ** 2, axis=0))
    np.testing.assert_allclose(rmse, [m["rmse"]["temperature"], m["rmse"]["humidity"]], rtol=1e-4)


def test_same_seed_same_weights_other_seed_differs():
    from edgewatch.training.forecast.train import train

    s = load(shared_data() / "occupancy" / "datatraining.txt").take(slice(0, 400))
    runs = [train(s, "tcn", epochs=2, window=10, seed=seed)["model"].get_weights()
            for seed in (5, 5, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_compare_cli_prints_one_table_and_writes_json(tiny_csv, tmp_path):
    js = tmp_path / "table.json"
    r = _run("compare", "--data", tiny_csv, "--epochs", "1", "--json", js, "--repeat", "2",
             "--seeds", "2")
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert "RMSE temperature (°C)" in lines[head] and "RMSE humidity (%RH)" in lines[head]
    rows = [line.split() for line in lines[head + 2: head + 6]]
    assert [row[0] for row in rows] == ["TCN", "LSTM", "GRU", "last"]
    table = json.loads(js.read_text())
    assert set(table["models"]) == {"tcn", "lstm", "gru"}
    for arch, row in zip(("tcn", "lstm", "gru"), rows, strict=False):
        t = table["models"][arch]
        assert float(row[1]) == pytest.approx(t["rmse"]["temperature"], abs=6e-6)
        assert int(row[3]) == t["params"] and t["train_seconds"] > 0
        # two runs per model, taking turns; the table gives their median (= mean of two)
        assert len(t["train_seconds_runs"]) == 2 and len(t["train_cpu_seconds_runs"]) == 2
        assert t["train_seconds"] == pytest.approx(sum(t["train_seconds_runs"]) / 2, abs=1e-3)
    assert table["repeat"] == 2 and "median of 2 runs" in r.stdout
    assert set(table["goals"]) == {"tcn_rmse_le_lstm_and_gru", "tcn_time_le_half_lstm"}
    # --seeds 2: the main table is seed 42's; a second table gives mean ± sd over 42 and 43
    seeds = table["seeds"]
    assert seeds["seeds"] == [42, 43] and "RMSE over 2 seeds (42-43)" in r.stdout
    for arch in ("tcn", "lstm", "gru"):
        s = seeds["models"][arch]
        runs = s["rmse_runs"]["humidity"]
        assert runs[0] == table["models"][arch]["rmse"]["humidity"] and runs[1] != runs[0]
        assert s["rmse_mean"]["humidity"] == pytest.approx(np.mean(runs))
        assert s["rmse_sd"]["humidity"] == pytest.approx(np.std(runs, ddof=1))
        below = lines[next(i for i, x in enumerate(lines) if x.startswith("RMSE over")):]
        line = next(x for x in below if x.startswith(arch.upper() + " "))
        assert f"{s['rmse_mean']['humidity']:.5f} ± {s['rmse_sd']['humidity']:.5f}" in line
    for c in ("temperature", "humidity"):  # each seed has a lowest model (ties count for both)
        assert sum(seeds["models"][a]["lowest"][c] for a in ("tcn", "lstm", "gru")) >= 2


def test_labelled_rows_left_out_fit_rows_and_convert_follows(tmp_path):
    """Rows labelled anomalous stay out of training and of convert's calibration (and train
    says how many); --keep-labelled keeps them; --fit-rows N trains on the first N rows;
    a bad N is one line, exit 2."""
    data = tmp_path / "faulty.csv"
    series, events = generate(days=1, period=120, sensor="dht22", seed=5, faults="spike,drift")
    write_csv(series, data, SENSORS["dht22"].resolution)
    labelled = int(np.sum(load(data).labels["anomaly"] != 0))
    assert labelled > 0
    out = tmp_path / "m"
    # a small model (receptive field 13) keeps this quick; convert wants window >= it
    small = ("--window", "16", "--size", "dilations=1,2")
    r = _run("train", "--data", data, "--epochs", "1", *small, "--out", out, "--no-plots")
    assert f"left out {labelled} rows labelled anomalous" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["rows"] == len(load(data)) - labelled and m["labelled_left_out"] == labelled
    r = _run("train", "--data", data, "--epochs", "1", *small, "--out", out, "--no-plots",
             "--keep-labelled", "--fit-rows", "300")
    assert "left out" not in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["rows"] == 300 and json.loads((out / "config.json").read_text())["fit_rows"] == 300
    conv = _run("convert", "--model", out)
    assert "residual band k =" in conv.stdout
    assert json.loads((out / "convert.json").read_text())["band"]["k"] > 0
    for bad in ("1", "999999"):
        r = subprocess.run([str(EDGEWATCH), "train", "--data", str(data), "--fit-rows", bad,
                            "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "--fit-rows" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_fit_rows_counts_the_files_rows_with_missing_readings(tmp_path):
    """--fit-rows N is the file's first N rows (SKAB's first 400, NAB's probation), in train
    and in convert's calibration: rows missing a reading among them are dropped, not made up
    for with rows after N; N over the file's rows names how many it has."""
    data = tmp_path / "gaps.csv"
    lines = [f"2026-01-01 {i // 60:02d}:{i % 60:02d}:00,{20 + 0.5 * np.sin(i / 9):.3f},"
             f"{50 + np.cos(i / 7):.3f}" for i in range(200)]
    for i in range(10, 200, 10):  # 19 failed reads, 9 of them in the first 100 rows
        lines[i] = lines[i].rsplit(",", 1)[0] + ","
    data.write_text("timestamp,temperature,humidity\n" + "\n".join(lines) + "\n")
    out = tmp_path / "m"
    small = ("--window", "16", "--size", "dilations=1,2", "--epochs", "1", "--no-plots")
    r = _run("train", "--data", data, "--fit-rows", "100", "--out", out, *small)
    assert "91 rows (9 dropped)" in r.stdout, r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["rows"] == 91 and m["dropped_rows"] == 9
    conv = _run("convert", "--model", out)  # calibrates on the same 91 rows: 75 windows, 15 val
    assert "RMSE on 15 windows" in conv.stdout, conv.stdout
    r = subprocess.run([str(EDGEWATCH), "train", "--data", str(data), "--fit-rows", "200",
                        "--out", str(out), *small], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr  # the file has 200 rows (181 with both readings)
    r = subprocess.run([str(EDGEWATCH), "train", "--data", str(data), "--fit-rows", "201",
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "has only 200 rows" in r.stderr, r.stderr


def test_convert_from_another_folder_calibrates_on_the_training_file(tmp_path):
    """config.json kept --data as given: convert run from another folder found no file, or
    one of the same name there, and calibrated the blob on it (exit 0)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for folder, rows, seed in ((a, 300, 3), (b, 200, 4)):
        series, _ = generate(days=1, period=120, sensor="dht22", seed=seed)
        write_csv(series, folder / "data.csv", SENSORS["dht22"].resolution)
        lines = (folder / "data.csv").read_text().splitlines()
        (folder / "data.csv").write_text("\n".join(lines[:rows + 1]) + "\n")
    out = tmp_path / "m"
    r = subprocess.run([str(EDGEWATCH), "train", "--data", "data.csv", "--epochs", "1",
                        "--no-plots", "--window", "16", "--size", "dilations=1,2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=a)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["data"] == str(a / "data.csv")
    r = subprocess.run([str(EDGEWATCH), "convert", "--model", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=b)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"RMSE on 57 windows of {a / 'data.csv'}" in r.stdout, r.stdout  # (300 - 16) / 5
