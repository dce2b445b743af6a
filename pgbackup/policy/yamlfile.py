"""Reading the policy's YAML: bytes to a plain tree, with duplicate keys and bombs refused.

The loader follows YAML 1.2 booleans (only ``true``/``false``, so ``on:`` stays a key),
records duplicate keys as problems, and measures the node graph before building it so an
alias bomb or a deeply nested file is refused. PyYAML is imported only inside these
functions: wal-push on a cached policy never parses YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pgbackup.errors import ConfigError


def _make_loader() -> type:
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc,valid-type]
        """Safe loader: YAML 1.2 booleans, string keys, duplicate keys recorded."""

    resolvers = {
        ch: [(tag, rx) for tag, rx in entries if tag != "tag:yaml.org,2002:bool"]
        for ch, entries in base.yaml_implicit_resolvers.items()
    }
    Loader.yaml_implicit_resolvers = resolvers
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[str, Any]:
        loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key = "" if key is None else str(key) if not isinstance(key, str) else key
            if key in result:
                line = key_node.start_mark.line + 1
                loader.pgbackup_duplicates.append((key, line))
            result[key] = loader.construct_object(value_node, deep=True)
        return result

    Loader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    return Loader


_loader_class: Any = None


def _loader(text: str) -> Any:
    """A loader for ``text`` (the class is built on first use: wal-push on a cached
    policy never imports PyYAML)."""
    global _loader_class
    if _loader_class is None:
        _loader_class = _make_loader()
    return _loader_class(text)


MAX_NODES = 100_000  # after expanding aliases: a policy has a few hundred
MAX_DEPTH = 64


def _shape_problem(root: Any) -> str | None:
    """Refuse YAML that would explode (alias bombs) or recurse too deep, before building it.

    Sizes are counted on the node graph with aliases expanded (memoised, so a bomb is
    measured without being built).
    """
    import yaml

    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def children(node: Any) -> list[Any]:
        if isinstance(node, yaml.MappingNode):
            return [c for pair in node.value for c in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[key] > MAX_NODES:
                return f"more than {MAX_NODES} values once its aliases are expanded"
            continue
        if key in sizes:
            continue
        if key in in_progress:
            return "a recursive alias (an anchor that contains itself)"
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        in_progress.add(key)
        stack.append((node, depth, True))
        for child in children(node):
            if id(child) not in sizes:
                stack.append((child, depth + 1, False))
    return None


def _parse_yaml(data: bytes, path: Path) -> tuple[Any, list[tuple[str, str]]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc})") from None
    import yaml

    loader = _loader(text)
    loader.pgbackup_duplicates = []
    try:
        node = loader.get_single_node()
        shape = _shape_problem(node) if node is not None else None
        if shape:
            raise ConfigError(
                f"{path} is not a policy: {shape}",
                problems=[("(file)", shape)],
                hint="a backup.yaml is a small mapping; remove the deep nesting or the alias expansion",
            )
        doc = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise ConfigError(
            f"{path} is not a policy: nested too deeply to read",
            problems=[("(file)", "nested too deeply to read")],
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        hint = "fix the YAML syntax"
        if context and "flow" in context:
            hint = 'inside {...} or [...] a ${VAR} value must be quoted: key: "${VAR}" (or use block style)'
        raise ConfigError(f"{path} is not valid YAML", problems=[(where, msg)], hint=hint) from None
    finally:
        loader.dispose()
    problems = [
        (key, f"duplicate key {key!r} (line {line}); each key may appear once")
        for key, line in loader.pgbackup_duplicates
    ]
    return doc, problems
