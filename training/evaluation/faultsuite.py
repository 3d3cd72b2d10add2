"""Fault-injection suite on real indoor temperature/humidity (occupancy data, 1 sample/min).

The first ``FIT_FRACTION`` of ``datatraining.txt`` fits the detector; the rest
is the test span. Each trial injects, with ``edgewatch.training.forecast.generate.inject_faults``,
``count`` faults of every kind (spike, stuck-at, drift, dropout, noise burst)
with known start and end into a copy of the test span; the clean test span,
untouched, measures false alarms.

Metrics (event level):
- recall while present: faults with at least one alert on a row in [start, end + 1]
  (the fault's rows and the one after: a one-sample spike or a dropout, whose rows carry
  no reading, is judged on the sample that follows), per kind;
- recall before it ends (the strict column): an alert on a row the fault itself covers,
  ``[start, end)`` (a dropout's rows carry no reading: the row after it); the row after a
  drift or a stuck channel is where the reading jumps back, and an alert there flags the
  correct reading, not the fault while it happens;
- recall with grace (second column, the older figure): an alert in ``[start, end + GRACE)``;
- precision: alert episodes (alerts closer than ``MERGE`` rows form one) that
  overlap a fault's ``[start, end + GRACE)``, over all episodes of the faulty run;
- delay: rows (= minutes) from a fault's start to its first alert while present,
  median per kind;
- false alarms per day: alert episodes on the clean test span per day.

What the clean span does by itself (:func:`clean_reach`), beside every drift and stuck
fault: its longest flats (repeats of a reading, per channel and of the whole reading) and,
over each drift's length, its largest move of that channel, alone and net of the other
channel's linear part (fitted on the fit rows). A hold no longer than a flat the clean span
holds, or a drift that ends no further away than the clean span moves in as long, cannot be
told from clean data by its length or level alone: a detector that flags it flags the clean
span too (``within_clean`` per event; the recall over the others is reported beside).

A dropout whose ``mode`` is "rows" removes the rows (a gap in time: the next
reading arrives late, ``missed`` > 0); mode "nan" keeps them as failed reads.
"""

from __future__ import annotations

import time

import numpy as np
from edgewatch.training.forecast.data import load_occupancy, shared_data
from edgewatch.training.forecast.generate import FAULT_KINDS, inject_faults

FIT_FRACTION = 0.4
GRACE = 10       # rows after a fault's end that still count as catching it (a drift ends at its peak)
MERGE = 5        # alerts fewer rows apart than this are one episode
PERIOD_S = 60.0
REACH_ROWS = (30, 60, 120, 240)  # the lengths at which the clean span's moves are reported


def load_occupancy_test(fit_fraction: float = FIT_FRACTION):
    """(fit values [F, 2], test values [T, 2], channel names) from datatraining.txt."""
    s = load_occupancy(shared_data() / "occupancy" / "datatraining.txt")
    k = int(len(s) * fit_fraction)
    return s.values[:k].astype(np.float64), s.values[k:].astype(np.float64), list(s.channels)


def episodes(alert: np.ndarray, merge: int = MERGE) -> list[tuple[int, int]]:
    """Runs of alerts, bridging gaps shorter than ``merge`` rows: [(first, last), ...]."""
    idx = np.flatnonzero(alert)
    if not len(idx):
        return []
    out = []
    start = prev = int(idx[0])
    for i in idx[1:]:
        i = int(i)
        if i - prev >= merge:
            out.append((start, prev))
            start = i
        prev = i
    out.append((start, prev))
    return out


