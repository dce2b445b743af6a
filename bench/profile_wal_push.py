#!/usr/bin/env python3
"""Where does one ``pgbackup wal-push`` of a 16 MiB segment spend its time?

    .venv/bin/python bench/profile_wal_push.py [--repeat 15]

On real segments from a pgbench run, median of ``--repeat`` runs each:
  - process floors: ``python -S -c pass``, ``python -c pass`` (site + venv .pth files),
    ``python -c 'import zstandard'``, ``python -c 'import yaml'``, ``python -c 'import pgbackup.interface.console'``
  - the whole ``pgbackup wal-push`` (a fresh store each time) and ``pgbackrest archive-push``
  - in one process, each step of the push: policy load (cached), open_storage, read,
    sha256, zstd level 3 compress (threads=0), durable write (temp + fsync + link + dir fsync)
  - ``zstd -3 -q`` CLI and ``zstd -3 -T0`` CLI on the same segment (C reference)
Then ``python -X importtime`` of one push (largest cumulative imports) and a cProfile.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    as_server_user,
    give,
    loadavg,
    log,
    make_cluster,
    median,
    pgbackrest,
    pgbackrest_conf,
    pgbackup_env,
    rmtree,
    scratch,
    socket_settings,
    table,
    write_policy,
)
from wal_push import generate_segments  # noqa: E402


def wall(argv: list[str], env: dict[str, str], cwd: Path, n: int, after=None) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, **as_server_user())
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed: {proc.stderr.decode()[-2000:]}")
        if after:
            after()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = scratch("pgbackup-profile-wal-")
    log(f"scratch {root}; {loadavg()}")
    sock = socket_settings(root)
    cluster = make_cluster(root, {"min_wal_size": "4GB", **sock})
    try:
        segs = generate_segments(cluster, 3, root / "segments")
        seg = segs[1]
        repo = give(root / "repo", 0o755)
        policy = write_policy(root / "backup.yaml", repo, cluster.port)
        conf = pgbackrest_conf(root, cluster, process_max=1)
        pgbackrest(conf, "stanza-create")
        env = pgbackup_env(root, as_server=True)  # with .pyc, as installed (see common.py)
        py = sys.executable
        n = args.repeat
        stored = repo / "bench" / "wal" / f"{seg.name}.zst"
        pbr = root / "pgbackrest" / "repo" / "archive" / "bench"

        def rm_pgb() -> None:
            stored.unlink()

        def rm_pbr() -> None:
            for f in pbr.glob(f"*/*/{seg.name}-*"):
                f.unlink()

        rows = []
        for label, argv, after in [
            ("python -S -c pass", [py, "-S", "-c", "pass"], None),
            ("python -c pass (venv site)", [py, "-c", "pass"], None),
            ("python -c 'import zstandard'", [py, "-c", "import zstandard"], None),
            ("python -c 'import yaml'", [py, "-c", "import yaml"], None),
            (
                "python -c 'import pgbackup.interface.console'",
                [py, "-c", "import pgbackup.interface.console"],
                None,
            ),
            (
                "zstd -3 (CLI, 1 thread) > file",
                ["sh", "-c", f"zstd -q -f -3 -o {root}/segments/z.zst {seg}"],
                None,
            ),
            (
                "zstd -3 -T0 (CLI) > file",
                ["sh", "-c", f"zstd -q -f -3 -T0 -o {root}/segments/z.zst {seg}"],
                None,
            ),
            (
                "pgbackup wal-push",
                [PGBACKUP, "--config", str(policy), "wal-push", "--target", "bench", str(seg)],
                rm_pgb,
            ),
            (
                "pgbackrest archive-push",
                ["pgbackrest", f"--config={conf}", "--stanza=bench", "archive-push", str(seg)],
                rm_pbr,
            ),
        ]:
            wall(argv, env, cluster.data_dir, 1, after)  # warm
            xs = wall(argv, env, cluster.data_dir, n, after)
            rows.append([label, f"{median(xs) * 1000:.0f}", f"{min(xs) * 1000:.0f}"])
            log(f"{label}: {median(xs) * 1000:.0f} ms")

        # In-process step timing (the same calls wal.push makes, split up).
        os.environ.update({k: env[k] for k in ("XDG_CACHE_HOME",)})
        from pgbackup.engine import wal
        from pgbackup.formats.codecs import encode_bytes
        from pgbackup.policy import load_policy_fast
        from pgbackup.storage import open_storage

        steps: dict[str, list[float]] = {}

        def t(name: str, fn, *a, **kw):
            t0 = time.perf_counter()
            r = fn(*a, **kw)
            steps.setdefault(name, []).append(time.perf_counter() - t0)
            return r

        for _ in range(n):
            pol = t("load_policy_fast (cache hit)", load_policy_fast, policy)
            st = t("open_storage", open_storage, pol.repository)
            data = t("read 16 MiB", seg.read_bytes)
            t("sha256 16 MiB", lambda d: hashlib.sha256(d).hexdigest(), data)
            spec = wal.codec_for(pol)
            enc = t("zstd -3 compress (threads=0)", encode_bytes, spec, data, threads=0)
            t("zstd -3 compress (threads=2)", encode_bytes, spec, data, threads=2)
            t("find_archived (stat + list)", wal.find_archived, st, "bench", seg.name, spec)
            key = f"bench/wal/{seg.name}.zst.bench"
            t("durable write (if_absent)", st.write_bytes, key, enc, if_absent=True)
            (repo / key).unlink()
            t("whole wal.push() in-process", wal.push, pol, seg, "bench")
            stored.unlink()
        print()
        print(f"one 16 MiB segment; median of {n}; {loadavg()}")
        print(table(["process", "median ms", "min ms"], rows))
        print()
        print(
            table(
                ["in-process step", "median ms"],
                [[k, f"{median(v) * 1000:.1f}"] for k, v in steps.items()],
            )
        )

        # Import time of one push.
        proc = subprocess.run(
            [
                py,
                "-X",
                "importtime",
                PGBACKUP,
                "--config",
                str(policy),
                "wal-push",
                "--target",
                "bench",
                str(seg),
            ],
            env=env,
            cwd=cluster.data_dir,
            capture_output=True,
            text=True,
        )
        stored.unlink()
        imports = []
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                parts = line.split("|")
                if parts[1].strip().isdigit():
                    imports.append((int(parts[1].strip()), parts[2].rstrip()))
        total_top = sum(c for c, name in imports if not name.startswith("  "))
        print(
            f"\n--- python -X importtime of one wal-push: {total_top / 1000:.0f} ms in top-level imports; largest cumulative ---"
        )
        for c, name in sorted(imports, reverse=True)[:25]:
            print(f"  {c / 1000:7.1f} ms  {name}")

        prof = root / "push.prof"
        subprocess.run(
            [
                py,
                "-m",
                "cProfile",
                "-o",
                str(prof),
                PGBACKUP,
                "--config",
                str(policy),
                "wal-push",
                "--target",
                "bench",
                str(seg),
            ],
            env=env,
            cwd=cluster.data_dir,
            check=True,
        )
        stored.unlink()
        s = io.StringIO()
        pstats.Stats(str(prof), stream=s).sort_stats("tottime").print_stats(15)
        print("\n--- cProfile of one wal-push, top 15 by own time ---")
        print("\n".join(ln for ln in s.getvalue().splitlines() if ln.strip()))
    finally:
        cluster.destroy()
        if not args.keep:
            rmtree(root)


if __name__ == "__main__":
    main()
