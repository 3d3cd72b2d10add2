"""SKAB outlier-detection leaderboard protocol.

For each of the 34 labelled experiment files (valve1/, valve2/, other/) the
first 400 rows are the fit set (labels unused) and the rest the test set. The
detector's 0/1 verdicts on the test rows of all files are concatenated and
scored as one binary classification: F1, FAR = FP / (FP + TN) and
MAR = FN / (FN + TP), as in the SKAB README.

SKAB's own notebooks score every row of each file, fit rows included (their
prediction series spans the whole file). :func:`evaluate` reports that variant
too (``whole_file``) so the published anchors can be read against both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgewatch.training.forecast.data import load_skab, shared_data

N_FIT = 400
FOLDERS = ("valve1", "valve2", "other")
# Published on this protocol (SKAB README): F1, FAR %, MAR %.
PUBLISHED = {
    "Conv-AE": (0.78, 13.55, 28.02),
    "MSET": (0.78, 39.73, 14.13),
    "T-squared+Q (PCA)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "Vanilla LSTM": (0.54, 12.54, 59.53),
    "MSCRED": (0.36, 49.94, 69.88),
    "Isolation forest": (0.29, 2.56, 82.89),
}


@dataclass
class SkabFile:
    """One labelled SKAB experiment: physical values [N, 8] and the 0/1 anomaly label per row."""

    name: str
    values: np.ndarray
    anomaly: np.ndarray
    channels: list[str]


def skab_dir() -> Path:
    """The SKAB folder of the shared data."""
    return shared_data() / "skab"


def list_files(folder: str | Path | None = None) -> list[Path]:
    """The labelled SKAB files in a stable order (folder, then file number)."""
    root = Path(folder) if folder else skab_dir()
    out = []
    for sub in FOLDERS:
        out += sorted((root / sub).glob("*.csv"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    if not out:
        raise FileNotFoundError(f"{root}: no SKAB files under {', '.join(FOLDERS)}")
    return out


def load_files(limit: int | None = None, folder: str | Path | None = None) -> list[SkabFile]:
    """Load the labelled files; ``limit`` takes an evenly spread subset (for fast runs)."""
    paths = list_files(folder)
    if limit and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    out = []
    for p in paths:
        s = load_skab(p)
        out.append(SkabFile(f"{p.parent.name}/{p.stem}", s.values.astype(np.float64),
                            s.labels["anomaly"].astype(bool), list(s.channels)))
    return out


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """F1, FAR % and MAR % of 0/1 predictions (SKAB's definitions), plus the counts."""
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    tp = int(np.sum(y & p))
    fp = int(np.sum(~y & p))
    fn = int(np.sum(y & ~p))
    tn = int(np.sum(~y & ~p))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return {"f1": f1, "far": far, "mar": mar, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def evaluate(detector_factory, files: list[SkabFile], n_fit: int = N_FIT,
             keep: tuple[str, ...] = ()) -> dict:
    """Run one detector configuration over every file and score the concatenation.

    ``detector_factory()`` returns a fresh detector with ``run(values, n_fit) -> bool[N]``
    (fit on ``values[:n_fit]``, one verdict per row). The same configuration
    serves every file: nothing is tuned per file. Verdicts of the files named
    in ``keep`` are returned under ``"kept"`` (for plots).
    """
    ys, ps, ys_all, ps_all, per_file, kept = [], [], [], [], [], {}
    t0 = time.perf_counter()
    for f in files:
        det = detector_factory()
        pred = np.asarray(det.run(f.values, n_fit), dtype=bool)
        if pred.shape != (len(f.values),):
            raise ValueError(f"{f.name}: detector returned {pred.shape}, expected ({len(f.values)},)")
        if f.name in keep:
            kept[f.name] = pred
        ys.append(f.anomaly[n_fit:])
        ps.append(pred[n_fit:])
        ys_all.append(f.anomaly)
        ps_all.append(pred)
        m = binary_metrics(f.anomaly[n_fit:], pred[n_fit:])
        per_file.append({"file": f.name, **{k: m[k] for k in ("f1", "far", "mar")}})
    out = binary_metrics(np.concatenate(ys), np.concatenate(ps))
    out["whole_file"] = {k: v for k, v in binary_metrics(np.concatenate(ys_all),
                                                         np.concatenate(ps_all)).items()
                         if k in ("f1", "far", "mar")}
    out["files"] = len(files)
    out["seconds"] = time.perf_counter() - t0
    out["per_file"] = per_file
    out["kept"] = kept
    return out
