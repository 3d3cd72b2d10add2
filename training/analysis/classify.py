"""Learn anomalies from labelled data: Random Forest and XGBoost, with and without SMOTE, TPE-tuned.

The second seed paper's supervised stage on SKAB's labelled experiments (or
any data with a 0/1 label column): a stratified 70/30 split, then for each of
Random Forest and XGBoost, trained on the raw training part and on a
SMOTE-oversampled one (imbalanced-learn), hyperparameters tuned by Optuna's
Tree-structured Parzen Estimator within ``--budget-s`` seconds in total, scored
on a validation slice of the training part. The tuned models are then fitted
on the whole training part and scored once on the untouched 30 %: accuracy,
precision, recall and F1 of the anomaly class, plus a confusion-matrix PNG each.

A small Random Forest for the board (``--board-trees``, ``--board-depth``) is
trained on int16-quantised features and exported as C through emlearn
(``rf_board.h`` + ``rf_board.json`` with the quantisation); the report gives
its size, its scores and how often the compiled C agrees with scikit-learn.

``--split chrono`` tests on the last 30 % of each file instead of a random
30 %: the paper's random split lets a test row's neighbour one second away sit
in the training part, which flatters every model on time series.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from edgewatch.core.errors import UserError
from edgewatch.training.analysis.analyze import _plt, _table, load_many
from edgewatch.training.forecast import data as tdata

MODELS = ("rf", "xgb")
MODEL_NAMES = {"rf": "Random Forest", "xgb": "XGBoost"}
INT16_MAX = 32767
# A board forest must fit the ESP32's flash and RAM budget next to the TCN.
BOARD_MAX_NODES = 4096


def add_arguments(p) -> None:
    """Options of ``edgewatch classify``."""
    p.add_argument("--data", nargs="+", default=[str(tdata.shared_data() / "skab")], metavar="SRC",
                   help="labelled CSV file(s) or folder(s) (default: ../shared/data/skab)")
    p.add_argument("--label", default="anomaly", help="0/1 label column (default anomaly)")
    p.add_argument("--channels", help="comma-separated feature channels (default: all)")
    p.add_argument("--models", default="rf,xgb", help="comma-separated: rf, xgb (default both)")
    p.add_argument("--smote", choices=("both", "yes", "no"), default="both",
                   help="train with SMOTE oversampling, without, or both (default both)")
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="total TPE tuning time in seconds, shared by all runs (default 120)")
    p.add_argument("--max-trials", type=int, default=200, help="trials per run at most (default 200)")
    p.add_argument("--split", choices=("random", "chrono"), default="random",
                   help="random stratified 70/30 (the paper) or the last 30 %% of each file")
    p.add_argument("--test-size", type=float, default=0.3, help="test share (default 0.3)")
    p.add_argument("--max-rows", type=int, default=0, help="use a random subset of this many rows (0 = all)")
    p.add_argument("--board-trees", type=int, default=10, help="trees of the board forest (default 10)")
    p.add_argument("--board-depth", type=int, default=8, help="depth of the board forest (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="runs/classify", help="report folder (default runs/classify)")


# ---------------------------------------------------------------- data

def file_starts(series: tdata.Series) -> np.ndarray:
    """Row indices where a new source file begins (its line numbers restart)."""
    return np.concatenate([[0], np.flatnonzero(np.diff(series.lines) <= 0) + 1])


def split(series: tdata.Series, y: np.ndarray, how: str, test_size: float, seed: int):
    """Train and test row indices: stratified random, or the tail of every file."""
    n = len(y)
    if how == "random":
        from sklearn.model_selection import train_test_split

        strat = y if np.bincount(y, minlength=2).min() >= 2 else None
        return train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=strat)
    bounds = list(file_starts(series)) + [n]
    train, test = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        k = a + int(round((b - a) * (1 - test_size)))
        train.append(np.arange(a, k))
        test.append(np.arange(k, b))
    return np.concatenate(train), np.concatenate(test)


def scores(y_true, y_pred) -> dict:
    """Accuracy, and precision/recall/F1 of the anomaly class (1), with the confusion counts."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
    )

    cm = confusion_matrix(y_true, y_pred, labels=[0, 1])
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "precision": float(precision_score(y_true, y_pred, zero_division=0)),
            "recall": float(recall_score(y_true, y_pred, zero_division=0)),
            "f1": float(f1_score(y_true, y_pred, zero_division=0)),
            "confusion": cm.tolist()}


