"""`python -m tools.bench` on a tiny subset writes the tables, the JSON records and the plots."""

import json
import os
import textwrap

from tools import bench


def test_bench_writes_markdown_json_and_plots(tmp_path, monkeypatch):
    # A speed module as another helper would write it, plus one that breaks.
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bench_ok.py").write_text(textwrap.dedent('''
        def bench(fast=False):
            return {"records": [{"what": "inference", "ms": 1.5, "heap_bytes": 4096}]}
    '''))
    (pkg / "bench_bad.py").write_text("def bench(fast=False):\n    raise RuntimeError('no board')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bench, "SPEED_MODULES", ("fakebench.bench_ok", "fakebench.bench_bad",
                                                 "fakebench.absent"))
    out = tmp_path / "docs"
    rc = bench.main(["--fast", "--suite", "skab,nab", "--detectors", "ms-ensemble,best",
                     "--out-dir", str(out)])
    assert rc == 0
    md = (out / "benchmarks.md").read_text()
    assert "| **ms-ensemble** | ours |" in md and "| **best** | ours |" in md
    assert "| Conv-AE | published | 0.78 | 13.55 | 28.02 |" in md
    assert "Numenta HTM" in md
    assert f"on {os.cpu_count()} × " in md   # the machine next to the tables
    assert "| inference | 1.5 | 4096 |" in md
    assert "Failed: `RuntimeError: no board`" in md
    doc = json.loads((out / "benchmarks.json").read_text())
    assert doc["machine"]["nproc"] >= 1 and doc["fast"] is True
    skab_rows = {r["detector"]: r for r in doc["records"] if r["suite"] == "skab"}
    assert {"ms-ensemble", "best", "Conv-AE"} <= set(skab_rows)
    assert 0 <= skab_rows["best"]["metrics"]["f1"] <= 1
    assert any(r["suite"] == "nab" and r["detector"] == "Numenta HTM" for r in doc["records"])
    assert any(r["suite"] == "speed" and r["detector"] == "bench_ok" for r in doc["records"])
    pngs = sorted(p.name for p in (out / "img").glob("*.png"))
    assert pngs and all(f"img/{p}" in md for p in pngs)


def _training_result(tcn_seconds=1.6, tcn_humidity=0.0723):
    rec = [{"model": m, "rmse_temperature": t, "rmse_humidity": h, "params": 1800,
            "train_seconds": s}
           for m, t, h, s in (("TCN", 0.0332, tcn_humidity, tcn_seconds), ("LSTM", 0.0333, 0.0724, 3.9),
                              ("GRU", 0.0334, 0.0725, 5.0))]
    rec.append({"model": "last value (baseline)", "rmse_temperature": 0.04, "rmse_humidity": 0.08})
    return {"records": rec, "command": "edgewatch compare ...", "convert_command": "edgewatch convert ...",
            "repeat": 3, "epochs": 10, "int8_rmse_ratio": {"temperature": 1.003, "humidity": 1.0},
            "blob_bytes": 2611,
            "seeds": {"seeds": [42, 43], "models": {
                m: {"rmse_mean": {"temperature": t, "humidity": 0.073}, "rmse_sd": {"temperature": 0.0004,
                    "humidity": 0.001}, "lowest": {"temperature": w, "humidity": 1}}
                for m, t, w in (("tcn", 0.0331, 2), ("lstm", 0.0335, 0), ("gru", 0.0336, 0))}}}


def test_training_goals_are_computed_from_the_figures():
    mach = {"nproc": 2, "cpu": "x", "system": "Linux", "python": "3.11", "date": "today"}
    md = bench.markdown({}, {"bench_training": {"result": _training_result(), "seconds": 9}}, mach,
                        "make bench", 60)
    goals = md[md.index("## Goals (issue 2)"):].split("\n\n")[2].splitlines()[2:]
    assert len(goals) == 5 and all(g.endswith("| met |") for g in goals), goals
    assert "1.60 s vs 3.90 s (0.41 ×)" in md and "2,611 B" in md and "× 1.003" in md
    assert "`edgewatch compare ...`, then `edgewatch convert ...`" in md
    assert "Over seeds 42–43" in md and "| TCN | 0.03310 ± 0.00040 | 0.07300 ± 0.00100 | 2 of 2 | 1 of 2 |" in md

    slow = "\n".join(bench.training_goals(_training_result(tcn_seconds=2.0, tcn_humidity=0.0726)))
    assert "TCN training time ≤ ½ of the LSTM's | 2.00 s vs 3.90 s (0.51 ×) | **not met** |" in slow
    assert "on every channel | temperature: TCN 0.03320" in slow and slow.count("**not met**") == 2
    assert bench.training_goals(None) == [] and bench.training_goals({"records": []}) == []