def make_trial(test: np.ndarray, names: list[str], seed: int, count: int = 2):
    """One faulty copy of the test span: (values, missed, events) in the rows the detector sees.

    Dropped rows (dropout mode "rows") are removed; the next row carries how
    many periods were missed, and every event's indices are mapped onto the
    remaining rows.
    """
    rng = np.random.default_rng(seed)
    values, _, events = inject_faults(test, list(FAULT_KINDS), rng, count=count, names=names,
                                      min_start=60, margin=60, single_stuck=True)
    for ev in events:  # how far the fault took the reading from the truth, physical units
        s, e = ev["start"], ev["end"]
        chs = [names.index(ev["channel"])] if ev["channel"] else list(range(test.shape[1]))
        if ev["kind"] == "drift":  # the ramp at its end
            ev["size"] = [float(abs(values[e - 1, j] - test[e - 1, j])) for j in chs]
        elif ev["kind"] == "stuck":  # how far the held-back truth moved while held
            ev["size"] = [float(np.max(np.abs(test[s:e, j] - test[s - 1, j]))) for j in chs]
        ev["rows"] = e - s
    keep = np.ones(len(values), dtype=bool)
    for ev in events:
        if ev["kind"] == "dropout" and ev["mode"] == "rows":
            keep[ev["start"]:ev["end"]] = False
    new_index = np.cumsum(keep) - 1          # old row -> row in the kept stream
    missed = np.zeros(len(values))
    for ev in events:
        if ev["kind"] == "dropout" and ev["mode"] == "rows":
            missed[ev["end"]] = ev["end"] - ev["start"] if ev["end"] < len(values) else 0
    mapped = []
    for ev in events:
        s, e = ev["start"], ev["end"]
        if ev["kind"] == "dropout" and ev["mode"] == "rows":
            # the fault becomes visible on the first row after the gap
            s2 = int(new_index[min(e, len(values) - 1)])
            mapped.append({**ev, "start": s2, "end": s2 + 1})
        else:
            mapped.append({**ev, "start": int(new_index[s]), "end": int(new_index[e - 1]) + 1})
    return values[keep], missed[keep], mapped


def score_events(alert: np.ndarray, events: list[dict], grace: int = GRACE) -> dict:
    """Event recall per kind (while present, and with ``grace``), delays, and episode
    precision of one faulty run."""
    alert = np.asarray(alert, dtype=bool)
    caught, delays, per_kind, log = 0, [], {}, []
    zones = np.zeros(len(alert), dtype=bool)
    for ev in events:
        s, e = ev["start"], ev["end"]  # e: the first row after the fault
        zones[s:min(len(alert), e + grace)] = True
        now = np.flatnonzero(alert[s:e + 1])
        late = np.flatnonzero(alert[s:min(len(alert), e + grace)])
        k = per_kind.setdefault(ev["kind"], {"n": 0, "present": 0, "grace": 0, "strict": 0,
                                              "delays": []})
        k["n"] += 1
        k["grace"] += int(len(late) > 0)
        strict = bool(alert[s:e + 1 if ev["kind"] == "dropout" else e].any())
        k["strict"] += int(strict)
        log.append({**ev, "present": bool(len(now)), "strict": strict})
        if len(now):
            caught += 1
            k["present"] += 1
            k["delays"].append(int(now[0]))
            delays.append(int(now[0]))
    eps = episodes(alert)
    good = sum(1 for a, b in eps if zones[a:b + 1].any())
    return {"events": len(events), "caught": caught, "delays": delays,
            "caught_grace": sum(k["grace"] for k in per_kind.values()),
            "episodes": len(eps), "true_episodes": good, "per_kind": per_kind, "log": log}


