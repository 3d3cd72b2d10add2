"""Figures a reliability test measured, for `make reliability` (tools/reliability.py).

A test calls ``record(name, value)`` with what it counted (samples lost, SMS sent twice...)
*before* asserting on it. When tools/reliability.py runs the suite it sets
``EDGEWATCH_FIGURES`` to a file and every call appends one JSON line to it
({"test": node id, "name", "value"}); in a plain `make test` nothing is written.
"""

from __future__ import annotations

import json
import os


def record(name: str, value) -> None:
    """Append one measured figure of the running test to $EDGEWATCH_FIGURES (if set)."""
    path = os.environ.get("EDGEWATCH_FIGURES")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"test": test, "name": name, "value": value}) + "\n")
