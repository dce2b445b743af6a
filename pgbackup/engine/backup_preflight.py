"""Before a backup copies anything: can this server give one, and what does an incremental
build on?

Each refusal says precisely what is missing and how to fix it (wal_level, the REPLICATION
attribute, WAL senders, in-place tablespaces; PostgreSQL 17+ and ``summarize_wal`` for an
incremental), from the facts one preflight query read (``postgres.connection``).
"""

from __future__ import annotations

from typing import Any

from pgbackup.engine.repository import BackupInfo, Repository
from pgbackup.errors import BackupError, PostgresError
from pgbackup.postgres.connection import ServerFacts, describe
from pgbackup.postgres.majors import unsupported


def preflight(facts: ServerFacts, conninfo: dict[str, Any]) -> None:
    """Say precisely what is missing before copying anything."""
    where = describe(conninfo)
    refusal = unsupported(facts.major, f"{where}: the server")
    if refusal is not None:
        raise refusal
    if facts.wal_level not in ("replica", "logical"):
        raise PostgresError(
            f"{where}: wal_level is {facts.wal_level!r}; a base backup needs 'replica' or 'logical'",
            hint="ALTER SYSTEM SET wal_level = 'replica'; then restart the server",
        )
    if not facts.can_replicate:
        raise PostgresError(
            f"{where}: role {conninfo.get('user')!r} lacks the REPLICATION attribute",
            hint=f"ALTER ROLE {conninfo.get('user')} REPLICATION;",
        )
    if facts.max_wal_senders < 2:
        raise PostgresError(
            f"{where}: max_wal_senders is {facts.max_wal_senders}; a backup needs two WAL "
            "senders (one copies the files, one streams the WAL written meanwhile)",
            hint="ALTER SYSTEM SET max_wal_senders = 10; then restart the server",
        )
    in_place = [t for t in facts.tablespaces if not str(t.get("location") or "").startswith("/")]
    if in_place:
        names = ", ".join(f"{t['name']} (oid {t['oid']})" for t in in_place)
        raise PostgresError(
            f"{where}: in-place tablespace(s) {names}: pg_basebackup skips them without an "
            "error, so a backup would restore without their files",
            hint="move their tables to a tablespace with a location (ALTER TABLE ... SET "
            "TABLESPACE) or to pg_default; in-place tablespaces are a developer setting "
            "(allow_in_place_tablespaces)",
        )


def incremental_preflight(facts: ServerFacts, conninfo: dict[str, Any]) -> None:
    """An incremental backup needs PostgreSQL 17+ with ``summarize_wal = on``; refused
    before anything is stored, with the fix."""
    where = describe(conninfo)
    if facts.major < 17:
        raise PostgresError(
            f"{where}: PostgreSQL {facts.version} cannot take incremental backups "
            "(pg_basebackup --incremental came with PostgreSQL 17)",
            hint="take full backups (pgbackup backup --type full), or upgrade to 17 or later",
        )
    if facts.summarize_wal != "on":
        raise PostgresError(
            f"{where}: summarize_wal is {facts.summarize_wal or 'off'}; an incremental "
            "backup needs the WAL summaries it writes",
            hint="ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); then take a "
            "full backup, on which the next incremental builds",
        )
    # Tablespaces need nothing more: pg_basebackup --incremental -Ft writes each as
    # <oid>.tar like a full backup (in-place ones are refused by preflight for every
    # backup), and a restore combines them with pg_combinebackup -T (engine/combine.py).


def choose_parent(repo: Repository, target: str, facts: ServerFacts) -> BackupInfo:
    """The backup an incremental builds on: the newest complete one of the same cluster."""
    same = [
        b
        for b in repo.complete_backups(target)
        if b.metadata.get("system_identifier") == facts.system_identifier
    ]
    if not same:
        raise BackupError(
            f"target {target!r} has no complete backup of this cluster (system identifier "
            f"{facts.system_identifier}) for an incremental backup to build on",
            hint="take a full backup first: pgbackup backup --type full",
        )
    return same[-1]


def chain_of(parent: BackupInfo) -> list[str]:
    """The chain an incremental on ``parent`` belongs to, full backup first."""
    return [*(parent.metadata.get("chain") or []), parent.backup_id]
