#!/usr/bin/env python3
"""WAL archiving: ``pgbackup wal-push`` against ``pgbackrest archive-push``, and a sustained run.

    .venv/bin/python bench/wal_push.py [--segments 40] [--passes 3] [--sustained 120]
        [--compare OTHER/.venv/bin/pgbackup]   # before/after a change, in the same rotation

Latency mode (always): a pgbench workload fills ``--segments`` real 16 MiB WAL segments,
which are copied out of pg_wal. Each segment is then pushed by both tools, one process
per segment exactly as PostgreSQL's archive_command would run it (as the server's OS
user, cwd = the data directory), alternating who goes first; ``--passes`` passes over all
segments (the archived copy is deleted after each push so every push is a fresh store).
Both compress with zstd level 3 and return only once the file is durable
(pgBackRest: archive-async=n). Reported: median, p90 and mean latency per segment, and
stored bytes per segment.

Sustained mode (``--sustained SECONDS``): pgbench at full speed for that long with
``pgbackup wal-push`` as archive_command, sampling every 5 s the archiver backlog (.ready
files in pg_wal/archive_status, and segments between the current insert position and
pg_stat_archiver.last_archived_wal) and printing the series and whether it grew.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PGBACKUP,
    Cluster,
    as_server_user,
    free_port,
    give,
    loadavg,
    log,
    median,
    percentile,
    pgbackrest,
    pgbackrest_conf,
    pgbackup_env,
    pgbench,
    rmtree,
    scratch,
    server_env,
    socket_settings,
    table,
    write_policy,
)

SEG = 16 * 1024 * 1024


def seg_no(name: str) -> int:
    """Segment number (timeline ignored) of a 24-hex-digit WAL file name, 16 MiB segments."""
    return int(name[8:16], 16) * 256 + int(name[16:24], 16)


def current_segment(cluster: Cluster) -> str:
    return str(cluster.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0])


def generate_segments(cluster: Cluster, want: int, out: Path) -> list[Path]:
    """Run pgbench until ``want`` complete segments exist past the start; copy them to out."""
    pgbench(cluster, "-i", "-q", "-s", "10")
    cluster.sql("CHECKPOINT")  # so the run carries full-page images, like any real workload
    start = seg_no(current_segment(cluster))
    while seg_no(current_segment(cluster)) - start < want + 1:
        pgbench(cluster, "-c", "4", "-j", "2", "-T", "10", "-n")
    cur = current_segment(cluster)
    tli = cur[:8]
    last = seg_no(cur) - 1
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(last - want + 1, last + 1):
        name = f"{tli}{n // 256:08X}{n % 256:08X}"
        dst = out / name
        shutil.copyfile(cluster.data_dir / "pg_wal" / name, dst)
        assert dst.stat().st_size == SEG
        paths.append(dst)
    give(out, 0o755)
    return paths


def push_time(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, **as_server_user()
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return dt


def latency(
    args: argparse.Namespace, root: Path, cluster: Cluster, conf: Path
) -> dict[str, dict[str, list[float]]]:
    log(f"generating {args.segments} WAL segments with pgbench")
    segs = generate_segments(cluster, args.segments, root / "segments")
    log(f"{len(segs)} segments {segs[0].name}..{segs[-1].name}; {loadavg()}")
    repo = give(root / "pgbackup-repo", 0o755)
    policy = write_policy(root / "backup.yaml", repo, cluster.port)
    env = pgbackup_env(root, as_server=True)
    # As this environment runs Python (PYTHONDONTWRITEBYTECODE=1: no .pyc, every module
    # compiled from source at every start), shown separately when it applies.
    raw_env = server_env({"XDG_CACHE_HOME": env["XDG_CACHE_HOME"], "PGBACKUP_QUIET": "1"})
    pgbackrest(conf, "stanza-create")
    pbr_archive = root / "pgbackrest" / "repo" / "archive" / "bench"

    def pgbackup_push(
        seg: Path, env: dict[str, str] = env, program: str = PGBACKUP
    ) -> tuple[float, int]:
        dt = push_time(
            [program, "--config", str(policy), "wal-push", "--target", "bench", str(seg)],
            cluster.data_dir,
            env,
        )
        stored = repo / "bench" / "wal" / f"{seg.name}.zst"
        size = stored.stat().st_size
        stored.unlink()
        return dt, size

    def pgbackup_push_nopyc(seg: Path) -> tuple[float, int]:
        return pgbackup_push(seg, raw_env)

    def pgbackrest_push(seg: Path) -> tuple[float, int]:
        dt = push_time(
            ["pgbackrest", f"--config={conf}", "--stanza=bench", "archive-push", str(seg)],
            cluster.data_dir,
            env,
        )
        found = list(pbr_archive.glob(f"*/*/{seg.name}-*"))
        assert len(found) == 1, found
        size = found[0].stat().st_size
        found[0].unlink()
        return dt, size

    tools = {"pgbackup wal-push": pgbackup_push, "pgbackrest archive-push": pgbackrest_push}
    for other in args.compare or []:
        # Another pgbackup install (an older commit, say), in the same rotation: a
        # before/after comparison that the machine's load cannot skew one way.
        tools[f"pgbackup wal-push ({other})"] = lambda seg, other=other: pgbackup_push(
            seg, program=other
        )
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        tools["pgbackup wal-push, no .pyc (PYTHONDONTWRITEBYTECODE=1)"] = pgbackup_push_nopyc
    # Warm-up (policy validation cache, page cache for both programs); not measured.
    for fn in tools.values():
        fn(segs[0])
    res: dict[str, dict[str, list[float]]] = {n: {"seconds": [], "stored": []} for n in tools}
    names = list(tools)
    for p in range(args.passes):
        for i, seg in enumerate(segs):
            k = (i + p) % len(names)
            order = names[k:] + names[:k]
            for name in order:
                dt, size = tools[name](seg)
                res[name]["seconds"].append(dt)
                res[name]["stored"].append(size)
        log(
            f"pass {p + 1}: "
            + ", ".join(f"{n} median {median(res[n]['seconds']) * 1000:.0f} ms" for n in names)
        )
    res["pgbackup wal-push --async"] = async_latency(args, root, segs, policy, repo, env)
    return res


def async_latency(
    args: argparse.Namespace,
    root: Path,
    segs: list[Path],
    policy: Path,
    repo: Path,
    env: dict[str, str],
) -> dict[str, list[float]]:
    """``wal-push --async`` as PostgreSQL drives it: every segment .ready in a data
    directory, archive_command called for each in order, .ready renamed to .done after
    success. Each call's latency is measured; the background pusher works ahead."""
    out: dict[str, list[float]] = {"seconds": [], "stored": []}
    for p in range(args.passes):
        data = give(root / f"async-data-{p}", 0o755)
        status = give(data / "pg_wal" / "archive_status", 0o755)
        for seg in segs:
            shutil.copy(seg, data / "pg_wal" / seg.name)
            (status / f"{seg.name}.ready").touch()
        give(data, 0o755)
        for seg in segs:
            dt = push_time(
                [
                    PGBACKUP,
                    "--config",
                    str(policy),
                    "wal-push",
                    "--async",
                    "--target",
                    "bench",
                    f"pg_wal/{seg.name}",
                ],
                data,
                env,
            )
            (status / f"{seg.name}.ready").rename(status / f"{seg.name}.done")
            out["seconds"].append(dt)
        for seg in segs:
            stored = repo / "bench" / "wal" / f"{seg.name}.zst"
            out["stored"].append(stored.stat().st_size)
            stored.unlink()
        log(
            f"async pass {p + 1}: median {median(out['seconds']) * 1000:.0f} ms per archive_command call"
        )
    return out


