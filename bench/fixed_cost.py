#!/usr/bin/env python3
"""A backup's fixed cost: pgbackup's wall time minus pg_basebackup's, for two source trees.

    .venv/bin/python bench/fixed_cost.py --code before=/tmp/old-tree --code after=. \\
        [--scale 5] [--repeat 15]

On one pgbench cluster, each round runs ``pgbackup backup`` once per tree (the tree put
first on PYTHONPATH, so the same virtualenv runs either code) and ``pg_basebackup`` with
exactly the command line pgbackup runs (``-Ft -X stream --checkpoint=fast
--compress=server-zstd:3 --no-sync``), in a rotating order so that background load hits
every contender alike. The fixed cost of a tree is the median over rounds of (its backup
- that round's pg_basebackup): what pgbackup adds to the program it runs, whatever the
machine is doing. Run as root (PostgreSQL runs as ``postgres``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    SERVER_USER,
    give,
    loadavg,
    log,
    make_cluster,
    median,
    must,
    pgbackup_env,
    pgbench,
    rmtree,
    scratch,
    table,
    timed,
    write_policy,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", action="append", required=True, metavar="LABEL=DIR")
    ap.add_argument("--scale", type=int, default=5, help="pgbench scale (default 5)")
    ap.add_argument("--repeat", type=int, default=15, help="rounds (default 15)")
    args = ap.parse_args()
    trees = dict(item.split("=", 1) for item in args.code)
    root = scratch("pgbackup-bench-fixed-")
    cluster = make_cluster(root)
    try:
        pgbench(cluster, "-i", "-q", "-s", str(args.scale))
        cluster.sql("CHECKPOINT")
        log(f"scale {args.scale}; {loadavg()}")
        repo = give(root / "repo", 0o755)
        policy = write_policy(root / "backup.yaml", repo, cluster.port)
        envs = {
            label: {**pgbackup_env(root), "PYTHONPATH": str(Path(tree).resolve())}
            for label, tree in trees.items()
        }
        for label, env in envs.items():  # compile each tree's modules once, untimed
            must(timed([PGBACKUP, "--config", str(policy), "backup"], env=env), label)
            time.sleep(1.1)  # backup ids are UTC seconds
        user = SERVER_USER or "postgres"
        out = give(root / "pg_basebackup", 0o777)
        basebackup = [
            cluster.program("pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(cluster.port), "-U", user),
            *("-Ft", "-X", "stream", "--checkpoint=fast", "--compress=server-zstd:3"),
            "--no-sync",
        ]
        names = [*envs, "pg_basebackup"]
        walls: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.repeat):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                if name == "pg_basebackup":
                    target = out / str(i)
                    r = must(timed([*basebackup, "-D", str(target)]), name)
                    rmtree(target)
                else:
                    r = must(
                        timed([PGBACKUP, "--config", str(policy), "backup"], env=envs[name]), name
                    )
                    time.sleep(max(0.0, 1.05 - time.time() % 1))  # the next backup id
                walls[name].append(r.seconds)
        rows = []
        for name in names:
            extra = [w - b for w, b in zip(walls[name], walls["pg_basebackup"], strict=True)]
            rows.append(
                [
                    name,
                    f"{median(walls[name]):.3f}",
                    "-" if name == "pg_basebackup" else f"{median(extra) * 1000:.0f} ms",
                    "-"
                    if name == "pg_basebackup"
                    else f"{median(walls[name]) / median(walls['pg_basebackup']):.2f}",
                ]
            )
        print(
            table(["contender", "wall s (median)", "fixed cost (median of pairs)", "ratio"], rows)
        )
        print(f"{args.repeat} rounds, scale {args.scale}; after: {loadavg()}")
    finally:
        cluster.stop()
        if not os.environ.get("PGBACKUP_BENCH_KEEP"):
            rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
