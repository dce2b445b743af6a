#!/usr/bin/env python3
"""Base backup and restore: pgbackup against its peers, on one pgbench database, in one run.

    .venv/bin/python bench/backup.py --scale 50 [--repeat 3] [--workers 2] [--keep]

(a) ``pgbackup backup`` (policy ``compression: {method: zstd, level: 3, workers: 2}``) vs
    ``pg_basebackup -Ft --compress=client-zstd:3 -X stream --checkpoint=fast`` (the same
    compression, zstd level 3, computed by the client) and, as further peer lines,
    ``--compress=server-zstd:3`` (one server thread) and
    ``--compress=server-zstd:level=3,workers=2`` (exactly what pgbackup asks the server
    for, so that line shows pgbackup's own fixed cost): wall time, stored bytes, peak RSS
    (sum over the process tree, see common.py) and the ratio pgbackup/peer.
(b) ``pgbackup restore`` of that backup vs ``pgbackrest restore`` (process-max 2,
    compress-type zst level 3) of the same database: wall time, peak RSS, ratio.

``--workers 0`` gives pgbackup exactly ``server-zstd:3``, the line issue #15's fixed-cost
goal compares with (``--scale 20 --repeat 7 --workers 0``); the script prints that ratio
and the restore ratio in a block of their own.

Each measurement is repeated ``--repeat`` times (default 3), the contenders interleaved
round by round (rotating who goes first) so that background load hits them alike; the
table shows medians. Run as root (PostgreSQL and pgBackRest then run as ``postgres``).
pgBackRest must be installed (``apt-get install -y pgbackrest``). Everything lives in
a scratch directory under /tmp, removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    SERVER_USER,
    Cluster,
    du,
    free_port,
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


def settle() -> None:
    """Between two timed runs: write back what the last one left dirty and let the disk
    finish discarding what it deleted (this ext4 is mounted with ``discard``), so that
    no contender pays for the one before it."""
    os.sync()
    time.sleep(1.5)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=50, help="pgbench scale (default 50)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender (default 3)")
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="compression.workers in pgbackup's policy: zstd threads on the server (default 2; "
        "0 = one thread, as pg_basebackup's server-zstd:3)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    args = ap.parse_args()
    if shutil.which("pgbackrest") is None:
        raise SystemExit("pgbackrest not found: apt-get install -y pgbackrest (benchmark only)")

    root = scratch("pgbackup-bench-backup-")
    log(f"scratch directory {root}; {loadavg()}; {os.cpu_count()} CPUs")
    cluster = Cluster(root / "data", free_port())
    try:
        run(args, root, cluster)
    finally:
        cluster.destroy()
        if not args.keep:
            rmtree(root)


def run(args: argparse.Namespace, root: Path, cluster: Cluster) -> None:
    conf = pgbackrest_conf(root, cluster, process_max=2)
    settings = {
        "shared_buffers": "256MB",
        "max_wal_size": "4GB",
        "checkpoint_timeout": "30min",
        # pgBackRest's backup needs working archiving into its own repository.
        "archive_mode": "on",
        "archive_command": f"pgbackrest --config={conf} --stanza=bench archive-push %p",
        **socket_settings(root),
    }
    cluster.initdb(settings)
    cluster.start()
    user = SERVER_USER or "postgres"
    log(f"pgbench -i -s {args.scale} on port {cluster.port}")
    pgbench(cluster, "-i", "-q", "-s", str(args.scale))
    cluster.sql("CHECKPOINT")
    db_size = int(cluster.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0])
    version = cluster.sql("SHOW server_version")[0][0]
    log(f"cluster holds {mib(db_size)} (PostgreSQL {version})")
    pgbackrest(conf, "stanza-create")
    pgbackrest(conf, "check")

    repo = give(root / "pgbackup-repo", 0o755)
    policy = write_policy(root / "backup.yaml", repo, cluster.port, workers=args.workers)
    env = pgbackup_env(root)
    must(timed([PGBACKUP, "--config", str(policy), "list"], env=env), "pgbackup list (warm-up)")
    # One untimed backup first (pgbackup's modules are compiled already: common.pgbackup_env;
    # this warms the page cache and the policy cache, as any later backup finds them).
    must(timed([PGBACKUP, "--config", str(policy), "backup"], env=env), "pgbackup backup (warm-up)")
    # Backup ids are UTC seconds: a backup that starts in the second of the previous one
    # waits for the next second (engine/backup.run_backup). Not in a timed run.
    time.sleep(1.1)
    basebackup = [
        cluster.program("pg_basebackup"),
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.port),
        "-U",
        user,
        "-Ft",
        # The WAL and checkpoint modes pgbackup uses (engine/backup.basebackup_argv):
        # streamed WAL, a fast checkpoint. (A spread checkpoint alone would dominate.)
        "-X",
        "stream",
        "--checkpoint=fast",
    ]

    # --- (a) backup ---------------------------------------------------------------------
    same = f"pg_basebackup server-zstd:level=3,workers={args.workers}"
    names = ["pgbackup backup", "pg_basebackup client-zstd:3", "pg_basebackup server-zstd:3"]
    if args.workers:
        names.append(same)  # exactly the compression pgbackup asks the server for
    compress = {
        "pg_basebackup client-zstd:3": "client-zstd:3",
        "pg_basebackup server-zstd:3": "server-zstd:3",
        same: f"server-zstd:level=3,workers={args.workers}",
    }
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for i in range(args.repeat):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            if name == "pgbackup backup":
                before = (
                    set(os.listdir(repo / "bench" / "base"))
                    if (repo / "bench" / "base").exists()
                    else set()
                )
                r = must(timed([PGBACKUP, "--config", str(policy), "backup"], env=env), name)
                new = sorted(set(os.listdir(repo / "bench" / "base")) - before)
                assert len(new) == 1, new
                meta = json.loads((repo / "bench" / "base" / new[0] / "metadata.json").read_text())
                stored = du(repo / "bench" / "base" / new[0])
                raw = meta["raw_bytes"]
            else:
                out = root / f"pg_basebackup-{names.index(name)}-{i}"
                r = must(timed([*basebackup, "-D", str(out), f"--compress={compress[name]}"]), name)
                stored = du(out)
                raw = 0
                rmtree(out)
            settle()
            results[name].append(
                {
                    "seconds": r.seconds,
                    "stored": stored,
                    "rss": r.peak_rss,
                    "raw": raw,
                    "cpu": r.cpu,
                }
            )
            log(
                f"run {i + 1}: {name}: {r.seconds:.2f}s, {mib(stored)} stored, peak RSS {mib(r.peak_rss)}, CPU {r.cpu:.2f}s"
            )

    # --- (b) restore --------------------------------------------------------------------
    log("pgbackrest backup --type=full (the restore peer's source)")
    pbr_backup = timed(
        ["pgbackrest", f"--config={conf}", "--stanza=bench", "--type=full", "backup"],
        server_user=True,
    )
    must(pbr_backup, "pgbackrest backup")
    pbr_stored = du(root / "pgbackrest" / "repo" / "backup")
    log(f"pgbackrest backup: {pbr_backup.seconds:.2f}s, {mib(pbr_stored)} stored")

    rnames = ["pgbackup restore", "pgbackrest restore (process-max 2, zst)"]
    rresults: dict[str, list[dict[str, float]]] = {n: [] for n in rnames}
    restored_dirs: list[Path] = []
    for i in range(args.repeat):
        order = rnames if i % 2 == 0 else rnames[::-1]
        for name in order:
            dest = root / f"restore-{i}-{'pgb' if name.startswith('pgbackup') else 'pbr'}"
            if name.startswith("pgbackup"):
                argv = [
                    PGBACKUP,
                    "--config",
                    str(policy),
                    "restore",
                    "--backup",
                    "latest",
                    "--to",
                    str(dest),
                ]
                r = must(timed(argv, env=env), name)
            else:
                give(dest, 0o700)
                argv = [
                    "pgbackrest",
                    f"--config={conf}",
                    "--stanza=bench",
                    f"--pg1-path={dest}",
                    "restore",
                ]
                r = must(timed(argv, server_user=True), name)
            if not (dest / "PG_VERSION").is_file():
                raise SystemExit(f"{name} left no PG_VERSION in {dest}")
            # Both contenders fsync what they restore; an fsync walk right after each
            # shows that nothing was left unsynced (a separate column, not hidden).
            t0 = time.perf_counter()
            fsync_tree(dest)
            sync_s = time.perf_counter() - t0
            restored = du(dest)
            rresults[name].append(
                {
                    "seconds": r.seconds,
                    "rss": r.peak_rss,
                    "restored": restored,
                    "cpu": r.cpu,
                    "fsync_after": sync_s,
                }
            )
            log(
                f"run {i + 1}: {name}: {r.seconds:.2f}s (+{sync_s:.2f}s fsync after), {mib(restored)} restored, "
                f"peak RSS {mib(r.peak_rss)}, CPU {r.cpu:.2f}s"
            )
            # Kept until every restore has run: ext4 makes a file created soon after
            # many deletions search for an inode not recently freed (perf: recently_deleted
            # in ext4_create), so deleting one contender's tree would slow the next one.
            restored_dirs.append(dest)
            settle()
    for dest in restored_dirs:
        rmtree(dest)

    # --- report -------------------------------------------------------------------------
    def med(rows: list[dict[str, float]], key: str) -> float:
        return median([r[key] for r in rows])

    pgb = results["pgbackup backup"]
    print()
    print(
        f"pgbench scale {args.scale}: {mib(db_size)} in the cluster (PostgreSQL {version}); "
        f"{args.repeat} runs each, medians; {os.cpu_count()} CPUs, {loadavg()} at the end"
    )
    print()
    print("Base backup (zstd level 3, WAL included, fast checkpoint)")
    rows = []
    for name in names:
        rs = results[name]
        ratio = med(pgb, "seconds") / med(rs, "seconds")
        rows.append(
            [
                name,
                f"{med(rs, 'seconds'):.2f}",
                " / ".join(f"{r['seconds']:.2f}" for r in rs),
                mib(med(rs, "stored")),
                mib(med(rs, "rss")),
                f"{med(rs, 'cpu'):.2f}",
                "-" if name == "pgbackup backup" else f"{ratio:.2f}",
            ]
        )
    print(
        table(
            [
                "contender",
                "wall s (median)",
                "runs",
                "stored",
                "peak RSS",
                "client CPU s",
                "pgbackup/peer time",
            ],
            rows,
        )
    )
    print(
        "(pg_basebackup -X stream leaves pg_wal.tar uncompressed; pgbackup compresses it, "
        "hence its smaller stored size)"
    )
    print()
    print("Restore (same database)")
    pgr = rresults["pgbackup restore"]
    rows = []
    for name in rnames:
        rs = rresults[name]
        ratio = med(pgr, "seconds") / med(rs, "seconds")
        rows.append(
            [
                name,
                f"{med(rs, 'seconds'):.2f}",
                " / ".join(f"{r['seconds']:.2f}" for r in rs),
                mib(med(rs, "restored")),
                mib(med(rs, "rss")),
                f"{med(rs, 'cpu'):.2f}",
                f"{med(rs, 'fsync_after'):.2f}",
                "-" if name.startswith("pgbackup") else f"{ratio:.2f}",
            ]
        )
    print(
        table(
            [
                "contender",
                "wall s (median)",
                "runs",
                "restored",
                "peak RSS",
                "CPU s",
                "fsync walk after s",
                "pgbackup/peer time",
            ],
            rows,
        )
    )
    sync = [r["seconds"] + r["fsync_after"] for r in pgr]
    r_sync = median(sync) / med(rresults[rnames[1]], "seconds")
    print("fsync walk after: fsync of every file and directory of the restored tree, timed right")
    print(
        "after the restore (not in its wall time). Both contenders fsync every file they restore,"
    )
    print("so on either tree the walk costs only its own overhead.")
    print(
        f"pgbackup restore + that fsync walk: "
        f"{median(sync):.2f}s median ({' / '.join(f'{x:.2f}' for x in sync)}), ratio {r_sync:.2f}"
    )
    print(
        "(pgbackup's restore holds pg_wal with the WAL fetched at backup time; pgBackRest's "
        "fetches WAL through restore_command at start-up, so its directory is smaller)"
    )
    print(
        f"(pgBackRest's own full backup of the same database: {pbr_backup.seconds:.2f}s, "
        f"{mib(pbr_stored)} stored, process-max 2)"
    )
    print()
    b_client = med(pgb, "seconds") / med(results["pg_basebackup client-zstd:3"], "seconds")
    b_server = med(pgb, "seconds") / med(results["pg_basebackup server-zstd:3"], "seconds")
    r_ratio = med(pgr, "seconds") / med(rresults[rnames[1]], "seconds")
    same_name = same if args.workers else "pg_basebackup server-zstd:3"
    b_same_flags = med(pgb, "seconds") / med(results[same_name], "seconds")
    print("=" * 78)
    print(
        f"FIXED COST (issue #15), scale {args.scale}, {loadavg()}:\n"
        f"  backup  / {same_name.removeprefix('pg_basebackup ')} (same flags): "
        f"{b_same_flags:.2f}  (goal <= 1.10: {'MET' if b_same_flags <= 1.10 else 'NOT MET'})\n"
        f"  restore / pgbackrest restore --process-max=2:    "
        f"{r_ratio:.2f}  (goal <= 1.00: {'MET' if r_ratio <= 1.0 else 'NOT MET'})"
    )
    print("=" * 78)
    print("Goals")
    print(
        f"  backup no slower than pg_basebackup client-zstd:3: ratio {b_client:.2f} -> {'MET' if b_client <= 1.0 else 'NOT MET'}"
    )
    print(f"  (vs server-zstd:3: ratio {b_server:.2f})")
    if args.workers:
        b_same = med(pgb, "seconds") / med(results[same], "seconds")
        print(
            f"  (vs {same.removeprefix('pg_basebackup ')}, the server compressing exactly as "
            f"for pgbackup: ratio {b_same:.2f}; the difference is pgbackup's own fixed cost)"
        )
    print(
        f"  restore no slower than pgBackRest:                  ratio {r_ratio:.2f} -> {'MET' if r_ratio <= 1.0 else 'NOT MET'}"
    )
    print(
        f"  (restore + fsync, equally durable:                  ratio {r_sync:.2f} -> {'MET' if r_sync <= 1.0 else 'NOT MET'})"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "scale": args.scale,
                    "db_size": db_size,
                    "version": version,
                    "load": os.getloadavg(),
                    "backup": results,
                    "restore": rresults,
                    "pgbackrest_backup": {"seconds": pbr_backup.seconds, "stored": pbr_stored},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
