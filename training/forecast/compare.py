"""Train TCN, LSTM and GRU on the same data and split and print one comparison table.

Each model sees the same cleaned, scaled series, the same windows and the same
chronological 80/20 split, seed and epochs (the seed's Table 2 comparison).
The table gives the validation RMSE per channel in physical units, the
parameter count and the training seconds, next to the last-value baseline
(predict the next reading = the current one) that any forecaster must beat.

Each model trains in a fresh process of its own: the first fit in a process
also pays TensorFlow's one-off start-up (about 0.7 s measured), which would
otherwise land in whichever model happened to come first (the TCN).

On a shared or virtual machine one timing can be 30 % off the next. With
``--repeat N`` every model is trained N times, the models taking turns
(TCN, LSTM, GRU, TCN, ...) so that a slow spell of the machine falls on all of
them, and the table gives the median; every run's seconds are kept in the JSON.
Training is deterministic, so the repeats must give the same RMSE: a repeat
that does not is an error, not a figure.

One seed is one draw: on this data the three models' RMSEs lie within a few
thousandths of each other and of the last-value forecast, and which one is
lowest changes with the seed. ``--seeds N`` also trains every model with the
seeds ``--seed`` + 1 ... + N - 1 and adds a second table: each model's RMSE per
channel as the mean and standard deviation over the N seeds, and on how many
of them it was the lowest. The main table stays the ``--seed`` model.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgewatch.core.errors import UserError
from edgewatch.training.forecast.data import Series, unit
from edgewatch.training.forecast.train import (
    ARCHS,
    DEFAULT_WINDOW,
    add_common,
    load_for_training,
    train,
)


def compare(series: Series, epochs: int = 10, window: int = DEFAULT_WINDOW, seed: int = 42,
            batch_size: int = 32, out_dir=None, archs=ARCHS, verbose=0, repeat: int = 1,
            seeds: int = 1) -> dict:
    """Train every arch in ``archs`` on ``series``; return the table as a dict.

    With ``out_dir`` each model directory is written to ``out_dir/<arch>`` (by the
    first run). ``repeat`` > 1 trains each model that many times, in turns, and
    reports the median seconds (``train_seconds_runs`` has them all). ``seeds``
    > 1 adds ``table["seeds"]``: the RMSEs over seeds ``seed`` ... ``seed + seeds - 1``.
    """
    if int(repeat) < 1:
        raise UserError(f"--repeat must be >= 1 (got {repeat})")
    if int(seeds) < 1:
        raise UserError(f"--seeds must be >= 1 (got {seeds})")
    rows, baseline, runs = {}, None, {arch: [] for arch in archs}
    for r in range(int(repeat)):
        for arch in archs:
            m = _train_alone(series, arch, epochs, window,
                             Path(out_dir) / arch if out_dir and r == 0 else None, seed,
                             batch_size, verbose)
            runs[arch].append((m["train_seconds"], m["train_cpu_seconds"]))
            if r == 0:
                rows[arch] = {"rmse": m["rmse"], "params": m["params"]}
                baseline = m["rmse_persistence"]
            elif m["rmse"] != rows[arch]["rmse"]:
                raise RuntimeError(f"{arch}: run {r + 1} gave RMSE {m['rmse']}, run 1 "
                                   f"{rows[arch]['rmse']}: training is not deterministic")
    for arch in archs:
        rows[arch]["train_seconds"] = round(statistics.median(w for w, _ in runs[arch]), 3)
        rows[arch]["train_cpu_seconds"] = round(statistics.median(c for _, c in runs[arch]), 3)
        if int(repeat) > 1:
            rows[arch]["train_seconds_runs"] = [w for w, _ in runs[arch]]
            rows[arch]["train_cpu_seconds_runs"] = [c for _, c in runs[arch]]
    by_seed = {arch: [rows[arch]["rmse"]] for arch in archs}
    for s in range(int(seed) + 1, int(seed) + int(seeds)):
        for arch in archs:
            by_seed[arch].append(_train_alone(series, arch, epochs, window, None, s,
                                              batch_size, verbose)["rmse"])
    table = {"data": series.source, "rows": len(series), "channels": list(series.channels),
             "units": {c: unit(c) for c in series.channels}, "epochs": epochs,
             "window": window, "seed": seed, "batch_size": batch_size, "repeat": int(repeat),
             "models": rows, "baseline_last_value": {"rmse": baseline}}
    if int(seeds) > 1:
        table["seeds"] = _over_seeds(by_seed, list(series.channels), int(seed))
    if {"tcn", "lstm", "gru"} <= set(rows):
        tcn, lstm, gru = rows["tcn"], rows["lstm"], rows["gru"]
        table["goals"] = {
            "tcn_rmse_le_lstm_and_gru": all(
                tcn["rmse"][c] <= min(lstm["rmse"][c], gru["rmse"][c]) for c in series.channels),
            "tcn_time_le_half_lstm": tcn["train_seconds"] <= 0.5 * lstm["train_seconds"],
        }
    return table


def _over_seeds(by_seed: dict, channels: list, first: int) -> dict:
    """Mean, standard deviation and wins per channel of each model's RMSE over the seeds."""
    n = len(next(iter(by_seed.values())))
    out = {"seeds": list(range(first, first + n)), "models": {}}
    for arch, runs in by_seed.items():
        out["models"][arch] = {
            "rmse_runs": {c: [r[c] for r in runs] for c in channels},
            "rmse_mean": {c: statistics.mean(r[c] for r in runs) for c in channels},
            "rmse_sd": {c: statistics.stdev(r[c] for r in runs) for c in channels},
            "lowest": {c: sum(runs[i][c] == min(o[i][c] for o in by_seed.values()) for i in range(n))
                       for c in channels},
        }
    return out


