"""Training speed and accuracy figures for `make bench`: the TCN/LSTM/GRU comparison.

    python -m tools.bench_training [--fast]

Runs what ``edgewatch compare --data ../shared/data/occupancy/datatraining.txt``
runs (10 epochs, window 10, seed 42, chronological 80/20 split). The TCN row is
the default ``edgewatch train`` model, so its training seconds are the "default
TCN, 10 epochs" figure. The load average at the start is recorded because
the machine's other work slows every figure down alike.
"""

from __future__ import annotations

import json
import os
import sys
import time

COMMAND = "edgewatch compare --data ../shared/data/occupancy/datatraining.txt --epochs {epochs}"


def bench(fast: bool = False) -> dict:
    """The comparison table as ``{"records": [...], ...}`` (fast: 2 epochs, not the real figures)."""
    from training.compare import compare
    from training.data import load, shared_data

    epochs = 2 if fast else 10
    series = load(shared_data() / "occupancy" / "datatraining.txt")
    load_avg = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    table = compare(series, epochs=epochs)
    recs = []
    for arch, r in table["models"].items():
        recs.append({"model": arch.upper(), **{f"rmse_{c}": v for c, v in r["rmse"].items()},
                     "params": r["params"], "train_seconds": r["train_seconds"],
                     "train_cpu_seconds": r["train_cpu_seconds"]})
    recs.append({"model": "last value (baseline)",
                 **{f"rmse_{c}": v for c, v in table["baseline_last_value"]["rmse"].items()},
                 "params": 0, "train_seconds": 0.0, "train_cpu_seconds": 0.0})
    return {
        "records": recs,
        "command": COMMAND.format(epochs=epochs),
        "epochs": epochs,
        "tcn_default_train_seconds": table["models"]["tcn"]["train_seconds"],
        "goals": table["goals"],
        "load_average_at_start": round(load_avg, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "wall_seconds": round(time.perf_counter() - wall0, 1),
    }


if __name__ == "__main__":
    print(json.dumps(bench(fast="--fast" in sys.argv), indent=2))
