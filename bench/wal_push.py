#!/usr/bin/env python3
"""WAL archiving: ``pgbackup wal-push`` against ``pgbackrest archive-push``, and a sustained run.

    .venv/bin/python bench/wal_push.py [--segments 30] [--passes 3] [--sustained 120]
        [--compare OTHER/.venv/bin/pgbackup]   # before/after a change, in the same rotation

Latency mode (always): two kinds of real 16 MiB WAL segments, ``--segments`` of each,
copied out of pg_wal:
  - light: a bulk load (INSERT ... SELECT generate_series into a fresh table): almost no
    full-page images, compresses to ~1 MiB;
  - heavy: pgbench updates right after a CHECKPOINT: full-page images dominate (the share
    is printed, from pg_waldump --stats), ~5-6 MiB stored.
Each segment is pushed by every tool, one process per segment exactly as PostgreSQL's
archive_command runs it (as the server's OS user, cwd = the data directory); light and
heavy segments alternate and who goes first rotates per segment, over ``--passes``
passes (the archived copy is deleted after each push so every push is a fresh store).
Both compress with zstd level 3 and return only once the file is durable
(pgBackRest: archive-async=n, process-max=1). Reported per kind and tool: median, p90 and
mean wall time, median CPU time (user+sys, from wait4: less sensitive to the machine's
load than wall time), stored bytes; then the ratio pgbackup/pgBackRest per kind.

Sustained mode (``--sustained SECONDS``): pgbench at full speed for that long with
``pgbackup wal-push`` as archive_command, sampling every 5 s the archiver backlog (.ready
files in pg_wal/archive_status, and segments between the current insert position and
pg_stat_archiver.last_archived_wal) and printing the series and whether it grew.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
PGB = "pgbackup wal-push"
PBR = "pgbackrest archive-push"


def seg_no(name: str) -> int:
    """Segment number (timeline ignored) of a 24-hex-digit WAL file name, 16 MiB segments."""
    return int(name[8:16], 16) * 256 + int(name[16:24], 16)


def current_segment(cluster: Cluster) -> str:
    return str(cluster.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0])


def _copy_out(cluster: Cluster, first: int, last: int, tli: str, out: Path) -> list[Path]:
    """Copy the completed segments ``first..last`` out of pg_wal (before any checkpoint
    can recycle them)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(first, last + 1):
        name = f"{tli}{n // 256:08X}{n % 256:08X}"
        dst = out / name
        shutil.copyfile(cluster.data_dir / "pg_wal" / name, dst)
        assert dst.stat().st_size == SEG
        paths.append(dst)
    give(out, 0o755)
    return paths


def generate_light(cluster: Cluster, want: int, out: Path) -> list[Path]:
    """``want`` bulk-load segments: INSERT ... SELECT generate_series into a fresh table.

    A new heap page is logged as an initialised page, not an image: almost no full-page
    images, many small similar records, so the segment compresses well (~1 MiB stored).
    """
    cluster.sql("DROP TABLE IF EXISTS bench_bulk")
    cluster.sql("CREATE TABLE bench_bulk (id bigint, v text)")
    cluster.sql("SELECT pg_switch_wal()")
    cluster.sql("CHECKPOINT")
    start = seg_no(current_segment(cluster))
    batch = 0
    while seg_no(current_segment(cluster)) - start < want + 1:
        cluster.sql(
            f"INSERT INTO bench_bulk SELECT g, 'row ' || g || ' of a bulk load' "
            f"FROM generate_series({batch * 500_000 + 1}, {(batch + 1) * 500_000}) g"
        )
        batch += 1
    cur = current_segment(cluster)
    # The first segment after the switch holds the checkpoint record; skip it.
    return _copy_out(cluster, seg_no(cur) - want, seg_no(cur) - 1, cur[:8], out)


def generate_heavy(cluster: Cluster, want: int, out: Path) -> list[Path]:
    """``want`` update-workload segments dominated by full-page images: pgbench (scale
    10, 1M random accounts) right after a CHECKPOINT, so the first change to each page
    logs its whole 8 KiB. A CHECKPOINT every two segments keeps it that way."""
    if not cluster.sql("SELECT to_regclass('pgbench_accounts') IS NOT NULL")[0][0]:
        pgbench(cluster, "-i", "-q", "-s", "10")
        # pgbench's filler is blanks; real rows are not: page images of md5 text compress
        # like a real table's (~5 MiB stored per segment instead of ~1.5).
        cluster.sql("UPDATE pgbench_accounts SET filler = md5(aid::text)")
        cluster.sql("VACUUM pgbench_accounts")
    paths: list[Path] = []
    while len(paths) < want:
        cluster.sql("CHECKPOINT")
        start = seg_no(current_segment(cluster))
        while seg_no(current_segment(cluster)) - start < 3:
            pgbench(cluster, "-c", "4", "-j", "2", "-t", "500", "-n")
        cur = current_segment(cluster)
        # Segments completed since the checkpoint, before the next one recycles them.
        take = min(2, want - len(paths))
        paths += _copy_out(cluster, start + 1, start + take, cur[:8], out)
    return paths


