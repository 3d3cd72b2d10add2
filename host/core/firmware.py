"""Where the firmware files are, and the one way to load a firmware module into CPython.

The MicroPython application in ``firmware/``, the board files in ``boards/`` and
the stand-ins the unix port mounts as the board's ROM ship inside the installed
``edgewatch`` package (package data: ``edgewatch/firmware``,
``edgewatch/board/profiles``, ``edgewatch/board/standins``). In a checkout
(an editable install) the same files are found at the top of the repository.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent.parent  # the edgewatch package (host/ in a checkout)

# name -> (inside the installed package, in the checkout relative to the package's parent)
_PLACES = {
    "firmware": ("firmware", "firmware"),
    "boards": ("board/profiles", "boards"),
    "standins": ("board/standins", "host/board/standins"),
}


def _checkout() -> Path | None:
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "firmware").is_dir() else None


def locate(name: str) -> Path:
    """The folder holding ``name`` (``firmware``, ``boards`` or ``standins``)."""
    inside, in_checkout = _PLACES[name]
    for candidate in (PACKAGE / inside, PACKAGE.parent / in_checkout):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgewatch: the {name} files are missing from {PACKAGE}")


# The checkout's root, where build outputs (build/, models/) go; the current
# folder when edgewatch runs from an installed package.
ROOT = _checkout() or Path.cwd()

def load(name: str) -> ModuleType:
    """The firmware module ``name`` (pure MicroPython that CPython also runs), from its file.

    One source of truth: the host reads what the board runs. Each call executes the
    file afresh, so callers never share a module's state.
    """
    spec = importlib.util.spec_from_file_location(f"_edgewatch_fw_{name}", locate("firmware") / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
