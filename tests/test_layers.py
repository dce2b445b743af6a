"""The package's layers, as docs/architecture.md draws them, hold in the code.

Every import of a pgbackup module (at module level or inside a function: a lazy import is
still a dependency) must point to the importer's own layer or a lower one, and the two
infrastructure layers (storage, postgres) stay independent of each other. A change that
needs an upward import belongs in a higher layer, or needs a piece moved down.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pgbackup"

#: Lowest first. ``pgbackup`` itself is the shared floor: errors.py, ui.py, signals, the version.
LAYERS = {
    "pgbackup": 0,
    "formats": 1,
    "policy": 2,
    "storage": 3,
    "postgres": 3,
    "engine": 4,
    "operations": 5,
    "interface": 6,
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "pgbackup"  # a top-level module: errors, ui, ...


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(name: str, source: str, *, is_package: bool = False) -> set[str]:
    """Every pgbackup module that module *name* imports, absolute or relative, wherever the
    import sits."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pgbackup")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pgbackup":
                continue
            if target == "pgbackup":  # from pgbackup import storage, __version__
                found.update(
                    f"pgbackup.{a.name}" if a.name in LAYERS else "pgbackup" for a in node.names
                )
            else:
                found.add(target)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def violations(name: str, source: str, *, is_package: bool = False) -> list[str]:
    mine = layer_of(name)
    bad = []
    for target in sorted(imported_modules(name, source, is_package=is_package)):
        theirs = layer_of(target)
        if theirs == mine:
            continue
        if LAYERS[theirs] >= LAYERS[mine]:  # upward, or sideways between storage and postgres
            bad.append(f"{name} ({mine}) imports {target} ({theirs})")
    return bad


def test_the_layers_are_the_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {"pgbackup"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    source = path.read_text()
    assert violations(module_name(path), source, is_package=path.name == "__init__.py") == []


def test_the_check_sees_upward_and_sideways_imports() -> None:
    """The rule itself can fail: lazy, relative and sideways imports are all caught."""
    lazy_up = "def f():\n    from pgbackup.engine.repository import Repository\n"
    assert violations("pgbackup.storage.probe", lazy_up) == [
        "pgbackup.storage.probe (storage) imports pgbackup.engine.repository (engine)"
    ]
    relative_up = "from ..interface import taskkit\n"
    assert violations("pgbackup.operations.probe", relative_up) == [
        "pgbackup.operations.probe (operations) imports pgbackup.interface (interface)"
    ]
    sideways = "import pgbackup.postgres.cluster\n"
    assert violations("pgbackup.storage.probe", sideways) == [
        "pgbackup.storage.probe (storage) imports pgbackup.postgres.cluster (postgres)"
    ]
    assert violations("pgbackup.engine.probe", "from pgbackup import __version__\n") == []


# --- no circles ---------------------------------------------------------------------------


def circles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Each set of modules that import each other in a loop (lazily or not), sorted; a
    module's imports of modules outside ``imports`` are ignored (Tarjan's strongly
    connected components, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root] & imports.keys())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(imports[nxt] & imports.keys()))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def test_no_module_imports_itself_in_a_circle() -> None:
    """No two modules import each other, directly or round a loop, even lazily: a circle
    means neither reads without the other, and a piece both need belongs below them.
    (Across folders the layers already forbid it; this catches it inside one.)"""
    imports = {
        module_name(p): imported_modules(
            module_name(p), p.read_text(), is_package=p.name == "__init__.py"
        )
        for p in MODULES
    }
    assert circles(imports) == []


def test_the_circle_check_sees_lazy_and_long_circles() -> None:
    lazy = "def f():\n    from pgbackup.engine.b import g\n"
    imports = {
        "pgbackup.engine.a": imported_modules("pgbackup.engine.a", lazy),
        "pgbackup.engine.b": {"pgbackup.engine.c"},
        "pgbackup.engine.c": {"pgbackup.engine.a", "pgbackup.errors"},
        "pgbackup.engine.d": {"pgbackup.engine.a"},
    }
    assert circles(imports) == [["pgbackup.engine.a", "pgbackup.engine.b", "pgbackup.engine.c"]]
    assert circles({**imports, "pgbackup.engine.c": {"pgbackup.errors"}}) == []


# --- the engine does not render -----------------------------------------------------------


def renders(name: str, source: str) -> list[str]:
    """Where module *name* prints or imports rich: the interface's work, never the engine's
    (the engine returns data and logs through pgbackup.ui.LOG)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "print":
                found.append((node.lineno, "calls print()"))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, f"imports {a.name}")
                for a in node.names
                if a.name.split(".")[0] == "rich"
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rich":
            found.append((node.lineno, f"imports {node.module}"))
    return [f"{name}:{line} {what}" for line, what in sorted(found)]


ENGINE = [p for p in MODULES if layer_of(module_name(p)) == "engine"]


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: module_name(p))
def test_the_engine_does_not_render(path: Path) -> None:
    assert renders(module_name(path), path.read_text()) == []


def test_the_render_check_sees_print_and_rich() -> None:
    source = (
        "import sys\n"
        "def f():\n"
        "    from rich.table import Table\n"
        "    print('x', file=sys.stderr)\n"
        "import rich.console\n"
        "LOG.info('fine')\n"
    )
    assert renders("pgbackup.engine.probe", source) == [
        "pgbackup.engine.probe:3 imports rich.table",
        "pgbackup.engine.probe:4 calls print()",
        "pgbackup.engine.probe:5 imports rich.console",
    ]
