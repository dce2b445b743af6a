"""The acceptance-test harness: a scratch directory, a policy, the real CLI, real clusters.

Every scenario gets its own directory (reachable by the ``postgres`` OS user when the
suite runs as root), its own ``backup.yaml`` with a sandbox target, and runs the real
``pgbackup`` console script as a separate process. Clusters it started are stopped on
teardown; their logs are kept when a scenario fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgbackup.postgres.cluster import Cluster, free_port

PGBACKUP = str(Path(sys.executable).parent / "pgbackup")


def base_policy(root: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "repository": {"path": str(root / "repo")},
        "compression": {"method": "zstd", "level": 3},
        "targets": {
            "platform": {
                "sandbox": {"path": str(root / "sandbox")},
                "connection": {"user": "platform_service", "dbname": "platform"},
            }
        },
        "retention": {"days": 7, "weekly": 4, "monthly": 12},
        "schedules": {"backup": "0 2 * * *"},
        "sla": {"rto": "1h", "rpo": "5m"},
        "drill": {
            "checks": [
                {"name": "tenants exist", "sql": "SELECT count(*) FROM tenants", "expect": "> 0"}
            ]
        },
    }


class Harness:
    def __init__(self, provider: str = "local", major: int | None = None) -> None:
        self.provider = provider  # where the source cluster runs: features/providers.py
        self.major = major  # the PostgreSQL major of its clusters (None: the default, 15)
        self.source: Any = None  # that cluster, when it is not the local sandbox
        self.root = Path(tempfile.mkdtemp(prefix="pgbackup-test-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.config = self.root / "backup.yaml"
        self.policy = base_policy(self.root)
        self.data_dirs: list[Path] = []
        self.env = {**os.environ, "PGBACKUP_QUIET": "1", "XDG_CACHE_HOME": str(self.root / "cache")}
        self.env.pop("PGBACKUP_CONFIG", None)
        self.last: subprocess.CompletedProcess[str] | None = None
        self.write_policy()

    # --- policy -------------------------------------------------------------------------

    def write_policy(self, policy: dict[str, Any] | None = None) -> None:
        if policy is not None:
            self.policy = policy
        self.config.write_text(yaml.safe_dump(self.policy, sort_keys=False))

    @property
    def repo(self) -> Path:
        return Path(self.policy["repository"]["path"])

    # --- the CLI ------------------------------------------------------------------------

    def run(
        self, *args: str, expect_ok: bool | None = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [PGBACKUP, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
        )
        self.last = proc
        if expect_ok is True and proc.returncode != 0:
            raise AssertionError(
                f"pgbackup {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        if expect_ok is False and proc.returncode == 0:
            raise AssertionError(f"pgbackup {' '.join(args)} unexpectedly succeeded\n{proc.stdout}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    # --- clusters -----------------------------------------------------------------------

    def sandbox_port(self) -> int:
        state = json.loads((self.root / "sandbox" / "sandbox.json").read_text())
        return int(state["port"])

    def start_source(self) -> None:
        """The scenario's source cluster with sample data: the local sandbox
        (``pgbackup sandbox.up``) or, with the Docker provider, a container."""
        if self.provider == "docker":
            from providers import docker_source_up

            docker_source_up(self)
        else:
            self.run("sandbox.up")

    def sandbox(self) -> Cluster:
        if self.source is not None:
            return self.source  # type: ignore[no-any-return]
        cluster = Cluster(self.root / "sandbox" / "data", self.sandbox_port())
        if cluster.data_dir not in self.data_dirs:
            self.data_dirs.append(cluster.data_dir)
        return cluster

    def track(self, data_dir: Path, port: int) -> Cluster:
        self.data_dirs.append(data_dir)
        return Cluster(data_dir, port)

    def sql(self, cluster: Cluster, query: str, dbname: str = "platform") -> list[tuple[Any, ...]]:
        return cluster.sql(query, dbname=dbname)

    def teardown(self, failed: bool) -> None:
        # The sandbox too when a test only ran `pgbackup sandbox.up` (never h.sandbox()):
        # it would otherwise outlive the test, serving a deleted directory.
        sandbox = self.root / "sandbox" / "data"
        extra = [sandbox] if sandbox.exists() and sandbox not in self.data_dirs else []
        for d in [*self.data_dirs, *extra]:
            with contextlib.suppress(Exception):
                Cluster(d, 0).stop("immediate")
        if self.source is not None:
            from providers import teardown_source

            with contextlib.suppress(Exception):
                teardown_source(self.source)
        if failed:
            print(f"scenario failed; its files are kept in {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def backups(self) -> list[dict[str, Any]]:
        return list(self.json("list")["platform"]["backups"])


# --- pytest wiring (imported by features/conftest.py and tests/faults/conftest.py) ---------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    """Remember whether the test body failed, so its files are kept for a post-mortem."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.harness_failed = report.failed


