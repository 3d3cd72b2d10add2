"""Keras forecasters: a tiny causal TCN, an LSTM and a GRU.

Every model takes a window ``(window, C)`` of normalised samples (oldest
first) and predicts the next sample of every channel (``C`` outputs). All are
compiled with Adam + MSE and built from a fixed seed, so the same call gives
the same initial weights.

The TCN is shaped for the board: after int8 conversion (batch 1) its graph
uses only PAD, CONV_2D (with dilation), ADD, RESHAPE/EXPAND_DIMS/SQUEEZE,
STRIDED_SLICE and FULLY_CONNECTED, which `firmware/engine.py` implements
bit for bit (see docs/model_blob.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import layers  # noqa: E402

ARCHS = ("tcn", "lstm", "gru")

# Default sizes: the three models have comparable parameter counts for C=2 (TCN 1762,
# LSTM 1882, GRU 1762) so the comparison is about structure. The TCN's receptive field is
# 15 samples; the default window (16, edgewatch.training.forecast.train) covers it, so the
# board streams it: one new position per layer per sample (firmware/engine.py).
DEFAULT_SIZES = {
    "tcn": {"filters": 16, "kernel": 3, "dilations": (1, 2, 4)},
    "lstm": {"units": 20},
    "gru": {"units": 22},
}
DEFAULT_SEED = 42
DEFAULT_LR = 1e-3


def default_sizes(arch: str) -> dict:
    """The default size options of `arch` (a fresh copy)."""
    _check_arch(arch)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in DEFAULT_SIZES[arch].items()}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")


def _newest(inp, name: str):
    # The newest sample of every channel with stock layers (no custom objects
    # needed to reload the .keras file): crop to (1, C) then flatten to (C,).
    x = layers.Cropping1D((int(inp.shape[1]) - 1, 0), name=f"{name}_crop")(inp)
    return layers.Flatten(name=name)(x)


def _head(x, channels: int, residual: bool):
    # With the residual skip the head starts at zero: the untrained model is the
    # last-value forecast, and training only adds what the window tells beyond it.
    init = "zeros" if residual else "glorot_uniform"
    return layers.Dense(channels, kernel_initializer=init, name="head")(x)


def _tcn(inp, channels: int, filters: int, kernel: int, dilations, residual: bool,
         project: bool = True):
    x = inp
    width = channels
    for i, d in enumerate(dilations):
        y = layers.Conv1D(filters, kernel, dilation_rate=int(d), padding="causal",
                          activation="relu", name=f"block{i}_conv")(x)
        if width == filters:
            x = layers.Add(name=f"block{i}_add")([y, x])
        elif project:
            # A 1x1 projection where the channel counts differ (the first block).
            skip = layers.Conv1D(filters, 1, name=f"block{i}_proj")(x)
            x = layers.Add(name=f"block{i}_add")([y, skip])
        else:
            x = y
        width = filters
    return _head(_newest(x, "last_step"), channels, residual)


def build_model(arch: str, window: int = 10, channels: int = 2, seed: int = DEFAULT_SEED,
                lr: float = DEFAULT_LR, **sizes) -> keras.Model:
    """A compiled forecaster `arch` (tcn|lstm|gru): (window, channels) -> (channels,).

    `sizes` override the defaults of :data:`DEFAULT_SIZES` (tcn: filters, kernel,
    dilations, project=False drops the first block's 1x1 projection skip;
    lstm/gru: units; all: residual=False predicts the sample itself instead of
    its change from the newest one). Seeded: same arguments, same initial weights.
    """
    _check_arch(arch)
    if int(window) < 1 or int(channels) < 1:
        raise ValueError(f"window and channels must be >= 1 (got {window}, {channels})")
    extra = {"residual", "project"} if arch == "tcn" else {"residual"}
    unknown = set(sizes) - set(DEFAULT_SIZES[arch]) - extra
    if unknown:
        raise ValueError(f"unknown size option(s) for {arch}: {', '.join(sorted(unknown))}")
    opts = {**DEFAULT_SIZES[arch], **sizes}
    residual = bool(opts.get("residual", True))
    keras.utils.set_random_seed(int(seed))
    inp = keras.Input(shape=(int(window), int(channels)), name="window")
    if arch == "tcn":
        out = _tcn(inp, int(channels), int(opts["filters"]), int(opts["kernel"]),
                   tuple(int(d) for d in opts["dilations"]), residual, bool(opts.get("project", True)))
    else:
        rnn = layers.LSTM if arch == "lstm" else layers.GRU
        x = rnn(int(opts["units"]), name=arch)(inp)
        out = _head(x, int(channels), residual)
    if residual:
        # Predict the change from the newest reading: the model starts from the
        # last-value forecast instead of having to learn the identity.
        out = layers.Add(name="residual")([out, _newest(inp, "newest")])
    model = keras.Model(inp, out, name=arch)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="mse")
    return model




def receptive_field(model: keras.Model) -> int:
    """Samples the newest output of a TCN depends on: 1 + sum((kernel - 1) * dilation) over
    its causal convolutions; the window for an LSTM or GRU (they read all of it)."""
    convs = [lay for lay in model.layers if isinstance(lay, layers.Conv1D)]
    if model.name != "tcn" or not convs:
        return int(model.input.shape[1])
    return 1 + sum((int(c.kernel_size[0]) - 1) * int(c.dilation_rate[0]) for c in convs)


def tcn_training_twin(model: keras.Model) -> keras.Model | None:
    """The same TCN computing only what its forecast needs: a faster graph to train.

    The forecast reads the last block's newest output only. Going back through
    the blocks, block ``i`` is needed at every ``d[i+1]``-th position ending at the
    newest, and its inputs on that grid lie ``d[i]`` apart, one grid step. So each
    block becomes a strided, undilated causal convolution over the grid it needs,
    with its skip taken on the same grid: about a quarter of the arithmetic for
    the default (1, 2, 4), and none of the space-to-batch reshuffling TensorFlow
    wraps around a dilated convolution on the CPU. Its layers carry the names and
    weight shapes of ``model``'s (``copy_weights``), so ``model`` stays what is
    saved, converted and run on the board. Each output is summed in the same
    order as in ``model``: the twin follows ``model``'s training to ~1e-10.

    None when the dilations do not nest (each must divide the next, and the
    first be 1: Keras has no strided dilated convolution): then the model trains
    as it is. `tests/training/test_models.py` checks twin == model.
    """
    convs = [lay for lay in model.layers if lay.name.endswith("_conv")]
    if model.name != "tcn" or not convs:
        return None
    d = [int(c.dilation_rate[0]) for c in convs]
    if (len(d) > 1 and d[0] != 1) or any(d[i + 1] % d[i] for i in range(1, len(d) - 1)):
        return None
    k = int(convs[0].kernel_size[0])
    window, channels = int(model.input.shape[1]), int(model.input.shape[2])
    names = {lay.name for lay in model.layers}
    inp = keras.Input(shape=(window, channels), name="window")
    x, width, grid = inp, channels, 1
    for i, conv in enumerate(convs):
        n = int(x.shape[1])  # positions on this block's input grid, the newest last
        last = i == len(convs) - 1
        step = 1 if last else d[i + 1] // grid  # output grid / input grid
        dil = 1 if i else d[0]
        first = n - 1 if last else (n - 1) % step  # outputs at n-1, n-1-step, ...
        y = _shift(x, (k - 1) * dil - first, f"block{i}_pad")
        y = layers.Conv1D(conv.filters, k, strides=step, dilation_rate=dil, padding="valid",
                          activation=conv.activation, name=conv.name)(y)
        skip = _shift(x, -first, f"block{i}_skip")
        if width == conv.filters:
            if step > 1:  # every step-th position (a strided slice)
                skip = layers.MaxPooling1D(1, strides=step, name=f"block{i}_pick")(skip)
            y = layers.Add(name=f"block{i}_add")([y, skip])
        elif f"block{i}_proj" in names:
            skip = layers.Conv1D(conv.filters, 1, strides=step, name=f"block{i}_proj")(skip)
            y = layers.Add(name=f"block{i}_add")([y, skip])
        x, width, grid = y, conv.filters, grid * step
    out = layers.Dense(channels, name="head")(layers.Flatten(name="last_step")(x))
    if "residual" in names:
        out = layers.Add(name="residual")([out, _newest(inp, "newest")])
    twin = keras.Model(inp, out, name="tcn_twin")
    copy_weights(model, twin)
    twin.compile(optimizer=keras.optimizers.Adam(learning_rate=float(model.optimizer.learning_rate)),
                 loss="mse")
    return twin


def _shift(x, pad: int, name: str):
    """Zero-pad ``pad`` steps on the left of ``x``, or crop ``-pad`` steps off it."""
    if pad > 0:
        return layers.ZeroPadding1D((pad, 0), name=name)(x)
    if pad < 0:
        return layers.Cropping1D((-pad, 0), name=name)(x)
    return x


def copy_weights(src: keras.Model, dst: keras.Model) -> None:
    """Copy the weights of every layer of ``dst`` that has any from ``src``'s layer of that name."""
    for lay in dst.layers:
        if lay.weights:
            lay.set_weights(src.get_layer(lay.name).get_weights())
