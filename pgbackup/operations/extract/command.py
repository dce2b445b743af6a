"""extract's command: pg_dump of the paused scratch server into the --output file, or
pg_restore of its dump into a new database on the live server (foreign keys to tables
not extracted left out), and ``run_extract``, which checks the request, refuses what it
can before anything is restored, and removes whatever it made on every way out.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgbackup.engine.repository import Repository, iso
from pgbackup.errors import PgBackupError, PostgresError, UsageError
from pgbackup.operations.extract.request import (
    NEEDED_SQL,
    ExtractError,
    ExtractResult,
    Request,
    check_request,
    live_conninfo,
    needed_params,
    quote_ident,
    quote_literal,
    sparse_plan,
)
from pgbackup.operations.extract.scratch import (
    Scratch,
    check_objects,
    plan_held,
    redo_panicked,
    restore_and_recover,
    sparse_database_names,
)
from pgbackup.signals import terminate_as_interrupt
from pgbackup.ui import LOG, LOG_FILE_ONLY, human_bytes

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
    records the run (success or failure) under ``<target>/runs/``.

    The procedure: check the request; refuse what can be refused before anything is
    restored; recover a scratch server to the target; check the objects are there; dump
    them into the --output file or load them into a new database; and, on every way out,
    remove what was made (the scratch server, a partial file, a half-loaded database)."""
    check_request(req)
    run = ExtractRun(policy, target, req, storage)
    run.refuse_early()
    with terminate_as_interrupt():  # SIGTERM unwinds through the cleanup below too
        try:
            cluster = run.recover_in_scratch()
            check_objects(cluster, req, run.when)
            run.export(cluster)
            run.result.status = "ok"
        except KeyboardInterrupt:
            run.result.error = "interrupted"
            raise
        except PgBackupError as exc:
            run.result.error = exc.message
            run.keep_scratch_log(exc)
            raise
        except Exception as exc:
            run.result.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            run.clean_up()
    result = run.result
    LOG.info(
        "extracted %s of %s as of %s in %.1fs (%s written of %s)",
        result.what(),
        req.database,
        result.recovered_to.get("last_replay_time") or run.shown_value,
        result.seconds,
        human_bytes(result.restored.get("written_bytes", 0)),
        human_bytes(result.restored.get("raw_bytes", 0)),
    )
    return result


