"""Tests a newcomer can find (#27 point 5): each step text is defined once, each feature
has its step module of the same name, and a unit test named after a pgbackup module tests
that module.

Read from the sources (ast, pytest-bdd's own feature parser): no step module is imported
and no server is started.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import parsers
from pytest_bdd.parser import FeatureParser

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ROOT / "features"
TESTS = ROOT / "tests"
PACKAGE = ROOT / "pgbackup"

# features/test_*.py that are plain pytest modules, not the steps of a .feature:
PLAIN_FEATURE_MODULES = {
    # A property test over random recovery targets: a seeded loop inside one test, on the
    # features' harness (the `h` fixture of features/conftest.py), so it lives beside them.
    "test_pitr_property.py": "property test on the features' harness, no scenarios",
}


def step_definitions() -> list[dict[str, Any]]:
    """Every @given/@when/@then in features/*.py: its kind, its parser, where it is."""
    found = []
    for path in sorted(FEATURES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if not (
                    isinstance(deco, ast.Call)
                    and isinstance(deco.func, ast.Name)
                    and deco.func.id in ("given", "when", "then")
                    and deco.args
                ):
                    continue
                arg = deco.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    kind, text = "string", arg.value
                else:
                    assert isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute), (
                        f"{path.name}:{node.lineno}: a step text that is not a string, "
                        "parsers.parse(...) or parsers.re(...)"
                    )
                    kind, text = arg.func.attr, arg.args[0].value  # type: ignore[attr-defined]
                parser = {"string": parsers.string, "parse": parsers.parse, "re": parsers.re}[kind]
                found.append(
                    {
                        "type": deco.func.id,
                        "text": text,
                        "parser": parser(text),
                        "where": f"features/{path.name}:{deco.lineno} {node.name}",
                    }
                )
    return found


def shape(text: str) -> str:
    """A step text with its parameters blanked: '{n:d} batches' and '{count} batches' are
    the same words."""
    text = re.sub(r"\(\?P<\w+>[^)]*\)", "{}", text)  # parsers.re's named groups
    return re.sub(r"\{[^}]*\}", "{}", text).removesuffix("$")


def feature_steps() -> list[tuple[str, str, str]]:
    """(type, text, where) of every step line of every feature, outlines rendered with each
    of their examples."""
    steps = []
    for path in sorted(FEATURES.glob("*.feature")):
        feature = FeatureParser(str(FEATURES), path.name).parse()
        for template in feature.scenarios.values():
            contexts = [c for ex in template.examples for c in ex.as_contexts()] or [{}]
            for context in contexts:
                for step in template.render(context).steps:
                    steps.append((step.type, step.name, f"{path.name}:{step.line_number}"))
    return steps


def test_each_step_text_is_defined_once() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for step in step_definitions():
        where[shape(step["text"])].append(step["where"])
    twice = {text: places for text, places in where.items() if len(places) > 1}
    assert not twice, (
        "a step text is defined more than once: keep one in features/conftest.py when the "
        f"steps do the same, or say the difference in the words: {twice}"
    )


def test_each_step_line_of_the_features_matches_one_definition() -> None:
    definitions = step_definitions()
    ambiguous = {}
    for kind, name, where in feature_steps():
        matching = [
            d["where"] for d in definitions if d["type"] == kind and d["parser"].is_matching(name)
        ]
        if len(matching) > 1:
            ambiguous[f"{where} {kind} {name!r}"] = matching
    assert not ambiguous, ambiguous


def test_the_step_parser_reads_the_steps() -> None:
    """The two tests above see every step: the known ones are found, in both forms."""
    texts = {d["text"] for d in step_definitions()}
    assert "I take a backup" in texts and "a sandbox cluster with sample data" in texts
    assert any(
        d["type"] == "when" and d["parser"].is_matching('I run "x"') for d in step_definitions()
    )
    lines = {name for _kind, name, _where in feature_steps()}
    assert "I run a drill" in lines  # an outline's example, rendered


def test_each_feature_has_its_step_module_and_each_step_module_its_feature() -> None:
    features = {p.stem for p in FEATURES.glob("*.feature")}
    modules = {p.name for p in FEATURES.glob("test_*.py")}
    assert not features - {m[len("test_") : -len(".py")] for m in modules}, sorted(
        f"features/{f}.feature has no features/test_{f}.py"
        for f in features
        if f"test_{f}.py" not in modules
    )
    orphans = sorted(m for m in modules if m[len("test_") : -len(".py")] not in features)
    assert set(orphans) == set(PLAIN_FEATURE_MODULES), (
        "a features/test_X.py without features/X.feature (list plain pytest modules in "
        f"PLAIN_FEATURE_MODULES, with the reason): {orphans}"
    )


@pytest.mark.parametrize("feature", sorted(p.stem for p in FEATURES.glob("*.feature")))
def test_a_step_module_loads_the_feature_it_is_named_after(feature: str) -> None:
    module = (FEATURES / f"test_{feature}.py").read_text()
    assert f'scenarios("{feature}.feature")' in module, f"features/test_{feature}.py"


def test_no_test_module_name_is_used_twice() -> None:
    """tests/ and features/ are not packages: pytest imports test_X.py as module test_X,
    so a second test_X.py anywhere fails the collection of both directories together."""
    names: dict[str, list[str]] = defaultdict(list)
    for path in [*TESTS.rglob("test_*.py"), *FEATURES.glob("test_*.py")]:
        names[path.name].append(str(path.relative_to(ROOT)))
    assert not {n: p for n, p in names.items() if len(p) > 1}


def modules_named() -> dict[str, set[str]]:
    """pgbackup's modules and packages by their last name: 'walchain' ->
    {'pgbackup.engine.walchain'}."""
    named: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 1:
            named[parts[-1]].add(".".join(parts))
    return named


def imported_modules(path: Path) -> set[str]:
    """Every module a test file imports, and every name it imports from one (a module,
    or a function of one: 'from pgbackup.engine import wal' imports pgbackup.engine.wal)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


UNIT_TESTS = sorted(p.name for p in TESTS.glob("test_*.py"))

# tests/test_X.py named after a module X that they test without importing it:
THROUGH_THE_PROGRAM = {
    "test_program.py": "interface/program is the pgbackup command: run as a process",
}


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in UNIT_TESTS
        if n[len("test_") : -len(".py")] in modules_named() and n not in THROUGH_THE_PROGRAM
    ],
)
def test_a_unit_test_named_after_a_module_imports_it(name: str) -> None:
    """tests/test_X.py, where pgbackup has a module (or package) X, tests that X: it
    imports it (a weak check, but an honest one: the name does not lie)."""
    modules = modules_named()[name[len("test_") : -len(".py")]]
    imported = imported_modules(TESTS / name)
    assert any(m in imported or any(i.startswith(m + ".") for i in imported) for m in modules), (
        f"tests/{name} imports none of {sorted(modules)}"
    )


def test_the_engine_modules_tests_are_named_after_them() -> None:
    """An engine module whose unit tests have a file of their own: tests/test_<module>.py."""
    engine = {p.stem for p in (PACKAGE / "engine").glob("*.py")} - {"__init__"}
    named = {n[len("test_") : -len(".py")] for n in UNIT_TESTS} & engine
    # the engine's modules with a unit test file of their name (grows, never shrinks)
    assert named >= {
        "follow",
        "receiver",
        "shipper",
        "streamcompress",
        "wal_fastpush",
        "walasync",
        "walprefetch",
    }, sorted(named)
