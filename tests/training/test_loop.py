"""training/forecast/loop.py: the lean fit trains exactly as Keras' Model.fit does, only faster."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from edgewatch.training.forecast import loop
from edgewatch.training.forecast.models import build_model, tcn_training_twin
from edgewatch.training.forecast.train import _deterministic

WINDOW, CHANNELS, BATCH = 10, 2, 32


def _data(n=301):
    """A noisy 2-channel random walk cut into windows; 241 training windows leave a partial batch."""
    rng = np.random.default_rng(7)
    series = np.cumsum(rng.normal(0, 0.02, (n + WINDOW, CHANNELS)), axis=0).astype(np.float32)
    series = (series - series.min(0)) / (series.max(0) - series.min(0))
    x = np.stack([series[i:i + WINDOW] for i in range(n)])
    y = series[WINDOW:WINDOW + n]
    return (x[:241], y[:241]), (x[241:], y[241:])


def _model(arch, optimizer=None):
    model = build_model(arch, WINDOW, CHANNELS, seed=3)
    if arch == "tcn":
        model = tcn_training_twin(model)
    if optimizer is not None:
        model.compile(optimizer=optimizer(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.parametrize("arch,optimizer", [
    ("tcn", None),
    ("lstm", None),
    # not a plain Adam: the loop leaves the step to the optimizer itself
    ("tcn", lambda: keras.optimizers.Adam(1e-3, clipnorm=0.01)),
])
def test_same_weights_moments_and_losses_as_keras_fit(arch, optimizer):
    _deterministic(42)
    (x, y), val = _data()
    ref = _model(arch, optimizer)
    hist = ref.fit(x, y, batch_size=BATCH, epochs=3, shuffle=True, validation_data=val, verbose=0)
    lean = _model(arch, optimizer)
    start = [w.copy() for w in lean.get_weights()]
    got = loop.fit(lean, x, y, val, epochs=3, batch_size=BATCH, steps_per_call=3)

    assert not all(np.array_equal(a, b) for a, b in zip(start, lean.get_weights(), strict=True))
    for a, b in zip(ref.get_weights(), lean.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # to the last bit
    assert int(lean.optimizer.iterations) == int(ref.optimizer.iterations) == 3 * 8
    for a, b in zip(ref.optimizer.variables, lean.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(got["loss"], hist.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["val_loss"], hist.history["val_loss"], rtol=1e-5)


def test_plain_adam_runs_as_one_flat_update_and_others_do_not():
    assert loop._FlatAdam.of(_model("tcn").optimizer, []) is not None
    for opt in (keras.optimizers.Adam(1e-3, amsgrad=True), keras.optimizers.SGD(1e-3),
                keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9))):
        assert loop._FlatAdam.of(opt, []) is None


def test_progress_one_line_per_epoch_or_a_bar(capsys):
    _deterministic(42)
    (x, y), val = _data()
    loop.fit(_model("tcn"), x, y, val, epochs=2, batch_size=BATCH, verbose=2)
    out = capsys.readouterr().out
    assert out.count("Epoch ") == 2 and "Epoch 2/2" in out
    assert out.count("val_loss:") == 2
    loop.fit(_model("tcn"), x, y, val, epochs=2, batch_size=BATCH, verbose=0)
    assert capsys.readouterr().out == ""
    loop.fit(_model("tcn"), x, y, val, epochs=1, batch_size=BATCH, verbose=1, steps_per_call=2)
    bar = capsys.readouterr().out
    assert "2/8" in bar and "8/8" in bar and "val_loss:" in bar
