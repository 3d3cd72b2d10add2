"""Fixtures shared across the suite.

`tiny_model_dir`: a small default-shape TCN (window 10, temperature+humidity)
trained for 2 epochs on a slice of the real occupancy data and converted by
`training.convert` once per test session: model.keras, config.json,
scaler.json, model.tflite, model.ewb, model_data.cc/.h, golden.npz/.json,
convert.json. Tests that need a real model blob (engine, firmware, OTA,
evaluation) use it instead of training their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OCCUPANCY = ROOT.parent / "shared" / "data" / "occupancy"
TINY_ROWS = 2000
TINY_EPOCHS = 2


def train_tiny(out: Path, rows: int = TINY_ROWS, channels=None, arch: str = "tcn",
               sizes: dict | None = None, window: int = 10) -> Path:
    """Train and convert a tiny model on the first `rows` occupancy rows into `out`."""
    from training.convert import convert
    from training.data import load
    from training.train import train

    series = load(OCCUPANCY / "datatraining.txt", channels=channels)
    train(series.take(slice(0, rows)), arch, TINY_EPOCHS, window, out, sizes=sizes, plots=False)
    # Representative/evaluation windows come from the same slice's file; cap the
    # evaluation so the fixture stays quick.
    convert(out, out, max_eval=400)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a converted tiny TCN model folder (see module docstring)."""
    return train_tiny(tmp_path_factory.mktemp("tiny_model") / "tcn")
