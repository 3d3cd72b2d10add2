"""Find and explain unusual stretches in what the sensors recorded (Isolation Forest + K-means).

The second seed paper's analysis, for any number of channels: an Isolation
Forest (anomaly rate ``--contamination``, 5 % by default, fitted on a random
70 % of the rows as in the paper) marks every row normal or abnormal; K-means
(``--clusters``, 4 by default) then groups the abnormal rows so each group can
be read as one kind of event. The report (Markdown + PNGs in ``--out``) has the
paper's figures: normal vs abnormal scatter, mean feature values abnormal vs
normal, the clusters, per-cluster means vs normal, and box plots of the
features that set each cluster apart. ``summary.json`` holds the numbers.

Sources are CSV files, folders of CSV files (SKAB's ``valve1/`` ...) or the
collector's database (``sqlite:///telemetry.db`` with ``--device``). When the
data carry an ``anomaly`` label (SKAB), the report also scores the Isolation
Forest against it, on the same footing as SKAB's published leaderboard row.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from edgewatch.core.errors import UserError
from edgewatch.training.forecast import data as tdata

# Rows plotted per scatter: enough to see the shape, small enough for a small PNG.
PLOT_POINTS = 2500
# Box plots show this many most-different features per cluster (the paper shows two).
BOX_FEATURES = 2
MIN_ROWS = 20


def add_arguments(p) -> None:
    """Options of ``edgewatch analyze``."""
    p.add_argument("--data", nargs="+", required=True, metavar="SRC",
                   help="CSV file(s), folder(s) of CSV files, or a database URL "
                        "(sqlite:///telemetry.db, postgresql://...)")
    p.add_argument("--device", help="device id when reading the collector's database")
    p.add_argument("--channels", help="comma-separated channels (default: every numeric column)")
    p.add_argument("--contamination", type=float, default=0.05,
                   help="expected share of abnormal rows for the Isolation Forest (default 0.05)")
    p.add_argument("--clusters", type=int, default=4, help="K-means clusters over the anomalies (default 4)")
    p.add_argument("--max-rows", type=int, default=0,
                   help="analyse a random subset of this many rows (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="runs/analyze", help="report folder (default runs/analyze)")


# ---------------------------------------------------------------- loading

def _expand(sources: list[str]) -> list[str]:
    """Folders become their CSV files (sorted, recursive); other sources pass through."""
    out = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files = sorted(p.rglob("*.csv"), key=lambda f: (str(f.parent), _natural(f.stem)))
            if not files:
                raise UserError(f"{s}: folder holds no .csv files")
            out += [str(f) for f in files]
        else:
            out.append(s)
    return out


def _per_device(sources: list[str], device: str | None) -> list[tuple[str, str | None]]:
    """(source, device) pairs: a database without ``--device`` stands for all its devices."""
    from edgewatch.training.forecast.data import db_devices, is_db

    out = []
    for s in sources:
        if is_db(s) and device is None and "device=" not in s:
            out += [(s, d) for d in sorted(db_devices(s))] or [(s, None)]
        else:
            out.append((s, device))
    return out


def _natural(stem: str):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def load_many(sources: list[str], channels=None, device: str | None = None,
              need_label: str | None = None) -> tdata.Series:
    """Load and concatenate several sources that share their channels.

    A database URL without ``device`` contributes every device it holds.

    Files lacking ``need_label`` (SKAB's anomaly-free file) are skipped when a
    label is needed; a file whose channels differ from the first is refused.
    """
    files = _expand(sources)
    parts: list[tdata.Series] = []
    for f, dev in _per_device(files, device):
        s = tdata.load(f, channels=channels, device=dev)
        if need_label and need_label not in s.labels:
            if len(files) == 1:
                raise UserError(f"{f} line 1: no '{need_label}' label column")
            continue
        if parts and s.channels != parts[0].channels:
            raise UserError(f"{f} line 1: channels {', '.join(s.channels)} differ from "
                            f"{parts[0].source}'s ({', '.join(parts[0].channels)})")
        parts.append(s)
    if not parts:
        raise UserError(f"{sources[0]}: no file with a '{need_label}' label column")
    if len(parts) == 1:
        return parts[0]
    labels = {k: np.concatenate([p.labels[k] for p in parts])
              for k in parts[0].labels if all(k in p.labels for p in parts)}
    first = parts[0]
    return replace(
        first,
        timestamps=np.concatenate([p.timestamps for p in parts]),
        values=np.concatenate([p.values for p in parts]),
        lines=np.concatenate([p.lines for p in parts]),
        labels=labels,
        dropped=sum(p.dropped for p in parts),
        source=f"{first.source} (+{len(parts) - 1} more)",
    )


# ---------------------------------------------------------------- the analysis

def analyze(values: np.ndarray, contamination: float = 0.05, clusters: int = 4,
            seed: int = 0) -> dict:
    """Isolation Forest over ``values`` [N, C], then K-means over its anomalies.

    Returns arrays ``abnormal`` (bool [N]), ``cluster`` (int [N], -1 for normal
    rows), ``z`` (standardised values), ``score`` (higher = more abnormal) and
    the fitted ``k``.
    """
    from sklearn.cluster import KMeans
    from sklearn.ensemble import IsolationForest

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    rng = np.random.default_rng(seed)
    train = rng.permutation(n)[: max(1, int(round(0.7 * n)))]  # the paper's 7:3
    forest = IsolationForest(contamination=contamination, random_state=seed, n_estimators=100)
    forest.fit(x[train])
    abnormal = forest.predict(x) == -1
    score = -forest.score_samples(x)

    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    cluster = np.full(n, -1, dtype=np.int64)
    k = int(min(clusters, abnormal.sum()))
    if k >= 1:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed)
        cluster[abnormal] = km.fit_predict(z[abnormal])
    return {"abnormal": abnormal, "cluster": cluster, "z": z, "score": score, "k": k}


def label_scores(abnormal: np.ndarray, label: np.ndarray) -> dict:
    """F1, FAR and MAR of ``abnormal`` against a 0/1 label (SKAB's leaderboard metrics)."""
    y = np.asarray(label, dtype=float) > 0.5
    tp = int((abnormal & y).sum())
    fp = int((abnormal & ~y).sum())
    fn = int((~abnormal & y).sum())
    tn = int((~abnormal & ~y).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "f1": f1,
            "far": fp / (fp + tn) if fp + tn else 0.0,
            "mar": fn / (fn + tp) if fn + tp else 0.0}


def _most_different(z: np.ndarray, normal: np.ndarray, members: np.ndarray, top: int) -> list[int]:
    """Channels whose cluster mean lies furthest from the normal mean, in normal std units."""
    sd = z[normal].std(axis=0) if normal.any() else np.ones(z.shape[1])
    base = z[normal].mean(axis=0) if normal.any() else np.zeros(z.shape[1])
    d = np.abs(z[members].mean(axis=0) - base) / np.where(sd > 0, sd, 1.0)
    return [int(i) for i in np.argsort(-d)[:top]]


# ---------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _projection(z: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """2-D view of any number of channels: the channels themselves for 2, else PCA."""
    if z.shape[1] == 1:
        return np.column_stack([np.arange(len(z)), z[:, 0]]), ["row", "channel (z)"]
    if z.shape[1] == 2:
        return z, ["channel 1 (z)", "channel 2 (z)"]
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed).fit(z)
    var = pca.explained_variance_ratio_ * 100
    return pca.transform(z), [f"PC1 ({var[0]:.0f} %)", f"PC2 ({var[1]:.0f} %)"]


def _sample(mask: np.ndarray, rng, limit: int = PLOT_POINTS) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return idx if len(idx) <= limit else np.sort(rng.choice(idx, limit, replace=False))


def _bars(ax, names: list[str], groups: list[tuple[str, np.ndarray, str | None]]) -> None:
    width = 0.8 / len(groups)
    pos = np.arange(len(names))
    for i, (label, vals, color) in enumerate(groups):
        ax.bar(pos + (i - (len(groups) - 1) / 2) * width, vals, width, label=label, color=color)
    ax.set_xticks(pos, names, rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("mean (standardised)")
    ax.legend(fontsize=8)


def figures(out: Path, channels: list[str], res: dict, seed: int) -> dict[str, str]:
    """Write the report's PNGs; returns figure key -> file name."""
    plt = _plt()
    z, abnormal, cluster, k = res["z"], res["abnormal"], res["cluster"], res["k"]
    normal = ~abnormal
    rng = np.random.default_rng(seed)
    xy, axes_names = _projection(z, seed)
    files = {}

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for mask, label, color in ((normal, "normal", "tab:blue"), (abnormal, "abnormal", "tab:red")):
        idx = _sample(mask, rng)
        ax.scatter(xy[idx, 0], xy[idx, 1], s=4, alpha=0.5, color=color,
                   label=f"{label} ({int(mask.sum())})")
    ax.set_xlabel(axes_names[0])
    ax.set_ylabel(axes_names[1])
    ax.set_title("Isolation Forest: normal vs abnormal")
    ax.legend(markerscale=3)
    files["scatter"] = _save(fig, out / "scatter.png", plt)

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(channels) + 2), 4))
    _bars(ax, channels, [("abnormal", z[abnormal].mean(axis=0) if abnormal.any() else 0 * z[0], "tab:red"),
                         ("normal", z[normal].mean(axis=0), "tab:blue")])
    ax.set_title("Mean feature values: abnormal vs normal")
    files["means"] = _save(fig, out / "means.png", plt)

    if k < 1:
        return files
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for c in range(k):
        idx = _sample(cluster == c, rng)
        ax.scatter(xy[idx, 0], xy[idx, 1], s=6, alpha=0.7, color=colors(c % 10),
                   label=f"cluster {c} ({int((cluster == c).sum())})")
    ax.set_xlabel(axes_names[0])
    ax.set_ylabel(axes_names[1])
    ax.set_title(f"K-means (k={k}) over the anomalies")
    ax.legend(markerscale=3, fontsize=8)
    files["clusters"] = _save(fig, out / "clusters.png", plt)

    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(channels) + 2), 4))
    groups = [(f"cluster {c}", z[cluster == c].mean(axis=0), colors(c % 10)) for c in range(k)]
    groups.append(("normal", z[normal].mean(axis=0), "black"))
    _bars(ax, channels, groups)
    ax.set_title("Mean feature values of each cluster and normal")
    files["cluster_means"] = _save(fig, out / "cluster_means.png", plt)

    top = min(BOX_FEATURES, len(channels))
    fig, axs = plt.subplots(k, top, figsize=(3 * top + 0.5, 2.4 * k), squeeze=False)
    raw = res["raw"]
    for c in range(k):
        for j, ch in enumerate(res["different"][c][:top]):
            ax = axs[c][j]
            ax.boxplot([raw[cluster == c, ch], raw[normal, ch]], showfliers=False)
            ax.set_xticks([1, 2], [f"cluster {c}", "normal"], fontsize=8)
            ax.set_title(channels[ch], fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Most different features per cluster vs normal", fontsize=10)
    files["boxplots"] = _save(fig, out / "boxplots.png", plt)
    return files


def _save(fig, path: Path, plt) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------- report

def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def report(series: tdata.Series, res: dict, files: dict, params: dict) -> tuple[str, dict]:
    """The Markdown report and the JSON summary."""
    ch = series.channels
    raw, abnormal, cluster, k = res["raw"], res["abnormal"], res["cluster"], res["k"]
    normal = ~abnormal
    normal_mean = raw[normal].mean(axis=0)
    abnormal_mean = raw[abnormal].mean(axis=0) if abnormal.any() else np.full(len(ch), np.nan)
    label = series.labels.get("anomaly")
    if label is None or label.dtype == object or not (label > 0.5).any():
        label = None  # no labels, or only the boards' own all-clear verdicts
    clusters = []
    for c in range(k):
        m = cluster == c
        clusters.append({"cluster": c, "rows": int(m.sum()),
                         "mean": [float(v) for v in raw[m].mean(axis=0)],
                         "most_different": [ch[i] for i in res["different"][c]]})
        if label is not None:
            clusters[-1]["labelled_anomalous"] = float((label[m] > 0.5).mean())
    summary = {
        "source": series.source, "rows": len(series), "dropped": series.dropped,
        "channels": ch, **params,
        "normal": int(normal.sum()), "abnormal": int(abnormal.sum()),
        "normal_mean": [float(v) for v in normal_mean],
        "abnormal_mean": [float(v) for v in abnormal_mean],
        "clusters": clusters, "figures": files,
    }
    if label is not None:
        summary["vs_label"] = label_scores(abnormal, label)

    md = [f"# Anomaly analysis of {series.source}", "",
          f"{len(series)} rows ({series.dropped} dropped for missing readings), "
          f"{len(ch)} channels: {', '.join(ch)}.", "",
          f"Isolation Forest (contamination {params['contamination']:g}, fitted on a random 70 %, "
          f"seed {params['seed']}): **{int(abnormal.sum())} abnormal** and "
          f"{int(normal.sum())} normal rows.", ""]
    if "vs_label" in summary:
        s = summary["vs_label"]
        md += ["Against the data's own `anomaly` label (SKAB's leaderboard metrics over all rows):", "",
               _table(["F1", "FAR %", "MAR %", "TP", "FP", "FN", "TN"],
                      [[s["f1"], 100 * s["far"], 100 * s["mar"], s["tp"], s["fp"], s["fn"], s["tn"]]]),
               ""]
    md += ["## Normal vs abnormal", "", f"![normal vs abnormal]({files['scatter']})", "",
           "## Mean feature values, abnormal vs normal", "", f"![means]({files['means']})", "",
           _table(["channel", "normal mean", "abnormal mean"],
                  [[c, float(a), float(b)] for c, a, b in zip(ch, normal_mean, abnormal_mean, strict=True)]), ""]
    if k:
        md += [f"## K-means over the anomalies (k={k})", "", f"![clusters]({files['clusters']})", "",
               _table(["cluster", "rows", "most different from normal (top 3)"]
                      + (["labelled anomalous %"] if label is not None else []),
                      [[c["cluster"], c["rows"], ", ".join(c["most_different"][:3])]
                       + ([round(100 * c["labelled_anomalous"], 1)] if label is not None else [])
                       for c in clusters]),
               "", "## Mean feature values per cluster and normal", "",
               f"![cluster means]({files['cluster_means']})", "",
               _table(["channel", "normal"] + [f"cluster {c}" for c in range(k)],
                      [[name, float(normal_mean[i])] + [c["mean"][i] for c in clusters]
                       for i, name in enumerate(ch)]), "",
               "## Most different features per cluster", "", f"![box plots]({files['boxplots']})", ""]
    return "\n".join(md), summary


def run_analysis(series: tdata.Series, out: Path, contamination: float = 0.05,
                 clusters: int = 4, seed: int = 0) -> dict:
    """Analyse ``series`` and write ``report.md``, PNGs and ``summary.json`` into ``out``."""
    if not 0 < contamination <= 0.5:
        raise UserError(f"--contamination {contamination}: must be in (0, 0.5]")
    if clusters < 1:
        raise UserError(f"--clusters {clusters}: must be at least 1")
    if len(series) < MIN_ROWS:
        raise UserError(f"{series.source}: only {len(series)} usable rows; need at least {MIN_ROWS}")
    res = analyze(series.values, contamination, clusters, seed)
    res["raw"] = series.values.astype(np.float64)
    normal = ~res["abnormal"]
    res["different"] = [_most_different(res["z"], normal, res["cluster"] == c, len(series.channels))
                        for c in range(res["k"])]
    out.mkdir(parents=True, exist_ok=True)
    files = figures(out, series.channels, res, seed)
    md, summary = report(series, res, files,
                         {"contamination": contamination, "k": res["k"], "seed": seed})
    (out / "report.md").write_text(md)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(args) -> int:
    """``edgewatch analyze``: load, analyse, write the report."""
    series = load_many(args.data, channels=args.channels, device=args.device)
    if args.max_rows and args.max_rows < len(series):
        if args.max_rows < MIN_ROWS:
            raise UserError(f"--max-rows {args.max_rows}: need at least {MIN_ROWS}")
        idx = np.sort(np.random.default_rng(args.seed).choice(len(series), args.max_rows, replace=False))
        series = series.take(idx)
    out = Path(args.out)
    s = run_analysis(series, out, args.contamination, args.clusters, args.seed)
    line = (f"{s['rows']} rows, {len(s['channels'])} channels: {s['abnormal']} abnormal, "
            f"clusters {[c['rows'] for c in s['clusters']]}")
    if "vs_label" in s:
        line += f"; vs label F1 {s['vs_label']['f1']:.3f}"
    print(f"{line}\nreport: {out / 'report.md'}")
    return 0
