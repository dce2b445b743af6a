"""extract's request: the names and flags read, the request checked, and what the
live server says the dump does not need (the sparse plan). Pure or read-only: nothing
here restores, starts or writes anything, so it is what the unit tests exercise; the
package docstring (pgbackup/operations/extract/__init__.py) tells the whole story.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgbackup.errors import PgBackupError, UsageError
from pgbackup.ui import LOG

FORMATS = ("custom", "plain")
#: Databases always restored whole: the templates (WAL replay of CREATE DATABASE may copy
#: one) and ``postgres``, where the recovery checks connect.
ALWAYS_KEPT = ("template0", "template1", "postgres")
FIRST_NORMAL_OID = 16384  # FirstNormalObjectId: below it, catalogs and initdb's objects


class ExtractError(PgBackupError):
    exit_code = 1


# --- names --------------------------------------------------------------------------------


def parse_qualified(text: str, what: str = "--table") -> tuple[str, str]:
    """``SCHEMA.TABLE`` as PostgreSQL reads it: unquoted parts fold to lower case, quoted
    ones are taken as written (``"My Schema"."Users"``); no schema means ``public``."""
    parts: list[str] = []
    i, s = 0, text.strip()
    while True:
        while i < len(s) and s[i].isspace():
            i += 1
        if i < len(s) and s[i] == '"':
            j, buf = i + 1, []
            while True:
                k = s.find('"', j)
                if k < 0:
                    raise UsageError(f"{what} {text!r}: unbalanced double quote")
                buf.append(s[j:k])
                if s[k + 1 : k + 2] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            part = "".join(buf)
            while i < len(s) and s[i].isspace():
                i += 1
        else:
            k = s.find(".", i)
            k = len(s) if k < 0 else k
            part = s[i:k].strip().lower()
            if '"' in part:
                raise UsageError(f"{what} {text!r}: a quote in the middle of a name")
            i = k
        if not part:
            raise UsageError(
                f"{what} {text!r} is not a name", hint="write SCHEMA.TABLE, e.g. public.users"
            )
        parts.append(part)
        if i >= len(s):
            break
        if s[i] != ".":
            raise UsageError(f"{what} {text!r}: expected a dot after {part!r}")
        i += 1
    if len(parts) > 2:
        raise UsageError(
            f"{what} {text!r} has more than two parts",
            hint="write SCHEMA.TABLE (the database is --db)",
        )
    return ("public", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def shown(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- the request and its result -----------------------------------------------------------


@dataclass
class Request:
    database: str
    tables: list[tuple[str, str]]
    schemas: list[str]
    kind: str
    value: Any
    inclusive: bool = True
    backup: str | None = None
    output: Path | None = None
    fmt: str = "custom"
    into_db: str | None = None
    user: str | None = None
    docker: bool = False  # the scratch server in a container (drill --docker's image)
    image: str | None = None

    def objects(self) -> list[str]:
        return [shown(*t) for t in self.tables] + [f"schema {s}" for s in self.schemas]


@dataclass
class ExtractResult:
    target: str
    database: str
    objects: list[str]
    recovery_target: dict[str, Any]
    started_at: str
    status: str = "failed"
    destination: dict[str, Any] = field(default_factory=dict)
    backup_id: str | None = None
    recovered_to: dict[str, Any] = field(default_factory=dict)
    restored: dict[str, Any] = field(default_factory=dict)
    skipped_foreign_keys: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def what(self) -> str:
        return ", ".join(self.objects) if self.objects else "every object"


def check_request(req: Request) -> None:
    """Everything wrong with the flags, before anything is read or written."""
    if not req.database.strip():
        raise UsageError("--db is empty", hint="name the database the objects are in")
    if (req.output is None) == (req.into_db is None):
        raise UsageError(
            "give exactly one destination: --output FILE (a pg_dump archive) or --into-db NEWNAME "
            "(a new database on the live server)"
        )
    if req.fmt not in FORMATS:
        raise UsageError(f"--format {req.fmt!r}: must be one of {', '.join(FORMATS)}")
    if req.output is not None:
        out = req.output
        if out.exists() or out.is_symlink():
            raise UsageError(f"--output {out} exists; extract never overwrites a file")
        if not out.parent.is_dir():
            raise UsageError(f"--output {out}: the directory {out.parent} does not exist")
        if not os.access(out.parent, os.W_OK):
            raise UsageError(f"--output {out}: cannot write into {out.parent}")
    if req.into_db is not None:
        name = req.into_db
        if not name.strip() or len(name.encode()) > 63 or "\0" in name:
            raise UsageError(
                f"--into-db {name!r} is not a database name (1 to 63 bytes)",
            )
    if req.kind is None:
        raise UsageError(
            "extract needs a recovery target: --target-time, --target-lsn, --target-xid, "
            "--target-name or --target latest|immediate",
            hint="e.g. --target-time '2026-11-23 14:30:00+01:00'",
        )


# --- which files the dump needs -------------------------------------------------------------

#: The relations a dump of the asked objects reads: the tables (and every relation of the
#: asked schemas), their TOAST tables and TOAST indexes, the sequences they own.
NEEDED_SQL = """
WITH asked AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%(s)s::text[], %(t)s::text[]))
       OR n.nspname = ANY(%(schemas)s::text[])
), toast AS (
    SELECT reltoastrelid AS oid FROM pg_class
    WHERE oid IN (SELECT oid FROM asked) AND reltoastrelid <> 0
), needed AS (
    SELECT oid FROM asked
    UNION SELECT oid FROM toast
    UNION SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM toast)
    UNION SELECT d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
            AND d.refobjid IN (SELECT oid FROM asked) AND d.deptype IN ('a', 'i')
)
"""


def needed_params(req: Request) -> dict[str, Any]:
    return {
        "s": [t[0] for t in req.tables],
        "t": [t[1] for t in req.tables],
        "schemas": list(req.schemas),
    }


@dataclass
class SparsePlan:
    """Which members of the base backup's tar stream are restored as sparse files."""

    database_oid: int | None
    skip_databases: dict[int, str]  # oid -> name, as the live server names them
    skip_nodes: set[int]  # relfilenodes in the wanted database that the dump does not read
    sparse_members: list[str] = field(default_factory=list)

    def __call__(self, member: str) -> bool:
        name = member[2:] if member.startswith("./") else member
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != "base" or not parts[1].isdigit():
            return False
        oid = int(parts[1])
        hit = False
        if oid in self.skip_databases:
            hit = True
        elif oid == self.database_oid and not parts[2].endswith("_init"):
            digits = parts[2].split("_", 1)[0].split(".", 1)[0]
            hit = digits.isdigit() and int(digits) in self.skip_nodes
        if hit:
            self.sparse_members.append(name)
        return hit

    def sparse_databases_seen(self) -> set[int]:
        return {int(m.split("/")[1]) for m in self.sparse_members} & set(self.skip_databases)

    def sparse_nodes_seen(self) -> set[int]:
        out = set()
        for m in self.sparse_members:
            _, db, file = m.split("/")
            if int(db) == self.database_oid:
                out.add(int(file.split("_", 1)[0].split(".", 1)[0]))
        return out