@pytest.fixture(name="h")
def harness_fixture(request: Any, provider: str) -> Iterator[Harness]:
    """A fresh scratch directory, policy and CLI runner per test; kept when the test failed.

    Its clusters are of the test's PostgreSQL major (features/versions.py)."""
    from versions import selected_major, use_major

    with use_major(selected_major(request)):
        if provider == "docker":
            from providers import docker_image

            docker_image()  # built once per session; skips when no engine can be had
        harness = Harness(provider, selected_major(request))
        yield harness
        harness.teardown(failed=getattr(request.node, "harness_failed", False))


@contextlib.contextmanager
def module_harness() -> Iterator[Harness]:
    """A Harness for a module-scoped fixture (one cluster for many tests): torn down at the
    end, its files kept when setting it up failed."""
    harness = Harness()
    failed = True
    try:
        yield harness
        failed = False
    finally:
        harness.teardown(failed)


# --- PostgreSQL helpers shared by features ---------------------------------------------


def wait_streaming(cluster: Any, proc: subprocess.Popen[str], timeout: float = 60) -> bool:
    """True once the server reports the base backup streaming database files; False if
    ``proc`` (the backup) ends first or ``timeout`` passes.

    Watches pg_stat_progress_basebackup on the server itself, so it does not depend on
    how pgbackup writes into the repository."""
    deadline = time.monotonic() + timeout
    with cluster.connect() as conn:
        while time.monotonic() < deadline and proc.poll() is None:
            row = conn.execute("SELECT phase FROM pg_stat_progress_basebackup").fetchone()
            if row and row[0] == "streaming database files":
                return True
            time.sleep(0.005)
    return False


def switch_and_wait_archived(cluster: Cluster, timeout: float = 90) -> str:
    """Close the current WAL segment and wait until archive_command has stored it."""
    # A record first, so that the switch always closes a segment: with nothing written
    # since the last switch, pg_switch_wal() is a no-op, and on 18 the name it then
    # yields is of a segment that is never archived.
    cluster.sql("SELECT pg_logical_emit_message(false, 'pgbackup-test', 'switch')")
    closed = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + timeout
    failed = None
    while time.monotonic() < deadline:
        last, failed = cluster.sql(
            "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver"
        )[0]
        if last and last[:24] >= closed:
            return str(closed)
        time.sleep(0.2)
    raise AssertionError(
        f"{closed} not archived within {timeout}s (last failed: {failed})\n{cluster.log_tail(40)}"
    )


def switch_and_wait(h: Harness, timeout: float = 90) -> str:
    """The same, for the scenario's sandbox."""
    return switch_and_wait_archived(h.sandbox(), timeout)


def commit_batches(
    cluster: Cluster, first: int, last: int, label: str = ""
) -> list[dict[str, Any]]:
    """Commit one transaction per batch; after each, record time, LSN, xid and a restore point."""
    cluster.sql(
        "CREATE TABLE IF NOT EXISTS pitr_batches (batch int, label text, n int)", dbname="platform"
    )
    points = []
    for batch in range(first, last + 1):
        with cluster.connect("platform") as conn:
            conn.autocommit = False
            with conn.transaction():
                conn.execute(
                    "INSERT INTO pitr_batches SELECT %s, %s, g FROM generate_series(1, 100) g",
                    (batch, label),
                )
                xid = conn.execute("SELECT txid_current()").fetchone()[0]
        time.sleep(0.05)
        point_name = f"after-batch-{label}{batch}"
        cluster.sql(f"SELECT pg_create_restore_point('{point_name}')")
        row = cluster.sql("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text")[0]
        points.append(
            {
                "batch": batch,
                "time": row[0].astimezone(UTC).isoformat(),
                "lsn": row[1],
                "xid": xid,
                "name": point_name,
            }
        )
        time.sleep(0.05)
    return points


def restore_args(kind: str, point: dict[str, Any] | None) -> list[str]:
    if kind == "immediate":
        return ["--target", "immediate"]
    if kind == "latest":
        return ["--target", "latest"]
    assert point is not None
    return [f"--target-{kind}", str(point[kind])]


def restore_and_start(
    h: Harness, ctx: dict[str, Any], directory: Path, *args: str, expect_ok: bool | None = True
) -> None:
    """``restore ARGS --to DIRECTORY --start`` on a free port, archiving off; the server is
    stopped at teardown and ``ctx["restored"]`` is (directory, port)."""
    port = free_port()
    h.track(directory, port)
    ctx["restored"] = (directory, port)
    h.run(
        "restore",
        "--to",
        str(directory),
        "--start",
        "--port",
        str(port),
        "--no-archive",
        *args,
        expect_ok=expect_ok,
    )


def do_restore(
    h: Harness, ctx: dict[str, Any], args: list[str], expect_ok: bool | None = True
) -> None:
    directory = h.root / f"pitr-{len(ctx.get('restores', []))}"
    ctx.setdefault("restores", []).append(directory)
    restore_and_start(h, ctx, directory, "--json", *args, expect_ok=expect_ok)
    if h.last is not None and h.last.returncode == 0:
        ctx["restore_result"] = json.loads(h.last.stdout)


