"""Point-in-time extraction: a database's tables as they were at a recovery target.

"Give me ``users`` as it was at 14:30": the backup is restored into a scratch cluster
(a free loopback port, archiving off, the drill machinery), recovered to the target with
restore's own checks (the window first, then the WAL chain, then the point reached),
the objects are dumped with the server's own ``pg_dump``, and the scratch cluster is
removed, also on failure, Ctrl-C and SIGTERM. The dump goes to ``--output FILE``
(custom or plain format) or into a NEW database on the target's live server
(``--into-db``), created by pgbackup and never one that already exists.

Only what the dump needs is written (pgBackRest's ``--db-include`` idea, one level
finer): the databases and relations the live server names as *not* needed are restored
as sparse files of their size (read past in the stream, no data written), so WAL replay
still finds every file and full-page images rebuild every page it touches. Everything the
live server does not know about is written in full, and after recovery the scratch
cluster itself is asked which files the dump reads: if one of them was left sparse (the
database or table was re-created since the backup) the extraction restores again, whole.
Databases left sparse are refused by the scratch server's own pg_hba.conf.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgbackup.engine.repository import Repository, iso
from pgbackup.errors import PgBackupError, PostgresError, RestoreError, UsageError
from pgbackup.signals import terminate_as_interrupt
from pgbackup.ui import LOG, LOG_FILE_ONLY, human_bytes

FORMATS = ("custom", "plain")
#: Databases always restored whole: the templates (WAL replay of CREATE DATABASE may copy
#: one) and ``postgres``, where the recovery checks connect.
ALWAYS_KEPT = ("template0", "template1", "postgres")
FIRST_NORMAL_OID = 16384  # FirstNormalObjectId: below it, catalogs and initdb's objects


#: The scratch server's own settings. Recovery to a target pauses there (hot standby) and
#: pg_dump reads the paused server: no end-of-recovery checkpoint, no restartpoints, no
#: background writes, so pages that replay rebuilt stay in memory and are thrown away
#: with the server (a page written into a file left sparse fragments it, and removing a
#: file of many fragments costs more than writing it whole did: bench/extract.py). Memory
#: and listening are bounded whatever the source's postgresql.conf says.
SCRATCH_SETTINGS: dict[str, Any] = {
    "autovacuum": "off",
    "hot_standby": "on",
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "512MB",
    "huge_pages": "off",
    "bgwriter_lru_maxpages": 0,
    "checkpoint_timeout": "1d",
    "max_wal_size": "64GB",
}


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


# --- the scratch cluster --------------------------------------------------------------------


class Scratch:
    """One scratch restore and its server; ``close`` leaves nothing behind."""

    def __init__(self) -> None:
        from pgbackup.operations.drill import scratch_root

        self.root = scratch_root("pgbackup-extract-")
        self.cluster: Any = None

    def stop(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop("immediate")
            if hasattr(self.cluster, "remove"):  # a container
                with contextlib.suppress(Exception):
                    self.cluster.remove()
            self.cluster = None

    def close(self) -> None:
        t0 = time.monotonic()
        self.stop()
        self.reap()
        t1 = time.monotonic()
        shutil.rmtree(self.root, ignore_errors=True)
        self.reap()
        LOG.debug("scratch stop %.2fs, rmtree %.2fs", t1 - t0, time.monotonic() - t1)

    def reap(self, timeout: float = 5.0) -> None:
        """End every process whose command line names the scratch directory. Ctrl-C
        during ``pg_ctl start`` leaves a postmaster that has no postmaster.pid yet (so
        ``pg_ctl stop`` sees nothing) and would come up after we are gone. SIGQUIT is
        PostgreSQL's immediate shutdown; SIGKILL for what outlives it."""
        deadline = time.monotonic() + timeout
        sig = signal.SIGQUIT
        while True:
            pids = processes_naming(self.root)
            if not pids:
                return
            if time.monotonic() > deadline + timeout:
                LOG.warning("processes %s outlived SIGKILL; not waiting for them", pids)
                return
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            time.sleep(0.1)


