"""The policy rules both wal-push paths read: the one home of each.

- the validated-policy cache: where it lives, the key of an entry (what it hashes) and
  an entry's encoding (:mod:`pgbackup.policy.cache` writes and reads entries with these);
- the ``${NAME}`` reference grammar (:mod:`pgbackup.policy.interpolation` expands with it,
  the cache key hashes the values of the names it finds);
- the defaults of ``backup.yaml`` that wal-push's fast path relies on.

wal-push's fast path (:mod:`pgbackup.engine.wal_fastpush`) looks a policy up in that cache
once per WAL segment, so this module sits on the package's floor and imports only ``os``,
``marshal`` and, to hash, ``hashlib``: anything under ``pgbackup.policy`` would first run
that package's ``__init__`` (the loader, the records, ``pathlib``, ``typing``: about 15 ms).

An entry is ``marshal`` data, not JSON: ``json`` imports ``re`` (about 6 ms, a tenth of a
fast push), and the private ``_json`` scanner it used to take instead is gone. The cache is
pgbackup's own (``~/.cache/pgbackup``, 0700); the key names the interpreter
(:data:`sys.implementation.cache_tag`) whose marshal format wrote it.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: backup.yaml's defaults that the fast path reads. schema/backup.schema.json states each
#: (``"default"``) and policy/build.py fills them in; tests/test_policyrules.py checks that
#: all three agree.
DEFAULT_REPOSITORY_KIND = "posix"
DEFAULT_COMPRESSION_METHOD = "zstd"
DEFAULT_COMPRESSION_LEVEL = 3


def named_policy_file(config: str | None) -> str | None:
    """The policy file named by ``--config`` or ``$PGBACKUP_CONFIG``, as
    :func:`pgbackup.policy.find_config` resolves an explicit file: absolute, symlinks
    resolved. None when none is named, or it needs ``~`` expanded, or it is not there (the
    full path then says what is wrong). What wal-push's fast path and the read-ahead's
    spool look up, before any policy module is imported."""
    explicit = config if config else os.environ.get("PGBACKUP_CONFIG")
    if not explicit or explicit.startswith("~") or not os.path.isfile(explicit):
        return None
    return os.path.realpath(explicit)


#: The key's first bytes: the entry format (v3: marshal) and the interpreter that wrote it.
_KEY_PREFIX = b"pgbackup-policy-v3\0" + sys.implementation.cache_tag.encode() + b"\0"

# --------------------------------------------------------------------- ${NAME} references

_NAME_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_NAME_REST = _NAME_FIRST + "0123456789"
_NAME_FIRST_B = _NAME_FIRST.encode()
_NAME_REST_B = _NAME_REST.encode()


def name_end(text: str | bytes, start: int) -> int:
    """The index just after the variable name (``[A-Za-z_][A-Za-z0-9_]*``) that starts at
    ``start``; ``start`` itself when none does."""
    first, rest = (
        (_NAME_FIRST, _NAME_REST) if isinstance(text, str) else (_NAME_FIRST_B, _NAME_REST_B)
    )
    n = len(text)
    if start >= n or text[start : start + 1] not in first:  # type: ignore[operator]
        return start
    k = start + 1
    while k < n and text[k : k + 1] in rest:  # type: ignore[operator]
        k += 1
    return k


def referenced_vars(data: bytes) -> list[str]:
    """The names of the environment variables the policy file references (``${NAME``),
    sorted; what the cache key hashes the values of."""
    names = set()
    i = data.find(b"${")
    while i >= 0:
        end = name_end(data, i + 2)
        if end > i + 2:
            names.add(data[i + 2 : end].decode())
            i = data.find(b"${", end)
        else:
            i = data.find(b"${", i + 1)
    return sorted(names)


def interpolated(value: str) -> bool:
    """A string scalar that interpolation rewrites (``${...}`` or ``$$``): any ``$``."""
    return "$" in value


# ------------------------------------------------------------------ the validated cache


def cache_root() -> str:
    """pgbackup's own cache directory: ``$XDG_CACHE_HOME/pgbackup`` (``~/.cache/pgbackup``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache"), "pgbackup")


def cache_dir() -> str:
    return os.path.join(cache_root(), "validated")


def blake2b(digest_size: int) -> Any:
    """A BLAKE2b hasher: hashlib's own (``hashlib.blake2b`` *is* ``_blake2.blake2b``,
    CPython's built-in module), taken without importing ``hashlib``, which loads OpenSSL
    (~5 ms, paid once per archived or restored WAL segment on the fast paths)."""
    try:
        from _blake2 import blake2b as hasher
    except ImportError:  # an interpreter without the built-in module
        from hashlib import blake2b as hasher
    return hasher(digest_size=digest_size)


def cache_key(policy_path: str, data: bytes, schema: bytes, env: Mapping[str, str]) -> str:
    """The entry name of the policy file at ``policy_path`` (absolute, symlinks resolved)
    holding ``data``, validated against ``schema``: it hashes pgbackup's version, the entry
    format, the schema, the path, the bytes and the values of the referenced variables."""
    from pgbackup import __version__

    h = blake2b(digest_size=32)
    h.update(_KEY_PREFIX + __version__.encode() + b"\0")
    h.update(schema)
    h.update(b"\0" + policy_path.encode() + b"\0")
    h.update(len(data).to_bytes(8, "little") + data)
    for name in referenced_vars(data):
        value = env.get(name)
        h.update(name.encode() + b"\0")
        h.update(b"\x01unset" if value is None else b"=" + value.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def encode_entry(document: object) -> bytes:
    """An entry holding ``document`` (the parsed, not interpolated policy). ValueError when
    it holds what a cache entry must not (a YAML date, say: that policy is simply
    validated every time)."""
    import marshal

    if not _plain(document):
        raise ValueError("only str, int, float, bool, None, lists and string-keyed mappings")
    return marshal.dumps({"document": document})


def read_entry(key: str) -> object:
    """The document of the entry ``key``, or None (absent, unreadable, or not an entry)."""
    import marshal

    try:
        with open(os.path.join(cache_dir(), key), "rb") as f:
            entry = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(entry, dict):
        return None
    document = entry.get("document")
    return document if _plain(document) else None


def _plain(value: object) -> bool:
    """JSON's kinds of value only (what YAML's safe loader gives for a policy)."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) is list:
        return all(_plain(v) for v in value)  # type: ignore[attr-defined]
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())  # type: ignore[attr-defined]
    return False
