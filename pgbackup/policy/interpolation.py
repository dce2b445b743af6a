"""``${VAR}`` / ``${VAR:-default}`` expansion in every string scalar of the policy.

``$$`` is a literal ``$``. A scalar that is exactly one ``${...}`` becomes an integer (or
a boolean) where the schema expects one; when it expands to an empty string, the key is
treated as not set. This runs on every load, the cached wal-push one included, so it
needs the schema but neither PyYAML nor jsonschema. The reference grammar (what a
``NAME`` is, which scalars are rewritten) is :mod:`pgbackup.policyrules`', which the
validated-policy cache and wal-push's fast path read too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pgbackup.policy.parsers import _Pattern
from pgbackup.policy.schema import _child_schema, _join, _types
from pgbackup.policyrules import interpolated, name_end

_INT = _Pattern(r"^\s*[+-]?[0-9]+\s*$")


class _Interpolator:
    def __init__(self, env: Mapping[str, str], schema: dict[str, Any]):
        self.env = env
        self.schema = schema
        self.problems: list[tuple[str, str]] = []
        self.emptied: dict[str, str] = {}  # path -> raw text that expanded to ""

    # -- string expansion -------------------------------------------------------
    def expand(self, text: str, path: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "$" and text.startswith("$$", i):
                out.append("$")
                i += 2
            elif c == "$" and text.startswith("${", i):
                value, i = self._reference(text, i, path)
                out.append(value)
            else:
                out.append(c)
                i += 1
        return "".join(out)

    def _reference(self, text: str, start: int, path: str) -> tuple[str, int]:
        """Expand the ``${...}`` at ``start``; return (value, index after it)."""
        after = name_end(text, start + 2)  # the name's grammar: pgbackup.policyrules
        end = self._closing_brace(text, start + 2)
        if end is None:
            self.problems.append(
                (path, f"unterminated '${{' in {text!r}; write $$ for a literal $")
            )
            return "", len(text)
        if after == start + 2:
            self.problems.append(
                (
                    path,
                    f"invalid reference {text[start : end + 1]!r}: expected ${{NAME}} or ${{NAME:-default}}",
                )
            )
            return "", end + 1
        name = text[start + 2 : after]
        if after == end:
            default = None
        elif text.startswith(":-", after):
            default = text[after + 2 : end]
        else:
            self.problems.append(
                (
                    path,
                    f"invalid reference {text[start : end + 1]!r}: expected ${{NAME}} or ${{NAME:-default}}",
                )
            )
            return "", end + 1
        value = self.env.get(name)
        if default is not None:
            if not value:
                value = self.expand(default, path)
        elif value is None:
            self.problems.append(
                (
                    path,
                    f"environment variable {name} is not set (referenced as ${{{name}}}); "
                    f"set it, or give a default: ${{{name}:-value}}",
                )
            )
            value = ""
        return value, end + 1

    @staticmethod
    def _closing_brace(text: str, i: int) -> int | None:
        depth = 0
        n = len(text)
        while i < n:
            if text.startswith("$$", i):
                i += 2
                continue
            if text.startswith("${", i):
                depth += 1
                i += 2
                continue
            if text[i] == "}":
                if depth == 0:
                    return i
                depth -= 1
            i += 1
        return None

    def _whole_reference(self, text: str) -> bool:
        if not text.startswith("${"):
            return False
        end = self._closing_brace(text, 2)
        return end == len(text) - 1

    # -- tree walk ---------------------------------------------------------------
    _REMOVE = object()

    def node(self, value: Any, path: str, schema_node: dict[str, Any]) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, child in value.items():
                sub = _child_schema(self.schema, schema_node, key)
                new = self.node(child, _join(path, key), sub)
                if new is not self._REMOVE:
                    out[key] = new
            return out
        if isinstance(value, list):
            items: list[Any] = []
            for i, child in enumerate(value):
                sub = _child_schema(self.schema, schema_node, i)
                new = self.node(child, _join(path, i), sub)
                if new is not self._REMOVE:
                    items.append(new)
            return items
        if isinstance(value, str) and interpolated(value):
            expanded = self.expand(value, path)
            if "${" in value and expanded == "":
                self.emptied[path] = value
                return self._REMOVE
            if self._whole_reference(value):
                types = _types(schema_node)
                if "integer" in types and _INT.match(expanded):
                    return int(expanded)
                if "boolean" in types and expanded.strip().lower() in ("true", "false"):
                    return expanded.strip().lower() == "true"
            return expanded
        if isinstance(value, float) and value.is_integer() and "integer" in _types(schema_node):
            return int(value)
        return value
