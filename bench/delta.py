#!/usr/bin/env python3
"""Delta restore after a 1 % change: pgbackup and pgBackRest, each against a full restore.

    .venv/bin/python bench/delta.py --scale 50 [--repeat 3] [--keep]

One pgbench database; each tool takes a full backup and restores it (a full restore into
a fresh directory: the reference), then 1 % of ``pgbench_accounts`` rows change (the
first 1 %, so about 1 % of the pages; ``--spread``: every 100th row, nearly every page), each tool
takes a new full backup and restores it with ``--delta`` over its own earlier copy. Printed
side by side: wall time, and the bytes the whole machine wrote to disk during the restore
(``/proc/diskstats``, so run it on a quiet machine; pgbackup's own count of bytes written
is shown too). Ratios are pgbackup/pgBackRest and delta/full. pgBackRest must be
installed (``apt-get install -y pgbackrest``); run as root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    Cluster,
    fsync_tree,
    give,
    loadavg,
    log,
    median,
    mib,
    must,
    pgbackrest,
    pgbackrest_conf,
    pgbackup_env,
    pgbench,
    rmtree,
    scratch,
    socket_settings,
    table,
    timed,
    write_policy,
)


def disk_written() -> int:
    """Bytes written to every block device so far (sectors of 512 bytes)."""
    total = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        name = fields[2]
        if name.startswith(("loop", "ram")) or name[-1].isdigit() and not name.startswith("nvme"):
            continue  # partitions double-count their disk
        total += int(fields[9]) * 512
    return total


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--spread", action="store_true", help="change every 100th row (nearly every page)"
    )
    args = ap.parse_args()
    root = scratch("pgbackup-bench-delta-")
    try:
        run(args, root)
    finally:
        if not args.keep:
            rmtree(root)


def run(args: argparse.Namespace, root: Path) -> None:
    from pgbackup.postgres.cluster import free_port

    cluster = Cluster(root / "data", free_port())
    conf = pgbackrest_conf(root, cluster, process_max=2)
    cluster.initdb(
        {
            "shared_buffers": "256MB",
            "max_wal_size": "4GB",
            "archive_mode": "on",
            "archive_command": f"pgbackrest --config={conf} --stanza=bench archive-push %p",
            **socket_settings(root),
        }
    )
    cluster.start()
    try:
        log(f"pgbench -i -s {args.scale}; load {loadavg()}")
        pgbench(cluster, "-i", "-q", "-s", str(args.scale))
        pgbackrest(conf, "stanza-create")
        repo = give(root / "pgbackup-repo", 0o755)
        policy = write_policy(root / "backup.yaml", repo, cluster.port, workers=2)
        env = pgbackup_env(root)
        pgb = [PGBACKUP, "--config", str(policy)]
        rows: dict[str, list[dict[str, float]]] = {}

        def measure(name: str, argv: list[str], dest: Path, server: bool) -> dict[str, float]:
            before = disk_written()
            r = must(timed(argv, env=None if server else env, server_user=server), name)
            fsync_tree(dest)  # both tools fsync; this only makes the disk count complete
            out = {"seconds": r.seconds, "disk": disk_written() - before}
            if not server and "--json" in argv:
                out["own_written"] = json.loads(r.output[r.output.index("{") :])["delta"][
                    "written_bytes"
                ]
            rows.setdefault(name, []).append(out)
            log(f"{name}: {r.seconds:.2f}s, disk {mib(out['disk'])}")
            return out

        for i in range(args.repeat):
            must(timed([*pgb, "backup"], env=env), "pgbackup backup")
            pgbackrest(conf, "--type=full", "backup")
            a, b = root / f"pgb-{i}", root / f"pbr-{i}"
            give(b, 0o700)
            measure("full: pgbackup restore", [*pgb, "restore", "--to", str(a)], a, False)
            measure(
                "full: pgbackrest restore",
                ["pgbackrest", f"--config={conf}", "--stanza=bench", f"--pg1-path={b}", "restore"],
                b,
                True,
            )
            # 1 % of the rows, and so about 1 % of the pages (the first ones). --spread
            # changes every 100th row instead, which touches nearly every page.
            where = "aid % 100 = 0" if args.spread else f"aid <= {args.scale * 1000}"
            cluster.sql(
                f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE {where}",
                dbname="postgres",
            )
            cluster.sql("CHECKPOINT")
            must(timed([*pgb, "backup"], env=env), "pgbackup backup")
            pgbackrest(conf, "--type=full", "backup")
            measure(
                "delta: pgbackup restore --delta",
                [*pgb, "restore", "--to", str(a), "--delta", "--json"],
                a,
                False,
            )
            measure(
                "delta: pgbackrest restore --delta",
                [
                    "pgbackrest",
                    f"--config={conf}",
                    "--stanza=bench",
                    f"--pg1-path={b}",
                    "--delta",
                    "restore",
                ],
                b,
                True,
            )
            rmtree(a)
            rmtree(b)
    finally:
        cluster.stop("fast")

    def med(name: str, key: str) -> float:
        return median([r[key] for r in rows[name]])

    print()
    how = "every 100th row" if args.spread else "the first 1 % of rows"
    print(
        f"delta restore after changing {how}, pgbench scale {args.scale}, medians of {args.repeat}"
    )
    out = []
    for name in rows:
        extra = (
            f" (pgbackup says {mib(med(name, 'own_written'))} written)"
            if "own_written" in rows[name][0]
            else ""
        )
        out.append([name, f"{med(name, 'seconds'):.2f} s", mib(med(name, "disk")) + extra])
    print(table(["restore", "wall time", "disk written (machine)"], out))
    pairs = [
        ("full", "full: pgbackup restore", "full: pgbackrest restore"),
        ("delta", "delta: pgbackup restore --delta", "delta: pgbackrest restore --delta"),
    ]
    for label, ours, theirs in pairs:
        print(
            f"{label}: pgbackup/pgBackRest time ratio {med(ours, 'seconds') / med(theirs, 'seconds'):.2f}, "
            f"disk ratio {med(ours, 'disk') / max(1, med(theirs, 'disk')):.2f}"
        )
    for tool, full, delta in (
        ("pgbackup", "full: pgbackup restore", "delta: pgbackup restore --delta"),
        ("pgBackRest", "full: pgbackrest restore", "delta: pgbackrest restore --delta"),
    ):
        print(
            f"{tool}: delta/full time {med(delta, 'seconds') / med(full, 'seconds'):.2f}, "
            f"disk {med(delta, 'disk') / max(1, med(full, 'disk')):.2f}"
        )


if __name__ == "__main__":
    main()
