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


# ------------------------------------------------------------ time-series panels for people

def robust_ylim(values, q: float = 1.0, pad: float = 0.15) -> tuple[float, float] | None:
    """y limits over every reading but the outliers: one spike cannot flatten a plot.

    An outlier lies further than the ``q``..``100 - q`` percentile span beyond that span;
    the limits are the extremes of the rest, padded by ``pad`` of their range.
    """
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    p_lo, p_hi = np.percentile(v, [q, 100 - q])
    span = p_hi - p_lo
    kept = v[(v >= p_lo - span) & (v <= p_hi + span)] if span > 0 else v[v == p_lo]
    lo, hi = float(kept.min()), float(kept.max())
    rng = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    return lo - pad * rng, hi + pad * rng


def merge_events(events, within: float) -> list[tuple[float, str, int]]:
    """(x, label) events, sorted; a run of the same label closer than ``within`` is one (x, label, n)."""
    out: list[list] = []
    for x, label in sorted(events, key=lambda e: (e[0], e[1])):
        last = next((o for o in reversed(out) if o[1] == label), None)
        if last is not None and x - last[3] <= within:
            last[2] += 1
            last[3] = x
        else:
            out.append([x, label, 1, x])
    return [(x, label, n) for x, label, n, _ in out]


def place_labels(ax, events, within: float, color: str = "red", fontsize: int = 7,
                 max_rows: int = 6) -> list:
    """Alert labels along the top of ``ax``, never overlapping.

    Same-label events closer than ``within`` (x units) become one label ``rule ×n``;
    a label that would overlap an earlier one moves down a row. Returns the texts.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed = []
    boxes = [t.get_window_extent(renderer) for t in ax.texts]  # e.g. off-scale markers
    for x, label, n in merge_events(events, within):
        text = label if n == 1 else f"{label} ×{n}"
        for row in range(max_rows):
            t = ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(2, -9 - 9 * row), textcoords="offset points",
                            fontsize=fontsize, color=color, clip_on=False)
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in boxes):
                boxes.append(box)
                placed.append(t)
                break
            t.remove()
    return placed


def reading_panel(ax, times, values, title: str, ylabel: str, pred=None, band=None,
                  alerts=(), empty_note: str = "no readings stored") -> list:
    """One board channel over time (UTC): reading, prediction and band, alerts.

    ``times`` are Unix seconds; ``pred`` and ``band`` are {time: value} / {time: (lo, hi)};
    ``alerts`` are (time, rule, value or None) -- None for a whole-device alert. The y range
    ignores the top and bottom percent, so a single spike shows as a marker on the edge
    with its value instead of flattening the plot. Returns the alert events for
    :func:`label_alerts`, called once the figure's layout is final.
    """
    import matplotlib.dates as mdates

    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    if not len(times):
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", transform=ax.transAxes,
                fontsize=9, color="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        return []

    def dt(ts):
        return np.asarray(ts, dtype=float).astype("datetime64[s]")

    ax.plot(dt(times), values, lw=1.2, color="black", label="reading")
    if pred:
        px = sorted(pred)
        ax.plot(dt(px), [pred[s] for s in px], lw=1, color="tab:blue", label="prediction")
    if band:
        bx = sorted(band)
        ax.fill_between(dt(bx), [band[s][0] for s in bx], [band[s][1] for s in bx],
                        color="tab:blue", alpha=0.2, label="band pred ± k(σ+ε)")
    lim = robust_ylim(values)
    if lim:
        ax.set_ylim(*lim)
        lo, hi = lim
        for t, v in zip(times, values, strict=True):  # off-scale readings: marked on the edge
            if v is not None and (v > hi or v < lo):
                edge = hi if v > hi else lo
                ax.annotate(f"{'▲' if v > hi else '▼'} {v:.4g}", (dt([t])[0], edge),
                            xytext=(3, -10 if v > hi else 3), textcoords="offset points",
                            ha="left", fontsize=7, color="black")
    events = []
    for t, rule, v in alerts:
        if v is None:
            ax.axvline(dt([t])[0], color="red", ls="--", lw=0.8)
        else:
            y = min(max(v, lim[0]), lim[1]) if lim else v
            ax.scatter(dt([t]), [y], color="red", marker="x", s=50, zorder=5)
        events.append((float(mdates.date2num(dt([t])[0])), rule))
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # seconds when it matters
    ax.set_xlabel("time (UTC)")
    return events


def label_alerts(ax, events) -> list:
    """Place ``events`` (from :func:`reading_panel`) as non-overlapping labels; after layout."""
    if not events:
        return []
    x0, x1 = ax.get_xlim()
    return place_labels(ax, events, within=0.08 * (x1 - x0))
