"""psycopg 3 connections to a target, and the server facts a backup needs.

Passwords never pass through here: libpq reads PGPASSWORD, the passfile or
~/.pgpass itself, so they never appear in argv, logs or metadata.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pgbackup.errors import PostgresError

# libpq keywords we pass on; everything else in a target's connection is ours.
LIBPQ_KEYS = ("host", "port", "user", "dbname", "passfile", "sslmode", "connect_timeout")


def describe(conninfo: Mapping[str, Any]) -> str:
    """``user@host:port/dbname`` for messages (never a password)."""
    host = conninfo.get("host") or "local socket"
    return f"{conninfo.get('user', '?')}@{host}:{conninfo.get('port', 5432)}/{conninfo.get('dbname', '?')}"


def to_dsn(conninfo: Mapping[str, Any]) -> str:
    """A libpq keyword/value string (values quoted) for programs such as pg_basebackup."""
    parts = []
    for key in LIBPQ_KEYS:
        if conninfo.get(key) not in (None, ""):
            value = str(conninfo[key]).replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"{key}='{value}'")
    return " ".join(parts)


def explain_connect_error(conninfo: Mapping[str, Any], exc: Exception) -> PostgresError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = describe(conninfo)
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = "set PGPASSWORD in the environment or add the password to the passfile (~/.pgpass)"
    elif "no pg_hba.conf entry" in low:
        hint = "add a pg_hba.conf line for this user and host, then reload the server"
    elif "does not exist" in low:
        hint = "check user and dbname of the target's connection in backup.yaml"
    elif "connection refused" in low or "could not connect" in low or "timeout" in low:
        hint = "is the server running and listening there? check host/port (PGHOST/PGPORT)"
    else:
        hint = "check the target's connection settings in backup.yaml"
    return PostgresError(f"cannot connect to {where}: {text}", hint=hint)


@contextlib.contextmanager
def connect(conninfo: Mapping[str, Any], **kwargs: Any) -> Iterator[Any]:
    """An autocommit psycopg connection, with connection failures explained."""
    import psycopg

    params = {k: v for k, v in conninfo.items() if k in LIBPQ_KEYS and v not in (None, "")}
    params.setdefault("connect_timeout", 10)
    try:
        conn = psycopg.connect(autocommit=True, **params, **kwargs)
    except psycopg.OperationalError as exc:
        raise explain_connect_error(conninfo, exc) from None
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class ServerFacts:
    """What we learn from the server before a backup; recorded in metadata."""

    version_num: int
    version: str
    system_identifier: str
    timeline: int
    wal_level: str
    archive_mode: str
    archive_command: str
    archive_timeout: int
    wal_segment_size: int
    data_directory: str | None
    in_recovery: bool
    can_replicate: bool
    max_wal_senders: int
    database_size: int

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_facts(conn: Any) -> ServerFacts:
    def one(query: str) -> Any:
        row = conn.execute(query).fetchone()
        return row[0] if row else None

    settings = dict(
        conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level','archive_mode',"
            "'archive_command','archive_timeout','wal_segment_size','max_wal_senders')"
        ).fetchall()
    )
    can_replicate = bool(
        one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
    )
    try:
        data_directory = one("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
    except Exception:  # non-superusers may not see it
        data_directory = None
    return ServerFacts(
        version_num=int(one("SHOW server_version_num")),
        version=str(one("SHOW server_version")),
        system_identifier=str(one("SELECT system_identifier FROM pg_control_system()")),
        timeline=int(one("SELECT timeline_id FROM pg_control_checkpoint()")),
        wal_level=settings.get("wal_level", "?"),
        archive_mode=settings.get("archive_mode", "?"),
        archive_command=settings.get("archive_command", ""),
        archive_timeout=int(settings.get("archive_timeout", 0) or 0),
        wal_segment_size=int(settings.get("wal_segment_size", 16 * 1024 * 1024)),
        data_directory=data_directory,
        in_recovery=bool(one("SELECT pg_is_in_recovery()")),
        can_replicate=can_replicate,
        max_wal_senders=int(settings.get("max_wal_senders", 0)),
        database_size=int(one("SELECT sum(pg_database_size(oid)) FROM pg_database") or 0),
    )


def check_replication_connection(conninfo: Mapping[str, Any]) -> None:
    """Open a physical replication connection, as pg_basebackup will, and run IDENTIFY_SYSTEM.

    This is how we learn, before copying a byte, whether pg_hba.conf lets this user in
    for replication.
    """
    import psycopg

    params = {k: v for k, v in conninfo.items() if k in LIBPQ_KEYS and v not in (None, "")}
    params.setdefault("connect_timeout", 10)
    params["replication"] = "true"
    try:
        conn = psycopg.Connection.connect(autocommit=True, **params)
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[0]
        if "pg_hba.conf" in text:
            raise PostgresError(
                f"replication connection refused for {describe(conninfo)}: {text}",
                hint=f"add to pg_hba.conf: host replication {conninfo.get('user', 'USER')} "
                "<backup host>/32 scram-sha-256, then SELECT pg_reload_conf()",
            ) from None
        raise explain_connect_error(conninfo, exc) from None
    try:
        result = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
        from psycopg.pq import ExecStatus

        if result.status not in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
            msg = (result.error_message or b"").decode(errors="replace").strip()
            raise PostgresError(f"replication handshake with {describe(conninfo)} failed: {msg}")
    finally:
        conn.close()


def table_checksums(conn: Any, tables: list[str] | None = None) -> dict[str, str]:
    """md5 of each table's rows in a stable order: equal checksums mean equal contents."""
    if tables is None:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
            ).fetchall()
        ]
    result = {}
    for table in tables:
        row = conn.execute(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
            f"FROM {table} t"
        ).fetchone()
        result[table] = row[0] if row else ""
    return result