def score_labelled(source, verdicts, period_s: float = PERIOD_S) -> dict:
    """Score `edgewatch detect`'s output ``verdicts`` (CSV: its ``line`` and ``alert``
    columns) against the labelled ``source`` CSV it judged (``anomaly``/``fault`` columns, as
    `edgewatch generate --faults` writes them): per fault kind, faults caught while present
    (an alert on its rows or the row after), before it ends (on its own rows), median delay
    in rows; false-alarm episodes outside the faults (and 30 rows after each) per day."""
    import csv

    with open(source, newline="") as fh:
        src = list(csv.DictReader(fh))
    alert = np.zeros(len(src), dtype=bool)
    with open(verdicts, newline="") as fh:
        for r in csv.DictReader(fh):
            alert[int(r["line"]) - 2] = r["alert"] == "1"
    kind = [r.get("fault", "") if r.get("anomaly") == "1" else "" for r in src]
    out: dict = {}
    quiet = np.ones(len(src), dtype=bool)
    i = 0
    while i < len(src):
        if not kind[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(src) and kind[j + 1] == kind[i]:
            j += 1
        k = out.setdefault(kind[i], {"n": 0, "present": 0, "strict": 0, "delays": []})
        now = np.flatnonzero(alert[i:j + 2])
        k["n"] += 1
        k["present"] += int(len(now) > 0)
        k["strict"] += int(alert[i:j + 1].any())
        if len(now):
            k["delays"].append(int(now[0]))
        quiet[i:j + 31] = False
        i = j + 1
    days = len(src) * period_s / 86400.0
    return {"kinds": {k: {"n": v["n"], "present": v["present"], "strict": v["strict"],
                          "delay": float(np.median(v["delays"])) if v["delays"] else None}
                      for k, v in sorted(out.items())},
            "false_alarms_per_day": len(episodes(alert & quiet)) / days if days else 0.0}


def evaluate(detector_factory, trials: int = 3, count: int = 2, seed: int = 7,
             fit_fraction: float = FIT_FRACTION, limit_rows: int | None = None) -> dict:
    """Run one detector over ``trials`` faulty copies and the clean test span."""
    fit, test, names = load_occupancy_test(fit_fraction)
    if limit_rows:
        test = test[:limit_rows]
    t0 = time.perf_counter()
    clean = _alerts(detector_factory(), fit, test, names, np.zeros(len(test)))
    days = len(test) * PERIOD_S / 86400.0
    fa = len(episodes(clean))
    tot = {"events": 0, "caught": 0, "caught_grace": 0, "delays": [], "episodes": 0,
           "true_episodes": 0, "per_kind": {}}
    reach = clean_reach(fit, test, names)
    log = []
    for t in range(trials):
        values, missed, events = make_trial(test, names, seed + t, count)
        r = score_events(_alerts(detector_factory(), fit, values, names, missed), events)
        for k in ("events", "caught", "caught_grace", "episodes", "true_episodes"):
            tot[k] += r[k]
        tot["delays"] += r["delays"]
        log += [{**ev, "trial": t, "within_clean": within_clean(ev, reach)} for ev in r["log"]]
        for kind, v in r["per_kind"].items():
            pk = tot["per_kind"].setdefault(kind, {"n": 0, "present": 0, "grace": 0,
                                                   "strict": 0, "delays": []})
            for f in ("n", "present", "grace", "strict", "delays"):
                pk[f] += v[f]
    d = tot["delays"]
    pk = tot["per_kind"]
    return {
        "recall": tot["caught"] / tot["events"] if tot["events"] else 0.0,
        "recall_grace": tot["caught_grace"] / tot["events"] if tot["events"] else 0.0,
        "delay_by_kind": {k: float(np.median(v["delays"])) if v["delays"] else None
                          for k, v in sorted(pk.items())},
        "recall_grace_by_kind": {k: v["grace"] / v["n"] for k, v in sorted(pk.items())},
        "recall_strict_by_kind": {k: v["strict"] / v["n"] for k, v in sorted(pk.items())},
        "events_by_kind": {k: v["n"] for k, v in sorted(pk.items())},
        "precision": tot["true_episodes"] / tot["episodes"] if tot["episodes"] else 0.0,
        "delay_median_min": float(np.median(d)) if d else None,
        "delay_mean_min": float(np.mean(d)) if d else None,
        "false_alarms_per_day": fa / days if days else 0.0,
        # an always-on alarm is one "episode": the share of clean rows alerted keeps that honest
        "clean_alert_pct": 100.0 * float(np.mean(clean)) if len(clean) else 0.0,
        "clean_days": days,
        "events": tot["events"],
        "recall_by_kind": {k: v["present"] / v["n"] for k, v in sorted(pk.items())},
        # what the clean span does by itself, at a few lengths (the rows counted: beyond_clean)
        "clean_reach": {"flats": reach["flats"],
                        **{m: {n: {h: v[h] for h in REACH_ROWS if h < len(v)}
                               for n, v in reach[m].items()} for m in ("move", "move_net")}},
        "beyond_clean": beyond_clean(log),
        "events_log": [e for e in log if e["within_clean"] is not None],  # drift and stuck
        "seconds": time.perf_counter() - t0,
    }


def clean_reach(fit: np.ndarray, test: np.ndarray, names: list[str],
                max_rows: int = 240) -> dict:
    """What the clean span ``test`` [T, C] does by itself: its longest flats (repeats of the
    previous reading) per channel and of the whole reading, and per channel its largest move
    over h rows for h = 1..``max_rows``, alone (``move``) and net of the other channels'
    linear part (``move_net``: least squares on the fit rows' h-row changes)."""
    from edgewatch.training.export.bandcal import run_lengths

    def longest(x):
        r = run_lengths(x)
        return int(r.max()) if len(r) else 0

    c = test.shape[1]
    flats = {names[j]: longest(test[:, j]) for j in range(c)}
    # the whole reading repeats when no channel changes: one code per distinct row
    _, codes = np.unique(test, axis=0, return_inverse=True)
    flats["whole"] = longest(codes.ravel().astype(np.float64))
    move = {n: [0.0] for n in names}   # index h: over h rows (h = 0: nothing moves)
    net = {n: [0.0] for n in names}
    for h in range(1, max_rows + 1):
        dt, df = test[h:] - test[:-h], fit[h:] - fit[:-h]
        for j, n in enumerate(names):
            move[n].append(float(np.max(np.abs(dt[:, j]))) if len(dt) else 0.0)
            if c < 2 or not len(df):
                net[n].append(move[n][-1])
                continue
            others = [i for i in range(c) if i != j]
            a = np.c_[df[:, others], np.ones(len(df))]
            coef = np.linalg.lstsq(a, df[:, j], rcond=None)[0]
            res = dt[:, j] - np.c_[dt[:, others], np.ones(len(dt))] @ coef
            net[n].append(float(np.max(np.abs(res))) if len(res) else 0.0)
    return {"flats": flats, "move": move, "move_net": net}


def within_clean(ev: dict, reach: dict) -> bool | None:
    """Whether a drift or stuck fault stays within what the clean span does by itself (see
    the top): a hold no longer than the clean span's flat of its kind, or a drift whose end is
    no further than the clean span's largest move of that channel over as many rows, net of
    the other channel. None for the other kinds."""
    if ev["kind"] == "stuck":
        return ev["rows"] <= reach["flats"][ev["channel"] or "whole"]
    if ev["kind"] == "drift":
        net = reach["move_net"][ev["channel"]]
        return ev["size"][0] <= net[min(ev["rows"], len(net) - 1)]
    return None


def beyond_clean(log: list[dict]) -> dict:
    """Per kind (drift, stuck): faults, those within the clean span's own reach, and the
    recall (while present, before it ends) over the rest."""
    out = {}
    for kind in ("drift", "stuck"):
        evs = [e for e in log if e["kind"] == kind]
        rest = [e for e in evs if not e["within_clean"]]
        out[kind] = {"n": len(evs), "within": len(evs) - len(rest), "beyond": len(rest),
                     "present": sum(e["present"] for e in rest) / len(rest) if rest else None,
                     "strict": sum(e["strict"] for e in rest) / len(rest) if rest else None}
    return out


def _alerts(det, fit: np.ndarray, stream: np.ndarray, names, missed) -> np.ndarray:
    """Verdicts of a fresh detector on the fit rows followed by the stream; stream part only."""
    values = np.vstack([fit, stream])
    miss = np.concatenate([np.zeros(len(fit)), missed])
    if hasattr(det, "firmware_verdicts"):
        bv = det.firmware_verdicts(values, len(fit), names=names, missed=miss)
        verdict = np.array([bool(a) for a in bv.alerts])
    elif getattr(det, "name", "") == "best":
        verdict = np.asarray(det.run(values, len(fit), missed=miss), dtype=bool)
    else:
        verdict = np.asarray(det.run(values, len(fit)), dtype=bool)
    return verdict[len(fit):]