# ---------------------------------------------------------------- models and search spaces

def make_model(kind: str, params: dict, seed: int):
    """A Random Forest or XGBoost classifier with ``params``."""
    if kind == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    from xgboost import XGBClassifier

    return XGBClassifier(random_state=seed, n_jobs=1, tree_method="hist", verbosity=0, **params)


DEFAULTS = {
    "rf": {"n_estimators": 100, "max_depth": 20, "max_features": "sqrt", "min_samples_split": 2,
           "min_samples_leaf": 1, "criterion": "gini"},
    "xgb": {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.3, "subsample": 1.0,
            "colsample_bytree": 1.0},
}


def suggest(kind: str, trial) -> dict:
    """The paper's hyperparameters of each model, as an Optuna search space."""
    if kind == "rf":
        return {"n_estimators": trial.suggest_int("n_estimators", 10, 200, log=True),
                "max_depth": trial.suggest_int("max_depth", 3, 30),
                "max_features": trial.suggest_categorical("max_features", ["sqrt", "log2", None]),
                "min_samples_split": trial.suggest_int("min_samples_split", 2, 20),
                "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 10),
                "criterion": trial.suggest_categorical("criterion", ["gini", "entropy"])}
    return {"n_estimators": trial.suggest_int("n_estimators", 20, 300, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 10),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.5, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0)}


def oversample(x, y, ratio: float | None, seed: int):
    """SMOTE the anomaly class up to ``ratio`` x the normal count (None: unchanged)."""
    if ratio is None:
        return x, y
    from imblearn.over_sampling import SMOTE

    counts = np.bincount(y, minlength=2)
    minority = int(np.argmin(counts))
    if counts[minority] < 2 or counts[minority] >= ratio * counts[1 - minority]:
        return x, y
    k = int(min(5, counts[minority] - 1))
    sm = SMOTE(sampling_strategy={minority: int(ratio * counts[1 - minority])},
               k_neighbors=k, random_state=seed)
    return sm.fit_resample(x, y)


def tune(kind: str, use_smote: bool, x, y, budget_s: float, max_trials: int, seed: int) -> dict:
    """TPE search of ``kind`` (with SMOTE when asked) on a validation slice of the training part."""
    import optuna
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    strat = y if np.bincount(y, minlength=2).min() >= 2 else None
    xf, xv, yf, yv = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=strat)

    def objective(trial):
        params = suggest(kind, trial)
        ratio = trial.suggest_float("smote_ratio", 0.5, 1.0) if use_smote else None
        xs, ys = oversample(xf, yf, ratio, seed)
        model = make_model(kind, params, seed).fit(xs, ys)
        return f1_score(yv, model.predict(xv), zero_division=0)

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    # The library defaults go first, so tuning can only improve on them.
    study.enqueue_trial({**DEFAULTS[kind], **({"smote_ratio": 1.0} if use_smote else {})})
    study.optimize(objective, n_trials=max_trials, timeout=max(budget_s, 0.001))
    best = dict(study.best_params)
    ratio = best.pop("smote_ratio", None)
    return {"params": best, "smote_ratio": ratio, "trials": len(study.trials),
            "val_f1": float(study.best_value)}


# ---------------------------------------------------------------- the board forest

def int16_range(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) of the training part, mapped onto 0..32767 for int16 trees."""
    lo, hi = x_train.min(axis=0), x_train.max(axis=0)
    return lo, np.where(hi > lo, hi, lo + 1.0)


def to_int16(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Physical units -> int16 features as the board computes them (clipped)."""
    q = np.round((np.asarray(x, np.float64) - lo) / (hi - lo) * INT16_MAX)
    return np.clip(q, -INT16_MAX - 1, INT16_MAX).astype(np.int16)


def export_board_forest(model, path: Path, name: str) -> Path:
    """C code for ``model`` through emlearn (the converter's helper when it exists)."""
    try:
        from edgewatch.training.export.convert import export_emlearn
    except ImportError:
        export_emlearn = None
    # int16 features as the board computes them; 8-bit leaf probabilities so the
    # C forest averages votes the way scikit-learn does.
    opts = {"method": "inline", "dtype": "int16_t", "leaf_bits": 8}
    if export_emlearn is not None:
        return Path(export_emlearn(model, path, name, **opts))
    import emlearn

    emlearn.convert(model, **opts).save(file=str(path), name=name)
    return path


