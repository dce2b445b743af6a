#!/usr/bin/env python3
"""Where does ``pgbackup backup``'s time go? Decomposition and profiles on one database.

    .venv/bin/python bench/profile_backup.py --scale 50 [--repeat 3] [--py-spy]

Times, on one pgbench cluster, median of ``--repeat`` runs each:
  - ``pgbackup --version`` / ``pgbackup ... list`` (process start, Invoke + task imports)
  - ``pg_basebackup -D - -Ft -X fetch`` into /dev/null (the server's share: nothing compressed)
  - ``pg_basebackup -D - ... | zstd -3 -T0`` into a file (a shell pipeline, same codec)
  - ``pg_basebackup --compress=client-zstd:3`` (the peer)
  - ``pgbackup backup`` (the whole CLI) and its own ``duration_seconds`` from metadata.json
Then one ``pgbackup backup`` under cProfile (top functions by cumulative and own time)
and, with ``--py-spy`` (``pip install py-spy`` into the venv; not a project dependency),
one under ``py-spy record --idle`` summarised from its collapsed stacks.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import pstats
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    SERVER_USER,
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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--py-spy", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = scratch("pgbackup-profile-")
    log(f"scratch {root}; {loadavg()}")
    cluster = make_cluster(root)
    try:
        pgbench(cluster, "-i", "-q", "-s", str(args.scale))
        cluster.sql("CHECKPOINT")
        repo = give(root / "repo", 0o755)
        policy = write_policy(root / "backup.yaml", repo, cluster.port)
        env = pgbackup_env(root)  # with .pyc, as installed (see common.py)
        user = SERVER_USER or "postgres"
        bb = [
            cluster.program("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            user,
            "-Ft",
            "-X",
            "fetch",
            "--checkpoint=fast",
        ]
        sh_bb = " ".join(bb)
        out = root / "out"
        steps = {
            "pgbackup --version (start-up)": lambda i: [PGBACKUP, "--version"],
            "pgbackup list (start-up + Invoke + tasks)": lambda i: [
                PGBACKUP,
                "--config",
                str(policy),
                "list",
            ],
            "pg_basebackup -D - > /dev/null (no compression)": lambda i: [
                "sh",
                "-c",
                f"{sh_bb} -D - > /dev/null",
            ],
            "pg_basebackup -D - | zstd -3 -T0 > file": lambda i: [
                "sh",
                "-c",
                f"{sh_bb} -D - | zstd -q -3 -T0 > {out}.tar.zst",
            ],
            "pg_basebackup --compress=client-zstd:3": lambda i: [
                *bb,
                "-D",
                f"{out}-{i}",
                "--compress=client-zstd:3",
            ],
            "pgbackup backup": lambda i: [PGBACKUP, "--config", str(policy), "backup"],
        }
        res: dict[str, list[float]] = {k: [] for k in steps}
        rss: dict[str, list[float]] = {k: [] for k in steps}
        inner: list[float] = []
        for i in range(args.repeat):
            for name, argv in steps.items():
                r = must(timed(argv(i), env=env), name)
                res[name].append(r.seconds)
                rss[name].append(r.peak_rss)
                if name == "pgbackup backup":
                    newest = sorted((repo / "bench" / "base").iterdir())[-1]
                    inner.append(
                        json.loads((newest / "metadata.json").read_text())["duration_seconds"]
                    )
                rmtree(Path(f"{out}-{i}"))
                Path(f"{out}.tar.zst").unlink(missing_ok=True)
            log(f"round {i + 1} done")
        print()
        print(f"scale {args.scale}; {loadavg()}")
        rows = [
            [k, f"{median(v):.2f}", " / ".join(f"{x:.2f}" for x in v), mib(median(rss[k]))]
            for k, v in res.items()
        ]
        rows.append(
            [
                "  pgbackup backup: run_backup() itself (metadata)",
                f"{median(inner):.2f}",
                " / ".join(f"{x:.2f}" for x in inner),
                "",
            ]
        )
        print(table(["step", "median s", "runs", "peak RSS"], rows))

        # cProfile of one backup (in-process: python -m cProfile -m pgbackup.interface.console).
        prof = root / "backup.prof"
        must(
            timed(
                [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(prof),
                    "-m",
                    "pgbackup.interface.console",
                    "--config",
                    str(policy),
                    "backup",
                ],
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
            ),
            "cProfile",
        )
        for key in ("cumulative", "tottime"):
            s = io.StringIO()
            pstats.Stats(str(prof), stream=s).sort_stats(key).print_stats(25)
            print(f"\n--- cProfile, top 25 by {key} ---")
            print("\n".join(ln for ln in s.getvalue().splitlines() if ln.strip())[:6000])

        if args.py_spy:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            collapsed = root / "backup.collapsed"
            must(
                timed(
                    [
                        spy,
                        "record",
                        "--idle",
                        "--threads",
                        "-r",
                        "250",
                        "-f",
                        "raw",
                        "-o",
                        str(collapsed),
                        "--",
                        PGBACKUP,
                        "--config",
                        str(policy),
                        "backup",
                    ],
                    env=env,
                ),
                "py-spy",
            )
            summarise(collapsed)
            if args.keep:
                print(f"collapsed stacks kept in {collapsed}")
        du(root)
    finally:
        cluster.destroy()
        if not args.keep:
            rmtree(root)


def summarise(collapsed: Path) -> None:
    """Inclusive samples per frame, from py-spy's collapsed (raw) output, main thread first."""
    total = 0
    incl: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        for f in set(frames):
            incl[f] += count
        leaf[frames[-1]] += count
    print(f"\n--- py-spy (--idle, all threads): {total} samples ---")
    print("by leaf frame (where threads sit):")
    for f, n in leaf.most_common(15):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("inclusive (frame on the stack):")
    for f, n in incl.most_common(30):
        print(f"  {100 * n / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
