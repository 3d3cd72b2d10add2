"""Training speed and accuracy figures for `make bench`: the TCN/LSTM/GRU comparison.

    python -m tools.bench_training [--fast]

Runs ``edgewatch compare --data ../shared/data/occupancy/datatraining.txt``
itself (10 epochs, the default window of 128, seed 42, chronological 80/20 split; each model
three times in turns, the median reported: one timing on this shared virtual
machine can be 30 % off the next) in a fresh
process: `make bench` has used TensorFlow before it gets here (the detector
suites train TCNs), and a process whose TensorFlow already runs can no longer
be given the settings `edgewatch.training.forecast.train` makes for every model (one thread per
op), so an in-process run would time something other than the command. The
TCN row is the default ``edgewatch train`` model, so its training seconds are
the "default TCN, 10 epochs" figure, and ``edgewatch convert`` on it gives the
int8 vs float RMSE and the blob size. The load average at the start is
recorded because the machine's other work slows every figure down alike.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEAT = 3
SEEDS = 5  # RMSE over seeds 42..46 too: one seed's ranking of three near-equal models is a draw
COMMAND = ("edgewatch compare --data ../shared/data/occupancy/datatraining.txt --epochs {epochs} "
           "--repeat {repeat} --seeds {seeds} --out DIR")
CONVERT = "edgewatch convert --model DIR/tcn --out DIR/tcn"


def _edgewatch(*args) -> None:
    """Run an `edgewatch` command from the repo root; its stderr's end is the error if it fails."""
    from edgewatch.training.forecast.data import repo_root

    proc = subprocess.run([str(Path(sys.executable).with_name("edgewatch")), *map(str, args)],
                          capture_output=True, text=True, cwd=repo_root())
    if proc.returncode != 0:
        raise RuntimeError(f"edgewatch {args[0]} failed: {proc.stderr.strip()[-500:]}")


def bench(fast: bool = False) -> dict:
    """The comparison table as ``{"records": [...], ...}`` (fast: 2 epochs, not the real figures)."""
    from edgewatch.training.forecast.data import shared_data

    epochs, repeat, seeds = (2, 1, 1) if fast else (10, REPEAT, SEEDS)
    data = shared_data() / "occupancy" / "datatraining.txt"
    load_avg = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        js, models = Path(tmp) / "compare.json", Path(tmp) / "models"
        _edgewatch("compare", "--data", data, "--epochs", epochs, "--repeat", repeat,
                   "--seeds", seeds, "--json", js, "--out", models)
        table = json.loads(js.read_text())
        # The compared TCN is the default `edgewatch train` model: convert it for
        # the int8 vs float RMSE and the size of the board's blob.
        tcn = models / "tcn"
        _edgewatch("convert", "--model", tcn, "--out", tcn)
        conv = json.loads((tcn / "convert.json").read_text())
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    recs = []
    for arch, r in table["models"].items():
        recs.append({"model": arch.upper(), **{f"rmse_{c}": v for c, v in r["rmse"].items()},
                     "params": r["params"], "train_seconds": r["train_seconds"],
                     "train_cpu_seconds": r["train_cpu_seconds"],
                     "train_seconds_runs": r.get("train_seconds_runs", [r["train_seconds"]])})
    recs.append({"model": "last value (baseline)",
                 **{f"rmse_{c}": v for c, v in table["baseline_last_value"]["rmse"].items()},
                 "params": 0, "train_seconds": 0.0, "train_cpu_seconds": 0.0})
    return {
        "records": recs,
        "command": COMMAND.format(epochs=epochs, repeat=repeat, seeds=seeds),
        "seeds": table.get("seeds"),
        "convert_command": CONVERT,
        "int8_rmse_ratio": conv["rmse_ratio"],
        "blob_bytes": conv["blob_bytes"],
        "repeat": repeat,
        "epochs": epochs,
        "tcn_default_train_seconds": table["models"]["tcn"]["train_seconds"],
        "goals": table["goals"],
        "load_average_at_start": round(load_avg, 2),
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(time.perf_counter() - wall0, 1),
    }


if __name__ == "__main__":
    print(json.dumps(bench(fast="--fast" in sys.argv), indent=2))
