"""Benchmark detectors: SKAB leaderboard protocol, NAB temperature files, fault-injection suite.

Every detector keeps one configuration across all files and suites (see
training/evaluation/detectors.py). ``--fast`` runs a small subset (a few SKAB files,
fewer epochs, one short fault trial) for tests and quick checks; the full
numbers come from ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from edgewatch.core import firmware
from edgewatch.core.errors import UserError
from edgewatch.training.evaluation import detectors, faultsuite, nab, skab

SUITES = ("skab", "nab", "faults")
# Forecasters and the board are far slower than the rest: the fast subset keeps them small.
FAST = {"skab_files": 3, "fault_trials": 1, "fault_rows": 2500}


def parse_detectors(text: str | None) -> list[str]:
    """Comma list of detector names (default: all)."""
    if not text or text == "all":
        return list(detectors.NAMES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in detectors.NAMES]
    if bad:
        raise UserError(f"--detectors: unknown '{bad[0]}' (choose from {', '.join(detectors.NAMES)})")
    return names


def parse_suites(text: str | None) -> list[str]:
    """One suite name or ``all``."""
    if not text or text == "all":
        return list(SUITES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SUITES]
    if bad:
        raise UserError(f"--suite: unknown '{bad[0]}' (choose from {', '.join(SUITES)}, all)")
    return names


def _factory(name: str, fast: bool, **kw):
    def make():
        det = detectors.make(name, fast=fast)
        for k, v in kw.items():
            setattr(det, k, v)
        return det
    return make


def run_skab(names: list[str], fast: bool = False, files=None, keep: tuple[str, ...] = ()) -> dict:
    """SKAB F1/FAR/MAR per detector (test rows of every file concatenated)."""
    files = files or skab.load_files(limit=FAST["skab_files"] if fast else None)
    out = {}
    for n in names:
        _log(f"skab  {n:12s} running on {len(files)} files ...")
        # SKAB scores rows point-wise: every flagged row counts (not only alert messages)
        kw = {"count": "flags"} if n in ("board", "baseline") else {}
        r = skab.evaluate(_factory(n, fast, **kw), files, keep=keep)
        out[n] = {k: r[k] for k in ("f1", "far", "mar", "tp", "fp", "fn", "tn", "files", "seconds",
                                    "whole_file", "per_file", "kept")}
        _log(f"skab  {n:12s} F1 {r['f1']:.3f}  FAR {r['far']:6.2f} %  MAR {r['mar']:6.2f} %  "
             f"({r['files']} files, {r['seconds']:.1f} s)")
    return out


def _nab_total(per_file: dict) -> dict:
    """Sum raw / null / perfect over files and normalise, per profile."""
    out = {}
    for prof in nab.PROFILES:
        raw = sum(f[prof]["raw"] for f in per_file.values())
        null = sum(f[prof]["null"] for f in per_file.values())
        perfect = sum(f[prof]["perfect"] for f in per_file.values())
        out[prof] = {"raw": raw, "normalised": nab.normalised(raw, null, perfect),
                     "tp": sum(f[prof]["tp"] for f in per_file.values()),
                     "fp": sum(f[prof]["fp"] for f in per_file.values())}
    return out


def nab_anchors() -> dict:
    """The published HTM and Windowed Gaussian scores on the two files, scored by our scorer
    at NAB's standard-profile threshold."""
    out = {}
    for det, label in (("numenta", "Numenta HTM"), ("windowedGaussian", "Windowed Gaussian")):
        per_file = {}
        for name in nab.FILES:
            pub = nab.load_published(det, name)
            per_file[name] = nab.evaluate_detections(
                name, pub["anomaly_score"] >= pub["threshold"])
        out[label] = {"per_file": per_file, **_nab_total(per_file)}
    return out


