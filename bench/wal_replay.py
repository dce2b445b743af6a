#!/usr/bin/env python3
"""WAL replay through wal-fetch, with and without its read-ahead (issue #26 point 3).

    .venv/bin/python bench/wal_replay.py [--segments 34] [--repeat 3] [--latency-ms 20]
        [--scale 5] [--pgbackrest] [--keep]

One source cluster archives through ``pgbackup wal-push`` into a posix repository; after a
backup, pgbench writes until ``--segments`` WAL segments lie between the backup and the
end of the archive. The repository is copied whole into moto (S3, in this process),
reached through ``bench/s3.py``'s shaping proxy: every request answered ``--latency-ms``
after it was sent. Each round restores the backup with ``--target latest`` (not timed)
and times the recovery alone: from ``pg_ctl start`` until the server has promoted (it
replays every archived segment), for

- ``s3, read-ahead off``: ``wal_fetch: {read_ahead: 0}``, one wal-fetch per segment;
- ``s3, read-ahead 8``: the default from object storage (8 segments, 4 streams);
- ``s3, read-ahead 8, restore --start``: ``pgbackup restore --start`` starts the
  read-ahead before the server (seeded with the backup's first segment); the time is the
  restore's own ``wal_replay`` phase (see :func:`replay_started`);
- ``posix, read-ahead off``: ``read_ahead: 0`` from a posix repository;
- ``posix, read-ahead 8``: the default from every storage kind;
- ``PostgreSQL, local disk``: restore_command = ``cp`` from a directory holding the same
  segments decoded: PostgreSQL's replay with the cheapest archive there is;
- with ``--pgbackrest``: ``pgBackRest, archive-get async``: the source also archives
  through ``pgbackrest archive-push`` into the same moto bucket (under ``pgbr/``, through
  a TLS proxy, stunnel4, since pgBackRest speaks only HTTPS to S3), and its full backup is
  taken right after pgbackup's (so it replays no more WAL than pgbackup does); its restore
  recovers through the same shaping proxy with ``archive-async=y``, ``process-max 4`` and
  its default queue (``archive-get-queue-max`` 128 MiB: 8 segments, as read-ahead 8).
  pgbackup goes through the TLS proxy in this mode too (``AWS_CA_BUNDLE``), so both pay
  for the same link.

Order rotates round by round; medians. Beside each wall time, PostgreSQL's own redo CPU
time (its "redo done" line): the same replay in every row, so its spread is the machine's
speed moving (2 shared cores), and wall time minus it, run by run, is what fetching the WAL
added, compared with pgBackRest's. The recovered server's ``pgbench_history`` row
count is compared with the source's each time (a wrong count stops the benchmark), and
the segments served from the spool are counted from the server's log (the prefetcher's
last line). Run as root (PostgreSQL runs as ``postgres``); everything lives in a scratch
directory under /tmp, removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import services  # noqa: E402
from common import (  # noqa: E402
    PGBACKUP,
    SERVER_USER,
    give,
    loadavg,
    log,
    make_cluster,
    median,
    pgbackrest,
    pgbackup_env,
    pgbench,
    rmtree,
    scratch,
    socket_settings,
    table,
    write_policy,
)
from s3 import TlsProxy, cache_moto_values, pgbackrest_s3_conf, s3_policy, shaped  # noqa: E402

from pgbackup.engine.walprefetch import end_read_ahead, read_ahead_report  # noqa: E402
from pgbackup.postgres.cluster import Cluster, free_port  # noqa: E402

SEG = 16 * 1024 * 1024


def with_read_ahead(cfg: Path, out: Path, read_ahead: int) -> Path:
    """The policy ``cfg`` with ``wal_fetch: {read_ahead: N}`` on its target."""
    text = cfg.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("    connection:"))
    out.write_text(text.replace(line, f"{line}\n    wal_fetch: {{read_ahead: {read_ahead}}}"))
    out.chmod(0o644)
    return out


def archived_segments(repo: Path) -> list[str]:
    return sorted(p.name[:24] for p in (repo / "bench" / "wal").glob("*.zst") if len(p.name) == 28)


def build_source(
    root: Path, segments: int, scale: int, pbr: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The source cluster, its policy, a backup and ``segments`` archived after it (with
    ``pbr``, {spec, env, tls_port}: archived there too, with a backup of its own)."""
    cluster = make_cluster(root, {"synchronous_commit": "off", **socket_settings(root)})
    repo = give(root / "repo")
    cfg = write_policy(root / "posix.yaml", repo, cluster.port)
    command = f"'{PGBACKUP}' --config '{cfg}' wal-push %p"
    conf = None
    if pbr:
        conf = pgbackrest_s3_conf(root, cluster, **pbr, process_max=4, name="push.conf")
        command += f" && pgbackrest --config={conf} --stanza=bench archive-push %p"
    cluster.configure({"archive_mode": "on", "archive_command": command})
    cluster.stop()
    cluster.start()
    log(f"pgbench -i -s {scale}")
    pgbench(cluster, "-i", "-s", str(scale), "-q")
    env = pgbackup_env(root)
    subprocess.run([PGBACKUP, "--config", str(cfg), "backup"], check=True, env=env)
    if conf:
        pgbackrest(conf, "stanza-create")
        pgbackrest(conf, "--type=full", "backup")
    start = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    log(f"pgbench until {segments} segments after {start}")
    while True:
        pgbench(cluster, "-c", "2", "-j", "2", "-t", "5000", "-N")
        now = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        if int(now[8:], 16) - int(start[8:], 16) >= segments:
            break
    closed = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        last = cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= closed:
            break
        time.sleep(0.2)
    rows = int(cluster.sql("SELECT count(*) FROM pgbench_history")[0][0])
    cluster.stop()
    after = [s for s in archived_segments(repo) if s >= start]
    log(f"{len(after)} segments to replay ({after[0]}..{after[-1]}), {rows} history rows")
    return {"cfg": cfg, "repo": repo, "rows": rows, "segments": len(after), "cluster": cluster}