def _train_alone(series: Series, arch: str, epochs: int, window: int, out, seed: int,
                 batch_size: int, verbose) -> dict:
    """`train` in a fresh process of its own; its metrics without the Keras model and scaler."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_train_here, series, arch, epochs, window, out, seed, batch_size,
                           verbose).result()


def _train_here(series: Series, arch: str, epochs: int, window: int, out, seed: int,
                batch_size: int, verbose) -> dict:
    """`train` in this process (the spawned one); its metrics without the Keras model and scaler."""
    if os.environ.get("EDGEWATCH_QUIET_TF") == "1":
        from edgewatch.core.quiet import quiet_tensorflow

        quiet_tensorflow()
    m = train(series, arch, epochs, window, out, seed=seed, batch_size=batch_size,
              verbose=verbose, plots=out is not None)
    return {k: v for k, v in m.items() if k not in ("model", "scaler")}


def format_table(table: dict) -> str:
    """The comparison as aligned text, one line per model plus the baseline."""
    chans = table["channels"]
    heads = ["model", *[f"RMSE {c}" + (f" ({u})" if (u := table['units'][c]) else "")
                        for c in chans], "parameters", "train s", "CPU s"]
    lines = []
    for arch, r in table["models"].items():
        lines.append([arch.upper(), *[f"{r['rmse'][c]:.5f}" for c in chans],
                      str(r["params"]), f"{r['train_seconds']:.1f}", f"{r['train_cpu_seconds']:.1f}"])
    base = table["baseline_last_value"]["rmse"]
    lines.append(["last value", *[f"{base[c]:.5f}" for c in chans], "0", "-", "-"])
    rep = table.get("repeat", 1)
    out = [f"{table['data']}: {table['rows']} rows, window {table['window']}, "
           f"{table['epochs']} epochs, seed {table['seed']}, chronological 80/20 split"
           + (f"; seconds are the median of {rep} runs per model" if rep > 1 else ""),
           *_aligned(heads, lines)]
    if "goals" in table:
        g = table["goals"]
        out.append(f"TCN RMSE <= LSTM and GRU on every channel: {'yes' if g['tcn_rmse_le_lstm_and_gru'] else 'no'}; "
                   f"TCN training time <= half of LSTM's: {'yes' if g['tcn_time_le_half_lstm'] else 'no'}")
    if "seeds" in table:
        out += ["", _seeds_table(table, chans)]
    return "\n".join(out)


def _seeds_table(table: dict, chans: list) -> str:
    sd = table["seeds"]
    n = len(sd["seeds"])
    heads = ["model", *[f"{c} mean ± sd" for c in chans], *[f"lowest {c}" for c in chans]]
    lines = [[arch.upper(), *[f"{r['rmse_mean'][c]:.5f} ± {r['rmse_sd'][c]:.5f}" for c in chans],
              *[f"{r['lowest'][c]}/{n}" for c in chans]] for arch, r in sd["models"].items()]
    return "\n".join([f"RMSE over {n} seeds ({sd['seeds'][0]}-{sd['seeds'][-1]}), same data and split:",
                      *_aligned(heads, lines)])


def _aligned(heads: list, lines: list) -> list:
    """Text rows of a table: the first column left-aligned, the others right, a rule under the heads."""
    widths = [max(len(x) for x in col) for col in zip(heads, *lines, strict=True)]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
            for cells in (heads, ["-" * w for w in widths], *lines)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `edgewatch compare`."""
    add_common(p)
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    p.add_argument("--out", default=None, help="keep the three model folders under this folder")
    p.add_argument("--repeat", type=int, default=1,
                   help="train each model N times, in turns, and report the median seconds "
                        "(steadier figures on a busy or virtual machine; default 1)")
    p.add_argument("--seeds", type=int, default=1,
                   help="also train with the next N-1 seeds and add a table of each model's "
                        "RMSE mean ± sd over the N seeds (default 1)")


def run(args) -> int:
    """Train the three models and print the table."""
    series = load_for_training(args)
    print(f"comparing {', '.join(a.upper() for a in ARCHS)} on {series.source} "
          f"({len(series)} rows, channels {', '.join(series.channels)})", flush=True)
    table = compare(series, args.epochs, args.window, args.seed, args.batch_size, args.out,
                    repeat=args.repeat, seeds=args.seeds)
    print(format_table(table))
    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"{args.json}: cannot write ({exc.strerror})") from None
    return 0
