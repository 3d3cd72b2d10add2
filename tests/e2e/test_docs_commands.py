"""Every command the README documents is real: its make target and variables exist, its
`edgewatch` subcommand and every option shown are accepted (checked against `--help`), its
`python -m MODULE` it names runs, and the board commands are run for real by the tests named in
REAL_RUNS (for the other commands, run for real by their own tests, `--help` and the option
check are this file's exercise).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
EW = str(Path(sys.executable).parent / "edgewatch")
TESTS = {p.name: p.read_text() for p in (ROOT / "tests").rglob("test_*.py")}


def documented_commands() -> list[str]:
    """Commands in the README: indented code lines and `inline code` starting with make/edgewatch/python."""
    out = []
    for line in README.splitlines():
        if line.startswith("    "):
            out.append(line.strip())
    out += re.findall(r"`((?:make|edgewatch|\.venv/bin/python|python) [^`]+)`", README)
    cmds = []
    for c in out:
        c = c.split("  #", 1)[0].split(" # ", 1)[0].strip()
        if c.startswith(("make ", "edgewatch ", ".venv/bin/python -m ", "python -m ")):
            cmds.append(c)
    return cmds


COMMANDS = documented_commands()


def edgewatch_uses() -> dict[str, set[str]]:
    """subcommand -> options the README shows for it."""
    uses: dict[str, set[str]] = {}
    for c in COMMANDS:
        if not c.startswith("edgewatch "):
            continue
        body = c[len("edgewatch "):]
        if re.match(r"^[a-z-]+( / [a-z-]+)+$", body):  # "generate / train / compare"
            for sub in body.split(" / "):
                uses.setdefault(sub, set())
            continue
        sub = body.split()[0]
        if not re.fullmatch(r"[a-z][a-z-]*", sub):
            continue  # a placeholder (<command>) or a quoted error message (edgewatch train: ...)
        uses.setdefault(sub, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", body))
    uses.pop("--help", None)
    return uses


def make_uses() -> dict[str, set[str]]:
    """make target -> variables the README passes to it."""
    uses: dict[str, set[str]] = {}
    for c in COMMANDS:
        if not c.startswith("make "):
            continue
        words = c.split()[1:]
        targets = [w for w in words if re.fullmatch(r"[a-z][a-z0-9/._-]*", w)]
        variables = set(re.findall(r"\b([A-Z][A-Z_]+)=", c))
        for t in targets:
            uses.setdefault(t, set()).update(variables)
    return uses


def test_the_readme_documents_the_first_five_minutes():
    assert "make demo" in COMMANDS and "make test" in COMMANDS
    setup = README.split("## Set-up", 1)[1].split("##", 1)[0]
    assert [c for c in COMMANDS if c in setup and c.startswith("make ")][:2] == ["make demo", "make test"]
    for words in ("DHT22", "SHTC3", "make flash", ".env", "dialout", "Troubleshooting", "MemoryError"):
        assert words in README, words
    for key in ("WIFI_SSID", "WIFI_PASSWORD", "MQTT_URL", "MQTT_USER", "MQTT_PASSWORD", "OTA_KEY"):
        assert key in README and key in (ROOT / ".env.example").read_text(), key


@pytest.mark.parametrize("sub", sorted(edgewatch_uses()))
def test_edgewatch_subcommand_and_options_exist(sub):
    r = subprocess.run([EW, sub, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, f"edgewatch {sub} --help: {r.stderr[-500:]}"
    for opt in edgewatch_uses()[sub]:
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", r.stdout), \
            f"README shows `edgewatch {sub} {opt}`, which `edgewatch {sub} --help` does not accept"


@pytest.mark.parametrize("target", sorted(make_uses()))
def test_make_target_and_variables_exist(target):
    assert re.search(rf"^{re.escape(target)}:", MAKEFILE, re.M), f"no make target {target}"
    for var in make_uses()[target]:
        assert f"$({var})" in MAKEFILE or re.search(rf"^{var} \?=", MAKEFILE, re.M), \
            f"README passes {var}= to make {target}, the Makefile never reads it"
    # make parses the target with those variables (prints the recipe, runs nothing)
    r = subprocess.run(["make", "-n", target, *(f"{v}=x" for v in make_uses()[target])],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_python_modules_in_the_readme_run():
    mods = {m for c in COMMANDS for m in re.findall(r"python -m ([\w.]+)", c)}
    assert {"edgewatch.board.virtual_board"} <= mods
    for mod in mods:
        r = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (mod, r.stderr[-500:])


def test_edgewatch_boards_and_make_help_run_for_real():
    r = subprocess.run([EW, "boards"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and "esp32-devkitc-dht22" in r.stdout and "esp32-devkitc-shtc3" in r.stdout
    r = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0
    for t in ("demo", "flash", "deploy", "repl", "sim", "test"):
        assert re.search(rf"^{t}\s", r.stdout, re.M), t


# Commands whose real run is someone's test: the test file must run the command itself.
# The others are run by test_readme_runs.py, or listed there with the reason they cannot be.
REAL_RUNS = {
    "make demo": ("test_demo.py", r'"make", "-s", "demo"'),
    "make deploy": ("test_deploy.py", r'make\("deploy"'),
    "make repl": ("test_deploy.py", r'"make", "-s", "repl"'),
    "make flash": ("test_flash.py", r'"make", "-s", "flash"'),
    "edgewatch flash": ("test_flash.py", r'ew\("flash"'),
    "edgewatch deploy": ("test_deploy.py", r'\[ew, \*args\]'),
    "edgewatch sim": ("test_sim.py", r'\[EW, "sim"'),
    "edgewatch.board.virtual_board": ("test_virtual_board.py", r'"-m", "edgewatch.board.virtual_board"'),
    "make dashboard": ("test_dashboard.py", r'"dashboard"'),
    "edgewatch dashboard": ("test_dashboard.py", r'"dashboard"'),
    "make compare": ("test_train.py", r'"compare"'),
    "edgewatch logs": ("test_logs.py", r'"logs"'),
    "make logs": ("test_logs.py", r'"logs"'),
    "edgewatch classify": ("test_classify.py", r'"classify"'),
    "edgewatch evaluate": ("test_skab.py", r'"evaluate"'),
    "edgewatch retrain": ("test_retrain.py", r'"retrain"'),
    "edgewatch publish-model": ("test_ota_e2e.py", r'"publish-model"'),
    "edgewatch score": ("test_scoring.py", r'"score"'),
    "edgewatch bridge": ("test_bridge_restart.py", r'"bridge"'),
    "edgewatch cluster": ("test_scaling_doc.py", r'cluster'),
    "make cluster": ("test_scaling_doc.py", r'"make", "-s", "cluster"|make cluster'),
    "edgewatch boards": ("test_docs_commands.py", r'\[EW, "boards"\]'),
    "make help": ("test_docs_commands.py", r'"make", "-s", "help"'),
    "edgewatch --help": ("test_cli_output.py", r'"--help"'),
    "edgewatch --version": ("test_cli_output.py", r'"--version"'),
    "edgewatch demo": ("test_demo.py", r'demo'),
    "make setup": ("test_install.py", r'setup|pip'),
    # make repl's recipe is `edgewatch repl`, run on the virtual board's pty
    "edgewatch repl": ("test_deploy.py", r'"make", "-s", "repl", f"PORT=\{vb.port\}"'),
}


@pytest.mark.parametrize("cmd", sorted(REAL_RUNS))
def test_documented_board_commands_have_real_runs(cmd):
    assert any(cmd in c for c in COMMANDS), f"{cmd} is no longer in the README"
    name, pattern = REAL_RUNS[cmd]
    assert re.search(pattern, TESTS[name]), f"{name} no longer runs {cmd}"
