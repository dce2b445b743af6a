#!/usr/bin/env python3
"""Point-in-time extraction of one table vs a full restore, on one pgbench database.

    .venv/bin/python bench/extract.py --scale 100 [--repeat 3] [--keep]

A pgbench database of ``--scale`` (loaded with ``wal_level = minimal``, then archived
through ``pgbackup wal-push``) is backed up with ``pgbackup backup``; pgbench then runs
for a while so that recovery has WAL to replay. Contenders, all to the same
``--target-time``, a moment after that load:

- ``restore (full)``: ``pgbackup restore --to DIR --target-time T --start --no-archive``,
  the whole cluster restored and recovered, server up (what a DBA without extract would
  do before running pg_dump);
- ``extract pgbench_branches``: ``pgbackup extract --db postgres --table
  public.pgbench_branches --target-time T --output FILE`` (a small table: the files of
  every other relation are left out of the scratch restore);
- ``extract pgbench_accounts``: the same for the table that holds nearly all the data
  (nothing much to leave out; shows the cost of recovery + dump on top of a restore).

Rounds are interleaved (rotating who goes first); the table shows medians and the ratio
to the full restore. Written bytes: the restored tree (``du``, apparent size) for the
restore, the ``written_bytes`` extract reports for its scratch restore.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    Cluster,
    du,
    free_port,
    give,
    loadavg,
    log,
    median,
    mib,
    must,
    pgbackup_env,
    pgbench,
    rmtree,
    scratch,
    table,
    timed,
    write_policy,
)


def settle() -> None:
    """Write back what the last run left dirty, so no contender pays for the one before."""
    os.sync()
    time.sleep(1.5)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=100, help="pgbench scale (default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    args = ap.parse_args()
    root = scratch("pgbackup-bench-extract-")
    log(f"scratch directory {root}; {loadavg()}; {os.cpu_count()} CPUs")
    cluster = Cluster(root / "data", free_port())
    try:
        run(args, root, cluster)
    finally:
        if args.keep:
            cluster.stop()
            log(f"kept {root}; the source cluster is stopped in {cluster.data_dir}")
        else:
            cluster.destroy()
            rmtree(root)


def run(args: argparse.Namespace, root: Path, cluster: Cluster) -> None:
    repo = give(root / "pgbackup-repo", 0o755)
    policy = write_policy(root / "backup.yaml", repo, cluster.port)
    env = pgbackup_env(root, TMPDIR=str(give(root / "tmp", 0o1777)))
    os.chmod(root / "tmp", 0o1777)
    cluster.initdb(
        {
            "shared_buffers": "256MB",
            "max_wal_size": "4GB",
            "checkpoint_timeout": "30min",
            "wal_level": "minimal",
            "max_wal_senders": 0,
            "archive_mode": "off",
        }
    )
    cluster.start()
    log(f"pgbench -i -s {args.scale} (wal_level minimal: the load writes no WAL)")
    pgbench(cluster, "-i", "-q", "-s", str(args.scale))
    cluster.sql("CHECKPOINT")
    cluster.stop()
    cluster.configure(
        {
            "wal_level": "replica",
            "max_wal_senders": 10,
            "archive_mode": "on",
            "archive_command": f"'{PGBACKUP}' --config '{policy}' wal-push --target bench %p",
        }
    )
    cluster.start()
    db_size = int(cluster.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0])
    version = cluster.sql("SHOW server_version")[0][0]
    log(f"cluster holds {mib(db_size)} (PostgreSQL {version})")
    must(timed([PGBACKUP, "--config", str(policy), "backup"], env=env), "pgbackup backup")
    log("pgbench -T 20 after the backup (WAL for recovery to replay)")
    pgbench(cluster, "-T", "20", "-c", "2")
    # The target: a moment after the load (a commit after it closes the window there).
    when = cluster.sql("SELECT clock_timestamp()")[0][0].isoformat()
    time.sleep(0.2)
    cluster.sql("CREATE TABLE after_target AS SELECT 1 AS x")
    closed = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        last = cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= closed:
            break
        time.sleep(0.3)
    wal_segments = len(list((repo / "bench" / "wal").glob("*.zst")))
    sizes = {
        name: int(cluster.sql(f"SELECT pg_total_relation_size('{name}')")[0][0])
        for name in ("pgbench_branches", "pgbench_accounts")
    }

    names = ["restore (full)", "extract pgbench_branches", "extract pgbench_accounts"]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    base = [PGBACKUP, "--config", str(policy)]
    for i in range(args.repeat):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            if name == "restore (full)":
                dest = root / f"restored-{i}"
                port = free_port()
                r = must(
                    timed(
                        [*base, "restore", "--to", str(dest), "--target-time", when, "--start"]
                        + ["--port", str(port), "--no-archive"],
                        env=env,
                    ),
                    name,
                )
                written = du(dest)
                Cluster(dest, port).stop("immediate")
                rmtree(dest)
            else:
                tbl = name.split()[-1]
                out = root / f"{tbl}-{i}.dump"
                r = must(
                    timed(
                        [*base, "extract", "--db", "postgres", "--table", f"public.{tbl}"]
                        + ["--target-time", when, "--output", str(out), "--json"],
                        env=env,
                    ),
                    name,
                )
                report = json.loads(r.output[r.output.index("{") :])
                written = report["restored"]["written_bytes"]
                out.unlink()
            results[name].append({"seconds": r.seconds, "written": written, "rss": r.peak_rss})
            log(f"run {i + 1}: {name}: {r.seconds:.2f}s, {mib(written)} written")
            settle()

    full = median([x["seconds"] for x in results["restore (full)"]])
    print()
    print(
        f"pgbench scale {args.scale}: {mib(db_size)} in the cluster (PostgreSQL {version}); "
        f"pgbench_accounts {mib(sizes['pgbench_accounts'])}, pgbench_branches "
        f"{mib(sizes['pgbench_branches'])}; {wal_segments} archived WAL segments to replay "
        f"past the backup; {args.repeat} runs each, medians; {os.cpu_count()} CPUs, "
        f"{loadavg()} at the end"
    )
    print()
    rows = []
    for name in names:
        rs = results[name]
        secs = median([x["seconds"] for x in rs])
        rows.append(
            [
                name,
                f"{secs:.2f}",
                " / ".join(f"{x['seconds']:.2f}" for x in rs),
                mib(median([x["written"] for x in rs])),
                mib(median([x["rss"] for x in rs])),
                "-" if name == "restore (full)" else f"{secs / full:.2f}",
            ]
        )
    print(
        table(
            [
                "to --target-time (after the load)",
                "wall s (median)",
                "runs",
                "written",
                "peak RSS",
                "ratio to full restore",
            ],
            rows,
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
