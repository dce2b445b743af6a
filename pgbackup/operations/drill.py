"""Restore drills: restore into a scratch cluster, replay WAL, run the declared checks.

The scratch cluster lives in a temporary directory on a free loopback port, with
``archive_mode = off`` so it never writes into the repository, and is torn down whatever
happens. The result goes to ``<target>/drills/<timestamp>.json``:

- the backup used, the recovered-to time, LSN and timeline;
- every check with its value and verdict;
- wall time split into fetch (choose the backup, read its metadata), restore (download,
  decode and unpack — streamed together), recovery (server start until WAL replay ends)
  and checks; ``rto_seconds`` is the whole drill from start to checks answered;
- where the restore's time went (``phases``, engine/phases: transfer, decode, write,
  sync, combine for a chain) and ``wal_replay``: the scratch server's start until recovery
  ended, its bytes the WAL replayed from the backup's start LSN. The SLA report projects
  a restore's time from these rates (sla.rto_projection).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pgbackup.engine.repository import Repository, iso, new_backup_id
from pgbackup.errors import PgBackupError
from pgbackup.policy import DrillCheck, parse_expect

LOG = logging.getLogger("pgbackup")


class DrillFailed(PgBackupError):
    exit_code = 1


@dataclass
class DrillResult:
    target: str
    drill_id: str
    started_at: str
    status: str = "failed"
    finished_at: str | None = None
    backup_id: str | None = None
    backup_stop_time: str | None = None
    recovery_target: dict[str, Any] = field(default_factory=dict)
    recovered_to: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rto_seconds: float | None = None
    rto_objective_seconds: int | None = None
    raw_bytes: int = 0
    stored_bytes: int = 0
    restore_throughput_bytes_per_second: float | None = None
    # An incremental's chain (full backup first) and pg_combinebackup's rate: the SLA
    # report projects a chain's restore time from them (see sla.project_restore_seconds).
    chain: list[str] = field(default_factory=list)
    combine_throughput_bytes_per_second: float | None = None
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    provider: str = "local"
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _record_combine(result: DrillResult, combine: dict[str, Any]) -> None:
    """A chain restore in two measured stages: staging every member (the bytes staged over
    the staging time) and pg_combinebackup writing the data directory (its size over the
    combine time), both as engine/combine.py measured them."""
    result.chain = list(combine["members"])
    result.timings["stage"] = float(combine["extract_seconds"])
    result.timings["combine"] = float(combine["combine_seconds"])
    if combine["extract_seconds"] > 0:
        result.restore_throughput_bytes_per_second = round(
            combine["staged_bytes"] / combine["extract_seconds"], 1
        )
    if combine["combine_seconds"] > 0:
        result.combine_throughput_bytes_per_second = round(
            combine["combined_bytes"] / combine["combine_seconds"], 1
        )


def evaluate(expect: str, value: Any) -> bool:
    """Does ``value`` (the first column of the first row) satisfy ``expect``?"""
    op, operand = parse_expect(expect)
    if isinstance(operand, str):
        if value is None:
            return operand.lower() in ("null", "none")
        if str(value) == operand:
            return True
        if isinstance(value, bool):
            return operand.lower() in (("true", "t", "on") if value else ("false", "f", "off"))
        try:
            return float(value) == float(operand)
        except (TypeError, ValueError):
            return False
    if value is None or isinstance(value, bool):
        return False
    try:
        number = float(value) if not isinstance(value, Decimal) else float(value)
    except (TypeError, ValueError):
        return False
    return {
        "==": number == operand,
        "!=": number != operand,
        ">": number > operand,
        ">=": number >= operand,
        "<": number < operand,
        "<=": number <= operand,
    }[op]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value) if value % 1 else int(value)
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def run_checks(cluster: Any, checks: list[DrillCheck], default_db: str) -> list[dict[str, Any]]:
    out = []
    for check in checks:
        row: dict[str, Any] = {"name": check.name, "sql": check.sql, "expect": check.expect}
        t0 = time.monotonic()
        try:
            rows = cluster.sql(check.sql, dbname=check.dbname or default_db)
            value = rows[0][0] if rows and rows[0] else None
            row["value"] = _jsonable(value)
            row["ok"] = evaluate(check.expect, value)
        except Exception as exc:
            row["value"] = None
            row["ok"] = False
            row["error"] = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
        row["seconds"] = round(time.monotonic() - t0, 3)
        out.append(row)
    return out


def scratch_root(prefix: str = "pgbackup-drill-") -> Path:
    """A temporary directory the server's OS user can work in."""
    from pgbackup.postgres.cluster import hand_over, server_os_user

    root = Path(tempfile.mkdtemp(prefix=prefix))
    hand_over(root, server_os_user(), 0o700)
    return root


def drill_key(target: str, drill_id: str) -> str:
    return f"{target}/drills/{drill_id}.json"