def generate_segments(cluster: Cluster, want: int, out: Path) -> list[Path]:
    """Full-page-image-heavy pgbench segments (profile_wal_push.py uses this)."""
    return generate_heavy(cluster, want, out)


def fpi_share(cluster: Cluster, seg: Path) -> str:
    """pg_waldump --stats: the share of the segment's bytes that are full-page images."""
    proc = subprocess.run(
        [cluster.program("pg_waldump"), "--stats", str(seg)], capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith("Total"):
            # Total  records  rec-bytes [..%]  fpi-bytes [..%]  combined [100%]
            parts = line.split()
            try:
                return parts[-3].strip("[]")
            except IndexError:
                break
    return "?"


def push_time(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one archive_command-style process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, **as_server_user()
    )
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return dt, cpu


KINDS = ("light", "heavy")


def latency(
    args: argparse.Namespace, root: Path, cluster: Cluster, conf: Path
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{kind: {tool: {"seconds", "cpu", "stored"}}}, both kinds pushed in one rotation."""
    log(f"generating {args.segments} light (bulk-load) WAL segments")
    light = generate_light(cluster, args.segments, root / "segments-light")
    log(f"generating {args.segments} heavy (full-page-image) WAL segments with pgbench")
    heavy = generate_heavy(cluster, args.segments, root / "segments-heavy")
    kinds = {"light": light, "heavy": heavy}
    for kind, segs in kinds.items():
        log(
            f"{kind}: {len(segs)} segments {segs[0].name}..{segs[-1].name}, full-page images "
            f"{fpi_share(cluster, segs[0])} / {fpi_share(cluster, segs[-1])} of the bytes "
            "(first / last, pg_waldump --stats)"
        )
    log(loadavg())
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
    ) -> tuple[float, float, int]:
        dt, cpu = push_time(
            [program, "--config", str(policy), "wal-push", "--target", "bench", str(seg)],
            cluster.data_dir,
            env,
        )
        stored = repo / "bench" / "wal" / f"{seg.name}.zst"
        size = stored.stat().st_size
        stored.unlink()
        return dt, cpu, size

    def pgbackup_push_nopyc(seg: Path) -> tuple[float, float, int]:
        return pgbackup_push(seg, raw_env)

    def pgbackrest_push(seg: Path) -> tuple[float, float, int]:
        dt, cpu = push_time(
            ["pgbackrest", f"--config={conf}", "--stanza=bench", "archive-push", str(seg)],
            cluster.data_dir,
            env,
        )
        found = list(pbr_archive.glob(f"*/*/{seg.name}-*"))
        assert len(found) == 1, found
        size = found[0].stat().st_size
        found[0].unlink()
        return dt, cpu, size

    tools = {PGB: pgbackup_push, PBR: pgbackrest_push}
    for other in args.compare or []:
        # Another pgbackup install (an older commit, say), in the same rotation: a
        # before/after comparison that the machine's load cannot skew one way.
        tools[f"pgbackup wal-push ({other})"] = lambda seg, other=other: pgbackup_push(
            seg, program=other
        )
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not args.no_nopyc:
        tools["pgbackup wal-push, no .pyc (PYTHONDONTWRITEBYTECODE=1)"] = pgbackup_push_nopyc
    # Warm-up (policy validation cache, page cache for both programs); not measured.
    for fn in tools.values():
        fn(light[0])
        fn(heavy[0])
    res: dict[str, dict[str, dict[str, list[float]]]] = {
        kind: {n: {"seconds": [], "cpu": [], "stored": []} for n in tools} for kind in kinds
    }
    names = list(tools)
    # Light and heavy segments interleaved, and who goes first rotates per segment: the
    # machine's load drifts over a run, and must not land on one tool or one kind.
    rotation = [
        (kind, seg)
        for pair in zip(light, heavy, strict=True)
        for kind, seg in zip(KINDS, pair, strict=True)
    ]
    for p in range(args.passes):
        for i, (kind, seg) in enumerate(rotation):
            k = (i + p) % len(names)
            for name in names[k:] + names[:k]:
                dt, cpu, size = tools[name](seg)
                r = res[kind][name]
                r["seconds"].append(dt)
                r["cpu"].append(cpu)
                r["stored"].append(size)
        log(
            f"pass {p + 1} ({loadavg()}): "
            + "; ".join(
                f"{kind} "
                + ", ".join(
                    f"{n.split()[0]} {median(res[kind][n]['seconds']) * 1000:.0f} ms"
                    for n in names[:2]
                )
                for kind in kinds
            )
        )
    if not args.no_async:
        res["heavy"][f"{PGB} --async"] = async_latency(args, root, heavy, policy, repo, env)
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
    out: dict[str, list[float]] = {"seconds": [], "cpu": [], "stored": []}
    for p in range(args.passes):
        data = give(root / f"async-data-{p}", 0o755)
        status = give(data / "pg_wal" / "archive_status", 0o755)
        # A spool of its own per pass, as a fresh server would have: the previous pass's
        # pusher (bound to its own data directory) and its outcomes must not answer for
        # segments this pass stores again after the last pass deleted them.
        env = {**env, "PGBACKUP_SPOOL": str(give(root / f"async-spool-{p}", 0o700))}
        for seg in segs:
            shutil.copy(seg, data / "pg_wal" / seg.name)
            (status / f"{seg.name}.ready").touch()
        give(data, 0o755)
        for seg in segs:
            dt, cpu = push_time(
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
            out["cpu"].append(cpu)
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
        + " ".join(f"{k}={shlex.quote(env[k])}" for k in ("XDG_CACHE_HOME", "PGBACKUP_QUIET"))
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


def print_latency(
    args: argparse.Namespace, res: dict[str, dict[str, dict[str, list[float]]]]
) -> None:
    print()
    print(
        f"WAL push latency per 16 MiB segment ({args.segments} light + {args.segments} heavy real "
        f"segments x {args.passes} passes, interleaved; zstd level 3, synchronous, one process "
        f"per segment as the server's OS user, cwd = data directory; {os.cpu_count()} CPUs, "
        f"{loadavg()})"
    )
    rows = []
    for kind, tools in res.items():
        for name, r in tools.items():
            s, c = r["seconds"], r["cpu"]
            rows.append(
                [
                    kind,
                    name,
                    f"{median(s) * 1000:.0f}",
                    f"{percentile(s, 90) * 1000:.0f}",
                    f"{sum(s) / len(s) * 1000:.0f}",
                    f"{median(c) * 1000:.0f}",
                    f"{median(r['stored']) / 1048576:.2f} MiB",
                    len(s),
                ]
            )
    print(
        table(
            [
                "kind",
                "tool",
                "median ms",
                "p90 ms",
                "mean ms",
                "CPU ms (median)",
                "stored/seg",
                "n",
            ],
            rows,
        )
    )
    print()
    met = True
    for kind, tools in res.items():
        a, b = median(tools[PGB]["seconds"]), median(tools[PBR]["seconds"])
        ca, cb = median(tools[PGB]["cpu"]), median(tools[PBR]["cpu"])
        ok = a <= b
        met = met and ok
        print(
            f"  {kind.upper():5} median ratio pgbackup/pgBackRest: {a / b:.2f} "
            f"({a * 1000:.0f} vs {b * 1000:.0f} ms; CPU {ca / cb:.2f}) -> "
            f"{'met' if ok else 'NOT MET'}"
        )
        asy = tools.get(f"{PGB} --async")
        if asy:
            c = median(asy["seconds"])
            print(
                f"  {kind.upper():5} median ratio pgbackup --async/pgBackRest (synchronous): "
                f"{c / b:.2f} (each archive_command call; the pusher works ahead)"
            )
    print(f"GOAL (median <= 1.0 x pgBackRest on both kinds): {'MET' if met else 'NOT MET'}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--segments", type=int, default=30, help="segments of each kind (default 30)")
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
    ap.add_argument("--no-async", action="store_true", help="skip the wal-push --async pass")
    ap.add_argument(
        "--no-nopyc", action="store_true", help="skip the no-.pyc line (PYTHONDONTWRITEBYTECODE)"
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
            report["load_after"] = loadavg()
            print_latency(args, res)
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
