"""The import layering of ``model/`` and ``service/``, read from the sources with ``ast`` (nothing is imported).

:data:`FLOORS` is the one place the allowed directions are written: a unit (a sub-package, or a module at the top
of ``model/`` or ``service/``) may import units on floors *below* its own, and modules of its own unit; never a
unit on its own floor or above. The README's layout picture lists the same floors. Besides the floors:

* no module imports a command-line module (``cli``) of another unit: the commands are the top of the house;
* no two modules import each other, directly or round a longer loop (imports inside functions count too);
* no package directly holds more than :data:`MAX_MODULES` ``.py`` files.

The checker itself is tested on a small synthetic tree, so a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Top to bottom. ``model.cli`` is the ``seqpred`` entry point: it dispatches ``serve``, ``client`` and ``score``
#: to ``service`` by module name (``model.cli.SERVICE_COMMANDS``), so it sits above everything.
FLOORS: list[tuple[str, ...]] = [
    ("model.cli",),
    ("service.cli", "service.healthcheck", "service.gen_proto"),  # commands and tools
    ("service.server",),  # the composition root
    ("service.api",),  # protocol fronts
    ("service.engine",),  # the transport-free core
    ("service.durability",),
    ("service.store", "service.security", "service.scoring"),
    ("service.client", "service.runtime"),
    ("service.settings", "service.metrics", "service.logs", "service.ports"),
    ("service.errors", "service._proto"),
    ("model.importers",),  # seqpred import: reads foreign models, writes through model.export
    ("model.export", "model.experiments"),
    ("model.train",),
    ("model.network",),
    ("model.layer", "model.config"),
    ("model.layer_depth",),
    ("model.layout", "model.cells"),
    ("model.data", "model.nonlin"),
    ("model.errors",),
]

#: The most ``.py`` files one package may hold directly (``__init__.py`` included).
MAX_MODULES = 15


def module_names(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the packages (generated stubs left out)."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            if "_proto" in rel.parts:
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules a file imports (anywhere in it), resolved to names in ``known`` or kept as written."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # ``from pkg import mod`` names a module; ``from mod import name`` does not
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module)
    return found


def unit_of(module: str, units: Iterable[str]) -> str | None:
    """The longest unit that is ``module`` or a package above it."""
    best = None
    for u in units:
        if (module == u or module.startswith(u + ".")) and (best is None or len(u) > len(best)):
            best = u
    return best


def violations(root: Path, floors: list[tuple[str, ...]], packages: Iterable[str]) -> list[str]:
    """Every import that breaks the floors or reaches into another unit's ``cli``, and every import cycle."""
    rank = {u: i for i, floor in enumerate(floors) for u in floor}
    packages = list(packages)
    known = module_names(root, packages)
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for mod, path in known.items():
        if mod in packages:
            continue  # the top packages' own __init__ (a docstring)
        src = unit_of(mod, rank)
        if src is None:
            problems.append(f"{mod}: not on any floor (add its unit to FLOORS)")
            continue
        graph[mod] = set()
        for target in sorted(imports_of(path, known)):
            dst = unit_of(target, rank)
            if dst is None:
                continue  # outside model/ and service/: numpy, grpc, ...
            if target in known and target != mod:
                graph[mod].add(target)
            if target.rsplit(".", 1)[-1] == "cli" and dst != src:
                problems.append(f"{mod} imports {target}: nothing imports a command-line module")
            elif dst != src and rank[dst] <= rank[src]:
                where = "on its own floor" if rank[dst] == rank[src] else "above it"
                problems.append(f"{mod} imports {target}: {dst} is {where} ({src} may import only lower floors)")
    problems += [f"import cycle: {' -> '.join([*c, c[0]])}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_project_keeps_its_floors_and_has_no_import_cycle() -> None:
    assert violations(ROOT, FLOORS, ("model", "service")) == []


@pytest.mark.parametrize("top", ["model", "service"])
def test_no_package_holds_more_than_fifteen_modules(top: str) -> None:
    crowded = {
        str(d.relative_to(ROOT)): n
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if d.is_dir() and d.name != "_proto" and (n := len(list(d.glob("*.py")))) > MAX_MODULES
    }
    assert crowded == {}


def test_every_package_says_what_it_owns_and_may_import() -> None:
    for init in sorted([*(ROOT / "model").rglob("__init__.py"), *(ROOT / "service").rglob("__init__.py")]):
        if "_proto" in init.parts:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        if init.parent.name not in ("model", "service"):
            assert "may import" in doc.lower(), f"{init.relative_to(ROOT)}: say what the package may import"


def test_the_command_dispatch_names_modules_below_the_entry_point() -> None:
    from model.cli import SERVICE_COMMANDS

    rank = {u: i for i, floor in enumerate(FLOORS) for u in floor}
    for module, _func, _help in SERVICE_COMMANDS.values():
        unit = unit_of(module, rank)
        assert unit is not None and rank[unit] > rank["model.cli"], module
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


# --- the checker itself, on a synthetic tree -------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TOY_FLOORS = [("app.cli",), ("app.api",), ("app.engine",), ("app.store",), ("app.errors",)]
TOY = {
    "app/__init__.py": "",
    "app/cli.py": "from app.api import handlers\n",
    "app/errors.py": "",
    "app/api/__init__.py": "",
    "app/api/handlers.py": "from app.engine.core import run\nfrom app import errors\n",
    "app/engine/__init__.py": "",
    "app/engine/core.py": "from app.store.memory import Store\n\ndef run():\n    from app.engine import batcher\n",
    "app/engine/batcher.py": "import numpy\n",
    "app/store/__init__.py": "",
    "app/store/memory.py": "class Store: ...\n",
}


def test_checker_accepts_a_clean_tree(tmp_path: Path) -> None:
    write_tree(tmp_path, TOY)
    assert violations(tmp_path, TOY_FLOORS, ["app"]) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("app/store/memory.py", "from app.engine.core import run\n"), "app.store.memory imports app.engine.core"),
        (("app/engine/batcher.py", "def f():\n    import app.api.handlers\n"), "app.api is above it"),
        (("app/engine/batcher.py", "from app.engine.core import run\n"), "import cycle: app.engine.batcher"),
        (("app/store/memory.py", "from app import cli\n"), "nothing imports a command-line module"),
        (("app/extra.py", ""), "app.extra: not on any floor"),
    ],
)
def test_checker_catches_what_it_forbids(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    write_tree(tmp_path, {**TOY, edit[0]: edit[1]})
    found = violations(tmp_path, TOY_FLOORS, ["app"])
    assert any(expected in p for p in found), found


def test_checker_rejects_a_sibling_on_the_same_floor(tmp_path: Path) -> None:
    floors = [("app.cli",), ("app.api", "app.engine"), ("app.store",), ("app.errors",)]
    write_tree(tmp_path, TOY)
    assert violations(tmp_path, floors, ["app"]) == [
        "app.api.handlers imports app.engine.core: app.engine is on its own floor "
        "(app.api may import only lower floors)"
    ]
