"""Open the board's MicroPython REPL (mpremote repl); Ctrl-] or Ctrl-x leaves it.

    edgewatch repl --port /dev/ttyUSB0

Ctrl-C stops the running firmware and gives the ``>>>`` prompt; Ctrl-D soft-resets the
board, which starts the firmware again (its output then shows here).
"""

from __future__ import annotations

import os
import subprocess

from edgewatch.board.deploy import bin_path, check_port


def add_arguments(p) -> None:
    """Options of `edgewatch repl`."""
    p.add_argument("--port", default=os.environ.get("PORT") or None,
                   help="serial port of the board, e.g. /dev/ttyUSB0 (env PORT)")


def command(port: str) -> list[str]:
    """The mpremote command line that opens the REPL on `port`."""
    return [bin_path("mpremote"), "connect", port, "repl"]


def run(args) -> int:
    """Run `edgewatch repl`."""
    port = check_port(args.port, "repl")
    return subprocess.call(command(port))
