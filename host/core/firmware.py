"""Where the firmware files are, and the one way to load a firmware module into CPython.

The MicroPython application in ``firmware/``, the board files in ``boards/`` and
the stand-ins the unix port mounts as the board's ROM ship inside the installed
``edgewatch`` package (package data: ``edgewatch/firmware``,
``edgewatch/board/profiles``, ``edgewatch/board/standins``). In a checkout
(an editable install) the same files are found at the top of the repository.
"""

from __future__ import annotations

import importlib.util
import re
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
    path = locate("firmware") / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_edgewatch_fw_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    src = path.read_text()
    if re.search(r"^\s*@micropython\.viper\b", src, re.M):
        # viper kernels run here as plain code, as firmware/detk_plain.py runs them on a port
        # without the native emitter (the same source, line for line, the decorators out)
        mod.__dict__.update(ptr32=None, ptr8=None, const=lambda x: x)
        src = re.sub(r"^(\s*)@micropython\.viper\b.*$", "", src, flags=re.M)
        src = re.sub(r"^(import micropython|from micropython import const)\s*$", "pass", src, flags=re.M)
        exec(compile(src, str(path), "exec"), mod.__dict__)
        return mod
    spec.loader.exec_module(mod)
    return mod
