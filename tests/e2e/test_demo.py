"""`make demo` as a newcomer runs it (shortened with DEMO_FAST=1): trains the default model on
generated greenhouse data, runs broker, collector, SMS dry-run bridge and simulated boards, prints
alerts for the injected faults and none for the clean board, writes the PNG and stops everything.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    model, out = base / "model", base / "out"
    r = subprocess.run(["make", "-s", "demo", "DEMO_FAST=1", f"DEMO_ARGS=--out {out} --model {model}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    return r, model, out, base


def _leftovers(path: Path) -> list[str]:
    """Processes still running whose command line names `path` (the demo must stop them all)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            found.append(f"{pid}: {cmd[:160]}")
    return found


def test_make_demo_alerts_on_faults_not_on_clean_data(demo_run):
    r, model, out, base = demo_run
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    assert (model / "model.ewb").is_file()  # trained on a fresh machine
    assert "[1/6] model: trained" in text
    assert re.search(r"\[2/6\] broker: mosquitto on mqtt://127\.0\.0\.1:\d+", text)
    # the SMS texts the bridge would send, at least one
    sms = [ln for ln in text.splitlines() if ln.strip().startswith("SMS to")]
    assert sms, text[-3000:]
    assert any("gh-02" in ln or "gh-03" in ln for ln in sms)
    assert not any("gh-01" in ln for ln in sms)
    clean = re.search(r"gh-01: (\d+) samples, (.*) \(clean data\)", text)
    assert clean and int(clean.group(1)) > 100 and clean.group(2) == "no alerts", text[-3000:]
    for dev in ("gh-02", "gh-03"):
        m = re.search(rf"{dev}: (\d+) samples, (.*) \(faults ", text)
        assert m and m.group(2) != "no alerts", text[-3000:]
        # the stuck fault freezes the whole reading: one "stuck" episode (whole reading or a
        # channel, whichever limit the calibration reaches first)
        assert re.search(r"\bstuck\b", m.group(2)) and "range/humidity" in m.group(2)
        # the spike is caught by the model's band rule, on the board, within its heap budget
        assert "band/temperature" in m.group(2), text[-3000:]
    assert "refused" not in text
    png = out / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "stopped everything" in text
    assert _leftovers(base) == []


def test_demo_reuses_the_model_and_runs_on_amqtt(demo_run, tmp_path):
    _, model, _, _ = demo_run
    if not (model / "model.ewb").is_file():
        pytest.skip("the first demo run failed; its test reports why")
    # run from another folder with a relative --out: board folders must not depend on the cwd
    r = subprocess.run([sys.executable, "-m", "edgewatch.demo", "--fast", "--broker", "amqtt",
                        "--devices", "2", "--faults", "range", "--model", str(model),
                        "--out", "out"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    assert "[1/6] model: reused" in text and "broker: amqtt" in text
    assert re.search(r"gh-01: \d+ samples, no alerts \(clean data\)", text)
    assert re.search(r"gh-02: \d+ samples, .*range/humidity", text)
    assert (tmp_path / "out" / "demo.png").is_file()
    assert _leftovers(tmp_path) == []


def test_demo_refuses_bad_options_in_one_line():
    for args, needle in ((["--devices", "1"], "at least 2"), (["--faults", "meteor"], "meteor"),
                         (["--faults", "none"], "at least one fault")):
        r = subprocess.run([sys.executable, "-m", "edgewatch.demo", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_a_relative_model_path_is_the_users_not_the_repository_roots(tmp_path, monkeypatch):
    """The steps run with cwd = the repository root: ensure_model hands them absolute paths
    resolved against the caller's folder (a demo started outside the root always failed:
    train wrote <root>/models/default, the blob check looked in ./models/default)."""
    from edgewatch import demo

    calls = []

    def fake_ew(*args, quiet=False):
        calls.append(args)
        if args[0] == "convert":  # what convert would write, where it would write it
            model = Path(args[args.index("--model") + 1])
            model.mkdir(parents=True)
            (model / "model.ewb").write_bytes(b"blob")

    monkeypatch.setattr(demo, "_ew", fake_ew)
    monkeypatch.chdir(tmp_path)
    got = demo.ensure_model("models/default", fast=True)
    assert got == tmp_path / "models" / "default" and got.is_absolute()
    paths = [a for args in calls for a in args if "/" in a]
    assert paths and all(Path(p).is_absolute() and str(p).startswith(str(tmp_path)) for p in paths), calls
    calls.clear()
    assert demo.ensure_model("models/default") == got and calls == []  # reused, nothing run
