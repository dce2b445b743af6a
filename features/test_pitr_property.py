"""Property: for random recovery targets over one recorded workload, PITR is exact.

One sandbox, one backup, one archive; a workload of batches whose commit points are
recorded. Then a seeded loop picks random targets (time, LSN or xid, inclusive or
exclusive) and checks that each restore holds exactly the batches committed before the
target. PGBACKUP_PITR_SAMPLES raises the number of samples (default 6), PGBACKUP_PITR_SEED
changes the seed (printed on failure).
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC
from typing import Any

import pytest
from harness import Harness, switch_and_wait_archived

from pgbackup.postgres.cluster import free_port

SAMPLES = int(os.environ.get("PGBACKUP_PITR_SAMPLES", "6"))
SEED = int(os.environ.get("PGBACKUP_PITR_SEED", "20261123"))
BATCHES = 12


def record_workload(h: Harness) -> list[dict[str, Any]]:
    cluster = h.sandbox()
    cluster.sql("CREATE TABLE prop (batch int, n int)", dbname="platform")
    rng = random.Random(SEED)
    points = []
    for batch in range(1, BATCHES + 2):  # the last one is a sentinel: WAL after every target
        before = cluster.sql("SELECT clock_timestamp()")[0][0]
        with cluster.connect("platform") as conn:
            conn.autocommit = False
            with conn.transaction():
                conn.execute(
                    "INSERT INTO prop SELECT %s, g FROM generate_series(1, %s) g",
                    (batch, rng.randint(1, 500)),
                )
                xid = conn.execute("SELECT txid_current()").fetchone()[0]
        after_time, after_lsn = cluster.sql(
            "SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text"
        )[0]
        points.append(
            {"batch": batch, "before": before, "after": after_time, "lsn": after_lsn, "xid": xid}
        )
        time.sleep(rng.uniform(0.02, 0.15))
    switch_and_wait_archived(cluster)
    return points


def expected_batches(points: list[dict[str, Any]], i: int, kind: str, exclusive: bool) -> list[int]:
    """Target derived from batch i's commit: batches 1..i, or 1..i-1 when an xid target is exclusive."""
    last = i - 1 if (kind == "xid" and exclusive) else i
    return list(range(1, last + 1))


def target_args(
    rng: random.Random, point: dict[str, Any], nxt: dict[str, Any], kind: str, exclusive: bool
) -> list[str]:
    if kind == "time":
        lo, hi = point["after"], nxt["before"]
        t = lo + (hi - lo) * rng.random()
        args = ["--target-time", t.astimezone(UTC).isoformat()]
    elif kind == "lsn":
        args = ["--target-lsn", point["lsn"]]
    else:
        args = ["--target-xid", str(point["xid"])]
    return args + (["--exclusive"] if exclusive else [])


@pytest.mark.slow
def test_random_targets_restore_exact_batches(h: Harness) -> None:
    h.run("sandbox.up")
    h.run("backup")
    points = record_workload(h)
    rng = random.Random(SEED + 1)
    for sample in range(SAMPLES):
        i = rng.randint(1, BATCHES)
        kind = rng.choice(["time", "lsn", "xid"])
        exclusive = kind == "xid" and rng.random() < 0.5
        args = target_args(rng, points[i - 1], points[i], kind, exclusive)
        port = free_port()
        directory = h.root / f"prop-{sample}"
        cluster = h.track(directory, port)
        h.run(
            "restore", "--to", str(directory), "--start", "--port", str(port), "--no-archive", *args
        )
        rows = cluster.sql(
            "SELECT batch, count(*) FROM prop GROUP BY batch ORDER BY batch", dbname="platform"
        )
        got = [b for b, _n in rows]
        want = expected_batches(points, i, kind, exclusive)
        assert got == want, (
            f"seed {SEED} sample {sample}: {kind} target after batch {i} (exclusive={exclusive}) {args}"
        )
        cluster.stop("immediate")
