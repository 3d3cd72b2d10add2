"""The `edgewatch` command: one entry point, one module per subcommand.

Each subcommand lives in the module that does the work. That module defines
``add_arguments(parser)`` and ``run(args) -> int``; the module's docstring's
first line is the command's help. Modules are imported only when their command
runs, so `edgewatch --help` stays fast and TensorFlow loads only for training.

A user mistake (bad file, bad option value) raises :class:`UserError`; the CLI
prints it as one line ``edgewatch <cmd>: <message>`` and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from edgewatch.core.errors import UserError  # the one-line error (raised below the command layer)
from edgewatch.core.quiet import quiet_tensorflow

# name -> module implementing it. A command appears only once its module exists.
COMMANDS: dict[str, str] = {
    "train": "edgewatch.training.forecast.train",
    "compare": "edgewatch.training.forecast.compare",
    "convert": "edgewatch.training.export.convert",
    "generate": "edgewatch.training.forecast.generate",
    "evaluate": "edgewatch.training.evaluation.evaluate",
    "detect": "edgewatch.training.evaluation.replay",
    "analyze": "edgewatch.training.analysis.analyze",
    "classify": "edgewatch.training.analysis.classify",
    "retrain": "edgewatch.services.retrain",
    "bridge": "edgewatch.services.bridge",
    "collect": "edgewatch.services.collector",
    "export": "edgewatch.services.export",
    "score": "edgewatch.services.scoring",
    "sim": "edgewatch.board.sim",
    "flash": "edgewatch.board.flash",
    "deploy": "edgewatch.board.deploy",
    "repl": "edgewatch.board.repl",
    "boards": "edgewatch.board.catalog",
    "publish-model": "edgewatch.services.ota",
    "cluster": "edgewatch.services.cluster",
    "demo": "edgewatch.demo",
    "dashboard": "edgewatch.services.dashboard",
    "logs": "edgewatch.services.logs",
}




def _available() -> dict[str, str]:
    out = {}
    for name, mod in COMMANDS.items():
        try:
            if importlib.util.find_spec(mod) is not None:
                out[name] = mod
        except ModuleNotFoundError:
            pass
    return out


def _summary(mod: str) -> str:
    spec = importlib.util.find_spec(mod)
    try:
        with open(spec.origin, encoding="utf-8") as fh:
            src = fh.read(4000)
    except OSError:
        return ""
    for quote in ('"""', "'''"):
        if src.lstrip().startswith(quote):
            return src.lstrip()[3:].split("\n", 1)[0].strip().rstrip(".")
    return ""


EXAMPLES = """\
examples:
  edgewatch train --data ../shared/data/occupancy/datatraining.txt --out models/default
  edgewatch convert --model models/default --out models/default
  edgewatch sim --devices 3 --broker mqtt://127.0.0.1:1883
  edgewatch collect --broker mqtt://127.0.0.1:1883 --db sqlite:///edgewatch.db
  edgewatch detect --model models/default --data readings.csv --out verdicts.csv
  edgewatch COMMAND --help     options and examples of one command"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edgewatch")
    except Exception:  # running from a checkout that is not installed
        return "unknown"


def split_doc(doc: str | None) -> tuple[str, str | None]:
    """A module docstring as (description, epilog): its indented ``edgewatch ...`` lines are the examples."""
    lines = (doc or "").strip("\n").splitlines()
    examples = [ln.strip() for ln in lines if ln.startswith("    edgewatch ")]
    prose = [ln for ln in lines if not ln.startswith("    edgewatch ")]
    text = "\n".join(prose)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return text.strip(), epilog


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    available = _available()
    parser = argparse.ArgumentParser(
        prog="edgewatch", description="Real-time anomaly detection for IoT sensor boards.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgewatch {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep the libraries' own log lines (TensorFlow start-up, absl)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, mod in available.items():
        if name == chosen:
            module = importlib.import_module(mod)
            description, epilog = split_doc(module.__doc__)
            p = sub.add_parser(name, help=_summary(mod), description=description, epilog=epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=_summary(mod))
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_tensorflow()
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"edgewatch {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