def run_drill(
    policy: Any,
    target: Any,
    *,
    backup: str | None = None,
    target_time: str | None = None,
    provider: str = "local",
    storage: Any = None,
    image: str | None = None,
) -> DrillResult:
    """Run one drill of ``target`` and record it; never raises for a failed drill.

    The procedure: choose the backup (and refuse a hole in the WAL chain), restore it into
    a scratch directory, recover it on a scratch server, run the declared checks; on every
    way out the scratch server and directory go, and the drill is recorded and notified."""
    run = DrillRun(policy, target, provider, storage, image)
    result = run.result
    try:
        run.step = "choosing the backup"
        run.choose(backup, target_time)
        run.step = "restoring"
        run.restore()
        run.step = "recovering"
        run.recover()
        run.step = "running the checks"
        run.check()
    except PgBackupError as exc:
        result.error = f"{run.step}: {exc}"
    except Exception as exc:  # the drill reports; it does not crash
        result.error = f"{run.step}: {type(exc).__name__}: {exc}"
    finally:
        run.clean_up()
    _record(run.repo, result)
    _notify(policy, result)
    return result


class DrillRun:
    """One drill, as :func:`run_drill` follows it: its result so far, the step it is in
    (a failure names it), and the scratch directory and server it removes at the end."""

    def __init__(
        self, policy: Any, target: Any, provider: str, storage: Any, image: str | None
    ) -> None:
        from pgbackup.storage import open_storage

        self.t0 = time.monotonic()
        started = datetime.now(UTC)
        self.policy = policy
        self.target = target
        self.provider = provider
        self.image = image
        self.result = DrillResult(
            target.name, new_backup_id(started), iso(started), provider=provider
        )
        self.result.rto_objective_seconds = policy.sla.rto
        self.storage = storage or open_storage(policy.repository)
        self.repo = Repository(self.storage)
        self.step = "starting"
        self.root: Path | None = None
        self.cluster: Any = None

    def choose(self, backup: str | None, target_time: str | None) -> None:
        """The backup for the target (the newest, or the one before ``target_time``). A
        hole in the WAL chain fails the drill before anything is restored; the point
        recovery must reach is checked once it has ended."""
        from pgbackup.engine.restore_command import (
            check_chain,
            check_window,
            choose_backup,
            recovery_settings,
            resolve_target_time,
        )

        policy, repo, name, result = self.policy, self.repo, self.target.name, self.result
        kind, value = "latest", None
        if target_time:
            kind, value = "time", resolve_target_time(repo, name, target_time)
        from pgbackup.engine.generations import restore_storage

        # The generation of --backup or of the time (engine/generations); runs and drills
        # are shared by every generation, so the record lands where it always did.
        self.storage = restore_storage(self.storage, name, backup, kind, value)
        self.repo = repo = Repository(self.storage)
        self.info = info = choose_backup(repo, name, backup, kind, value)
        self.expected = check_chain(policy, repo, name, info, kind, value)
        if target_time:
            check_window(policy, repo, name, "time", value)
        result.backup_id = info.backup_id
        result.backup_stop_time = info.metadata.get("stop_time")
        result.recovery_target = {"kind": kind, "value": _jsonable(value)}
        self.settings = recovery_settings(
            policy,
            name,
            kind=kind,
            value=value,
            action="promote",
            timeline=None,
            inclusive=True,
            until=self.expected.get("until"),
        )
        result.timings["fetch"] = round(time.monotonic() - self.t0, 3)

    def restore(self) -> None:
        """The backup into a scratch directory, its tablespaces beside it (never their
        original locations: they belong to the server being drilled)."""
        from pgbackup.engine.restore import run_restore
        from pgbackup.postgres.cluster import free_port

        t1 = time.monotonic()
        self.root = root = scratch_root()
        self.port = free_port()
        restored = run_restore(
            self.policy,
            self.target,
            self.info.backup_id,
            root / "data",
            start=False,
            port=self.port,
            archive=False,
            recovery_settings=self.settings,
            storage=self.storage,
            tablespace_map_all=str(root / "tablespaces"),
        )
        result = self.result
        result.raw_bytes = restored.raw_bytes
        result.stored_bytes = restored.stored_bytes
        result.timings["restore"] = round(time.monotonic() - t1, 3)
        result.phases = dict(restored.phases)
        if restored.combine:
            _record_combine(result, restored.combine)

    def recover(self) -> None:
        """A scratch server (local or a container) on the restored directory, recovered to
        the target; PostgreSQL's reason when it stops short."""
        from pgbackup.engine.phases import replayed_bytes
        from pgbackup.engine.restore_command import wait_for_recovery_end

        assert self.root is not None
        t2 = time.monotonic()
        major = int(self.info.metadata["server_version_num"]) // 10000
        self.cluster = cluster = _scratch_cluster(
            self.provider,
            self.root / "data",
            self.port,
            major,
            self.target,
            self.policy,
            self.image,
        )
        local = self.provider != "docker"
        if local:  # as `restore --start`: the archive open when PostgreSQL first asks
            self._start_read_ahead(cluster)
        try:
            cluster.start()
        except PgBackupError:
            reason = _recovery_failure(cluster)
            if reason:
                raise PgBackupError(
                    f"recovery stopped before reaching its target: {reason}"
                ) from None
            raise
        self.result.recovered_to = wait_for_recovery_end(expected=self.expected)(cluster)
        self.result.timings["recovery"] = round(time.monotonic() - t2, 3)
        self.result.phases["wal_replay"] = {
            "seconds": self.result.timings["recovery"],
            "bytes": replayed_bytes(
                self.info.metadata.get("start_lsn"),
                self.result.recovered_to.get("last_replay_lsn"),
            ),
        }
        if local:
            report = _read_ahead_report(cluster)
            if report is not None:
                self.result.phases["wal_replay"]["read_ahead"] = report

    def _start_read_ahead(self, cluster: Any) -> None:
        """wal-fetch's prefetcher started before the scratch server, with the flags the
        drill's restore_command gives wal-fetch (a container's server runs its own
        pgbackup, whose first wal-fetch starts it there)."""
        from pgbackup.engine.restore import start_read_ahead
        from pgbackup.engine.restore_command import read_ahead_before_server

        read_ahead = read_ahead_before_server(self.policy, self.target, None, self.expected)
        if read_ahead is not None:
            start_read_ahead(read_ahead, cluster)

    def check(self) -> None:
        """The policy's drill checks on the recovered server; the measured RTO and the
        restore's throughput; ok only when every check holds."""
        result = self.result
        t3 = time.monotonic()
        default_db = str(self.target.connection.get("dbname") or "postgres")
        result.checks = run_checks(self.cluster, self.policy.drill_checks, default_db)
        result.timings["checks"] = round(time.monotonic() - t3, 3)
        result.rto_seconds = round(time.monotonic() - self.t0, 3)
        restore_s = result.timings["restore"]
        if restore_s > 0 and not result.chain:
            result.restore_throughput_bytes_per_second = round(result.raw_bytes / restore_s, 1)
        failed = [c for c in result.checks if not c["ok"]]
        if failed:
            result.error = "check(s) failed: " + "; ".join(
                f"{c['name']} (got {c['value']!r}, expected {c['expect']}"
                + (f": {c['error']}" if c.get("error") else "")
                + ")"
                for c in failed
            )
        else:
            result.status = "ok"

    def clean_up(self) -> None:
        """The scratch server stopped (a container removed) and the scratch directory gone."""
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop("immediate")
            if hasattr(self.cluster, "remove"):  # a container
                with contextlib.suppress(Exception):
                    self.cluster.remove()
        if self.root is not None:
            from pgbackup.engine.walprefetch import end_read_ahead

            # a read-ahead started before a server that never came up: stopped first
            with contextlib.suppress(Exception):
                end_read_ahead(self.root / "data")
            shutil.rmtree(self.root, ignore_errors=True)
        self.result.timings["total"] = round(time.monotonic() - self.t0, 3)
        self.result.finished_at = iso(datetime.now(UTC))


