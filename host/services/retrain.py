"""Retrain on recent data, approve only a better model, record it, and optionally deploy it.

One run of the second seed paper's automated pipeline:

1. **pull** the last ``--days`` of one device's telemetry from the collector's
   database (or a CSV); the device is ``--device`` or the one with the most rows;
2. **clean**: rows with a missing reading are dropped by the loader, rows the
   board itself flagged as anomalous are dropped here, so the forecaster learns
   normal behaviour; the most recent ``--holdout`` share is set aside;
3. **train** (``edgewatch.training.forecast.train``) with the deployed model's architecture, window
   and sizes, so the new blob fits the same boards, and **convert**
   (``edgewatch.training.export.convert``) to int8 TFLite and the firmware blob;
4. **evaluate** candidate and deployed model on the held-out recent slice, both
   through the TFLite Micro reference interpreter (bit-exact with the board),
   scored as RMSE in physical units divided by each channel's spread, averaged;
5. **approve** only when the candidate beats the deployed model by ``--margin``
   (5 % by default; the first model is approved when nothing is deployed), and
   record it in the registry with its metrics, data span and parent;
6. with ``--publish``, **deploy** an approved model over the air (signed, retained
   MQTT, ``edgewatch publish-model``) to ``--target`` devices or every device
   of the database, and record the deploy.

Prints one JSON summary line; exits 0 whether or not the candidate was approved,
1 when a board did not confirm (or refused) the published model.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from edgewatch.core.errors import UserError
from edgewatch.training.forecast import data as tdata
from edgewatch.training.forecast.data import db_devices, is_db
from edgewatch.training.forecast.train import DEFAULT_WINDOW

DEFAULT_REGISTRY = "models/registry"
MIN_HOLDOUT_WINDOWS = 5


def add_arguments(p) -> None:
    """Options of ``edgewatch retrain``."""
    from edgewatch.core.settings import add_mqtt_arguments

    p.add_argument("--data", help="collector database URL or CSV (env EDGEWATCH_DB_URL)")
    p.add_argument("--device", help="device whose history trains the model (default: most rows)")
    p.add_argument("--days", type=float, default=30.0, help="use the last DAYS of data (default 30)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="most recent share held out to compare the models (default 0.2)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="approve only if the holdout error drops by this share (default 0.05)")
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help=f"registry folder (default {DEFAULT_REGISTRY})")
    p.add_argument("--work", default="runs/retrain", help="scratch folder (default runs/retrain)")
    p.add_argument("--arch", default="tcn", help="architecture when nothing is deployed (default tcn)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"window when nothing is deployed (default {DEFAULT_WINDOW})")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--publish", action="store_true", help="deploy an approved model over the air")
    p.add_argument("--target", action="append", metavar="ID",
                   help="device to deploy to (repeatable; default every device in the database)")
    p.add_argument("--wait-s", type=float, default=0.0,
                   help="with --publish: wait for the boards to report the new model")
    p.add_argument("--every", type=float, default=0.0, metavar="DAYS",
                   help="do nothing unless the last completed run is DAYS old (less half a day "
                        "of slack): a daily timer or cron line then retrains every DAYS days, "
                        "month ends included (default 0: always run)")
    add_mqtt_arguments(p)


LAST_RUN = "last_run.json"


def due(registry, every_days: float, now: float | None = None) -> tuple[bool, str]:
    """Whether a run is due under ``--every``: (due, why) from ``<registry>/last_run.json``."""
    if every_days <= 0:
        return True, "every run"
    path = Path(registry) / LAST_RUN
    try:
        last = float(json.loads(path.read_text())["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return True, "no completed run recorded"
    age = ((time.time() if now is None else now) - last) / 86400.0
    # half a day of slack: a timer's randomized delay must not push a run to the next day
    if age >= every_days - 0.5:
        return True, f"last run {age:.1f} days ago"
    return False, f"last run {age:.1f} days ago; runs every {every_days:g} days"


def record_run(registry, now: float | None = None) -> None:
    from edgewatch.services.registry import write_atomic

    Path(registry).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(registry) / LAST_RUN,
                 json.dumps({"at": time.time() if now is None else now}) + "\n")


# ---------------------------------------------------------------- data


def pull(source: str, device: str | None, days: float, channels=None) -> tuple[tdata.Series, str | None]:
    """The recent, cleaned series of one device (or of a CSV) and the device id."""
    if is_db(source):
        counts = db_devices(source)
        if not counts:
            raise UserError(f"{source}: no telemetry stored yet")
        if device is None:
            device = max(sorted(counts), key=counts.get)
        elif device not in counts:
            raise UserError(f"{source}: no telemetry from device '{device}' "
                            f"(devices: {', '.join(sorted(counts))})")
    series = tdata.load(source, channels=channels, device=device)
    if days <= 0:
        raise UserError(f"--days {days}: must be positive")
    recent = series.timestamps >= series.timestamps.max() - days * 86400.0
    series = series.take(recent)
    flagged = series.labels.get("anomaly")
    if flagged is not None and flagged.dtype != object:
        keep = ~(np.asarray(flagged, float) > 0.5)
        dropped = int((~keep).sum())
        series = series.take(keep)
        series.dropped += dropped
    return series, device


def write_csv(series: tdata.Series, path: Path) -> Path:
    """A plain ``timestamp,<channels>`` CSV that ``edgewatch.training.forecast.data.load`` reads back."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp"] + list(series.channels))
        for t, row in zip(series.timestamps, series.values, strict=True):
            w.writerow([f"{t:.3f}"] + [repr(float(v)) for v in row])
    return path


