"""Train a forecaster (TCN, LSTM or GRU) on a sensor series and write the model directory.

The series is cleaned and scaled as in the seed (NaN rows dropped, then
standardise + min-max to [0, 1]), cut into windows of ``--window`` past
samples that predict the next sample of every channel, and split
chronologically 80/20. Adam, MSE loss, 10 epochs by default, seeded and with
TensorFlow's deterministic ops, so the same command gives the same model.

Writes to ``--out``: model.keras, config.json, scaler.json, metrics.json
(validation RMSE per channel in physical units, training seconds, parameter
count, loss history) and loss.png plus pred_<channel>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from edgewatch.core.errors import UserError
from edgewatch.training.forecast.data import (
    Scaler,
    Series,
    chrono_split,
    load,
    make_windows,
    require_rows,
    unit,
)

ARCHS = ("tcn", "lstm", "gru")
DEFAULT_SEED = 42  # the same default as edgewatch.training.forecast.models, so CLI and API agree
DEFAULT_EPOCHS = 10
DEFAULT_WINDOW = 16  # covers the default TCN's receptive field (15): the board streams it
# `train --context`: (window, TCN sizes). long: two hours of context at one sample a minute
# (receptive field 125, window 128), three blocks of 8 filters so that its blob, parameter
# blocks and per-layer history fit the C3's 80 KB heap. Measured against the default on the
# detection suites (docs/benchmarks_detect.md, "Context"): it follows slow drifts (a ramp
# it has learned to continue) and alarms more on a room's real ramps, so it is not the
# default.
CONTEXTS = {
    "short": (DEFAULT_WINDOW, {}),
    "long": (128, {"filters": 8, "kernel": 5, "dilations": (1, 5, 25)}),
}
DEFAULT_BATCH = 32
TRAIN_FRACTION = 0.8
# Files `edgewatch convert` derives from a trained model (removed when retraining in place).
DERIVED = ("model.tflite", "model.ewb", "model_data.cc", "model_data.h", "golden.npz",
           "golden.json", "model_emlearn.h", "convert.json")


def _deterministic(seed: int) -> None:
    """Import TensorFlow only when training (the CLI stays fast); make runs repeatable."""
    # 3: also hides a harmless tf.data error line that deterministic ops trigger.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()
    _one_thread_per_op(tf)


def _one_thread_per_op(tf) -> None:
    """Run TensorFlow's ops on one thread (every model alike).

    A step of these models is hundreds of ops on tensors of a few hundred
    numbers: handing them to thread pools costs more than it saves, and on a
    2-core machine shared with other work the pools' threads mostly wait for
    a core. Only possible before TensorFlow starts in this process; later
    calls (a second `train` in `compare`, a test session) keep what is set.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def _rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=0))


def prepare(series: Series, window: int, train_fraction: float = TRAIN_FRACTION):
    """Scaler and chronologically split windows: ``scaler, (Xtr, ytr), (Xva, yva), t_val``.

    The scaler is fit on every cleaned row, as in the seed, so the validation
    span (and the board's int8 input range) stays inside [0, 1].
    """
    require_rows(series, window, train_fraction)
    scaler = Scaler.fit(series.values, series.channels)
    x, y = make_windows(scaler.transform(series.values), window)
    x_tr, x_va, y_tr, y_va, _, t_va = chrono_split(x, y, series.timestamps[window:],
                                                  train_fraction=train_fraction)
    return scaler, (x_tr, y_tr), (x_va, y_va), t_va