def copy_to_s3(repo: Path, spec: dict[str, Any]) -> None:
    from pgbackup.storage import open_storage

    storage = open_storage(dict(spec, prefix="bench/"))
    for path in sorted(repo.rglob("*")):
        if path.is_file() and not path.name.endswith(".log"):
            storage.write_bytes(str(path.relative_to(repo)), path.read_bytes())


def decode_locally(repo: Path, into: Path) -> None:
    from pgbackup.formats.codecs import CodecSpec, decode_bytes

    give(into)
    spec = CodecSpec(compression="zstd", level=3, encrypted=False)
    for path in (repo / "bench" / "wal").glob("*.zst"):
        (into / path.name[:-4]).write_bytes(decode_bytes(spec, path.read_bytes()))
    give(into)


REDO_CPU = re.compile(r"redo done at .* CPU: user: ([\d.]+) s, system: ([\d.]+) s")


def redo_cpu(log_text: str) -> float:
    """The CPU time PostgreSQL's startup process spent replaying ("redo done ... system
    usage"): the same work in every row, so its spread between runs is the machine's
    (2 shared cores whose speed moves), and wall time minus it is what the archive and
    the tool fetching from it added."""
    found = REDO_CPU.search(log_text)
    if found is None:
        raise SystemExit("no 'redo done' line with its CPU time in the server's log")
    return float(found.group(1)) + float(found.group(2))


def checked_and_removed(root: Path, label: str, cluster: Cluster, rows: int) -> tuple[int, float]:
    """The recovered server's rows compared with the source's (a wrong count stops the
    benchmark), its log kept under logs/, its directory removed; the segments served
    from the spool, from the prefetcher's last line, and PostgreSQL's redo CPU time."""
    got = int(cluster.sql("SELECT count(*) FROM pgbench_history")[0][0])
    if got != rows:
        raise SystemExit(f"{label}: {got} history rows recovered, the source has {rows}")
    cluster.stop("immediate")
    end_read_ahead(cluster.data_dir)
    text = cluster.log_file.read_text(errors="replace")
    deadline = time.monotonic() + 5  # its last line follows the spool's removal
    while "wal-prefetch: " in text and read_ahead_report(text) is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        text = cluster.log_file.read_text(errors="replace")
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        cluster.log_file.rename(logs / f"{cluster.data_dir.name}.log")
    rmtree(cluster.data_dir)
    report = read_ahead_report(text)
    return (report["served"] if report else 0), redo_cpu(text)


def wait_promoted(cluster: Cluster) -> None:
    """Until the server has left recovery, as ``restore --start`` waits for it: the
    signal file looked at every 20 ms (PostgreSQL removes it as archive recovery ends),
    then the server asked. A question every 20 ms from the start would fork a backend
    each time, a load on these 2 cores that only the rows timed this way would carry."""
    signal = cluster.data_dir / "recovery.signal"
    while signal.exists():
        time.sleep(0.02)
    while cluster.sql("SELECT pg_is_in_recovery()")[0][0]:
        time.sleep(0.02)