def processes_naming(path: Path) -> list[int]:
    """Pids whose command line contains ``path`` (Linux's /proc; none elsewhere)."""
    marker = str(path).encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(name))
    return found


def restore_and_recover(
    policy: Any,
    target: Any,
    storage: Any,
    scratch: Scratch,
    info: Any,
    settings: dict[str, Any],
    expected: dict[str, Any],
    plan: SparsePlan | None,
    database: str,
    req: Request | None = None,
) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """Restore (sparse where ``plan`` says) and recover the scratch cluster; returns what
    was restored, the point reached, and the seconds each step took."""
    from pgbackup.engine.restore import run_restore
    from pgbackup.engine.restore_command import wait_for_recovery_end
    from pgbackup.formats.untar import SPARSE
    from pgbackup.operations.drill import _recovery_failure
    from pgbackup.postgres.cluster import Cluster, free_port, hand_over

    data = scratch.root / "data"
    if data.exists():
        shutil.rmtree(data)
    t0 = time.monotonic()
    port = free_port()
    major = int(info.metadata["server_version_num"]) // 10000
    cluster: Any = None
    if req is not None and req.docker:
        # The container sees only the data directory (and the policy and repository
        # read-only): the scratch pg_hba.conf goes inside it, and the container is made
        # once the restore wrote restore_command (drill_cluster points it at the image's
        # pgbackup).
        hba = data / "pgbackup_extract_hba.conf"
    else:
        cluster = Cluster(data, port, major=major, bin_dir=target.pg_bin_dir)
        hba = scratch.root / "pg_hba.conf"
        hba.write_text(scratch_hba(database, str(cluster.conninfo()["user"])))
        hand_over(hba, cluster.os_user, 0o600)
    token = SPARSE.set(plan)
    try:
        restored = run_restore(
            policy,
            target,
            info.backup_id,
            data,
            start=False,
            port=port,
            archive=False,
            recovery_settings={**settings, **SCRATCH_SETTINGS, "hba_file": str(hba)},
            storage=storage,
        )
    finally:
        SPARSE.reset(token)
    if cluster is None:
        from pgbackup.postgres.docker import drill_cluster

        cluster = drill_cluster(policy, data, port, major, req.image if req else None)
        hba.write_text(scratch_hba(database, str(cluster.conninfo()["user"])))
        hand_over(hba, cluster.os_user, 0o600)
    sparse_bytes = 0
    for member in plan.sparse_members if plan else []:
        with contextlib.suppress(OSError):
            sparse_bytes += (data / member).stat().st_size
    stats = {
        "raw_bytes": restored.raw_bytes,
        "stored_bytes": restored.stored_bytes,
        "written_bytes": max(0, restored.raw_bytes - sparse_bytes),
        "left_out_bytes": sparse_bytes,
        "left_out_files": len(plan.sparse_members) if plan else 0,
    }
    restore_s = time.monotonic() - t0
    t1 = time.monotonic()
    scratch.cluster = cluster
    LOG.info("recovering the scratch cluster on port %d", port)
    try:
        scratch.cluster.start()
    except PgBackupError:
        reason = _recovery_failure(scratch.cluster)
        if reason:
            raise RestoreError(f"recovery stopped before reaching its target: {reason}") from None
        raise
    action = settings.get("recovery_target_action", "promote")
    recovered = wait_for_recovery_end(action=action, expected=expected)(scratch.cluster)
    return stats, recovered, restore_s, time.monotonic() - t1


def redo_panicked(scratch: Scratch) -> bool:
    """Did the scratch server's WAL replay PANIC (as opposed to stopping at a target it
    could not reach, which a whole restore would not change)?"""
    return scratch.cluster is not None and "PANIC:" in scratch.cluster.log_tail(200)


