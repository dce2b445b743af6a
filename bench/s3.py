#!/usr/bin/env python3
"""Backup and restore of a pgbench database to S3 (moto in server mode) vs to posix.

    .venv/bin/python bench/s3.py [--scale 50] [--repeat 1] [--part-size 16MiB] [--keep]

For each repository kind: ``pgbackup backup`` then ``pgbackup restore --backup latest``
(into an empty directory, server not started): wall time and peak RSS of the pgbackup
process tree (sum of RSS over pgbackup and its children, sampled every 20 ms; see
common.py). The goal in issue 4: a backup of a 1.5 GB database to S3 stays under
250 MB peak RSS (multipart upload with bounded memory).

moto runs in this benchmark's own process (threaded server) and holds every stored
object in memory; its footprint is reported separately and is not part of pgbackup's
figures. Run as root (PostgreSQL runs as ``postgres``); everything lives in a scratch
directory under /tmp, removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import services  # noqa: E402
from common import (  # noqa: E402
    PGBACKUP,
    Run,
    du,
    give,
    loadavg,
    log,
    make_cluster,
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

RSS_GOAL = 250 * 1024 * 1024


def s3_policy(posix_policy: Path, path: Path, spec: dict[str, Any], part_size: str) -> Path:
    text = posix_policy.read_text()
    head, rest = text.split("repository:\n", 1)
    rest = rest.split("\n", 1)[1]  # drop the posix "  path: ..." line
    repo = (
        "repository:\n"
        "  kind: s3\n"
        f"  bucket: {spec['bucket']}\n"
        "  prefix: bench/\n"
        f"  region: {spec['region']}\n"
        f"  endpoint_url: {spec['endpoint_url']}\n"
        f"  part_size: {part_size}\n"
    )
    path.write_text(head + repo + rest)
    path.chmod(0o644)
    return path


def stored_bytes(config: Path, env: dict[str, str]) -> int | None:
    import subprocess

    proc = subprocess.run(
        [PGBACKUP, "--config", str(config), "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    try:
        data = json.loads(proc.stdout)
        return int(data["bench"]["backups"][-1]["stored_bytes"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=int, default=50, help="pgbench scale (default 50)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (medians are shown)")
    ap.add_argument("--part-size", default="16MiB", help="S3 multipart part size")
    ap.add_argument(
        "--compression",
        default="zstd",
        help="zstd (level 3, the default) or none: pgbench data compresses ~20x, so 'none' "
        "is what makes a backup large enough to stress multipart memory",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()

    root = scratch("pgbackup-bench-s3-")
    log(f"scratch {root}; {loadavg()}")
    cluster = make_cluster(root)
    try:
        log(f"pgbench -i -s {args.scale}")
        pgbench(cluster, "-i", "-s", str(args.scale), "-q")
        db_size = int(cluster.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0])
        log(f"cluster size {mib(db_size)}")
        with services.moto_s3() as (spec, s3env):
            posix_cfg = write_policy(root / "posix.yaml", give(root / "repo"), cluster.port)
            if args.compression != "zstd":
                posix_cfg.write_text(
                    posix_cfg.read_text().replace(
                        "{method: zstd, level: 3}", f"{{method: {args.compression}}}"
                    )
                )
            s3_cfg = s3_policy(posix_cfg, root / "s3.yaml", spec, args.part_size)
            env = pgbackup_env(root, **s3env)
            results: dict[tuple[str, str], list[Run]] = {}
            sizes: dict[str, int | None] = {}
            for n in range(args.repeat):
                for kind, cfg in (("posix", posix_cfg), ("s3", s3_cfg)):
                    log(f"round {n + 1}: backup to {kind}")
                    run = must(
                        timed([PGBACKUP, "--config", str(cfg), "backup"], env=env),
                        f"backup to {kind}",
                    )
                    results.setdefault((kind, "backup"), []).append(run)
                    sizes[kind] = stored_bytes(cfg, env)
                    target = root / f"restore-{kind}-{n}"
                    log(f"round {n + 1}: restore from {kind}")
                    run = must(
                        timed(
                            [
                                PGBACKUP,
                                "--config",
                                str(cfg),
                                "restore",
                                "--backup",
                                "latest",
                                "--to",
                                str(target),
                            ],
                            env=env,
                        ),
                        f"restore from {kind}",
                    )
                    results.setdefault((kind, "restore"), []).append(run)
                    restored = du(target)
                    rmtree(target)
            moto_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        cluster.stop("fast")
        if not args.keep:
            rmtree(root)

    rows = []
    for (kind, op), runs in results.items():
        peak = max(r.peak_rss for r in runs)
        base = results[("posix", op)]
        ratio = median([r.seconds for r in runs]) / median([r.seconds for r in base])
        rows.append(
            [
                f"{op} {kind}",
                f"{median([r.seconds for r in runs]):.1f}",
                f"{ratio:.2f}",
                mib(peak),
                f"{median([r.cpu for r in runs]):.1f}",
                mib(sizes[kind]) if sizes.get(kind) else "?",
            ]
        )
    print(
        f"\npgbench scale {args.scale}: cluster {mib(db_size)}, restored data directory "
        f"{mib(restored)}; compression {args.compression}; S3 part size {args.part_size}; {args.repeat} round(s), medians; "
        f"{loadavg()}"
    )
    print(table(["run", "wall s", "vs posix", "peak RSS", "cpu s", "stored"], rows))
    s3_peak = max(r.peak_rss for r in results[("s3", "backup")])
    verdict = "meets" if s3_peak < RSS_GOAL else "MISSES"
    print(
        f"\nbackup to S3 peak RSS {mib(s3_peak)}: {verdict} the < {mib(RSS_GOAL)} goal "
        f"(database {mib(db_size)}; the goal is stated for 1.5 GB)"
    )
    print(f"moto server (this process, all objects in memory) peak RSS {mib(moto_peak)}")


if __name__ == "__main__":
    main()
