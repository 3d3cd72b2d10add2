"""The README's no-hardware commands, run for real, in the order a new user meets them.

Each command is taken from the README itself (the test fails when the README no longer
shows it) and run in a sandbox that looks like a fresh checkout: a folder whose entries
are links to this checkout's (Makefile, sources, .venv, build/) with `../shared` beside
it, and nothing of a previous run (no models/, runs/, edgewatch.db). What is changed in
a command, and why, is written beside it in RUNS; nothing else is:
- `EPOCHS=1` on the training targets (the README's 10 epochs cost minutes; the path is
  the same);
- the broker URL points at a private Mosquitto on a free port instead of 1883;
- the simulated boards stop after a few fast samples instead of 500 at one a second, and
  the README's board gh-01 is the simulated sim-01.

Every command in the README is accounted for by `test_every_readme_command_is_run_somewhere`:
run here, run for real by another test (test_docs_commands.REAL_RUNS), or needing what no test machine has (a serial port, minutes of benchmarks).
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from edgewatch.services.broker import Broker
from hostkit import service_env, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs_commands import COMMANDS, REAL_RUNS, ROOT  # noqa: E402

BIN = Path(sys.executable).parent
# checkout entries a run writes into or that belong to one machine: never linked
LOCAL = {"models", "runs", "demo-out", "edgewatch.db", "greenhouse.csv", ".env", ".git",
         "verdicts.csv", "v.csv", "gh-01.csv", "sim-01.csv", "my-history.csv"}


def readme(cmd: str) -> str:
    """`cmd` exactly as the README shows it (fails when the README no longer does)."""
    assert cmd in COMMANDS, f"the README no longer shows `{cmd}`"
    return cmd


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A fresh-looking checkout: links to this one's files, ../shared beside it."""
    top = tmp_path_factory.mktemp("readme")
    repo = top / "repo"
    repo.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in LOCAL and not entry.name.startswith((".pytest", "__pycache__")):
            (repo / entry.name).symlink_to(entry)
    (top / "shared").symlink_to((ROOT.parent / "shared").resolve())
    return repo


@pytest.fixture(scope="module")
def mq(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("mq")) as b:
        yield b