def scratch_hba(database: str, user: str) -> str:
    """The scratch server's pg_hba.conf: its superuser, from 127.0.0.1, to ``postgres``
    (recovery checks) and the database dumped; every other database, the ones left
    sparse among them, refuses connections (a paused server cannot ALTER DATABASE)."""
    names = '"postgres"' + ("" if database == "postgres" else f',"{database}"')
    if '"' in database:
        LOG.warning("database name %r has a double quote: pg_hba.conf cannot name it", database)
        names = "all"
    return (
        "# written by pgbackup extract: its own superuser, its own databases, nothing else\n"
        f'host {names} "{user}" 127.0.0.1/32 trust\n'
    )


def sparse_database_names(cluster: Any, plan: SparsePlan) -> list[str]:
    """Databases whose files were left out (pg_hba.conf refuses them)."""
    oids = sorted(plan.sparse_databases_seen())
    if not oids:
        return []
    rows = cluster.sql(
        f"SELECT datname FROM pg_database WHERE oid IN ({', '.join(map(str, oids))}) ORDER BY 1"
    )
    return [str(r[0]) for r in rows]


def check_objects(cluster: Any, req: Request, when: str) -> None:
    """The database, tables and schemas existed at the target, or a clear error naming them."""
    dbs = [str(r[0]) for r in cluster.sql("SELECT datname FROM pg_database ORDER BY 1")]
    if req.database not in dbs:
        names = ", ".join(d for d in dbs if d not in ("template0", "template1")) or "none"
        raise ExtractError(
            f"database {req.database!r} did not exist at {when} (databases then: {names})",
            hint="check --db; nothing was written",
        )
    with cluster.connect(req.database) as conn:
        missing = []
        for schema, name in req.tables:
            row = conn.execute(
                "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (schema, name),
            ).fetchone()
            if row is None:
                missing.append(f"table {shown(schema, name)}")
        for schema in req.schemas:
            if (
                conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
                is None
            ):
                missing.append(f"schema {schema}")
    if missing:
        raise ExtractError(
            f"{', '.join(missing)} did not exist in database {req.database!r} at {when}",
            hint="check the name (SCHEMA.TABLE) and the recovery target; nothing was written",
        )


def plan_held(cluster: Any, req: Request, plan: SparsePlan) -> str | None:
    """None when every file the dump reads was restored whole; else why not."""
    db_oid = cluster.sql(
        f"SELECT oid FROM pg_database WHERE datname = {quote_literal(req.database)}"
    )
    if not db_oid:
        return None  # the database did not exist: check_objects says so
    oid = int(db_oid[0][0])
    if oid in plan.sparse_databases_seen():
        return f"database {req.database} had another OID at the target (re-created since)"
    nodes = plan.sparse_nodes_seen()
    if oid != plan.database_oid or not nodes:
        return None
    try:
        with cluster.connect(req.database) as conn:
            rows = conn.execute(
                NEEDED_SQL
                + "SELECT c.oid::regclass::text, pg_relation_filenode(c.oid) FROM pg_class c "
                f"WHERE c.oid < {FIRST_NORMAL_OID} OR c.oid IN (SELECT oid FROM needed)",
                needed_params(req),
            ).fetchall()
    except Exception as exc:
        return f"the database could not be read ({str(exc).strip().splitlines()[0]})"
    hit = [str(r[0]) for r in rows if r[1] is not None and int(r[1]) in nodes]
    if hit:
        return f"{', '.join(hit[:3])} had other files at the target (rewritten since)"
    return None


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- dump and load --------------------------------------------------------------------------


def pattern(schema: str, name: str | None = None) -> str:
    """A pg_dump pattern that matches exactly this name (quoted: no wildcards, no folding)."""
    return quote_ident(schema) + ("" if name is None else "." + quote_ident(name))


def dump_argv(
    pg_dump: str, dsn: str, req: Request, fmt: str, file: Path, compress: int | None = None
) -> list[str]:
    """pg_dump's argv for the asked objects: exact names, each required to match."""
    argv = [pg_dump, "--dbname", dsn, "--format", fmt, "--file", str(file)]
    if compress is not None:
        argv += ["--compress", str(compress)]
    argv += ["--no-password", "--strict-names"]
    for schema, name in req.tables:
        argv += ["--table", pattern(schema, name)]
    for schema in req.schemas:
        argv += ["--schema", pattern(schema)]
    return argv