def train(series: Series, arch: str = "tcn", epochs: int = DEFAULT_EPOCHS,
          window: int = DEFAULT_WINDOW, out_dir=None, seed: int = DEFAULT_SEED,
          sizes: dict | None = None, batch_size: int = DEFAULT_BATCH, verbose=0,
          plots: bool = True, train_fraction: float = TRAIN_FRACTION,
          selection: dict | None = None) -> dict:
    """Train ``arch`` on ``series`` and return its metrics; write the model dir to ``out_dir``.

    ``sizes`` are passed to ``edgewatch.training.forecast.models.build_model``. The returned dict
    is what ``metrics.json`` holds, plus ``model`` (the Keras model) and
    ``scaler`` which are not serialised.
    """
    if arch not in ARCHS:
        raise UserError(f"--arch: unknown '{arch}' (choose from {', '.join(ARCHS)})")
    if int(epochs) < 1 or int(window) < 1:
        raise UserError(f"--epochs and --window must be >= 1 (got {epochs}, {window})")
    scaler, (x_tr, y_tr), (x_va, y_va), t_va = prepare(series, int(window), train_fraction)
    _deterministic(seed)
    from edgewatch.training.forecast import loop, models

    try:
        model = models.build_model(arch, int(window), len(series.channels), seed=int(seed),
                                   **(sizes or {}))
    except ValueError as exc:
        raise UserError(f"--size: {exc}") from None
    used_sizes = {**models.default_sizes(arch), **(sizes or {})}
    # Timed: everything from the built model to its trained weights.
    start, cpu = time.perf_counter(), time.process_time()
    # The TCN trains as its twin: the same function and weights, computed only
    # where the forecast reads it (models.tcn_training_twin); the weights go
    # back into `model`, which is what is saved, converted and run on the board.
    twin = models.tcn_training_twin(model)  # None for the LSTM and GRU
    fit_model = model if twin is None else twin
    # Keras' fit, batch for batch, without its per-step overhead (edgewatch.training.forecast.loop).
    # XLA (jit_compile) is not used for any model: Keras switches it off under
    # op determinism, which `_deterministic` needs for repeatable models. Forced
    # on, it took ~8 s before the first epoch ended for each of the three (vs
    # ~3 s) and changed the TCN's weights: the TCN and the LSTM took longer in
    # total, the GRU no less within this shared machine's noise.
    history = loop.fit(fit_model, x_tr, y_tr, (x_va, y_va), int(epochs), int(batch_size),
                       verbose=verbose)
    if fit_model is not model:
        models.copy_weights(fit_model, model)
    seconds = time.perf_counter() - start
    # CPU time of the fit is the figure that other work on a shared machine moves least.
    cpu = time.process_time() - cpu

    pred = model.predict(x_va, batch_size=1024, verbose=0)
    actual = scaler.inverse(y_va)
    pred_phys = scaler.inverse(pred)
    # The naive forecast "next = last" is the bar any forecaster has to clear.
    persist = scaler.inverse(x_va[:, -1, :])
    names = list(series.channels)
    metrics = {
        "arch": arch,
        "data": series.source,
        "channels": names,
        "units": {c: unit(c) for c in names},
        "rmse": dict(zip(names, map(float, _rmse(pred_phys, actual)), strict=True)),
        "rmse_norm": dict(zip(names, map(float, _rmse(pred, y_va)), strict=True)),
        "rmse_persistence": dict(zip(names, map(float, _rmse(persist, actual)), strict=True)),
        "train_seconds": round(seconds, 3),
        "train_cpu_seconds": round(cpu, 3),
        "params": int(model.count_params()),
        "epochs": int(epochs),
        "window": int(window),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "rows": len(series),
        "dropped_rows": int(series.dropped),
        "train_windows": len(x_tr),
        "val_windows": len(x_va),
        "history": history,
        **(selection or {}),
    }
    if out_dir is not None:
        _write(Path(out_dir), model, scaler, metrics, used_sizes, series, plots,
               t_va, actual, pred_phys)
    metrics["model"] = model
    metrics["scaler"] = scaler
    return metrics


def _write(out: Path, model, scaler, metrics, sizes, series, plots, t_va, actual, pred):
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # Outputs of an earlier `edgewatch convert` describe the old weights: a stale
    # model.ewb next to a new model.keras would deploy the wrong model.
    stale = [p for p in (*(out / n for n in DERIVED), *out.glob("pred_*.png")) if p.exists()]
    for p in stale:
        p.unlink()
    if stale:
        print(f"removed {len(stale)} outputs of the previous model from {out} "
              "(run `edgewatch convert` again)")
    model.save(out / "model.keras")
    config = {"arch": metrics["arch"], "window": metrics["window"],
              "channels": metrics["channels"], "sizes": sizes, "epochs": metrics["epochs"],
              "seed": metrics["seed"], "batch_size": metrics["batch_size"],
              "train_fraction": TRAIN_FRACTION, "data": _data_path(series.source),
              # which rows of `data` were trained on: convert calibrates on the same ones
              "fit_rows": metrics.get("fit_rows"), "keep_labelled": metrics.get("keep_labelled", False)}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    scaler.save(out / "scaler.json")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if plots:
        from edgewatch.training.forecast.plots import plot_loss, plot_predictions

        arch = metrics["arch"].upper()
        plot_loss(metrics["history"], out / "loss.png", f"{arch}: training and validation loss")
        for i, ch in enumerate(metrics["channels"]):
            rmse = f"{metrics['rmse'][ch]:.3g} {unit(ch)}".strip()
            plot_predictions(t_va, actual[:, i], pred[:, i], ch, out / f"pred_{ch}.png",
                             f"{arch}: predicted and actual {ch} (validation, RMSE {rmse})")


def _data_path(source: str) -> str:
    """``source`` as config.json keeps it for convert: a relative path that names the same file
    from the repository root (make train's ../shared/data/...) as given, any other file
    absolute: convert may run in another folder, where it would name no file or another one
    (and calibrate the blob on it). Database URLs as given."""
    p = Path(source)
    if p.is_absolute() or not p.is_file():
        return source
    from edgewatch.training.forecast.data import repo_root

    return source if (repo_root() / p).resolve() == p.resolve() else str(p.resolve())


