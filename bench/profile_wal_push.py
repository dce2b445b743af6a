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

``--callgrind``: instructions instead of time (valgrind --tool=callgrind counts them the
same whatever the machine's load): one push of a light (bulk-load) and of a heavy
(full-page-image) segment by each tool, split by the object that ran them (the Python
interpreter, zstd, OpenSSL's SHA-1, the dynamic loader, libc), plus the interpreter floors.
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
from wal_push import generate_light, generate_segments  # noqa: E402


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


def _objects(out: Path) -> dict[str, float]:
    """Millions of instructions per object (self cost) from a callgrind output file."""
    proc = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    groups = {  # the first match wins: zstd's extension lives under .../python3.11/...
        "backend_c": "zstd",
        "libzstd": "zstd",
        "python3": "interpreter",
        "libcrypto": "OpenSSL (SHA-1)",
        "ld-linux": "dynamic loader",
        "libc.so": "libc",
    }
    res: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or not line[0].isdigit() or "PROGRAM TOTALS" in line:
            continue
        count = int(line.split()[0].replace(",", ""))
        obj = line.rsplit("[", 1)[-1] if line.endswith("]") else ""
        group = next((g for k, g in groups.items() if k in obj), "other")
        res[group] = res.get(group, 0.0) + count / 1e6
    return res


def instructions(
    root: Path, data_dir: Path, env: dict[str, str], policy: Path, conf: Path, segs: dict[str, Path]
) -> None:
    """One push per tool per kind under callgrind; instructions by object."""
    py = sys.executable
    out_dir = give(root / "callgrind", 0o777)
    repo_wal = Path(str(policy)).parent / "repo" / "bench" / "wal"
    pbr = root / "pgbackrest" / "repo" / "archive" / "bench"
    rows = []
    for label, argv in [
        ("python -S -c pass", [py, "-S", "-c", "pass"]),
        ("python -c pass (venv site)", [py, "-c", "pass"]),
    ]:
        out = out_dir / "floor.out"
        wall(argv, env, data_dir, 1)  # its .pyc written (PYTHONPYCACHEPREFIX is fresh)
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
            env=env,
            cwd=data_dir,
            capture_output=True,
            check=True,
            **as_server_user(),
        )
        rows.append(["-", label, f"{sum(_objects(out).values()):.0f}", "", "", "", ""])
    for kind, seg in segs.items():
        tools = {
            "pgbackup wal-push": (
                [py, PGBACKUP, "--config", str(policy), "wal-push", "--target", "bench", str(seg)],
                lambda seg=seg: (repo_wal / f"{seg.name}.zst").unlink(),
            ),
            "pgbackrest archive-push": (
                ["pgbackrest", f"--config={conf}", "--stanza=bench", "archive-push", str(seg)],
                lambda seg=seg: [f.unlink() for f in pbr.glob(f"*/*/{seg.name}-*")],
            ),
        }
        for name, (argv, clean) in tools.items():
            wall(argv, env, data_dir, 1, clean)  # binds the archive, warms the caches
            out = out_dir / f"{kind}.out"
            proc = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
                env=env,
                cwd=data_dir,
                capture_output=True,
                **as_server_user(),
            )
            if proc.returncode != 0:
                raise SystemExit(f"{argv} under valgrind failed: {proc.stderr.decode()[-2000:]}")
            clean()
            o = _objects(out)
            rows.append(
                [
                    kind,
                    name,
                    f"{sum(o.values()):.0f}",
                    f"{o.get('interpreter', 0):.0f}",
                    f"{o.get('zstd', 0):.0f}",
                    f"{o.get('OpenSSL (SHA-1)', 0):.0f}",
                    f"{sum(v for k, v in o.items() if k not in ('interpreter', 'zstd', 'OpenSSL (SHA-1)')):.0f}",
                ]
            )
            log(f"{kind} {name}: {rows[-1][2]} M instructions")
    print()
    print("instructions per push, millions (valgrind --tool=callgrind; independent of load)")
    print(
        table(
            [
                "kind",
                "process",
                "total",
                "Python interpreter",
                "zstd",
                "SHA-1",
                "loader, libc, other",
            ],
            rows,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--callgrind", action="store_true", help="count instructions (valgrind) instead of timing"
    )
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
        if args.callgrind:
            light = generate_light(cluster, 2, root / "segments-light")
            instructions(
                root, cluster.data_dir, env, policy, conf, {"light": light[1], "heavy": seg}
            )
            return
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
        from pgbackup.engine import wal, wal_fastpush
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
            # The fast path's own steps (the archive is bound by now): its policy lookup
            # (policyrules: the key with hashlib.blake2b, the marshal entry), then all of it.
            real = os.path.realpath(policy)
            t("fast path: cached policy (key + entry)", wal_fastpush._cached_document, real)
            taken = t(
                "whole fast_push() in-process", wal_fastpush.fast_push, real, "bench", str(seg)
            )
            assert taken, "the fast path declined the common case"
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
        # main() with its arguments given returns through SystemExit; run as the console
        # script it ends in os._exit (console.exit_now), before cProfile writes anything.
        script = root / "profile_push.py"
        argv = ["--config", str(policy), "wal-push", "--target", "bench", str(seg)]
        script.write_text(
            "from pgbackup.interface.console import main\n"
            "try:\n"
            f"    main({argv!r})\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
        )
        subprocess.run(
            [py, "-m", "cProfile", "-o", str(prof), str(script)],
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