def board_forest(x_tr, y_tr, x_te, y_te, channels, trees: int, depth: int, seed: int, out: Path) -> dict:
    """Train, export and check the small int16 Random Forest meant for the board."""
    from edgewatch.training.export.convert import import_emlearn
    from sklearn.ensemble import RandomForestClassifier

    emlearn = import_emlearn()

    lo, hi = int16_range(x_tr)
    q_tr, q_te = to_int16(x_tr, lo, hi), to_int16(x_te, lo, hi)
    model = RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=seed, n_jobs=1)
    model.fit(q_tr, y_tr)
    nodes = int(sum(e.tree_.node_count for e in model.estimators_))
    if nodes > BOARD_MAX_NODES:
        raise UserError(f"--board-trees {trees} --board-depth {depth}: {nodes} nodes, over the "
                        f"board's {BOARD_MAX_NODES}; use fewer or shallower trees")
    header = export_board_forest(model, out / "rf_board.h", "rf_board")
    sk = model.predict(q_te)
    # Compile the same forest through emlearn and run it: the C must agree with scikit-learn.
    c_pred = emlearn.convert(model, method="inline", dtype="int16_t", leaf_bits=8).predict(q_te)
    info = {"trees": trees, "max_depth": depth, "nodes": nodes, "c_bytes": header.stat().st_size,
            "channels": list(channels), "low": lo.tolist(), "high": hi.tolist(),
            "formula": "q = clip(round((x - low) / (high - low) * 32767), -32768, 32767)",
            "test": scores(y_te, sk), "c_agreement": float((c_pred == sk).mean())}
    (out / "rf_board.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ---------------------------------------------------------------- figures, report

def confusion_png(cm, title: str, path: Path) -> str:
    """One confusion matrix (rows true, columns predicted) as a small PNG."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=["normal", "anomaly"]).plot(
        ax=ax, colorbar=False, values_format="d")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def report(summary: dict) -> str:
    """The Markdown report."""
    rows = [[MODEL_NAMES[r["model"]], "yes" if r["smote"] else "no", r["trials"],
             r["test"]["accuracy"], r["test"]["precision"], r["test"]["recall"], r["test"]["f1"],
             round(r["fit_s"], 2)] for r in summary["runs"]]
    b = summary["board"]
    md = [f"# Supervised anomaly classification on {summary['source']}", "",
          f"{summary['rows']} labelled rows ({summary['anomalies']} anomalies), "
          f"{len(summary['channels'])} features: {', '.join(summary['channels'])}.",
          f"Split: {summary['split']} {round(100 * (1 - summary['test_size']))}/"
          f"{round(100 * summary['test_size'])} (train {summary['train_rows']}, "
          f"test {summary['test_rows']}), seed {summary['seed']}. "
          f"TPE tuning budget {summary['budget_s']:g} s in total.", "",
          "Scores on the test part; precision, recall and F1 are those of the anomaly class.", "",
          _table(["model", "SMOTE", "trials", "accuracy", "precision", "recall", "F1", "fit s"], rows), ""]
    for r in summary["runs"]:
        md += [f"![{r['name']}]({r['figure']})"]
    md += ["", "## Random Forest for the board (emlearn)", "",
           f"{b['trees']} trees of depth ≤ {b['max_depth']}, {b['nodes']} nodes, int16 features; "
           f"C code `rf_board.h` ({b['c_bytes']} bytes of source), quantisation in `rf_board.json`. "
           f"The compiled C agrees with scikit-learn on {100 * b['c_agreement']:.2f} % of the test rows.",
           "", _table(["accuracy", "precision", "recall", "F1"],
                      [[b["test"]["accuracy"], b["test"]["precision"], b["test"]["recall"],
                        b["test"]["f1"]]]), "",
           "Tuned hyperparameters:", ""]
    for r in summary["runs"]:
        md += [f"- {r['name']}: `{json.dumps(r['params'])}`"
               + (f", SMOTE ratio {r['smote_ratio']:.2f}" if r["smote_ratio"] else "")]
    return "\n".join(md) + "\n"


def run_classify(series: tdata.Series, label: str, out: Path, models=MODELS, smote="both",
                 budget_s: float = 120.0, max_trials: int = 200, how: str = "random",
                 test_size: float = 0.3, board_trees: int = 10, board_depth: int = 8,
                 seed: int = 0) -> dict:
    """Tune, train and score every requested run; write the report into ``out``."""
    if label not in series.labels:
        raise UserError(f"{series.source} line 1: no label column '{label}'")
    y = series.labels[label]
    if y.dtype == object or not np.isin(y, (0, 1)).all():
        raise UserError(f"{series.source}: label '{label}' must hold only 0 and 1")
    y = y.astype(np.int64)
    if np.bincount(y, minlength=2).min() < 4:
        raise UserError(f"{series.source}: label '{label}' needs at least 4 rows of each class")
    if not 0.05 <= test_size <= 0.5:
        raise UserError(f"--test-size {test_size}: must be within 0.05..0.5")
    if budget_s <= 0:
        raise UserError(f"--budget-s {budget_s}: must be positive")
    x = series.values.astype(np.float64)
    tr, te = split(series, y, how, test_size, seed)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(m, s) for m in models for s in ((False, True) if smote == "both" else (smote == "yes",))]
    runs = []
    for i, (kind, use_smote) in enumerate(plan):
        # What earlier runs left unused goes to the later ones.
        spent = sum(r["tune_s"] for r in runs)
        share = (budget_s - spent) / (len(plan) - i)
        t0 = time.monotonic()
        best = tune(kind, use_smote, x[tr], y[tr], share, max_trials, seed)
        t1 = time.monotonic()
        xs, ys = oversample(x[tr], y[tr], best["smote_ratio"], seed)
        model = make_model(kind, best["params"], seed).fit(xs, ys)
        t2 = time.monotonic()
        res = scores(y[te], model.predict(x[te]))
        name = f"{kind}{'_smote' if use_smote else ''}"
        title = f"{MODEL_NAMES[kind]} ({'after' if use_smote else 'without'} SMOTE)"
        runs.append({"name": name, "model": kind, "smote": use_smote, **best, "test": res,
                     "tune_s": t1 - t0, "fit_s": t2 - t1,
                     "figure": confusion_png(res["confusion"], title, out / f"confusion_{name}.png")})
    board = board_forest(x[tr], y[tr], x[te], y[te], series.channels, board_trees, board_depth,
                         seed, out)
    summary = {"source": series.source, "rows": len(y), "anomalies": int(y.sum()),
               "channels": series.channels, "label": label, "split": how, "test_size": test_size,
               "train_rows": len(tr), "test_rows": len(te), "seed": seed, "budget_s": budget_s,
               "runs": runs, "board": board}
    (out / "report.md").write_text(report(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(args) -> int:
    """``edgewatch classify``: load labelled data, tune, train, score, export the board forest."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise UserError(f"--models {args.models}: choose from {', '.join(MODELS)}")
    if args.board_trees < 1 or args.board_depth < 1:
        raise UserError("--board-trees and --board-depth must be at least 1")
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):  # NaN ran on, silent
        raise UserError(f"--budget-s {args.budget_s}: expected a finite number of seconds > 0")
    series = load_many(args.data, channels=args.channels, need_label=args.label)
    if args.max_rows and args.max_rows < len(series):
        idx = np.sort(np.random.default_rng(args.seed).choice(len(series), args.max_rows, replace=False))
        series = series.take(idx)
    out = Path(args.out)
    s = run_classify(series, args.label, out, models, args.smote, args.budget_s, args.max_trials,
                     args.split, args.test_size, args.board_trees, args.board_depth, args.seed)
    for r in s["runs"]:
        t = r["test"]
        print(f"{r['name']:10s} trials {r['trials']:3d}  acc {t['accuracy']:.4f}  "
              f"P {t['precision']:.4f}  R {t['recall']:.4f}  F1 {t['f1']:.4f}")
    b = s["board"]
    print(f"board RF  {b['nodes']} nodes  F1 {b['test']['f1']:.4f}  C agrees {100 * b['c_agreement']:.2f} %")
    print(f"report: {out / 'report.md'}")
    return 0
