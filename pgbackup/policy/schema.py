"""The policy's JSON Schema and walking a document alongside it, by YAML path.

``SCHEMA_PATH`` finds ``backup.schema.json`` both in an installed package and in the
source tree; the schema is read and parsed once per process. Interpolation and validation
walk the document and the schema together: ``_join``/``_walk`` name every value by its
YAML path (``targets.platform.connection.port``, ``uploads[0].name``), and
``_child_schema``/``_types`` say what the schema expects there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgbackup.errors import ConfigError


def _schema_path() -> Path:
    """The policy schema: inside an installed package (``pgbackup/schema/``, mapped there
    from the top-level ``schema/`` by setup.py), else in the source tree (editable installs)."""
    here = Path(__file__).resolve().parents[1]  # pgbackup/
    packaged = here / "schema" / "backup.schema.json"
    return packaged if packaged.is_file() else here.parent / "schema" / "backup.schema.json"


SCHEMA_PATH = _schema_path()


# --------------------------------------------------------------------------- paths


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield (path, key, value) for every mapping entry and list item, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            p = _join(path, key)
            yield p, key, value
            yield from _walk(value, p)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            p = _join(path, i)
            yield p, i, value
            yield from _walk(value, p)


# --------------------------------------------------------------------------- schema helpers


_schema_bytes_cache: bytes | None = None
_schema_cache: dict[str, Any] | None = None


def _schema_error(exc: Exception) -> ConfigError:
    return ConfigError(
        f"cannot read the policy schema {SCHEMA_PATH}: {exc}",
        hint="reinstall pgbackup: the schema ships with it",
    )


def _schema_bytes() -> bytes:
    """The schema file, read once per process (the cache key hashes it, then it is parsed)."""
    global _schema_bytes_cache
    if _schema_bytes_cache is None:
        try:
            _schema_bytes_cache = SCHEMA_PATH.read_bytes()
        except OSError as exc:
            raise _schema_error(exc) from None
    return _schema_bytes_cache


def _load_schema() -> dict[str, Any]:
    global _schema_cache
    if _schema_cache is None:
        try:
            _schema_cache = json.loads(_schema_bytes().decode("utf-8"))
        except ValueError as exc:
            raise _schema_error(exc) from None
    return _schema_cache


def _deref(schema: dict[str, Any], node: Any) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            break
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node if isinstance(node, dict) else {}


def _child_schema(schema: dict[str, Any], node: dict[str, Any], key: str | int) -> dict[str, Any]:
    if isinstance(key, int):
        items = node.get("items")
        return _deref(schema, items) if isinstance(items, dict) else {}
    props = node.get("properties", {})
    if key in props:
        return _deref(schema, props[key])
    extra = node.get("additionalProperties")
    return _deref(schema, extra) if isinstance(extra, dict) else {}


def _types(node: dict[str, Any]) -> set[str]:
    t = node.get("type")
    if isinstance(t, str):
        return {t}
    return set(t) if isinstance(t, list) else set()
