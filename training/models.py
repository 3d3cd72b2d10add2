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

# Default sizes: the three models have comparable parameter counts for C=2
# (TCN 1762, LSTM 1882, GRU 1762 parameters) so the comparison is about structure.
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
