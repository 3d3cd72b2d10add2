"""PNG plots written next to a trained model (the seed's Figures 9-11)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from edgewatch.training.forecast.data import unit  # noqa: E402


def plot_loss(history: dict, path, title: str) -> Path:
    """Training and validation loss per epoch (Figure 9)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], marker="o", label="training loss")
    if history.get("val_loss"):
        ax.plot(epochs, history["val_loss"], marker="o", label="validation loss")
    ax.set(xlabel="epoch", ylabel="MSE (normalised units)", title=title)
    ax.set_yscale("log")
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_predictions(timestamps, actual, predicted, channel: str, path, title: str) -> Path:
    """Predicted (blue) against actual (orange) values of one channel (Figures 10-11)."""
    t = np.asarray(timestamps, dtype="datetime64[s]") if timestamps is not None else None
    x = t if t is not None else np.arange(len(actual))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(x, actual, color="tab:orange", lw=1.0, label="actual")
    ax.plot(x, predicted, color="tab:blue", lw=0.8, label="predicted")
    label = f"{channel} ({unit(channel)})" if unit(channel) else channel
    ax.set(xlabel="time (UTC)" if t is not None else "sample", ylabel=label, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