def replay(
    root: Path, label: str, cfg: Path, env: dict[str, str], rows: int, local: Path | None
) -> tuple[float, int, float]:
    """Restore (not timed), then time recovery from pg_ctl start to promotion; (seconds,
    segments served from the spool, PostgreSQL's redo CPU seconds)."""
    directory = root / f"r-{label.replace(' ', '-').replace(',', '')}-{time.monotonic_ns()}"
    port = free_port()
    subprocess.run(
        [PGBACKUP, "--config", str(cfg), "restore", "--target", "latest", "--to", str(directory)]
        + ["--port", str(port), "--no-archive"],
        check=True,
        env=env,
        capture_output=True,
    )
    cluster = Cluster(directory, port)
    if local is not None:
        cluster.configure({"restore_command": f"cp '{local}/%f' '%p'"})
    saved = dict(os.environ)
    os.environ.update(env)  # the server's restore_command runs with it
    try:
        t0 = time.perf_counter()
        cluster.start(timeout=600)
        wait_promoted(cluster)
        seconds = time.perf_counter() - t0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return (seconds, *checked_and_removed(root, label, cluster, rows))


def replay_started(
    root: Path, label: str, cfg: Path, env: dict[str, str], rows: int
) -> tuple[float, int, float]:
    """``pgbackup restore --start``: the restore starts the read-ahead, then the server,
    and waits for recovery; its own ``wal_replay`` phase is the time (from before the
    read-ahead starts until it sees recovery ended: within ~20 ms of the server removing
    recovery.signal, as the other rows look every 0.02 s)."""
    directory = root / f"r-{label.replace(' ', '-').replace(',', '')}-{time.monotonic_ns()}"
    port = free_port()
    proc = subprocess.run(
        [PGBACKUP, "--config", str(cfg), "restore", "--target", "latest", "--to", str(directory)]
        + ["--port", str(port), "--no-archive", "--start", "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = float(json.loads(proc.stdout)["phases"]["wal_replay"]["seconds"])
    cluster = Cluster(directory, port)
    return (seconds, *checked_and_removed(root, label, cluster, rows))


def replay_pgbackrest(root: Path, conf: Path, rows: int) -> tuple[float, int, float]:
    """pgBackRest's restore (not timed), then its recovery timed as :func:`replay`'s."""
    directory = give(root / f"r-pgbackrest-{time.monotonic_ns()}", 0o700)
    rmtree(root / "pgbackrest" / "spool")  # its async queue starts empty, as ours does
    give(root / "pgbackrest" / "spool")
    pgbackrest(conf, f"--pg1-path={directory}", "restore")
    cluster = Cluster(directory, free_port())
    auto = (directory / "postgresql.auto.conf").read_text()
    assert f"--config={conf}" in auto, auto  # its restore_command reads this configuration
    cluster.configure({"archive_mode": "off"})
    t0 = time.perf_counter()
    cluster.start(timeout=600)
    wait_promoted(cluster)
    seconds = time.perf_counter() - t0
    got = int(cluster.sql("SELECT count(*) FROM pgbench_history")[0][0])
    if got != rows:
        raise SystemExit(f"pgBackRest: {got} history rows recovered, the source has {rows}")
    cluster.stop("immediate")
    cpu = redo_cpu(cluster.log_file.read_text(errors="replace"))
    rmtree(directory)
    return seconds, 0, cpu


PBR = "pgBackRest, archive-get async (process-max 4)"
STARTED = "s3, read-ahead 8, restore --start"


def _port(spec: dict[str, Any]) -> int:
    return int(spec["endpoint_url"].rsplit(":", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--segments", type=int, default=34, help="WAL segments to replay")
    ap.add_argument("--scale", type=int, default=5, help="pgbench scale (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (medians are shown)")
    ap.add_argument("--latency-ms", type=float, default=20, help="per-request latency to S3")
    ap.add_argument(
        "--pgbackrest", action="store_true", help="pgBackRest's async archive-get beside (above)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    if args.pgbackrest and not (shutil.which("pgbackrest") and shutil.which("stunnel4")):
        raise SystemExit("--pgbackrest needs pgbackrest and stunnel4 (apt-get install -y ...)")
    cache_moto_values()
    root = scratch("pgbackup-bench-replay-")
    log(f"scratch {root}; {loadavg()}; server user {SERVER_USER}")
    results: dict[str, list[float]] = {}
    served: dict[str, list[int]] = {}
    replaying: dict[str, list[float]] = {}  # PostgreSQL's redo CPU seconds, per run
    try:
        with contextlib.ExitStack() as stack:
            moto_spec, s3env = stack.enter_context(services.moto_s3())
            os.environ.update(s3env)
            spec = stack.enter_context(shaped(moto_spec, args.latency_ms, 0))
            env = pgbackup_env(root, **s3env)
            pbr: dict[str, Any] | None = None
            if args.pgbackrest:  # both through TLS: pushes straight to moto, replay shaped
                push = stack.enter_context(TlsProxy(root / "tls-push", _port(moto_spec)))
                tls = stack.enter_context(TlsProxy(root / "tls", _port(spec)))
                pbr = {"spec": moto_spec, "env": s3env, "tls_port": push.port}
                spec = dict(spec, endpoint_url=f"https://127.0.0.1:{tls.port}")
                env["AWS_CA_BUNDLE"] = str(tls.cert)
            source = build_source(root, args.segments, args.scale, pbr)
            local = root / "local-wal"
            decode_locally(source["repo"], local)
            copy_to_s3(source["repo"], moto_spec)
            s3_cfg = s3_policy(source["cfg"], root / "s3.yaml", spec, "8MiB")
            variants = [
                ("s3, read-ahead off", with_read_ahead(s3_cfg, root / "s3-0.yaml", 0), None),
                ("s3, read-ahead 8", with_read_ahead(s3_cfg, root / "s3-8.yaml", 8), None),
                (STARTED, root / "s3-8.yaml", None),
                (
                    "posix, read-ahead off",
                    with_read_ahead(source["cfg"], root / "p-0.yaml", 0),
                    None,
                ),
                ("posix, read-ahead 8", with_read_ahead(source["cfg"], root / "p-8.yaml", 8), None),
                ("PostgreSQL, local disk (cp)", source["cfg"], local),
            ]
            if pbr:
                extra = {"archive-async": "y", "archive-get-queue-max": "128MiB"}
                replay_conf = pgbackrest_s3_conf(
                    root, source["cluster"], **dict(pbr, tls_port=tls.port), process_max=4,
                    name="replay.conf", extra=extra,
                )  # fmt: skip
                variants.append((PBR, replay_conf, None))
            for n in range(args.repeat):
                turn = n % len(variants)
                for label, cfg, where in variants[turn:] + variants[:turn]:
                    if label == PBR:
                        seconds, hits, cpu = replay_pgbackrest(root, cfg, source["rows"])
                    elif label == STARTED:
                        seconds, hits, cpu = replay_started(root, label, cfg, env, source["rows"])
                    else:
                        seconds, hits, cpu = replay(root, label, cfg, env, source["rows"], where)
                    log(
                        f"round {n + 1}: {label}: {seconds:.2f} s, {hits} served from the "
                        f"spool, PostgreSQL's redo CPU {cpu:.2f} s"
                    )
                    results.setdefault(label, []).append(seconds)
                    served.setdefault(label, []).append(hits)
                    replaying.setdefault(label, []).append(cpu)
        base = median(results["PostgreSQL, local disk (cp)"])
        # Wall time minus PostgreSQL's own redo CPU, run by run: what fetching added, with
        # the machine's changing speed mostly taken out (it still slows the fetchers).
        added = {
            label: [t - c for t, c in zip(times, replaying[label], strict=True)]
            for label, times in results.items()
        }
        added_base = median(added[PBR]) if PBR in added else None
        rows = [
            [
                label,
                f"{median(times):.2f}",
                " / ".join(f"{t:.2f}" for t in times),
                f"{median(times) / base:.2f}",
                f"{median(replaying[label]):.2f}",
                f"{median(added[label]):.2f}",
                f"{median(added[label]) / added_base:.2f}" if added_base else "",
                "/".join(str(s) for s in served[label]),
            ]
            for label, times in results.items()
        ]
        print(
            f"\nreplay of {source['segments']} segments; S3 through a proxy answering each "
            f"request {args.latency_ms:g} ms after it; {loadavg()}\n"
        )
        print(
            table(
                [
                    "recovery",
                    "median s",
                    "runs",
                    "vs local cp",
                    "redo CPU s",
                    "wall - redo CPU",
                    "that vs pgBackRest",
                    "from spool",
                ],
                rows,
            )
        )
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            rmtree(root)


if __name__ == "__main__":
    main()
