"""extract's scratch cluster: the backup restored (sparse where the plan says) into a
private directory on a free loopback port, recovered to the target and paused there,
asked what existed and which files the dump reads, and removed with every process it
started, also on Ctrl-C and SIGTERM. Its own module because it is the part that owns
processes and disk; run_extract (command.py) decides when to make and close one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from pgbackup.errors import PgBackupError, RestoreError
from pgbackup.operations.extract.request import (
    FIRST_NORMAL_OID,
    NEEDED_SQL,
    ExtractError,
    Request,
    SparsePlan,
    needed_params,
    quote_literal,
    shown,
)
from pgbackup.ui import LOG

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
    from pgbackup.formats.untar import SPARSE
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
        cluster = Cluster(data, port, major=major, pg_bin_dir=target.pg_bin_dir)
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
    stats = restored_stats(restored.raw_bytes, restored.stored_bytes, data, plan)
    restore_s = time.monotonic() - t0
    t1 = time.monotonic()
    scratch.cluster = cluster
    recovered = recover(cluster, port, settings, expected)
    return stats, recovered, restore_s, time.monotonic() - t1


def restored_stats(
    raw_bytes: int, stored_bytes: int, data: Path, plan: SparsePlan | None
) -> dict[str, Any]:
    """What the restore read and wrote, and what it left out (the sparse files)."""
    sparse_bytes = 0
    for member in plan.sparse_members if plan else []:
        with contextlib.suppress(OSError):
            sparse_bytes += (data / member).stat().st_size
    return {
        "raw_bytes": raw_bytes,
        "stored_bytes": stored_bytes,
        "written_bytes": max(0, raw_bytes - sparse_bytes),
        "left_out_bytes": sparse_bytes,
        "left_out_files": len(plan.sparse_members) if plan else 0,
    }


def recover(cluster: Any, port: int, settings: dict[str, Any], expected: dict[str, Any]) -> Any:
    """Start the scratch server and wait for its recovery to end at the target; the point
    reached (PostgreSQL's reason when it stops short)."""
    from pgbackup.engine.restore_command import wait_for_recovery_end
    from pgbackup.operations.drill import _recovery_failure

    LOG.info("recovering the scratch cluster on port %d", port)
    try:
        cluster.start()
    except PgBackupError:
        reason = _recovery_failure(cluster)
        if reason:
            raise RestoreError(f"recovery stopped before reaching its target: {reason}") from None
        raise
    action = settings.get("recovery_target_action", "promote")
    return wait_for_recovery_end(action=action, expected=expected)(cluster)


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
