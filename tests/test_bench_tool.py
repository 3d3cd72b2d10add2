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
