"""Fixtures shared across the suite.

`tiny_model_dir`: a small default-shape TCN (window 10, temperature+humidity)
trained for 2 epochs on a slice of the real occupancy data and converted by
`edgewatch.training.export.convert` once per test session: model.keras, config.json,
scaler.json, model.tflite, model.ewb, model_data.cc/.h, golden.npz/.json,
convert.json. Tests that need a real model blob (engine, firmware, OTA,
evaluation) use it instead of training their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_ROWS = 2000
TINY_EPOCHS = 2


@pytest.fixture(autouse=True)
def _isolated_environ():
    """Each test starts from the environment the session started with.

    The commands load a `.env` into os.environ (edgewatch.core.settings.load_env, as a
    service must, so the processes it starts see the same settings). A test that runs
    a command in-process would otherwise leave its broker URL, prefix or keys behind
    for every later test and for the subprocesses those start.
    """
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a converted tiny TCN model folder (see module docstring)."""
    from edgewatch.training.export.convert import quick_model

    return quick_model(tmp_path_factory.mktemp("tiny_model") / "tcn", rows=TINY_ROWS,
                       epochs=TINY_EPOCHS)
