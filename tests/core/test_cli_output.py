"""The command line as a person meets it: --version, help with examples, quiet TensorFlow,
one-line .env errors, the same broker option everywhere."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from edgewatch import cli
from edgewatch.core.errors import UserError
from edgewatch.core.settings import add_mqtt_arguments, load_env, mqtt_settings

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("edgewatch ") and out.split()[1][0].isdigit()


def test_help_lays_out_examples_in_an_epilog(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sim", "--help"])
    out = capsys.readouterr().out
    tail = out.split("\nexamples:\n", 1)
    assert len(tail) == 2, out
    # the example is a line of its own, after the options, not run into the prose
    assert tail[1].splitlines()[0].strip().startswith("edgewatch sim --devices")
    assert "options:" in tail[0] and "edgewatch sim --devices" not in tail[0]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "\nexamples:\n  edgewatch train " in out


_TF = """
import sys, warnings
from edgewatch.cli import main
main(sys.argv[1:] + ['boards'])
import tensorflow
warnings.warn_explicit("tf.lite.Interpreter is deprecated", UserWarning, "interpreter.py", 457,
                       module="tensorflow.lite.python.interpreter")
"""


@pytest.mark.parametrize("flags,noisy", [([], False), (["-v"], True)])
def test_tensorflow_start_up_lines_only_with_verbose(flags, noisy):
    r = subprocess.run([sys.executable, "-c", _TF, *flags], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "absl" in ln or "oneDNN" in ln
             or "cpu_feature_guard" in ln or "deprecated" in ln]
    assert bool(lines) == noisy, r.stderr


def test_malformed_env_line_is_one_line_naming_file_and_line(tmp_path, capsys, monkeypatch):
    f = tmp_path / "site.env"
    f.write_text("EDGEWATCH_PREFIX=x\n# comment\nTWILIO_AUTH_TOKEN=\"tok en-secret\n")
    with pytest.raises(UserError) as exc:
        load_env(f)
    msg = str(exc.value)
    assert msg.startswith(f"{f}:3: ") and "TWILIO_AUTH_TOKEN" in msg
    assert "secret" not in msg and "\n" not in msg
    # through the command: exit 2, one line on stderr, nothing from python-dotenv
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("this is not a setting\n")
    assert cli.main(["collect", "--db", f"sqlite:///{tmp_path}/t.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgewatch collect: {tmp_path / '.env'}:1: not NAME=value; "
                   "quote values with spaces, close every quote"]


def test_broker_option_everywhere_with_mqtt_alias():
    p = argparse.ArgumentParser()
    add_mqtt_arguments(p)
    assert mqtt_settings(p.parse_args(["--broker", "mqtt://b.example:1999"])).port == 1999
    assert mqtt_settings(p.parse_args(["--mqtt", "mqtt://b.example:1998"])).port == 1998
    import importlib

    for name in ("collect", "bridge", "sim", "retrain", "publish-model"):
        mod = importlib.import_module(cli.COMMANDS[name])
        sub = argparse.ArgumentParser()
        mod.add_arguments(sub)
        opts = {s for a in sub._actions for s in a.option_strings}
        assert {"--broker", "--mqtt"} <= opts, name


def test_evaluate_says_what_it_is_running_before_each_long_step(monkeypatch, capsys):
    from edgewatch.training.evaluation import evaluate

    def slow_result(*_a, **_k):
        assert "running on 2 files" in capsys.readouterr().out  # printed before the work
        return {k: 0 for k in ("f1", "far", "mar", "tp", "fp", "fn", "tn", "files", "seconds",
                               "whole_file", "per_file", "kept")}

    monkeypatch.setattr(evaluate.skab, "evaluate", slow_result)
    evaluate.run_skab(["iforest"], files=["a", "b"])
