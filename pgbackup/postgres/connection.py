"""psycopg 3 connections to a target, and the server facts a backup needs.

Passwords never pass through here: libpq reads PGPASSWORD, the passfile or
~/.pgpass itself, so they never appear in argv, logs or metadata.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from pgbackup.errors import PostgresError
from pgbackup.postgres.binaries import find_program

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


def explain_connect_error(conninfo: Mapping[str, Any], exc: Exception | str) -> PostgresError:
    """A connection failure (psycopg's exception or psql's message) with what to do."""
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


class ServerFacts(NamedTuple):
    """What we learn from the server before a backup; recorded in metadata. (A NamedTuple,
    not a dataclass: importing dataclasses costs every backup ~10 ms, issue #15.)"""

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
    #: The server's TimeZone: the zone in which PostgreSQL reads a recovery_target_time
    #: written without one (psql runs without PGTZ, so the client cannot override it).
    timezone: str | None = None
    #: The server's own tablespaces (not pg_default/pg_global): oid, name, location. What
    #: a backup must hold comes from here, not from the archives pg_basebackup wrote.
    tablespaces: tuple[dict[str, Any], ...] = ()
    #: ``summarize_wal`` (PostgreSQL 17+; None before): incremental backups need it on.
    summarize_wal: str | None = None
    #: The values ``wal_compression`` accepts (PostgreSQL 15+: ``pglz``, and ``lz4``/``zstd``
    #: exactly when the server was built with them); () before 15, where it is a boolean.
    #: Which side compresses a base backup follows from it (engine/streamcompress.py).
    wal_compression_methods: tuple[str, ...] = ()

    @property
    def major(self) -> int:
        return self.version_num // 10000


#: The settings a backup reads, in one scan of pg_settings: each scan builds the whole
#: view (~1.5 ms on the server), and ten subselects made the preflight query the slowest
#: step before pg_basebackup could start (issue #15). pg_settings gives raw values
#: (seconds, bytes), and hides superuser-only rows such as data_directory from other
#: roles (absent then); ``wal_compression``'s accepted values (PostgreSQL 15+) come from
#: its enumvals.
SETTINGS = (
    "wal_level",
    "archive_mode",
    "archive_command",
    "archive_timeout",
    "wal_segment_size",
    "data_directory",
    "max_wal_senders",
    "summarize_wal",
    "wal_compression",
)

# Every fact in one round trip.
FACTS_SQL = (
    "SELECT current_setting('server_version_num'), current_setting('server_version'), "
    "(SELECT system_identifier FROM pg_control_system()), "
    "(SELECT timeline_id FROM pg_control_checkpoint()), "
    "pg_is_in_recovery(), "
    "(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), "
    "(SELECT sum(pg_database_size(oid)) FROM pg_database), "
    "current_setting('TimeZone'), "
    "(SELECT coalesce(json_agg(json_build_object('oid', oid, 'name', spcname, "
    "'location', pg_tablespace_location(oid)) ORDER BY oid), '[]') FROM pg_tablespace "
    "WHERE spcname NOT IN ('pg_default', 'pg_global')), "
    "(SELECT json_object_agg(name, CASE WHEN name = 'wal_compression' THEN to_json(enumvals) "
    "ELSE to_json(setting) END) FROM pg_settings WHERE name IN ("
    + ", ".join(f"'{n}'" for n in SETTINGS)
    + "))"
)


def _psql(
    program: str, conninfo: Mapping[str, Any], command: str, *, replication: bool = False
) -> subprocess.Popen[str]:
    """Start ``psql`` running one command: no ~/.psqlrc, no prompt, CSV without header.

    psql rather than psycopg because a backup needs one query and one handshake before
    pg_basebackup starts, and importing psycopg alone takes a tenth of a second, which is
    a tenth of a backup of a 750 MiB cluster; psql answers in ~15 ms.
    """
    params = dict(conninfo)
    params.setdefault("connect_timeout", 10)
    dsn = to_dsn(params) + (" replication='true'" if replication else "")
    return subprocess.Popen(
        [
            program,
            "-X",
            "-q",
            "-w",
            "-t",
            "--csv",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-c",
            command,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Without PGTZ the session's TimeZone is the server's own.
        env={
            **{k: v for k, v in os.environ.items() if k != "PGTZ"},
            "PGAPPNAME": "pgbackup",
        },
    )


def _psql_error(proc: subprocess.Popen[str], stderr: str) -> str:
    """psql's first error line, without its ``psql: error:`` prefix."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = lines[0] if lines else f"psql exited with status {proc.returncode}"
    for prefix in ("psql: error: ", "psql:<stdin>:1: ", "psql: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _facts_from(conninfo: Mapping[str, Any], proc: subprocess.Popen[str]) -> ServerFacts:
    out, err = proc.communicate()
    if proc.returncode == 2:  # psql: the connection failed
        raise explain_connect_error(conninfo, _psql_error(proc, err))
    if proc.returncode != 0:
        raise PostgresError(
            f"{describe(conninfo)}: cannot read the server's settings: {_psql_error(proc, err)}",
            hint="the role needs to read pg_settings, pg_control_system() and pg_database_size(); "
            "a superuser or a role in pg_monitor can",
        )
    rows = list(csv.reader(io.StringIO(out)))
    if len(rows) != 1 or len(rows[0]) != 10:
        raise PostgresError(f"{describe(conninfo)}: unexpected answer from psql: {out[:200]!r}")
    (
        version_num,
        version,
        sysid,
        timeline,
        in_recovery,
        can_replicate,
        database_size,
        timezone,
        tablespaces,
        settings_json,
    ) = rows[0]
    settings: dict[str, Any] = json.loads(settings_json or "{}")
    return ServerFacts(
        version_num=int(version_num),
        version=version,
        system_identifier=sysid,
        timeline=int(timeline),
        wal_level=settings.get("wal_level") or "?",
        archive_mode=settings.get("archive_mode") or "?",
        archive_command=settings.get("archive_command") or "",
        archive_timeout=int(settings.get("archive_timeout") or 0),
        wal_segment_size=int(settings.get("wal_segment_size") or 16 * 1024 * 1024),
        data_directory=settings.get("data_directory") or None,
        in_recovery=in_recovery == "t",
        can_replicate=can_replicate == "t",
        max_wal_senders=int(settings.get("max_wal_senders") or 0),
        database_size=int(database_size or 0),
        timezone=timezone or None,
        tablespaces=tuple(json.loads(tablespaces or "[]")),
        summarize_wal=settings.get("summarize_wal") or None,
        # A list from 15 on; null before, where wal_compression is a boolean.
        wal_compression_methods=tuple(settings.get("wal_compression") or ()),
    )


def server_facts(conninfo: Mapping[str, Any], pg_bin_dir: Any) -> ServerFacts:
    """What the server says about itself (one query through psql)."""
    program = find_program("psql", None, pg_bin_dir)
    return _facts_from(conninfo, _psql(program, conninfo, FACTS_SQL))


def replication_refused(conninfo: Mapping[str, Any], text: str) -> PostgresError | None:
    """The error, with the pg_hba.conf line to add, when ``text`` (psql's or
    pg_basebackup's message) says the server refused a replication connection; else None.
    The server's words: "no pg_hba.conf entry for replication connection from host ..."
    (src/backend/libpq/auth.c, ClientAuthentication)."""
    if "pg_hba.conf" not in text:
        return None
    return PostgresError(
        f"replication connection refused for {describe(conninfo)}: {text}",
        hint=f"add to pg_hba.conf: host replication {conninfo.get('user', 'USER')} "
        "<backup host>/32 scram-sha-256, then SELECT pg_reload_conf()",
    )


def _replication_problem(
    conninfo: Mapping[str, Any], proc: subprocess.Popen[str]
) -> PostgresError | None:
    _out, err = proc.communicate()
    if proc.returncode == 0:
        return None
    text = _psql_error(proc, err)
    refused = replication_refused(conninfo, text)
    if refused is not None:
        return refused
    if proc.returncode == 2:
        return explain_connect_error(conninfo, text)
    return PostgresError(f"replication handshake with {describe(conninfo)} failed: {text}")


def preflight_facts(
    conninfo: Mapping[str, Any], pg_bin_dir: Any
) -> tuple[ServerFacts, PostgresError | None]:
    """(server facts, what is wrong with a replication connection or None), both at once.

    The replication connection is opened as pg_basebackup will open it (IDENTIFY_SYSTEM),
    so whether pg_hba.conf lets this user in for replication is known before a byte is
    copied. Its problem is returned, not raised: the facts may explain it more precisely
    (a role without the REPLICATION attribute is refused too). The two psql processes
    run side by side.
    """
    program = find_program("psql", None, pg_bin_dir)
    facts_proc = _psql(program, conninfo, FACTS_SQL)
    replication_proc = _psql(program, conninfo, "IDENTIFY_SYSTEM", replication=True)
    try:
        facts = _facts_from(conninfo, facts_proc)
    finally:
        problem = _replication_problem(conninfo, replication_proc)
    return facts, problem


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
