"""The validated-policy cache that keeps wal-push light.

A policy validated once is stored, parsed but not interpolated, under a key hashing the
pgbackup version, the schema, the file's path and bytes, and the values of the
environment variables it references. ``load_policy_fast`` finds it there and skips
PyYAML, jsonschema and croniter. It holds no secret (literal secrets are refused, and
``${VAR}`` references are stored unexpanded).

The key, the directory and the entry's encoding are :mod:`pgbackup.policyrules`'s: the
wal-push fast path reads the same entries without importing this package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgbackup.policy.schema import _schema_bytes
from pgbackup.policyrules import cache_dir, cache_key, encode_entry, read_entry
from pgbackup.policyrules import cache_root as _cache_root


def cache_root() -> Path:
    """pgbackup's own cache directory: ``$XDG_CACHE_HOME/pgbackup`` (``~/.cache/pgbackup``)."""
    return Path(_cache_root())


def _cache_dir() -> Path:
    return Path(cache_dir())


def _cache_key(path: Path, data: bytes, env: Mapping[str, str]) -> str:
    return cache_key(str(path), data, _schema_bytes(), env)


def _cache_hit(key: str) -> Any:
    """The parsed (not yet interpolated) document validated under ``key``, or None.

    Holding the parsed tree, not just "validated", is what lets wal-push skip PyYAML.
    It holds no secret: literal secrets are refused, and ``${VAR}`` references are
    stored unexpanded.
    """
    return read_entry(key)


def _cache_store(key: str, raw: Any) -> None:
    try:
        payload = encode_entry(raw)
    except ValueError:
        return  # not plain data (a YAML date, say): this policy is simply validated every time
    try:
        d = _cache_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, d / key)
    except OSError:
        pass