# ---------------------------------------------------------------- evaluation

def predict_int8(model_dir: Path, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Physical-unit predictions of a converted model on ``values`` [N, C] through TFLM,
    as the board computes them (plus the newest sample for residual models).

    Returns ``(pred [N - window, C], window)``: prediction ``i`` is for sample ``window + i``.
    """
    from edgewatch.training.export.convert import _io_quant, dequantize, quantize, tflm_run

    cfg = json.loads((model_dir / "config.json").read_text())
    scaler = tdata.Scaler.load(model_dir / "scaler.json")
    tflite = (model_dir / "model.tflite").read_bytes()
    window = int(cfg["window"])
    x, _ = tdata.make_windows(scaler.transform(values), window)
    s_in, z_in, s_out, z_out = _io_quant(tflite)
    y = dequantize(tflm_run(tflite, quantize(x, s_in, z_in)), s_out, z_out)
    conv = model_dir / "convert.json"
    if conv.is_file() and json.loads(conv.read_text()).get("residual"):
        y = y + x[:, -1, :]  # the int8 net predicts the change; the engine adds the newest sample
    return scaler.inverse(y), window


def holdout_error(model_dir: Path, hold: tdata.Series, start: int) -> dict:
    """Error of a model on the held-out samples from index ``start`` on.

    ``score`` = mean over channels of RMSE / std of the channel on the holdout,
    so channels in different units weigh the same.
    """
    pred, window = predict_int8(model_dir, hold.values)
    target = hold.values[window:].astype(np.float64)
    k = start - window
    pred, target = pred[k:], target[k:]
    rmse = np.sqrt(np.mean((pred - target) ** 2, axis=0))
    spread = hold.values[start:].astype(np.float64).std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    return {"score": float(np.mean(rmse / spread)), "windows": len(target),
            "rmse": dict(zip(hold.channels, map(float, rmse), strict=True))}


# ---------------------------------------------------------------- the pipeline

def retrain(source: str, registry, work, device: str | None = None, days: float = 30.0,
            holdout: float = 0.2, margin: float = 0.05, arch: str = "tcn", window: int = DEFAULT_WINDOW,
            epochs: int = 10, seed: int = 42) -> dict:
    """Pull, clean, train, convert, evaluate against the deployed model, approve, record.

    Returns the summary (``approved``, ``entry`` id, ``model_id``, scores, ...).
    """
    from edgewatch.services.registry import Registry, content_id
    from edgewatch.training.export import convert as tconvert
    from edgewatch.training.forecast import train as ttrain

    if not 0.05 <= holdout <= 0.5:
        raise UserError(f"--holdout {holdout}: must be within 0.05..0.5")
    if not 0 <= margin < 1:
        raise UserError(f"--margin {margin}: must be within 0..1")
    reg = Registry(registry)
    deployed = None
    series, device = pull(source, device, days)
    deployed = reg.deployed(device) if device else reg.deployed()
    channels = None
    sizes = None
    if deployed is not None:
        cfg = json.loads((deployed.path / "config.json").read_text())
        arch, window, sizes, channels = cfg["arch"], int(cfg["window"]), cfg.get("sizes"), cfg["channels"]
        if not (deployed.path / "model.tflite").is_file():
            raise UserError(f"{deployed.path}: deployed model has no model.tflite to compare against")
        missing = [c for c in channels if c not in series.channels]
        if missing:
            raise UserError(f"{series.source}: the deployed model {deployed.id} needs channels "
                            f"{', '.join(missing)}, not in the data")
        series = series.select(channels)

    n = len(series)
    cut = tdata.split_index(n, 1 - holdout)
    if n - cut < window + MIN_HOLDOUT_WINDOWS:
        raise UserError(f"{series.source}: {n} usable recent rows leave {n - cut} for the holdout; "
                        f"need {window + MIN_HOLDOUT_WINDOWS} (more data or a larger --days)")
    work = Path(work)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    run_dir = work / stamp
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    train_csv = write_csv(series.take(slice(0, cut)), run_dir / "train.csv")
    # The holdout keeps `window` samples of context before its first scored sample.
    hold = series.take(slice(cut - window, n))
    write_csv(hold, run_dir / "holdout.csv")

    train_series = tdata.load(str(train_csv))
    tdata.require_rows(train_series, window)
    metrics = ttrain.train(train_series, arch, epochs, window, model_dir, seed=seed, sizes=sizes,
                           plots=False)
    conv = tconvert.convert(model_dir, data=str(train_csv))
    if not (model_dir / "model.ewb").is_file():
        raise UserError(f"{model_dir}: the {arch} model cannot be run by the board engine "
                        f"({conv.get('blob_skipped')}); use --arch tcn")
    blob = (model_dir / "model.ewb").read_bytes()

    cand = holdout_error(model_dir, hold, window)
    old = holdout_error(deployed.path, hold, window) if deployed else None
    if old is None:
        approved, why = True, "first model: nothing deployed to compare against"
    else:
        gain = 1 - cand["score"] / old["score"] if old["score"] > 0 else 0.0
        approved = cand["score"] <= old["score"] * (1 - margin)
        why = ("identical to the deployed model; " if content_id(blob) == deployed.id else "") + (
               f"holdout error {cand['score']:.4f} vs deployed {old['score']:.4f} "
               f"({100 * gain:+.1f} %, margin {100 * margin:g} %)")
    span = {"source": series.source, "device": device, "start": float(series.timestamps[0]),
            "end": float(series.timestamps[-1]), "rows": n, "train_rows": cut,
            "holdout_rows": n - cut, "dropped": int(series.dropped)}
    entry = reg.add(blob, metrics={"holdout": cand, "deployed_holdout": old,
                                   "rmse_val": metrics["rmse"], "tflite_bytes": conv["tflite_bytes"],
                                   "blob_bytes": conv.get("blob_bytes")},
                    data=span, parent=deployed.id if deployed else None, approved=approved,
                    model_id=conv.get("model_id"), note=why,
                    files=[model_dir / f for f in ("config.json", "scaler.json", "metrics.json",
                                                   "convert.json", "model.tflite")])
    return {"approved": approved, "reason": why, "entry": entry.id, "model_id": conv.get("model_id"),
            "parent": deployed.id if deployed else None, "device": device, "candidate": cand,
            "deployed": old, "data": span, "model_dir": str(model_dir)}


def run(args) -> int:
    """``edgewatch retrain``: one pipeline run; with --publish, deploy an approved model."""
    from edgewatch.core.settings import env, load_env

    load_env(getattr(args, "env_file", None))
    source = args.data or env("EDGEWATCH_DB_URL")
    if not source:
        raise UserError("--data is required (or EDGEWATCH_DB_URL): the collector database or a CSV")
    if args.epochs < 1 or args.window < 1:
        raise UserError("--epochs and --window must be >= 1")
    if args.every < 0:
        raise UserError(f"--every {args.every:g}: must be >= 0 days")
    go, why = due(args.registry, args.every)
    if not go:
        print(json.dumps({"skipped": True, "reason": why}))
        return 0
    key = None
    if args.publish:
        from edgewatch.services.ota import fleet_key

        key = fleet_key()  # fail before training, not after
    summary = retrain(source, args.registry, args.work, args.device, args.days, args.holdout,
                      args.margin, args.arch, args.window, args.epochs, args.seed)
    record_run(args.registry)
    if args.publish and summary["approved"]:
        from edgewatch.core.settings import mqtt_settings
        from edgewatch.services.ota import publish_model
        from edgewatch.services.registry import Registry

        targets = args.target or (sorted(db_devices(source)) if is_db(source) else None)
        if not targets:
            raise UserError("--publish from a CSV needs --target DEVICE")
        reg = Registry(args.registry)
        entry = reg.get(summary["entry"])
        _, result = publish_model(mqtt_settings(args), targets, entry.blob(), key, args.wait_s)
        for d, outcome in result.items():
            if outcome in ("ok", "published"):
                reg.mark_deployed(entry.id, d)
        summary["published"] = result
    print(json.dumps({k: summary[k] for k in ("approved", "reason", "entry", "model_id", "parent",
                                              "device") + (("published",) if "published" in summary else ())}))
    # A deploy that a board did not confirm (or refused) must show in cron/systemd/Airflow.
    return 0 if all(o in ("ok", "published") for o in summary.get("published", {}).values()) else 1
