"""systemd units, the cron line and the Airflow DAG as a server's operator meets them:
sandboxed (systemd-analyze security <= 3.0), verify-clean, retraining every three days
across month ends, one state directory and one settings file."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from edgewatch.services import retrain

ROOT = Path(__file__).resolve().parents[2]
EDGEWATCH = str(Path(sys.executable).with_name("edgewatch"))
STATE, ENV_FILE = "/var/lib/edgewatch", "/etc/edgewatch/edgewatch.env"
SERVICES = sorted({*ROOT.glob("systemd/*.service"), *ROOT.glob("deploy/**/*.service")})
TIMER = next(ROOT.glob("deploy/**/edgewatch-retrain.timer"))
CRON = next(ROOT.glob("deploy/**/edgewatch-retrain.cron"))
DAG = next(ROOT.glob("deploy/**/edgewatch_dag.py"))

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed")


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart="):])


def _runnable_copy(unit: Path, folder: Path) -> Path:
    """The unit with ExecStart's binary pointed at this checkout's (verify wants it to exist)."""
    text = unit.read_text().replace(_exec_start(unit)[0], EDGEWATCH)
    out = folder / unit.name
    out.write_text(text)
    return out


def test_every_unit_found():
    assert {u.name for u in SERVICES} == {"edgewatch-bridge.service", "edgewatch-collector.service",
                                          "edgewatch-retrain.service"}


@needs_systemd
@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_unit_sandbox_rated_at_most_3(unit):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout + r.stderr)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 3.0, r.stdout


@needs_systemd
def test_units_verify_clean(tmp_path):
    files = [str(_runnable_copy(u, tmp_path)) for u in SERVICES]
    shutil.copy(TIMER, tmp_path / TIMER.name)
    files.append(str(tmp_path / TIMER.name))
    r = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_one_state_directory_and_one_settings_file():
    for unit in SERVICES:
        text = unit.read_text()
        argv = _exec_start(unit)
        assert argv[argv.index("--env-file") + 1] == ENV_FILE, unit.name
        assert "EnvironmentFile=" not in text, unit.name  # one parser: edgewatch's own
        assert "StateDirectory=edgewatch" in text and f"WorkingDirectory={STATE}" in text
    cron = next(x for x in CRON.read_text().splitlines() if x and not x.startswith("#")
                and "=" not in x.split()[0])
    assert f"cd {STATE} &&" in cron and f"--env-file {ENV_FILE}" in cron
    src = DAG.read_text()
    assert f'"EDGEWATCH_STATE", "{STATE}"' in src and f'"EDGEWATCH_ENV_FILE", "{ENV_FILE}"' in src
    assert "$EDGEWATCH_DB_URL" not in src  # empty when the URL is only in the env file
    tree = ast.parse(src)
    assign = next(n for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", None) == "COMMANDS")
    commands = eval(compile(ast.Expression(assign.value), "dag", "eval"),
                    {"HOME": "/opt/edgewatch", "EDGEWATCH": "/opt/edgewatch/.venv/bin/edgewatch",
                     "STATE": STATE, "ENV_FILE": ENV_FILE})
    for shell in commands.values():
        assert shell.startswith(f'cd "{STATE}" && ') and f'--env-file "{ENV_FILE}"' in shell
    # the registry is the same relative path under the same directory everywhere
    retrain_cmds = [" ".join(_exec_start(u)) for u in SERVICES if "retrain" in u.name]
    for cmd in retrain_cmds + [cron, commands["retrain"]]:
        assert "--registry models/registry" in cmd


def _simulate(fire_times: list[datetime], argv: list[str], registry: Path) -> list[datetime]:
    """The runs that happen when the scheduler starts ``argv`` at each of ``fire_times``."""
    every = float(argv[argv.index("--every") + 1]) if "--every" in argv else 0.0
    runs = []
    for t in fire_times:
        go, _ = retrain.due(registry, every, now=t.timestamp())
        if go:
            retrain.record_run(registry, now=t.timestamp())
            runs.append(t)
    return runs


def _assert_every_three_days(runs: list[datetime]):
    gaps = {(b - a).days for a, b in zip(runs, runs[1:], strict=False)}
    assert gaps == {3}, [r.date().isoformat() for r in runs]


@needs_systemd
def test_timer_retrains_every_three_days_across_month_ends(tmp_path):
    cal = next(x for x in TIMER.read_text().splitlines() if x.startswith("OnCalendar="))[11:]
    r = subprocess.run(["systemd-analyze", "calendar", "--iterations=120",
                        "--base-time=2026-01-01 00:00:00", cal],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    fires = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
             for m in re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", r.stdout)]
    assert len(fires) >= 100
    service = next(u for u in SERVICES if u.name == "edgewatch-retrain.service")
    _assert_every_three_days(_simulate(fires, _exec_start(service), tmp_path / "reg"))


def _cron_fires(minute, hour, dom, month, dow, start: datetime, days: int) -> list[datetime]:
    def match(field: str, value: int) -> bool:
        if field == "*":
            return True
        if field.startswith("*/"):
            return value % int(field[2:]) == 0 if field != "*/1" else True
        return value in {int(v) for v in field.split(",")}

    out = []
    for d in range(days):
        day = datetime.fromordinal(start.toordinal() + d).replace(tzinfo=timezone.utc)
        # cron's day-of-month step counts from 1: */3 is 1,4,7,...,28,31
        dom_ok = match(dom, day.day - 1) if dom.startswith("*/") else match(dom, day.day)
        if dom_ok and match(month, day.month) and match(dow, day.isoweekday() % 7):
            out.append(day.replace(hour=int(hour), minute=int(minute)))
    return out


def test_cron_retrains_every_three_days_across_month_ends(tmp_path):
    line = next(x for x in CRON.read_text().splitlines() if x and not x.startswith("#")
                and "=" not in x.split()[0])
    minute, hour, dom, month, dow, _user, command = line.split(None, 6)
    fires = _cron_fires(minute, hour, dom, month, dow, datetime(2026, 1, 1), 120)
    argv = shlex.split(command.split("&&")[-1].split(">>")[0])
    _assert_every_three_days(_simulate(fires, argv, tmp_path / "reg"))


def test_retrain_every_skips_until_due(tmp_path, capsys):
    from edgewatch.cli import main

    reg = tmp_path / "reg"
    retrain.record_run(reg)
    rc = main(["retrain", "--data", str(tmp_path / "nothing.csv"), "--registry", str(reg),
               "--every", "3"])
    assert rc == 0
    assert '"skipped": true' in capsys.readouterr().out
    assert retrain.due(reg, 3, now=datetime.now(timezone.utc).timestamp() + 2.6 * 86400)[0]
    assert not retrain.due(reg, 3, now=datetime.now(timezone.utc).timestamp() + 2.4 * 86400)[0]