def env(mq=None) -> dict:
    # `edgewatch` on PATH as the README's set-up leaves it
    e = service_env(PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    if mq is not None:
        e["EDGEWATCH_MQTT_URL"] = f"mqtt://127.0.0.1:{mq.port}"
    return e


def run(box: Path, cmd: str, *, extra: str = "", mq=None, timeout: float = 600) -> str:
    """Run README command `cmd` (+ `extra`) in the sandbox as a shell would; its output."""
    line = f"{cmd} {extra}".strip()
    r = subprocess.run(shlex.split(line), cwd=box, env=env(mq), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"`{line}` exited {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    return r.stdout + r.stderr


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


GENERATE = ("edgewatch generate --out greenhouse.csv --days 7 --sensor dht22 "
            "--faults spike,stuck,drift,dropout,noise --seed 1")


def test_generate_train_convert_detect_as_the_readme_says(box):
    run(box, readme(GENERATE))
    data = rows(box / "greenhouse.csv")
    assert len(data) >= 7 * 1440 * 0.99  # a week a minute, less the dropouts' rows
    assert {"temperature", "humidity"} <= set(data[0])
    faulty = [r for r in data if r["anomaly"] == "1"]
    assert faulty, "the generated week carries labelled faults"

    run(box, readme("make train DATA=greenhouse.csv MODEL=models/greenhouse"), extra="EPOCHS=1")
    assert any((box / "models" / "greenhouse").iterdir())

    out = run(box, readme("make train convert"), extra="EPOCHS=1")
    blob = box / "models" / "default" / "model.ewb"
    assert blob.stat().st_size > 1000, out[-800:]

    # the user's own history: the README's my-history.csv is the generated week
    (box / "my-history.csv").write_bytes((box / "greenhouse.csv").read_bytes())
    run(box, readme("edgewatch detect --model models/default --data my-history.csv "
                    "--out verdicts.csv [--sensor dht22]").replace(" [--sensor dht22]", ""),
        extra="--sensor dht22")
    verdicts = rows(box / "verdicts.csv")
    assert len(verdicts) == len(data)
    assert "alert" in verdicts[0]
    flagged = {i for i, r in enumerate(verdicts) if r["alert"] not in ("", "0", "False")}
    hit = [i for i, r in enumerate(data) if r["anomaly"] == "1"
           and any(j in flagged for j in range(i, i + 3))]
    assert hit, "detect flags none of the labelled faults of the README's own example"


def test_collect_sim_export_analyze_detect_on_the_fleet(box, mq):
    # the model `make train convert` left in the test above (pytest runs them in order)
    assert (box / "models" / "default" / "model.ewb").exists(), "make train convert left no model"
    collector = subprocess.Popen(shlex.split(readme("edgewatch collect")), cwd=box, env=env(mq),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sim = readme('make sim DEVICES=5 BROKER=mqtt://127.0.0.1:1883 '
                     'SIM_ARGS="--samples 500 --faults spike,stuck"')
        sim = sim.replace(":1883", f":{mq.port}").replace("--samples 500", "--samples 40 --period 0.05")
        out = run(box, sim, mq=mq, timeout=300)
        assert "sim-05: " in out and "dropped=0" in out, out[-800:]
        db = box / "edgewatch.db"

        def stored():
            if not db.exists():
                return 0
            with sqlite3.connect(db) as c:
                names = [r[0] for r in c.execute("select name from sqlite_master where type='table'")]
                tel = [n for n in names if "telemetry" in n]
                return c.execute(f"select count(*) from {tel[0]}").fetchone()[0] if tel else 0

        wait_until(lambda: stored() >= 5 * 40, timeout=60, what="the sim's 200 samples stored")
    finally:
        collector.terminate()
        log = collector.communicate(timeout=30)[0]
    assert collector.returncode == 0, log[-1000:]

    # the README's board gh-01 is the simulated fleet's sim-01 here
    run(box, readme("edgewatch export --device gh-01 --out gh-01.csv").replace("gh-01", "sim-01"))
    assert len(rows(box / "sim-01.csv")) == 40

    out = run(box, readme("edgewatch analyze --data sqlite:///edgewatch.db"), timeout=300)
    assert re.search(r"(?i)isolation|k-?means|cluster", out), out[-800:]

    run(box, readme("edgewatch detect --model models/default --data sqlite:///edgewatch.db "
                    "--device gh-01 --out v.csv").replace("gh-01", "sim-01"))
    assert len(rows(box / "v.csv")) == 40


RUN_HERE = {
    GENERATE, "make train DATA=greenhouse.csv MODEL=models/greenhouse", "make train convert",
    "make train DATA=... MODEL=...", "make convert MODEL=models/default", "make convert MODEL=...",
    "edgewatch detect", "edgewatch collect", "make sim DEVICES=5", "edgewatch export",
    "edgewatch analyze", "edgewatch generate", "edgewatch train", "edgewatch convert",
    "make sim", "edgewatch sim",
}
# need what a test machine has not, or are the test run itself
NOT_RUN = {
    "make test": "the suite itself",
    "make bench": "minutes of benchmarks; its tools have their own tests (tests/devtools)",
    "make run": "a board on a serial port (deploy and repl run on the virtual board)",
    "make cluster-down": "run by test_scaling_doc's clean-up",
    "make reliability": "re-runs tests of the suite for their figures; its tool is tested in "
                        "tests/devtools/test_reliability_tool.py",
    "python -m tools.bench": "developer benchmarks, tested in tests/devtools",
    "edgewatch ...": "a placeholder for any command",
    "edgewatch <command>": "a placeholder",
    "edgewatch -v": "the verbose flag of any command",
    "edgewatch collect:": "a quoted error message",
    "edgewatch train:": "a quoted error message",
    "edgewatch 0.1.0": "the output of --version",
}


def test_every_readme_command_is_run_somewhere():
    missing = []
    for c in COMMANDS:
        if any(c.startswith(k) for k in (*RUN_HERE, *NOT_RUN)):
            continue
        if any(k in c for k in REAL_RUNS):  # test_docs_commands checks each still runs it
            continue
        missing.append(c)
    assert not missing, f"README commands no test runs: {missing}"
