"""docs/scaling.md's "Try it" commands run as written: make cluster, two collectors, two boards.

The block is run line by line by bash in a scratch folder (`make` reads the repo's
Makefile there; `setup` is this test run's own, so its stamps are not remade), then
every sample the two simulated boards sent must be in the collectors' database once.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from edgewatch.services import cluster as hc

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "scaling.md").read_text()

pytestmark = pytest.mark.skipif(not list(hc.RABBIT_LIB.glob("rabbitmq_server-*/sbin")),
                                reason="RabbitMQ is not installed (apt-get install rabbitmq-server)")


def try_it_block() -> list[str]:
    m = re.search(r"```sh cluster\n(.*?)```", DOC, re.S)
    assert m, "docs/scaling.md: no ```sh cluster block"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


def test_try_it_commands_run_from_make_cluster_to_two_collectors(tmp_path):
    lines = try_it_block()
    assert lines[1].startswith("make cluster") and lines[-1] == "make cluster-down"
    assert sum(ln.startswith("edgewatch collect") for ln in lines) == 2
    bin_dir = Path(sys.executable).parent
    script = "\n".join([
        "set -e",
        f'make() {{ command make -f "{ROOT}/Makefile" -o .venv/.stamp -o build/mplib/.stamp '
        f'EW="{bin_dir}/edgewatch" "$@"; }}',
        "mkdir -p runs",
        # on any failure: no collector or node left behind (set -e is off inside the trap)
        "trap 'set +e; jobs -p | xargs -r kill 2>/dev/null; wait; "
        "edgewatch cluster down >/dev/null 2>&1; true' EXIT",
        *lines[:-1],
        # the collectors store what the boards sent, then stop cleanly (SIGTERM)
        "sleep 3",
        "kill -TERM $(jobs -p)",
        "wait",
        lines[-1],
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEWATCH_", "MQTT_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", EDGEWATCH_CLUSTER_DIR=str(tmp_path / "cluster"),
               PYTHONPATH=str(ROOT))
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "cluster: 3 nodes up" in r.stdout and "cluster: stopped" in r.stdout
    done = re.findall(r"sim-0(\d): faults none \(clean\); 0 alerts; done samples=(\d+) alerts=0 "
                      r"sent=(\d+) outbox=0", r.stdout)
    assert len(done) == 2, r.stdout[-2000:]
    db = sqlite3.connect(tmp_path / "runs" / "cluster.db")
    for dev, _samples, sent in done:
        seqs = sorted(s for (s,) in db.execute("SELECT seq FROM telemetry WHERE device = ?",
                                               (f"sim-0{dev}",)))
        assert seqs == list(range(int(sent))), f"sim-0{dev}: {len(seqs)} of {sent} stored"
    assert not any(hc.Cluster(tmp_path / "cluster").running(i) for i in range(hc.NODES))