def parse_sizes(items: list[str] | None) -> dict:
    """``["filters=8", "dilations=1,2,4"]`` -> ``{"filters": 8, "dilations": [1, 2, 4]}``."""
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--size: expected KEY=VALUE, got '{item}'")
        try:
            parts = [float(v) if "." in v else int(v) for v in val.split(",")]
        except ValueError:
            raise UserError(f"--size {key}: '{val}' is not a number or list of numbers") from None
        out[key.strip()] = parts if len(parts) > 1 or key.strip() == "dilations" else parts[0]
    return out


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `compare`."""
    p.add_argument("--data", required=True,
                   help="CSV file (generic, occupancy, SKAB, NAB) or database URL/path")
    p.add_argument("--channels", default=None, help="comma list of channel names (default: all)")
    p.add_argument("--device", default=None, help="device id when --data is a database")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs (default 10)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"past samples per prediction (default {DEFAULT_WINDOW}; "
                        "--context long: 128)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default 42)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="batch size (default 32)")


def load_for_training(args) -> Series:
    """Load and check ``--data`` before TensorFlow is imported, so bad input fails fast."""
    series = load(args.data, channels=args.channels, device=getattr(args, "device", None))
    if args.epochs < 1 or args.window < 1 or args.batch_size < 1:
        raise UserError("--epochs, --window and --batch-size must be >= 1")
    require_rows(series, args.window)
    return series


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `edgewatch train`."""
    add_common(p)
    p.add_argument("--arch", default="tcn", help="tcn | lstm | gru (default tcn)")
    p.add_argument("--out", default="models/default", help="model folder (default models/default)")
    p.add_argument("--size", action="append", metavar="KEY=VALUE",
                   help="model size option, e.g. filters=16 or dilations=1,2,4 (repeatable)")
    p.add_argument("--context", default="short", choices=sorted(CONTEXTS),
                   help="TCN context: short (receptive field 15, window 16; the default) or "
                        "long (two hours: receptive field 125, window 128, 8 filters); --size "
                        "and a --window other than the default still apply")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--fit-rows", type=int, default=None, metavar="N",
                   help="train (and let convert calibrate) on the first N rows of the file only "
                        "(NAB's probationary period, SKAB's first 400)")
    p.add_argument("--keep-labelled", action="store_true",
                   help="keep rows labelled anomalous (anomaly/fault columns) in training and "
                        "calibration; by default they are left out")


def run(args) -> int:
    """Train one model and print where it went and how good it is."""
    if args.arch not in ARCHS:
        raise UserError(f"--arch: unknown '{args.arch}' (choose from {', '.join(ARCHS)})")
    if Path(args.out).exists() and not Path(args.out).is_dir():  # before training, not after
        raise UserError(f"--out {args.out}: exists and is not a folder")
    sizes = parse_sizes(args.size)
    ctx_window, ctx_sizes = CONTEXTS[getattr(args, "context", "short")]
    if args.arch == "tcn":
        sizes = {**ctx_sizes, **sizes}
        if args.window == DEFAULT_WINDOW:
            args.window = ctx_window
        from edgewatch.training.forecast.models import DEFAULT_SIZES

        opts = {**DEFAULT_SIZES["tcn"], **sizes}
        try:
            rf = 1 + (int(opts["kernel"]) - 1) * sum(int(d) for d in opts["dilations"])
        except (TypeError, ValueError):
            rf = 0  # a malformed --size: build_model names it
        if 1 <= args.window < rf:  # convert refuses such a model: say so before training it
            print(f"warning: --window {args.window} is shorter than the TCN's receptive field of "
                  f"{rf} samples: the host can use the model, but convert will refuse it for the "
                  f"board (--window {rf} or more)", flush=True)
    from edgewatch.training.forecast.data import fit_selection

    # rows missing a reading are dropped after --fit-rows counts the file's rows
    series = load(args.data, channels=args.channels, device=getattr(args, "device", None),
                  dropna=False)
    series, left_out = fit_selection(series, args.fit_rows, args.keep_labelled)
    if args.epochs < 1 or args.window < 1 or args.batch_size < 1:
        raise UserError("--epochs, --window and --batch-size must be >= 1")
    require_rows(series, args.window)
    if left_out:
        print(f"left out {left_out} rows labelled anomalous (anomaly/fault columns) from training "
              "and calibration (--keep-labelled keeps them)")
    print(f"training {args.arch} on {series.source}: {len(series)} rows "
          f"({series.dropped} dropped), channels {', '.join(series.channels)}, "
          f"window {args.window}, {args.epochs} epochs", flush=True)
    m = train(series, args.arch, args.epochs, args.window, args.out, seed=args.seed, sizes=sizes,
              batch_size=args.batch_size, verbose=1 if sys.stdout.isatty() else 2,
              plots=not args.no_plots,
              selection={"fit_rows": args.fit_rows, "keep_labelled": bool(args.keep_labelled),
                         "labelled_left_out": left_out})
    rmse = ", ".join(f"{c} {v:.5f} {unit(c)}".rstrip() for c, v in m["rmse"].items())
    base = ", ".join(f"{c} {v:.5f}" for c, v in m["rmse_persistence"].items())
    print(f"{args.arch}: validation RMSE {rmse} (last-value baseline {base}); "
          f"{m['params']} parameters; trained in {m['train_seconds']:.1f} s -> {args.out}")
    return 0
