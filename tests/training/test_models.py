"""training/forecast/models.py: shapes for any channel count, seeding, sizes, the residual start."""

from __future__ import annotations

import numpy as np
import pytest
from edgewatch.training.forecast.models import ARCHS, build_model, default_sizes


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels,window", [(1, 10), (2, 10), (3, 6)])
def test_shapes_for_any_channel_count(arch, channels, window):
    m = build_model(arch, window=window, channels=channels)
    assert m.input_shape == (None, window, channels)
    assert m.output_shape == (None, channels)
    x = np.random.default_rng(0).random((4, window, channels), np.float32)
    assert m.predict(x, verbose=0).shape == (4, channels)


def test_parameter_counts_are_comparable():
    counts = {a: build_model(a).count_params() for a in ARCHS}
    assert max(counts.values()) <= 1.2 * min(counts.values()), counts


@pytest.mark.parametrize("arch", ARCHS)
def test_seeded(arch):
    a, b = build_model(arch, seed=1), build_model(arch, seed=1)
    c = build_model(arch, seed=2)
    wa, wb, wc = a.get_weights(), b.get_weights(), c.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc, strict=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_untrained_model_is_the_last_value_forecast(arch):
    """The head starts at zero, so before training the forecast is the newest sample."""
    x = np.random.default_rng(1).random((5, 10, 2), np.float32)
    y = build_model(arch).predict(x, verbose=0)
    assert np.allclose(y, x[:, -1, :], atol=1e-6)
    y = build_model(arch, residual=False).predict(x, verbose=0)
    assert not np.allclose(y, x[:, -1, :], atol=1e-3)


def test_tcn_sizes_and_receptive_field():
    m = build_model("tcn", filters=8, kernel=2, dilations=[1, 2, 4, 8])
    convs = [layer for layer in m.layers if type(layer).__name__ == "Conv1D" and layer.kernel_size[0] > 1]
    assert [c.dilation_rate[0] for c in convs] == [1, 2, 4, 8]
    assert all(c.filters == 8 and c.padding == "causal" for c in convs)
    # default: kernel 3, dilations 1,2,4 -> the newest output sees 1 + 2*(1+2+4) = 15 >= 10 samples
    d = default_sizes("tcn")
    assert 1 + (d["kernel"] - 1) * sum(d["dilations"]) >= 10


def test_causal_newest_output_ignores_nothing_and_future():
    """Changing the oldest sample changes the forecast (receptive field covers the window)."""
    m = build_model("tcn", residual=False)
    x = np.full((1, 10, 2), 0.5, np.float32)
    y0 = m.predict(x, verbose=0)
    x[0, 0, 0] = 0.9
    assert not np.allclose(m.predict(x, verbose=0), y0)


@pytest.mark.parametrize("kwargs,words", [
    ({"arch": "cnn"}, "unknown arch"),
    ({"arch": "tcn", "units": 4}, "unknown size option"),
    ({"arch": "lstm", "filters": 4}, "unknown size option"),
    ({"arch": "gru", "window": 0}, "window and channels"),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        build_model(**kwargs)


@pytest.mark.parametrize("window,channels,sizes", [
    (10, 2, {}),                                          # the default model
    (8, 1, {"kernel": 2, "dilations": [1, 2, 4, 8]}),     # receptive field beyond the window
    (12, 3, {"dilations": [1, 3, 9]}),
    (10, 2, {"filters": 8, "project": False}),
    (10, 2, {"residual": False}),
    (5, 2, {"dilations": [1]}),
])
def test_training_twin_is_the_same_function(window, channels, sizes):
    """The TCN trains as its twin (only the positions the forecast needs); the twin must compute
    exactly the model's function, with its weights, for any window, channels and nesting dilations."""
    from edgewatch.training.forecast.models import copy_weights, tcn_training_twin

    m = build_model("tcn", window, channels, **sizes)
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in m.get_weights()])
    twin = tcn_training_twin(m)
    assert twin is not None and twin.count_params() == m.count_params()
    x = rng.uniform(0, 1, (256, window, channels)).astype(np.float32)
    np.testing.assert_allclose(twin.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    # and back: what the twin learns is what the saved model holds
    twin.set_weights([w + 0.01 for w in twin.get_weights()])
    copy_weights(twin, m)
    np.testing.assert_allclose(twin.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_no_twin_when_the_dilations_do_not_nest():
    from edgewatch.training.forecast.models import tcn_training_twin

    assert tcn_training_twin(build_model("tcn", dilations=[1, 2, 3])) is None
    assert tcn_training_twin(build_model("tcn", dilations=[2, 4])) is None
    assert tcn_training_twin(build_model("lstm")) is None