def _recovery_failure(cluster: Any) -> str | None:
    """PostgreSQL's reason (and wal-fetch's) for a server that died in recovery."""
    from pgbackup.engine.restore import recovery_failure

    try:
        return recovery_failure(cluster)
    except Exception:  # a provider without a readable log
        return None


def _scratch_cluster(
    provider: str,
    data_dir: Path,
    port: int,
    major: int,
    target: Any,
    policy: Any,
    image: str | None = None,
) -> Any:
    if provider == "docker":  # image: --image, else drill.image, else pgbackup:<version>
        from pgbackup.postgres.docker import drill_cluster

        return drill_cluster(policy, data_dir, port, major, image)
    from pgbackup.postgres.cluster import Cluster

    return Cluster(data_dir, port, major=major, pg_bin_dir=target.pg_bin_dir)


def _read_ahead_report(cluster: Any) -> dict[str, Any] | None:
    """What the read-ahead did in the drill's recovery, from its server's log."""
    from pgbackup.engine.walprefetch import read_ahead_report

    try:
        text = Path(cluster.log_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return read_ahead_report(text)


def _record(repo: Repository, result: DrillResult) -> None:
    key = drill_key(result.target, result.drill_id)
    try:
        repo.storage.write_bytes(
            key, json.dumps(result.as_dict(), indent=2, sort_keys=True).encode() + b"\n"
        )
    except PgBackupError as exc:
        LOG.error("could not record the drill result %s: %s", key, exc)
        result.error = (result.error + "; " if result.error else "") + f"result not recorded: {exc}"
        result.status = "failed"


def _notify(policy: Any, result: DrillResult) -> None:
    with contextlib.suppress(Exception):
        from pgbackup.operations.alerts import notify_event

        if result.status == "ok":
            msg = f"drill of backup {result.backup_id} passed in {result.rto_seconds:.1f}s"
        else:
            msg = f"drill failed: {result.error}"
        notify_event(policy, "drill", result.target, result.status, msg)