def run_nab(names: list[str], fast: bool = False) -> dict:
    """NAB raw and normalised scores per detector on the two temperature files.

    Each detector fits on the probationary rows (first 15 %, at most 750) and
    gives a verdict for every row; the scorer ignores the probationary rows.
    A detection is the onset of an alert episode (a 0 -> 1 step of the verdict).
    """
    out = {}
    data = {name: nab.load_file(name) for name in nab.FILES}
    for n in names:
        _log(f"nab   {n:12s} running on {len(data)} files ...")
        t0 = time.perf_counter()
        per_file, kept = {}, {}
        for name, (ts, vals) in data.items():
            n_fit = int(math.ceil(nab.probation_length(len(ts))))
            det = detectors.make(n, fast=fast)
            verdict = np.asarray(det.run(vals[:, None], n_fit), dtype=bool)
            # An operator is alarmed once per alert episode: only onsets count as detections.
            onsets = verdict & ~np.concatenate([[False], verdict[:-1]])
            per_file[name] = nab.evaluate_detections(name, onsets)
            kept[name] = verdict
        out[n] = {"per_file": per_file, **_nab_total(per_file),
                  "seconds": time.perf_counter() - t0, "kept": kept}
        _log(f"nab   {n:12s} standard {out[n]['standard']['normalised']:6.1f}  "
             f"low_FP {out[n]['reward_low_FP_rate']['normalised']:6.1f}  "
             f"low_FN {out[n]['reward_low_FN_rate']['normalised']:6.1f}  "
             f"({out[n]['seconds']:.1f} s)")
    return out


def run_faults(names: list[str], fast: bool = False) -> dict:
    """Fault suite per detector; the board runs every firmware rule (band, stuck, range, dropout, read)."""
    out = {}
    trials = FAST["fault_trials"] if fast else 3
    rows = FAST["fault_rows"] if fast else None
    for n in names:
        kw = {"rules": "all", "limits": list(firmware.load("sensors").RANGES["dht22"])} \
            if n == "board" else {}
        _log(f"fault {n:12s} running {trials} trials per fault kind ...")
        r = faultsuite.evaluate(_factory(n, fast, **kw), trials=trials, limit_rows=rows)
        out[n] = r
        _log(f"fault {n:12s} recall {r['recall']:.2f}  precision {r['precision']:.2f}  "
             f"FA/day {r['false_alarms_per_day']:.2f}  clean alerted {r['clean_alert_pct']:.1f} %  "
             f"delay {r['delay_median_min']} min  ({r['seconds']:.1f} s)")
    return out


def evaluate(suites: list[str], names: list[str], fast: bool = False,
             keep: tuple[str, ...] = ()) -> dict:
    """Run the chosen suites; the dict bench.py turns into docs/benchmarks.*."""
    res: dict = {"fast": fast, "detectors": {n: _describe(n) for n in names}}
    if "skab" in suites:
        res["skab"] = run_skab(names, fast, keep=keep)
    if "nab" in suites:
        res["nab"] = run_nab(names, fast)
        res["nab_anchors"] = nab_anchors()
    if "faults" in suites:
        res["faults"] = run_faults(names, fast)
    return res


def _describe(name: str) -> dict:
    d = detectors.make(name)
    return {"description": d.description, "on_board": d.on_board}


def _log(msg: str) -> None:
    print(msg, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `edgewatch evaluate`."""
    p.add_argument("--suite", default="all", help="skab, nab, faults or all (default)")
    p.add_argument("--detectors", default="all",
                   help=f"comma list of {','.join(detectors.NAMES)} (default: all)")
    p.add_argument("--fast", action="store_true", help="small subset: a few files, fewer epochs")
    p.add_argument("--out", help="also write the results as JSON to this file")


def run(args) -> int:
    """Run the suites and print one line per suite × detector."""
    suites = parse_suites(args.suite)
    names = parse_detectors(args.detectors)
    out = Path(args.out) if args.out else None
    if out is not None:  # before the run, not after it
        if not out.parent.is_dir():
            raise UserError(f"--out: folder {out.parent} does not exist")
        if out.is_dir() or not os.access(out.parent, os.W_OK):
            raise UserError(f"--out {out}: cannot write a file there")
    res = evaluate(suites, names, fast=args.fast)
    for suite in ("skab", "nab"):
        for r in res.get(suite, {}).values():
            r.pop("kept", None)
    text = json.dumps(res, indent=1, default=float)
    if out is not None:
        try:
            out.write_text(text + "\n")
        except OSError as exc:
            raise UserError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return 0
