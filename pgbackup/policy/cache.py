"""The validated-policy cache that keeps wal-push light.

A policy validated once is stored, parsed but not interpolated, under a key hashing the
pgbackup version, the schema, the file's path and bytes, and the values of the
environment variables it references. ``load_policy_fast`` finds it there and skips
PyYAML, jsonschema and croniter. It holds no secret (literal secrets are refused, and
``${VAR}`` references are stored unexpanded).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgbackup.policy.interpolation import _referenced_vars
from pgbackup.policy.schema import _schema_bytes


def cache_root() -> Path:
    """pgbackup's own cache directory: ``$XDG_CACHE_HOME/pgbackup`` (``~/.cache/pgbackup``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pgbackup"


def _cache_dir() -> Path:
    return cache_root() / "validated"


def _digest() -> Any:
    """A BLAKE2b hasher. CPython's built-in one, when present: importing hashlib loads
    OpenSSL, 2 ms that wal-push would pay for every segment just to look up this cache."""
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import blake2b
    return blake2b(digest_size=32)


def _cache_key(path: Path, data: bytes, env: Mapping[str, str]) -> str:
    from pgbackup import __version__

    h = _digest()
    h.update(b"pgbackup-policy-v2\0" + __version__.encode() + b"\0")
    h.update(_schema_bytes())
    h.update(b"\0" + str(path).encode() + b"\0")
    h.update(len(data).to_bytes(8, "little") + data)
    for name in _referenced_vars(data):
        value = env.get(name)
        h.update(name.encode() + b"\0")
        h.update(b"\x01unset" if value is None else b"=" + value.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _cache_hit(key: str) -> Any:
    """The parsed (not yet interpolated) document validated under ``key``, or None.

    Holding the parsed tree, not just "validated", is what lets wal-push skip PyYAML.
    It holds no secret: literal secrets are refused, and ``${VAR}`` references are
    stored unexpanded.
    """
    try:
        entry = json.loads((_cache_dir() / key).read_bytes())
        return entry["document"] if isinstance(entry, dict) else None
    except (OSError, ValueError, KeyError):
        return None


def _cache_store(key: str, raw: Any) -> None:
    try:
        payload = json.dumps({"document": raw}).encode()
    except (TypeError, ValueError):
        return  # not JSON (a YAML date, say): this policy is simply validated every time
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
