"""SIGKILL of `pgbackup backup` at random points of its run.

After every kill: nothing partial is listed as complete (every backup `list --json` calls
complete verifies), the earlier backup still verifies, and no committed transaction is
lost (a final PITR to the end of the archive holds every batch committed before a kill).
Then the next backup succeeds and `cleanup` removes what the killed ones left.
"""

from __future__ import annotations

import os
import time

import counts
from faultlib import add_bulk, batches, clean_output, listed, popen, restored, rng, sigkill_after
from harness import Harness, commit_batches, switch_and_wait_archived

KIND = "SIGKILL of `pgbackup backup`"


def test_sigkill_backup_at_random_points(h: Harness) -> None:
    r = rng("kill-backup")
    kills = counts.pick(8, 24)
    h.run("sandbox.up")
    cluster = h.sandbox()
    add_bulk(cluster, counts.pick(150_000, 400_000))
    commit_batches(cluster, 1, 2)
    t0 = time.monotonic()
    h.run("backup")
    duration = time.monotonic() - t0
    baseline = listed(h)["backups"][-1]["backup_id"]
    verified: set[str] = {baseline}
    problems: list[str] = []
    batch = 2
    for i in range(kills):
        batch += 1
        commit_batches(cluster, batch, batch)
        # Points spread over the whole run: start-up, lock, connect, streaming, metadata.
        delay = r.uniform(0.05, duration * 1.15)
        proc = popen(h, "backup")
        rc, out, err, killed = sigkill_after(proc, delay)
        round_problems = []
        if not killed and rc != 0:
            round_problems.append(f"kill {i}: backup finished on its own with {rc}: {err}")
        state = listed(h)
        for b in state["backups"]:
            if b["status"] == "complete" and b["backup_id"] not in verified:
                v = h.run("verify", "--backup", b["backup_id"], expect_ok=None)
                if v.returncode != 0:
                    round_problems.append(
                        f"kill {i} at {delay:.2f}s: {b['backup_id']} listed complete but "
                        f"does not verify: {v.stdout}{v.stderr}"
                    )
                else:
                    verified.add(b["backup_id"])
        v = h.run("verify", "--backup", baseline, expect_ok=None)
        if v.returncode != 0:
            round_problems.append(f"kill {i}: the earlier backup no longer verifies: {v.stdout}")
        round_problems += clean_output(v)
        counts.record(KIND, not round_problems)
        problems += round_problems

    # The next backup succeeds and verifies.
    nxt = h.run("backup", expect_ok=None)
    problems += clean_output(nxt)
    if nxt.returncode != 0:
        problems.append(f"the backup after the kills failed: {nxt.stderr}")
    newest = listed(h)["backups"][-1]
    assert newest["status"] == "complete", newest
    h.run("verify", "--backup", newest["backup_id"])

    # Temp files of killed writes are left for an hour (a write may still be running);
    # age them, then cleanup must remove every leftover and keep every complete backup.
    base = h.repo / "platform" / "base"
    old = time.time() - 7200
    for p in base.rglob("*"):
        os.utime(p, (old, old), follow_symlinks=False)
    complete_before = {b["backup_id"] for b in listed(h)["backups"] if b["status"] == "complete"}
    h.run("cleanup")
    after = listed(h)["backups"]
    leftovers = [b["backup_id"] for b in after if b["status"] != "complete"]
    tmp_files = [p.as_posix() for p in base.rglob("*.pgbackup-tmp")]
    assert not leftovers, f"cleanup left incomplete backups: {leftovers}"
    assert not tmp_files, f"cleanup left temp files: {tmp_files}"
    assert complete_before <= {b["backup_id"] for b in after} | set(), (complete_before, after)

    # Zero committed transactions lost: replay every archived WAL file from the newest backup.
    switch_and_wait_archived(cluster)
    with restored(h, "--target", "latest") as rc:
        assert rc is not None, h.last.stderr if h.last else None
        got = batches(rc)
    expected = list(range(1, batch + 1))
    lost = len(set(expected) - set(got))
    counts.transactions(KIND, len(expected), lost)
    assert got == expected, (got, expected)
    assert not problems, "\n".join(problems)
