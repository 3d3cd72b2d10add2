"""tools/reliability.py (`make reliability`): the figures it writes come from real runs."""

from __future__ import annotations

import json

from tools import reliability


def test_poison_throughput_stores_every_valid_message_and_writes_the_page(tmp_path, monkeypatch):
    monkeypatch.setattr(reliability, "ROUNDS", 1)
    r = reliability.poison_throughput(400)
    assert r["clean_messages"] == r["poison_messages"] == 400
    assert r["clean_stored"] == r["clean_expected"] == 400
    # 4 of 400 are poison: every valid one stored, none of the poison
    assert r["poison_expected"] == 396 and r["poison_stored"] == 396
    assert r["poison_over_clean"] == round(r["poison_msgs_per_s"] / r["clean_msgs_per_s"], 3)
    results = {"tests/e2e/test_epochs.py::test_a": ("passed", 1.5),
               "tests/e2e/test_epochs.py::test_b": ("FAILED", 2.0)}
    figures = [{"test": "tests/e2e/test_epochs.py::test_a", "name": "samples not stored",
                "value": 0}]
    page = reliability.write(tmp_path, results, figures, 3.5, {"SQLite": r}, "make reliability")
    text = page.read_text()
    assert "Tests: 1 passed of 2" in text and "| FAILED |" in text
    assert "samples not stored: 0" in text
    assert f"**{r['poison_over_clean']:.2f}**" in text
    assert "not run" in text  # a case whose tests did not run says so, it is not left out
    assert json.loads((tmp_path / "reliability.json").read_text())["poison"]["SQLite"] == r


def test_figures_are_recorded_only_when_asked(tmp_path, monkeypatch):
    from figures import record

    out = tmp_path / "f.jsonl"
    monkeypatch.delenv("EDGEWATCH_FIGURES", raising=False)
    record("x", 1)
    assert not out.exists()
    monkeypatch.setenv("EDGEWATCH_FIGURES", str(out))
    record("lost", 0)
    rec = json.loads(out.read_text())
    assert rec["name"] == "lost" and rec["value"] == 0
    assert rec["test"].endswith("test_figures_are_recorded_only_when_asked")
