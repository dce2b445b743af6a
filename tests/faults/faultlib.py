"""Helpers shared by the fault tests: processes, kills, outputs, repository snapshots."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import PGBACKUP, Harness

from pgbackup.postgres.cluster import Cluster

SEED = int(os.environ.get("PGBACKUP_FAULTS_SEED", "20261124"))


def rng(name: str) -> random.Random:
    """A seeded generator per test: a failing run can be replayed with the same seed."""
    return random.Random(f"{SEED}-{name}")


def clean_output(proc: subprocess.CompletedProcess[str] | Any) -> list[str]:
    """Problems with how a command failed or succeeded: tracebacks, internal errors."""
    out = (proc.stdout or "") + (proc.stderr or "")
    problems = []
    if "Traceback" in out:
        problems.append(f"traceback in output: {out[-2000:]}")
    if proc.returncode == 70 or "internal error" in out:
        problems.append(f"internal error (exit {proc.returncode}): {out[-1000:]}")
    return problems


def popen(h: Harness, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PGBACKUP, "--config", str(h.config), *args],
        env=h.env,
        cwd=h.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL whatever is left of a process group (e.g. an orphaned pg_basebackup)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def sigkill_after(proc: subprocess.Popen[Any], delay: float) -> tuple[int, str, str, bool]:
    """SIGKILL ``proc`` (the pgbackup process only) after ``delay`` seconds.

    Returns (exit status, stdout, stderr, killed) - killed is False when the process
    had already finished before the signal was due.
    """
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    # Give orphaned children (pg_basebackup) a moment to die of SIGPIPE, then make sure.
    time.sleep(0.2)
    kill_group(proc)
    return proc.returncode, out, err, killed


def tree_digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (relative path -> digest)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or any(s in rel for s in skip):
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def listed(h: Harness) -> dict[str, Any]:
    proc = h.run("list", "--json", expect_ok=True)
    return json.loads(proc.stdout)["platform"]


@contextlib.contextmanager
def restored(h: Harness, *args: str, name: str = "restored") -> Iterator[Cluster | None]:
    """Restore with --start into a fresh directory; yields the cluster (None on failure)."""
    from pgbackup.postgres.cluster import free_port

    port = free_port()
    directory = h.root / f"{name}-{port}"
    cluster = h.track(directory, port)
    proc = h.run(
        "restore",
        "--to",
        str(directory),
        "--start",
        "--port",
        str(port),
        "--no-archive",
        *args,
        expect_ok=None,
    )
    try:
        yield cluster if proc.returncode == 0 else None
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")


def batches(cluster: Cluster) -> list[int]:
    exists = cluster.sql("SELECT to_regclass('pitr_batches') IS NOT NULL", dbname="platform")[0][0]
    if not exists:
        return []
    rows = cluster.sql(
        "SELECT batch, count(*) FROM pitr_batches GROUP BY batch ORDER BY batch", dbname="platform"
    )
    assert all(n == 100 for _b, n in rows), rows  # whole transactions only
    return [int(b) for b, _n in rows]


def add_bulk(cluster: Cluster, rows: int) -> None:
    """Make the database bigger (poorly compressible text) so a backup takes a while."""
    cluster.sql(
        "CREATE TABLE IF NOT EXISTS bulk (id bigint, payload text);"
        f"INSERT INTO bulk SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)"
        f" || md5((g * 31)::text) FROM generate_series(1, {rows}) g;"
        "CHECKPOINT",
        dbname="platform",
    )