def run_program(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise PostgresError(f"{argv[0]} not found") from None
    if proc.returncode != 0:
        raise ExtractError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return proc.stdout


def foreign_keys_out(cluster: Any, req: Request) -> list[tuple[str, str, str, str]]:
    """Foreign keys of the extracted tables that point at tables not extracted:
    (schema, table, constraint, referenced). A new database has nothing to point at."""
    with cluster.connect(req.database) as conn:
        rows = conn.execute(
            NEEDED_SQL + "SELECT n.nspname, c.relname, con.conname, con.confrelid::regclass::text "
            "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE con.contype = 'f' AND con.conrelid IN (SELECT oid FROM needed) "
            "AND con.confrelid NOT IN (SELECT oid FROM needed)",
            needed_params(req),
        ).fetchall()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def restore_list(toc: str, drop: list[tuple[str, str, str, str]]) -> str:
    """pg_restore's --list with the given FK CONSTRAINT entries commented out."""
    marks = [f" FK CONSTRAINT {s} {t} {c} " for s, t, c, _ in drop]
    out = []
    for line in toc.splitlines():
        if any(m in line + " " for m in marks) and not line.startswith(";"):
            line = ";" + line
        out.append(line)
    return "\n".join(out) + "\n"


def create_database_sql(name: str, source: tuple[Any, ...]) -> str:
    """CREATE DATABASE with the source database's encoding and locale."""
    encoding, collate, ctype, provider, icu = source
    sql = (
        f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING {quote_literal(encoding)} "
        f"LC_COLLATE {quote_literal(collate)} LC_CTYPE {quote_literal(ctype)}"
    )
    if provider == "i" and icu:
        sql += f" LOCALE_PROVIDER icu ICU_LOCALE {quote_literal(icu)}"
    return sql


def check_into_db(conninfo: dict[str, Any] | None, req: Request, target: str) -> None:
    """--into-db: the live server answers, the name is free, and the role may create it."""
    from pgbackup.postgres.connection import connect, describe

    assert req.into_db is not None
    if conninfo is None:
        raise UsageError(
            f"--into-db needs the live server of {target!r}, and it is not running",
            hint="start it, or extract into a file with --output FILE",
        )
    with connect({**conninfo, "dbname": conninfo.get("dbname") or "postgres"}) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s), "
            "(SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user), current_user",
            (req.into_db,),
        ).fetchone()
    exists, may_create, role = row
    if exists:
        raise UsageError(
            f"database {req.into_db!r} already exists on {describe(conninfo)}; extract only "
            "creates a new database and never writes into an existing one",
            hint="choose another --into-db name (or drop that database first)",
        )
    if not may_create:
        raise UsageError(
            f"role {role!r} may not create databases on {describe(conninfo)}",
            hint=f"ALTER ROLE {role} CREATEDB; or connect as another role with --user NAME",
        )


# --- the command ----------------------------------------------------------------------------