def sustained(args: argparse.Namespace, root: Path, cluster: Cluster) -> dict[str, object]:
    repo = give(root / "sustained-repo", 0o755)
    policy = write_policy(root / "sustained.yaml", repo, cluster.port)
    env = pgbackup_env(root, as_server=True)
    cmd = (
        "env -u PYTHONDONTWRITEBYTECODE "
        + " ".join(
            f"{k}={shlex.quote(env[k])}"
            for k in ("PYTHONPYCACHEPREFIX", "XDG_CACHE_HOME", "PGBACKUP_QUIET")
        )
        + f" {shlex.quote(PGBACKUP)} --config {shlex.quote(str(policy))} wal-push --target bench %p"
    )
    cluster.stop()
    settings = {"archive_mode": "on", "archive_command": cmd}
    if args.heavy:
        # More WAL per second from the same pgbench: no commit fsync wait, and full-page
        # images again after every (1-minute) checkpoint, as on a busy production server.
        settings.update({"synchronous_commit": "off", "checkpoint_timeout": "1min"})
    cluster.configure(settings)
    cluster.start()
    if not cluster.sql("SELECT to_regclass('pgbench_accounts') IS NOT NULL")[0][0]:
        pgbench(cluster, "-i", "-q", "-s", "10")
    cluster.sql("SELECT pg_switch_wal()")
    cluster.sql("CHECKPOINT")
    time.sleep(2)
    status = cluster.data_dir / "pg_wal" / "archive_status"

    def sample(t: float) -> dict[str, object]:
        ready = sum(1 for n in os.listdir(status) if n.endswith(".ready"))
        row = cluster.sql(
            "SELECT archived_count, failed_count, last_archived_wal, "
            "pg_walfile_name(pg_current_wal_insert_lsn()) FROM pg_stat_archiver"
        )[0]
        archived, failed, last, cur = row
        behind = seg_no(cur) - seg_no(last) - 1 if last else None
        return {
            "t": round(t),
            "ready": ready,
            "behind": behind,
            "archived": archived,
            "failed": failed,
            "current": cur,
            "last_archived": last,
        }

    log(
        f"sustained: pgbench -c 4 -j 2 -T {args.sustained} with pgbackup wal-push as archive_command"
    )
    base = cluster.sql("SELECT archived_count FROM pg_stat_archiver")[0][0]
    start_seg = seg_no(current_segment(cluster))
    out: dict[str, str] = {}

    def bench() -> None:
        out["pgbench"] = pgbench(
            cluster, "-c", "4", "-j", "2", "-T", str(args.sustained), "-n", check=False
        ).stdout

    th = threading.Thread(target=bench)
    t0 = time.monotonic()
    th.start()
    series = []
    while th.is_alive():
        series.append(sample(time.monotonic() - t0))
        log(
            f"t={series[-1]['t']:>4}s ready={series[-1]['ready']:>3} behind={series[-1]['behind']} archived={series[-1]['archived']}"
        )
        th.join(timeout=max(0.0, 5 - (time.monotonic() - t0) % 5))
    end_seg = seg_no(current_segment(cluster))
    run_s = time.monotonic() - t0
    # Drain: how long until the backlog is gone once the load stops.
    drain_t0 = time.monotonic()
    drained = None
    while time.monotonic() - drain_t0 < 120:
        s = sample(time.monotonic() - t0)
        if s["ready"] == 0:
            drained = time.monotonic() - drain_t0
            break
        time.sleep(0.5)
    final = sample(time.monotonic() - t0)
    tps = next((ln for ln in out.get("pgbench", "").splitlines() if ln.startswith("tps")), "tps ?")
    ready = [int(s["ready"]) for s in series]
    third = max(1, len(ready) // 3)
    first, last = ready[:third], ready[-third:]
    n = len(ready)
    xs = list(range(n))
    mx, my = sum(xs) / n, sum(ready) / n
    slope = (
        sum((x - mx) * (y - my) for x, y in zip(xs, ready, strict=True))
        / (sum((x - mx) ** 2 for x in xs) or 1)
    ) * 12  # per minute
    grew = (sum(last) / len(last)) > (sum(first) / len(first)) + 1 and slope > 0.5
    return {
        "series": series,
        "seconds": run_s,
        "segments_generated": end_seg - start_seg,
        "archived": int(final["archived"]) - int(base),
        "failed": final["failed"],
        "tps": tps,
        "drain_seconds": drained,
        "max_ready": max(ready) if ready else 0,
        "slope_per_min": slope,
        "grew": grew,
    }


def _drain(seconds: object) -> str:
    return f"in {seconds:.1f}s" if isinstance(seconds, float) else "NOT within 120 s"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--segments", type=int, default=40)
    ap.add_argument("--passes", type=int, default=3, help="passes over the segments (default 3)")
    ap.add_argument(
        "--sustained",
        type=int,
        metavar="SECONDS",
        default=0,
        help="also run the sustained archiving test for this long (e.g. 120)",
    )
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument(
        "--compare",
        action="append",
        metavar="PGBACKUP",
        help="also push each segment with this pgbackup executable (e.g. an older "
        "checkout's .venv/bin/pgbackup), alternating with the others",
    )
    ap.add_argument(
        "--heavy",
        action="store_true",
        help="sustained run with synchronous_commit=off and checkpoint_timeout=1min (more WAL/s)",
    )
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if shutil.which("pgbackrest") is None and not args.skip_latency:
        raise SystemExit("pgbackrest not found: apt-get install -y pgbackrest (benchmark only)")
    root = scratch("pgbackup-bench-wal-")
    log(f"scratch directory {root}; {loadavg()}; {os.cpu_count()} CPUs")
    cluster = Cluster(root / "data", free_port())
    report: dict[str, object] = {}
    try:
        conf = pgbackrest_conf(root, cluster, process_max=1)
        cluster.initdb(
            {
                "shared_buffers": "256MB",
                "max_wal_size": "4GB",
                "min_wal_size": "4GB",
                "checkpoint_timeout": "30min",
                **socket_settings(root),
            }
        )
        cluster.start()
        if not args.skip_latency:
            res = latency(args, root, cluster, conf)
            report["latency"] = res
            print()
            print(
                f"WAL push latency per 16 MiB segment ({args.segments} real pgbench segments x {args.passes} passes, "
                f"zstd level 3, synchronous, one process per segment; {os.cpu_count()} CPUs, {loadavg()})"
            )
            rows = []
            for name, r in res.items():
                s = r["seconds"]
                rows.append(
                    [
                        name,
                        f"{median(s) * 1000:.0f}",
                        f"{percentile(s, 90) * 1000:.0f}",
                        f"{sum(s) / len(s) * 1000:.0f}",
                        f"{median(r['stored']) / 1048576:.2f} MiB",
                        f"{sum(r['stored']) / len(r['stored']) / 1048576:.2f} MiB",
                    ]
                )
            print(
                table(
                    [
                        "tool",
                        "median ms",
                        "p90 ms",
                        "mean ms",
                        "stored/seg (median)",
                        "stored/seg (mean)",
                    ],
                    rows,
                )
            )
            a, b = (
                median(res["pgbackup wal-push"]["seconds"]),
                median(res["pgbackrest archive-push"]["seconds"]),
            )
            print(
                f"median ratio pgbackup/pgBackRest: {a / b:.2f} -> goal (no higher) {'MET' if a <= b else 'NOT MET'}"
            )
            c = median(res["pgbackup wal-push --async"]["seconds"])
            print(
                f"median ratio pgbackup --async/pgBackRest (synchronous): {c / b:.2f} -> "
                f"{'MET' if c <= b else 'NOT MET'} (each archive_command call; the pusher works ahead)"
            )
        if args.sustained:
            s = sustained(args, root, cluster)
            report["sustained"] = s
            print()
            print(
                f"Sustained archiving: pgbench -c 4 -j 2 for {s['seconds']:.0f}s, archive_command = pgbackup wal-push"
                f"{' (synchronous_commit=off, checkpoint_timeout=1min)' if args.heavy else ''} ({loadavg()})"
            )
            print(
                table(
                    ["t s", ".ready", "segments behind", "archived_count", "failed_count"],
                    [
                        [x["t"], x["ready"], x["behind"], x["archived"], x["failed"]]
                        for x in s["series"]
                    ],  # type: ignore[index]
                )
            )
            print(f"pgbench: {s['tps']}")
            print(
                f"WAL generated: {s['segments_generated']} segments "
                f"({s['segments_generated'] * 16 / s['seconds']:.1f} MiB/s); archived during the test and drain: {s['archived']}, failed: {s['failed']}"
            )
            print(
                f"backlog: max {s['max_ready']} .ready, trend {s['slope_per_min']:+.1f} files/min; "
                f"drained {_drain(s['drain_seconds'])} after the load stopped"
            )
            print(f"backlog grew: {'YES -> goal NOT MET' if s['grew'] else 'no -> goal MET'}")
    finally:
        cluster.destroy()
        if not args.keep:
            rmtree(root)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