def batches_in(h: Harness, ctx: dict[str, Any]) -> list[int]:
    directory, port = ctx["restored"]
    cluster = h.track(directory, port)
    exists = cluster.sql("SELECT to_regclass('pitr_batches') IS NOT NULL", dbname="platform")[0][0]
    if not exists:
        return []
    rows = cluster.sql(
        "SELECT batch, count(*) FROM pitr_batches GROUP BY batch ORDER BY batch", dbname="platform"
    )
    assert all(n == 100 for _b, n in rows), rows  # whole transactions only
    return [b for b, _n in rows]


def restore_to_time(h: Harness, ctx: dict[str, Any], *extra: str) -> None:
    """Restore to ``ctx["recovery_time"]`` into a new directory and start it there."""
    restore_and_start(
        h, ctx, h.root / "restored", *extra, "--target-time", ctx["recovery_time"].isoformat()
    )


# --- restores that may fail (recovery_integrity.feature, wal_prefetch.feature) ----------


def restore_new(ctx: dict[str, Any], *args: str, start: bool = True) -> None:
    """``restore --json ARGS`` by ``ctx["h"]`` into a new directory on a free port, archiving
    off, started unless ``start`` is false; it may fail: ``ctx["proc"]`` is its process and
    ``ctx["restored"]`` (directory, port)."""
    h: Harness = ctx["h"]
    directory = h.root / f"restore-{len(list(h.root.glob('restore-*')))}"
    port = free_port()
    ctx["restored"] = (directory, port)
    if start:
        h.track(directory, port)
    ctx["proc"] = h.run(
        "restore",
        "--to",
        str(directory),
        "--port",
        str(port),
        "--no-archive",
        "--json",
        *(["--start"] if start else []),
        *args,
        expect_ok=None,
    )


def proc_output(ctx: dict[str, Any]) -> str:
    """What the last command of ``ctx["proc"]`` wrote, standard output then error."""
    return str(ctx["proc"].stdout + ctx["proc"].stderr)


def rows_in(directory: Path, port: int) -> int | None:
    """The rows of pitr_batches the server of ``directory`` serves; None when none runs."""
    cluster = Cluster(directory, port)
    if not cluster.is_running():
        return None
    return int(cluster.sql("SELECT count(*) FROM pitr_batches", dbname="platform")[0][0])


def start_with_pg_ctl(ctx: dict[str, Any]) -> Cluster:
    """Start the server of ``ctx["restored"]`` (restored without --start) with pg_ctl, as
    ``ctx["cluster"]``; it may be reported ready before replay reaches the end, or die."""
    directory, port = ctx["restored"]
    h: Harness = ctx["h"]
    cluster = h.track(directory, port)
    ctx["cluster"] = cluster
    # The server (and its restore_command) gets the environment pgbackup runs with: the
    # S3 credentials, the policy cache.
    saved = dict(os.environ)
    os.environ.update(h.env)
    try:
        with contextlib.suppress(Exception):  # reported ready before replay reaches the end
            cluster.start(timeout=60)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return cluster


def wait_until_recovery_ends(cluster: Cluster, timeout: float = 120) -> None:
    """Until the server has promoted or stopped (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while cluster.is_running() and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if cluster.sql("SELECT NOT pg_is_in_recovery()")[0][0]:
                return
        time.sleep(0.3)


# --- wal-receive (wal_receiver.feature, wal_ship.feature, container_image.feature) ------


def stop_archiving(h: Harness) -> None:
    """The source streams its WAL only: archive_mode off (a restart)."""
    cluster = h.sandbox()
    cluster.sql("ALTER SYSTEM SET archive_mode = off")
    cluster.stop()
    cluster.start()
    assert cluster.sql("SHOW archive_mode")[0][0] == "off"


def check_lost_commits(h: Harness, ctx: dict[str, Any], bound: int) -> None:
    """The restored server holds every commit up to the last acknowledged one (or the one
    in flight), and what is lost is at most ``bound`` seconds of commits."""
    cluster = h.track(*ctx["restored"])
    count, highest = cluster.sql("SELECT count(*), max(n) FROM stream_log", dbname="platform")[0]
    acked = dict(ctx["acked"])
    last_acked = max(acked)
    assert highest is not None and count == highest  # no hole: every commit up to it
    assert highest <= last_acked + 1  # at most the one in flight when the server died
    lost = max(0, last_acked - highest)
    lost_seconds = acked[last_acked] - acked[min(highest, last_acked)]
    print(
        f"commits acknowledged {last_acked}, recovered {highest}, lost {lost} ({lost_seconds:.2f} s)"
    )
    assert lost_seconds <= bound, (lost, lost_seconds)