def run_extract(
    policy: Any,
    target: Any,
    req: Request,
    *,
    storage: Any = None,
) -> ExtractResult:
    """Extract ``req`` from ``target``'s backups; raises a PgBackupError on failure, and
    records the run (success or failure) under ``<target>/runs/``."""
    import psycopg

    from pgbackup.engine.restore_command import (
        check_chain,
        check_window,
        choose_backup,
        recovery_settings,
        resolve_target_time,
    )
    from pgbackup.storage import open_storage

    check_request(req)
    t0 = time.monotonic()
    storage = storage or open_storage(policy.repository)
    repo = Repository(storage)
    kind, value = req.kind, req.value
    if kind == "time" and isinstance(value, str):
        value = req.value = resolve_target_time(repo, target.name, value)
    shown_value = value.isoformat(sep=" ") if isinstance(value, datetime) else value
    if kind == "lsn":
        from pgbackup.formats.lsn import format_lsn

        shown_value = format_lsn(value)
    result = ExtractResult(
        target=target.name,
        database=req.database,
        objects=req.objects(),
        recovery_target={"kind": kind, "value": shown_value},
        started_at=iso(datetime.now(UTC)),
        destination=(
            {"file": str(req.output), "format": req.fmt}
            if req.output is not None
            else {"database": req.into_db}
        ),
    )
    # Refused before anything is restored: a target outside the window, a hole in the WAL
    # the target lies beyond, an --into-db that exists or cannot be created.
    info = choose_backup(repo, target.name, req.backup, kind, value)
    if kind in ("time", "lsn"):
        check_window(policy, repo, target.name, kind, value)
    expected = check_chain(policy, repo, target.name, info, kind, value, inclusive=req.inclusive)
    live = live_conninfo(policy, target, req.user)
    if req.into_db is not None:
        check_into_db(live, req, target.name)
    result.backup_id = info.backup_id
    settings = recovery_settings(
        policy,
        target.name,
        kind=kind,
        value=value,
        action="pause",  # read where it stopped: see SCRATCH_SETTINGS
        timeline=None,
        inclusive=req.inclusive,
        until=expected.get("until"),
    )
    when = (
        f"the recovery target ({kind} {shown_value})"
        if kind != "latest"
        else "the end of the archive"
    )
    scratch: Scratch | None = None
    partial: Path | None = None
    created = False
    with terminate_as_interrupt():  # SIGTERM unwinds through the cleanup below too
        try:
            scratch = Scratch()
            plan = sparse_plan(live, req)
            t1 = time.monotonic()
            why: str | None = None
            try:
                stats, recovered, restore_s, recovery_s = restore_and_recover(
                    policy,
                    target,
                    storage,
                    scratch,
                    info,
                    settings,
                    expected,
                    plan,
                    req.database,
                    req,
                )
            except PgBackupError as exc:
                # Replay PANICs on a page left out only when a change came without its
                # full-page image (full_page_writes = off on the source): restore whole.
                if not (plan and plan.sparse_members and redo_panicked(scratch)):
                    raise
                why = f"recovery with files left out failed ({exc.message})"
                restore_s, recovery_s = time.monotonic() - t1, 0.0
            else:
                cluster = scratch.cluster
                closed = sparse_database_names(cluster, plan) if plan else []
                why = plan_held(cluster, req, plan) if plan else None
            if why:
                LOG.warning("%s: restoring the backup again, whole", why)
                scratch.stop()
                stats, recovered, restore_s2, recovery_s2 = restore_and_recover(
                    policy,
                    target,
                    storage,
                    scratch,
                    info,
                    settings,
                    expected,
                    None,
                    req.database,
                    req,
                )
                restore_s += restore_s2
                recovery_s += recovery_s2
                cluster, closed = scratch.cluster, []
            result.recovered_to = recovered
            result.restored = {
                **stats,
                "databases_left_out": closed,
                "restored_whole": bool(why) or plan is None,
            }
            result.timings["restore"] = round(restore_s, 3)
            result.timings["recovery"] = round(recovery_s, 3)
            check_objects(cluster, req, when)

            t2 = time.monotonic()
            from pgbackup.postgres.binaries import find_program
            from pgbackup.postgres.connection import to_dsn

            major = int(info.metadata["server_version_num"]) // 10000
            pg_dump = find_program("pg_dump", major, target.pg_bin_dir)
            dsn = to_dsn(cluster.conninfo(req.database))
            if req.output is not None:
                partial = req.output.with_name(f".{req.output.name}.pgbackup-partial")
                LOG.info("dumping %s into %s", result.what(), req.output)
                run_program(dump_argv(pg_dump, dsn, req, req.fmt, partial), "pg_dump")
                os.replace(partial, req.output)
                partial = None
                result.destination["bytes"] = req.output.stat().st_size
                result.timings["dump"] = round(time.monotonic() - t2, 3)
            else:
                assert live is not None and req.into_db is not None
                dump = scratch.root / "extract.dump"
                # A file read once, next door: compressing it would only cost time.
                run_program(dump_argv(pg_dump, dsn, req, "custom", dump, compress=0), "pg_dump")
                result.timings["dump"] = round(time.monotonic() - t2, 3)
                t3 = time.monotonic()
                fks = foreign_keys_out(cluster, req)
                # PostgreSQL 17 renamed pg_database.daticulocale to datlocale.
                locale_column = "datlocale" if major >= 17 else "daticulocale"
                source = cluster.sql(
                    "SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
                    f"datlocprovider::text, {locale_column} FROM pg_database WHERE datname = "
                    + quote_literal(req.database)
                )[0]
                pg_restore = find_program("pg_restore", major, target.pg_bin_dir)
                toc = run_program([pg_restore, "--list", str(dump)], "pg_restore --list")
                listing = scratch.root / "extract.list"
                listing.write_text(restore_list(toc, fks))
                from pgbackup.postgres.connection import connect, describe

                admin = {**live, "dbname": live.get("dbname") or "postgres"}
                LOG.info("creating database %s on %s", req.into_db, describe(admin))
                try:
                    with connect(admin) as conn:
                        conn.execute(create_database_sql(req.into_db, source))  # type: ignore[arg-type]
                except psycopg.Error as exc:
                    raise ExtractError(
                        f"cannot create database {req.into_db!r} on {describe(admin)}: "
                        f"{str(exc).strip().splitlines()[0]}",
                        hint="nothing was written",
                    ) from None
                created = True
                run_program(
                    [
                        pg_restore,
                        "--dbname",
                        to_dsn({**live, "dbname": req.into_db}),
                        "--no-owner",
                        "--no-privileges",
                        "--single-transaction",
                        "--exit-on-error",
                        "--no-password",
                        "--use-list",
                        str(listing),
                        str(dump),
                    ],
                    "pg_restore into the new database",
                )
                created = False  # done: it stays
                result.skipped_foreign_keys = [f"{s}.{t} {c} -> {r}" for s, t, c, r in fks]
                result.destination["server"] = describe({**live, "dbname": req.into_db})
                result.timings["load"] = round(time.monotonic() - t3, 3)
            result.status = "ok"
        except KeyboardInterrupt:
            result.error = "interrupted"
            raise
        except PgBackupError as exc:
            result.error = exc.message
            if scratch is not None and scratch.cluster is not None and exc.hint:
                # The scratch server's log goes with the scratch directory: keep its tail in
                # pgbackup's own log, and say so instead of naming a file about to vanish.
                log_file = scratch.cluster.log_file
                LOG.error(
                    "the scratch server's log ends:\n%s",
                    scratch.cluster.log_tail(80),
                    extra=LOG_FILE_ONLY,
                )
                exc.hint = exc.hint.replace(
                    f"see {log_file}", "the scratch server's log is copied into pgbackup's log file"
                )
            raise
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if created and live is not None and req.into_db is not None:
                with contextlib.suppress(Exception):
                    from pgbackup.postgres.connection import connect

                    with connect({**live, "dbname": live.get("dbname") or "postgres"}) as conn:
                        conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(req.into_db)}")  # type: ignore[arg-type]
                    LOG.warning("dropped the half-loaded database %s again", req.into_db)
            if partial is not None:
                with contextlib.suppress(OSError):
                    partial.unlink()
            if scratch is not None:
                t_close = time.monotonic()
                scratch.close()
                result.timings["cleanup"] = round(time.monotonic() - t_close, 3)
            result.seconds = round(time.monotonic() - t0, 3)
            result.timings["total"] = result.seconds
            repo.record_run(target.name, "extract", result.as_dict())
    LOG.info(
        "extracted %s of %s as of %s in %.1fs (%s written of %s)",
        result.what(),
        req.database,
        result.recovered_to.get("last_replay_time") or shown_value,
        result.seconds,
        human_bytes(result.restored.get("written_bytes", 0)),
        human_bytes(result.restored.get("raw_bytes", 0)),
    )
    return result
