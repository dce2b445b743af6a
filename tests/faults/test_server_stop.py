"""The server stopped (immediate) or restarted in the middle of a backup.

The database is made big (pgbench -i) so that the backup streams for a few seconds;
the fault comes once pg_basebackup's stream is flowing into the repository. Each must
end in a clean failure with a clear message, nothing listed as complete, and then a
backup that succeeds; a final PITR holds every batch committed before the faults.
"""

from __future__ import annotations

import subprocess

import counts
from faultlib import batches, clean_output, listed, popen, restored
from harness import Harness, commit_batches, switch_and_wait_archived, wait_streaming

from pgbackup.postgres.cluster import run_as


def test_server_stopped_or_restarted_mid_backup(h: Harness) -> None:
    h.run("sandbox.up")
    cluster = h.sandbox()
    run_as(
        [
            cluster.program("pgbench"),
            "-i",
            "-q",
            "-s",
            str(counts.pick(8, 20)),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "platform",
        ],
        cluster.os_user,
        timeout=600,
    )
    commit_batches(cluster, 1, 2)
    switch_and_wait_archived(cluster)
    h.run("backup")
    good = {b["backup_id"] for b in listed(h)["backups"]}
    problems: list[str] = []
    rounds = counts.pick(1, 3)
    batch = 2
    for _ in range(rounds):
        for how in ("stop -m immediate", "restart"):
            batch += 1
            commit_batches(cluster, batch, batch)
            proc = popen(h, "backup")
            streaming = wait_streaming(cluster, proc)
            if how == "restart":
                cluster.stop("fast")
                cluster.start()
            else:
                cluster.stop("immediate")
            out, err = proc.communicate(timeout=300)
            round_problems = []
            if not streaming:
                round_problems.append(
                    f"{how}: the backup was not streaming yet ({proc.returncode})"
                )
            if proc.returncode == 0:
                round_problems.append(f"{how}: the backup claims success")
            if "pg_basebackup" not in err and "server" not in err and "connect" not in err:
                round_problems.append(f"{how}: unclear message: {err}")
            if err.count("pgbackup: error:") != 1:
                round_problems.append(f"{how}: not one clear message: {err}")
            round_problems += clean_output(
                subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            )
            if not cluster.is_running():
                cluster.start()
            state = listed(h)["backups"]
            new_complete = [
                b for b in state if b["status"] == "complete" and b["backup_id"] not in good
            ]
            if new_complete:
                round_problems.append(f"{how}: listed as complete: {new_complete}")
            counts.record(f"server {how} in the middle of a backup", not round_problems)
            problems += round_problems
    nxt = h.run("backup", expect_ok=None)
    assert nxt.returncode == 0, nxt.stderr
    switch_and_wait_archived(cluster)
    with restored(h, "--backup", sorted(good)[0], "--target", "latest") as rc:
        assert rc is not None, h.last.stderr if h.last else None
        got = batches(rc)
    expected = list(range(1, batch + 1))
    lost = len(set(expected) - set(got))
    for how in ("stop -m immediate", "restart"):
        counts.transactions(f"server {how} in the middle of a backup", len(expected), lost)
    assert got == expected, (got, expected)
    assert not problems, "\n".join(problems)