def live_conninfo(policy: Any, target: Any, user: str | None) -> dict[str, Any] | None:
    """The target's live server, or None when it is not running (a sandbox is never
    started for an extraction)."""
    if target.sandbox is not None:
        from pgbackup.postgres.sandbox import Sandbox

        sandbox = Sandbox(policy, target)
        cluster = sandbox.cluster()
        if not cluster.is_running():
            return None
        info = sandbox.conninfo(cluster)
    else:
        info = dict(target.connection)
    if user:
        info["user"] = user
    return info


def sparse_plan(conninfo: dict[str, Any] | None, req: Request) -> SparsePlan | None:
    """What the live server says the dump does not need; None when it cannot say."""
    if conninfo is None:
        LOG.info("the live server is not reachable: the scratch restore is a whole one")
        return None
    from pgbackup.postgres.connection import connect

    try:
        with connect({**conninfo, "dbname": conninfo.get("dbname") or "postgres"}) as conn:
            dbs = {str(n): int(o) for o, n in conn.execute("SELECT oid, datname FROM pg_database")}
    except PgBackupError as exc:
        LOG.info("cannot ask the live server what to leave out (%s): a whole restore", exc)
        return None
    keep = {req.database, *ALWAYS_KEPT}
    plan = SparsePlan(
        database_oid=dbs.get(req.database),
        skip_databases={oid: name for name, oid in dbs.items() if name not in keep},
        skip_nodes=set(),
    )
    if plan.database_oid is None or not (req.tables or req.schemas):
        return plan  # the whole database (or dropped since: its files are unknown here)
    try:
        with connect({**conninfo, "dbname": req.database}) as conn:
            rows = conn.execute(
                NEEDED_SQL + "SELECT pg_relation_filenode(c.oid) FROM pg_class c "
                f"WHERE c.oid >= {FIRST_NORMAL_OID} AND c.oid NOT IN (SELECT oid FROM needed) "
                "AND pg_relation_filenode(c.oid) IS NOT NULL",
                needed_params(req),
            ).fetchall()
        plan.skip_nodes = {int(r[0]) for r in rows}
    except PgBackupError as exc:
        LOG.info("cannot read the relations of %s on the live server (%s)", req.database, exc)
    except Exception as exc:  # psycopg's errors: a role without CONNECT, say
        LOG.info("cannot read the relations of %s on the live server (%s)", req.database, exc)
    return plan