class ExtractRun:
    """One extract, as :func:`run_extract` follows it: the request, its recovery target,
    the backup chosen, and what it made that the way out removes."""

    def __init__(self, policy: Any, target: Any, req: Request, storage: Any) -> None:
        from pgbackup.engine.restore_command import resolve_target_time
        from pgbackup.storage import open_storage

        self.t0 = time.monotonic()
        self.policy = policy
        self.target = target
        self.req = req
        self.storage = storage or open_storage(policy.repository)
        self.repo = Repository(self.storage)
        if req.kind == "time" and isinstance(req.value, str):
            req.value = resolve_target_time(self.repo, target.name, req.value)
        from pgbackup.engine.generations import restore_storage

        # The generation of --backup or of the time (engine/generations).
        self.storage = restore_storage(self.storage, target.name, req.backup, req.kind, req.value)
        self.repo = Repository(self.storage)
        self.shown_value = shown_value(req.kind, req.value)
        self.result = ExtractResult(
            target=target.name,
            database=req.database,
            objects=req.objects(),
            recovery_target={"kind": req.kind, "value": self.shown_value},
            started_at=iso(datetime.now(UTC)),
            destination=(
                {"file": str(req.output), "format": req.fmt}
                if req.output is not None
                else {"database": req.into_db}
            ),
        )
        self.when = (
            f"the recovery target ({req.kind} {self.shown_value})"
            if req.kind != "latest"
            else "the end of the archive"
        )
        self.scratch: Scratch | None = None
        self.partial: Path | None = None  # the --output file being written
        self.created = False  # a database made and not yet loaded: dropped on the way out

    def refuse_early(self) -> None:
        """Refused before anything is restored: a target outside the window, a hole in the
        WAL the target lies beyond, an --into-db that exists or cannot be created. Then
        the backup and the scratch server's recovery settings are known."""
        from pgbackup.engine.restore_command import (
            check_chain,
            check_window,
            choose_backup,
            recovery_settings,
        )

        policy, name, req = self.policy, self.target.name, self.req
        kind, value = req.kind, req.value
        self.info = choose_backup(self.repo, name, req.backup, kind, value)
        if kind in ("time", "lsn"):
            check_window(policy, self.repo, name, kind, value)
        self.expected = check_chain(
            policy, self.repo, name, self.info, kind, value, inclusive=req.inclusive
        )
        self.live = live_conninfo(policy, self.target, req.user)
        if req.into_db is not None:
            check_into_db(self.live, req, name)
        self.result.backup_id = self.info.backup_id
        self.settings = recovery_settings(
            policy,
            name,
            kind=kind,
            value=value,
            action="pause",  # read where it stopped: see scratch.SCRATCH_SETTINGS
            timeline=None,
            inclusive=req.inclusive,
            until=self.expected.get("until"),
        )

    # --- the scratch server --------------------------------------------------------------

    def recover_in_scratch(self) -> Any:
        """A scratch server recovered to the target, only the asked database's files
        restored when that is safe, else the backup whole; its cluster."""
        self.scratch = scratch = Scratch()
        plan = sparse_plan(self.live, self.req)
        t1 = time.monotonic()
        why: str | None = None
        try:
            stats, recovered, restore_s, recovery_s = self.restore(plan)
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
            why = plan_held(cluster, self.req, plan) if plan else None
        if why:
            LOG.warning("%s: restoring the backup again, whole", why)
            scratch.stop()
            stats, recovered, restore_s2, recovery_s2 = self.restore(None)
            restore_s += restore_s2
            recovery_s += recovery_s2
            cluster, closed = scratch.cluster, []
        result = self.result
        result.recovered_to = recovered
        result.restored = {
            **stats,
            "databases_left_out": closed,
            "restored_whole": bool(why) or plan is None,
        }
        result.timings["restore"] = round(restore_s, 3)
        result.timings["recovery"] = round(recovery_s, 3)
        return cluster

    def restore(self, plan: Any) -> tuple[dict[str, Any], dict[str, Any], float, float]:
        assert self.scratch is not None
        return restore_and_recover(
            self.policy,
            self.target,
            self.storage,
            self.scratch,
            self.info,
            self.settings,
            self.expected,
            plan,
            self.req.database,
            self.req,
        )

    # --- dump and load -------------------------------------------------------------------

    def export(self, cluster: Any) -> None:
        """The objects out of the scratch server: into the --output file, or into a new
        database on the live server."""
        from pgbackup.postgres.binaries import program_for
        from pgbackup.postgres.connection import to_dsn

        t2 = time.monotonic()
        major = int(self.info.metadata["server_version_num"]) // 10000
        pg_dump = program_for(self.target, "pg_dump", major)
        dsn = to_dsn(cluster.conninfo(self.req.database))
        if self.req.output is not None:
            self.dump_to_file(pg_dump, dsn, self.req.output)
            self.result.timings["dump"] = round(time.monotonic() - t2, 3)
        else:
            self.load_into_database(cluster, major, pg_dump, dsn, t2)

    def dump_to_file(self, pg_dump: str, dsn: str, output: Path) -> None:
        """pg_dump into a hidden file beside --output, renamed once complete."""
        self.partial = output.with_name(f".{output.name}.pgbackup-partial")
        LOG.info("dumping %s into %s", self.result.what(), output)
        run_program(dump_argv(pg_dump, dsn, self.req, self.req.fmt, self.partial), "pg_dump")
        os.replace(self.partial, output)
        self.partial = None
        self.result.destination["bytes"] = output.stat().st_size

    def load_into_database(
        self, cluster: Any, major: int, pg_dump: str, dsn: str, t2: float
    ) -> None:
        """pg_dump next door, then pg_restore into a new database on the live server, in
        one transaction, with the foreign keys to tables not extracted left out."""
        from pgbackup.postgres.binaries import program_for
        from pgbackup.postgres.connection import describe, to_dsn

        req, live, result = self.req, self.live, self.result
        assert live is not None and req.into_db is not None and self.scratch is not None
        dump = self.scratch.root / "extract.dump"
        # A file read once, next door: compressing it would only cost time.
        run_program(dump_argv(pg_dump, dsn, req, "custom", dump, compress=0), "pg_dump")
        result.timings["dump"] = round(time.monotonic() - t2, 3)
        t3 = time.monotonic()
        fks = foreign_keys_out(cluster, req)
        source = source_locale(cluster, req.database, major)
        pg_restore = program_for(self.target, "pg_restore", major)
        toc = run_program([pg_restore, "--list", str(dump)], "pg_restore --list")
        listing = self.scratch.root / "extract.list"
        listing.write_text(restore_list(toc, fks))
        self.create_database(source)
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
        self.created = False  # done: it stays
        result.skipped_foreign_keys = [f"{s}.{t} {c} -> {r}" for s, t, c, r in fks]
        result.destination["server"] = describe({**live, "dbname": req.into_db})
        result.timings["load"] = round(time.monotonic() - t3, 3)

    def create_database(self, source: tuple[Any, ...]) -> None:
        """--into-db, with the source database's encoding and locale; dropped again on the
        way out until it is loaded."""
        import psycopg

        from pgbackup.postgres.connection import connect, describe

        assert self.live is not None and self.req.into_db is not None
        admin = {**self.live, "dbname": self.live.get("dbname") or "postgres"}
        LOG.info("creating database %s on %s", self.req.into_db, describe(admin))
        try:
            with connect(admin) as conn:
                conn.execute(create_database_sql(self.req.into_db, source))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise ExtractError(
                f"cannot create database {self.req.into_db!r} on {describe(admin)}: "
                f"{str(exc).strip().splitlines()[0]}",
                hint="nothing was written",
            ) from None
        self.created = True

    # --- the way out ---------------------------------------------------------------------

    def keep_scratch_log(self, exc: PgBackupError) -> None:
        """The scratch server's log goes with the scratch directory: keep its tail in
        pgbackup's own log, and say so instead of naming a file about to vanish."""
        scratch = self.scratch
        if scratch is None or scratch.cluster is None or not exc.hint:
            return
        log_file = scratch.cluster.log_file
        LOG.error(
            "the scratch server's log ends:\n%s",
            scratch.cluster.log_tail(80),
            extra=LOG_FILE_ONLY,
        )
        exc.hint = exc.hint.replace(
            f"see {log_file}", "the scratch server's log is copied into pgbackup's log file"
        )

    def clean_up(self) -> None:
        """On every way out: a half-loaded database dropped, a partial file removed, the
        scratch server and directory gone; the run recorded."""
        req, live, result = self.req, self.live, self.result
        if self.created and live is not None and req.into_db is not None:
            with contextlib.suppress(Exception):
                from pgbackup.postgres.connection import connect

                with connect({**live, "dbname": live.get("dbname") or "postgres"}) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(req.into_db)}")  # type: ignore[arg-type]
                LOG.warning("dropped the half-loaded database %s again", req.into_db)
        if self.partial is not None:
            with contextlib.suppress(OSError):
                self.partial.unlink()
        if self.scratch is not None:
            t_close = time.monotonic()
            self.scratch.close()
            result.timings["cleanup"] = round(time.monotonic() - t_close, 3)
        result.seconds = round(time.monotonic() - self.t0, 3)
        result.timings["total"] = result.seconds
        self.repo.record_run(self.target.name, "extract", result.as_dict())


def shown_value(kind: str, value: Any) -> Any:
    """The recovery target as the result and the log say it."""
    if kind == "lsn":
        from pgbackup.formats.lsn import format_lsn

        return format_lsn(value)
    return value.isoformat(sep=" ") if isinstance(value, datetime) else value


def source_locale(cluster: Any, database: str, major: int) -> tuple[Any, ...]:
    """The encoding and locale of ``database`` on the scratch server (for CREATE DATABASE)."""
    # PostgreSQL 17 renamed pg_database.daticulocale to datlocale.
    locale_column = "datlocale" if major >= 17 else "daticulocale"
    rows = cluster.sql(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
        f"datlocprovider::text, {locale_column} FROM pg_database WHERE datname = "
        + quote_literal(database)
    )
    return tuple(rows[0])
