"""The server a target's last backup met, remembered so that the next one starts sooner.

pg_basebackup's command line depends on three facts of the server: its major (which
pg_basebackup runs), its version and the compression methods it was built with (which
side compresses). A backup used to wait for the preflight query's answer (one psql: ~10 ms
of a 0.6 s backup on two cores, issue #15) before starting pg_basebackup. When the facts
of the last backup of the same target, through the same connection, are remembered here,
pg_basebackup starts at once and the preflight's answer is checked while it runs
(engine/backup.py): a refusal stops it and fails the backup as before, with nothing
stored; facts that would change its command line stop it and the backup starts again
from the server's own answer (:class:`ServerChanged`).

A cache, not a record: a missing, unreadable or outdated file only costs the wait. It
holds no password (the connection's key leaves it out) and not ``archive_command``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from pgbackup.policy.cache import cache_root
from pgbackup.postgres.connection import ServerFacts, to_dsn

FILE_NAME = "servers.json"


class ServerChanged(Exception):
    """The remembered facts would start pg_basebackup differently from the server's own
    answer: the backup starts again from ``facts``."""

    def __init__(self, facts: ServerFacts) -> None:
        super().__init__("the server's facts changed since the last backup")
        self.facts = facts


def _key(target: str, conninfo: dict[str, Any], pg_bin_dir: str | os.PathLike[str] | None) -> str:
    public = {k: v for k, v in conninfo.items() if k != "password"}
    return f"{target}\0{to_dsn(public)}\0{os.fspath(pg_bin_dir) if pg_bin_dir else ''}"


def _read() -> dict[str, Any]:
    try:
        with open(cache_root() / FILE_NAME, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(
    target: str, conninfo: dict[str, Any], pg_bin_dir: str | os.PathLike[str] | None
) -> ServerFacts | None:
    """The facts the last backup of ``target`` met through ``conninfo``, or None."""
    entry = _read().get(_key(target, conninfo, pg_bin_dir))
    if not isinstance(entry, dict):
        return None
    try:
        return ServerFacts(
            **{
                **entry,
                "tablespaces": tuple(entry.get("tablespaces") or ()),
                "wal_compression_methods": tuple(entry.get("wal_compression_methods") or ()),
            }
        )
    except TypeError:  # written by another version of ServerFacts
        return None


def remember(
    target: str,
    conninfo: dict[str, Any],
    pg_bin_dir: str | os.PathLike[str] | None,
    facts: ServerFacts,
) -> None:
    """Keep ``facts`` for the next backup (unless they are the ones kept); never fails."""
    entry = {**facts._asdict(), "archive_command": ""}
    entry = json.loads(json.dumps(entry))  # tuples as lists, as they read back
    key = _key(target, conninfo, pg_bin_dir)
    known = _read()
    if known.get(key) == entry:
        return
    known[key] = entry
    path = cache_root() / FILE_NAME
    tmp = path.with_name(f"{FILE_NAME}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(known, f)
        os.replace(tmp, path)  # a cache: no fsync; a torn file reads as empty
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
