"""Disk full in the repository, during a backup and during wal-push.

The repository is a 48 MiB tmpfs (a backup needs room for its base archive and, for a
moment, the uncompressed WAL streamed during it), filled up to a few hundred KiB. Each failure must be
one clear message ("no space left"), a non-zero exit, no damage to what was stored, and
the server keeps running (and its archiving catches up once space is freed: no
committed transaction lost).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator

import counts
import pytest
from faultlib import batches, clean_output, listed, restored, tree_digest
from harness import Harness, commit_batches, switch_and_wait_archived

from pgbackup.postgres.cluster import server_os_user

SKIP_STATE = ("runs/", "backup.log", ".lock", "filler")


@contextlib.contextmanager
def small_repository(h: Harness) -> Iterator[None]:
    user = server_os_user()
    owner = pwd.getpwnam(user) if user else None
    opts = "size=48m,mode=0750" + (f",uid={owner.pw_uid},gid={owner.pw_gid}" if owner else "")
    h.repo.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(h.repo)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the repository ({proc.stderr.strip()}); needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(h.repo)], capture_output=True)


def fill(h: Harness, leave: int) -> None:
    free = shutil.disk_usage(h.repo).free
    with open(h.repo / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def changed(h: Harness, stored: dict[str, str]) -> list[str]:
    """Files stored before that are now gone or different (new files are fine)."""
    now = tree_digest(h.repo, SKIP_STATE)
    return [k for k, v in stored.items() if now.get(k) != v]


def test_disk_full(h: Harness) -> None:
    with small_repository(h):
        h.run("sandbox.up")
        cluster = h.sandbox()
        switch_and_wait_archived(cluster)
        h.run("backup")
        first = listed(h)["backups"][-1]["backup_id"]
        commit_batches(cluster, 1, 2)
        switch_and_wait_archived(cluster)
        stored = tree_digest(h.repo, SKIP_STATE)
        fill(h, 256 * 1024)

        # 1. A backup into the full repository.
        problems: list[str] = []
        proc = h.run("backup", expect_ok=None)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "no space left" not in out.lower():
            problems.append(f"backup on a full disk: exit {proc.returncode}: {out[-500:]}")
        problems += clean_output(proc)
        if [b for b in listed(h)["backups"] if b["status"] == "complete"][-1]["backup_id"] != first:
            problems.append("a backup on a full disk is listed as complete")
        if changed(h, stored):
            problems.append(f"stored data changed after the failed backup: {changed(h, stored)}")
        if cluster.sql("SELECT 1")[0][0] != 1:
            problems.append("the server stopped")
        counts.record("disk full during `backup`", not problems)
        all_problems = list(problems)

        # 2. wal-push of a segment that does not fit (random data does not compress).
        problems = []
        real = sorted((cluster.data_dir / "pg_wal").glob("0000000100000000000000*"))[0]
        big = h.root / "big" / "0000000100000000000000F3"
        big.parent.mkdir()
        big.write_bytes(real.read_bytes()[:40] + os.urandom(16 * 1024 * 1024 - 40))
        proc = h.run("wal-push", "--target", "platform", str(big), expect_ok=None)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "no space left" not in out.lower():
            problems.append(f"wal-push on a full disk: exit {proc.returncode}: {out[-500:]}")
        problems += clean_output(proc)
        fetched = h.root / "big" / "fetched"
        f = h.run("wal-fetch", "--target", "platform", big.name, str(fetched), expect_ok=None)
        if f.returncode != 1 or fetched.exists():
            problems.append(f"wal-fetch after a failed push: exit {f.returncode}")
        # The server's own archiving fails meanwhile; the server keeps running and writing.
        commit_batches(cluster, 3, 3)
        cluster.sql("SELECT pg_switch_wal()")
        if changed(h, stored):
            problems.append(f"stored data changed after the failed wal-push: {changed(h, stored)}")
        if cluster.sql("SELECT count(*) FROM pitr_batches", dbname="platform")[0][0] != 300:
            problems.append("the server stopped accepting writes")
        counts.record("disk full during `wal-push`", not problems)
        all_problems += problems

        # 3. Space freed: archiving catches up, the next backup works, nothing committed lost.
        (h.repo / "filler").unlink()
        switch_and_wait_archived(cluster, timeout=120)
        h.run("backup")
        with restored(h, "--backup", first, "--target", "latest") as rc:
            assert rc is not None, h.last.stderr if h.last else None
            got = batches(rc)
        lost = len({1, 2, 3} - set(got))
        counts.transactions("disk full during `wal-push`", 3, lost)
        assert got == [1, 2, 3], got
        assert not all_problems, "\n".join(all_problems)
