"""The direction is a test: every import in edgewatch (also those inside functions) runs
down the layer order, and no two modules import each other, directly or round a loop.

Layers, bottom to top (docs/architecture in README's map):
  0 edgewatch.core                       errors, contracts, the firmware loader, settings
  1 edgewatch.training                   forecasting, export, evaluation, analysis
  2 edgewatch.board, edgewatch.services, edgewatch.demo
  3 edgewatch.cli                        the command line
Nothing in edgewatch imports tools/, tests/, or the old top-level names host/training.
The MicroPython files (firmware/, the stand-ins) are loaded, not imported: outside the walk.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"edgewatch": ROOT / "host", "edgewatch.training": ROOT / "training"}
SKIP = {"edgewatch.board.standins"}  # MicroPython stand-ins, mounted as the board's ROM
LAYERS = [
    ("edgewatch.core", 0),
    ("edgewatch.training", 1),
    ("edgewatch.board", 2),
    ("edgewatch.services", 2),
    ("edgewatch.demo", 2),
    ("edgewatch.cli", 3),
]
FOREIGN = ("tools", "tests", "host", "training", "hostkit", "conftest")


def modules() -> dict[str, Path]:
    """Module name -> file, for every Python module of the installed package."""
    out: dict[str, Path] = {}
    for pkg, folder in SOURCES.items():
        for f in sorted(folder.rglob("*.py")):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "edgewatch" and parts[:1] == ["training"]:
                continue  # not a folder under host/
            if any(name == s or name.startswith(s + ".") for s in SKIP):
                continue
            out[name] = f
    return out


def imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((node.lineno, sub if sub in known else node.module))
    return found


def layer(name: str) -> int | None:
    if name == "edgewatch":
        return 0  # the package itself (an empty __init__)
    best = None
    for prefix, level in LAYERS:
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, level)
    return None if best is None else best[1]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    wrong = []
    for mod, path in mods.items():
        for line, target in imports(path, known):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}: {mod} imports {target}"
            if top in FOREIGN:
                wrong.append(f"{where} (outside the package)")
                continue
            if top != "edgewatch" or target not in known:
                continue
            if target != mod:
                edges[mod].add(target)
            lo, hi = layer(target), layer(mod)
            if lo is None or hi is None:
                wrong.append(f"{where} (a module on no layer)")
            elif lo > hi:
                wrong.append(f"{where} (layer {hi} importing layer {lo}: against the order)")
    return edges, wrong


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_every_layer():
    mods = modules()
    assert {layer(m) for m in mods} == {0, 1, 2, 3}, "a module on no layer, or a layer emptied"
    assert "edgewatch.cli" in mods and "edgewatch.core.errors" in mods


def test_no_import_runs_against_the_layer_order():
    _, wrong = graph()
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    edges, _ = graph()
    loops = cycles(edges)
    assert not loops, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in loops)


def test_the_checks_catch_what_they_guard():
    """The walker itself: a reverse import and a cycle are reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("edgewatch.core.errors") < layer("edgewatch.training.forecast.data") \
        < layer("edgewatch.services.ota") < layer("edgewatch.cli")
