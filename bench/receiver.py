"""Commits lost in a crash: archive_command + archive_timeout vs wal-receive vs synchronous.

For each mode, on a fresh cluster: a backup, then single-row commits on one connection for
``--seconds``; the primary is killed (``pg_ctl stop -m immediate``) and its data
directory is never read again; ``restore --target latest`` from the repository and
counts what came back. In the async receiver mode the receiver is SIGKILLed at the same
moment (worst case: nothing is stored after the crash); in synchronous mode it survives
(it stands for a receiver on another host) and is stopped with SIGTERM. Commit latency
(median, p99) is measured on the same commits. Then ``--pgbench`` seconds of pgbench
(4 clients) with the async receiver, the lag sampled every second: it must not grow.

    .venv/bin/python bench/receiver.py [--seconds 5] [--pgbench 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    PGBACKUP,
    SERVER_USER,
    give,
    log,
    make_cluster,
    median,
    percentile,
    pgbackup_env,
    pgbench,
    rmtree,
    scratch,
    table,
)

from pgbackup.postgres.cluster import Cluster, free_port


def policy(root: Path, port: int, mode: str) -> Path:
    path = root / "backup.yaml"
    user = SERVER_USER or "postgres"
    receiver = ""
    if mode != "archive":
        sync = "true" if mode == "synchronous" else "false"
        receiver = f"    wal_receiver: {{slot: bench_rx, synchronous: {sync}, directory: {root / 'spool'}}}\n"
    path.write_text(
        "version: 1\n"
        f"repository:\n  path: {root / 'repo'}\n"
        "compression: {method: zstd, level: 3}\n"
        "targets:\n"
        "  bench:\n"
        f"    connection: {{host: 127.0.0.1, port: {port}, user: {user}, dbname: postgres}}\n"
        + receiver
        + "retention: {days: 7, weekly: 4, monthly: 12}\n"
        'schedules: {backup: "0 2 * * *"}\n'
        "sla: {rto: 1h, rpo: 5m}\n"
    )
    os.chmod(path, 0o644)
    return path


def run(root: Path, config: Path, *args: str) -> str:
    proc = subprocess.run(
        [PGBACKUP, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=pgbackup_env(root),
    )
    if proc.returncode != 0:
        raise SystemExit(f"pgbackup {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def start_receiver(root: Path, config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PGBACKUP, "--config", str(config), "wal-receive", "--target", "bench"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=pgbackup_env(root),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("streaming"):
        raise SystemExit(
            f"wal-receive did not start: {line}{proc.stderr.read() if proc.stderr else ''}"
        )
    return proc


def crash_run(mode: str, seconds: float) -> dict[str, Any]:
    root = scratch(f"pgbackup-bench-rx-{mode}-")
    give(root / "repo")
    settings: dict[str, Any] = {"wal_level": "replica", "max_wal_senders": 10}
    if mode == "archive":
        settings.update({"archive_mode": "on", "archive_timeout": "60s"})
    cluster = make_cluster(root, settings)
    config = policy(root, cluster.port, mode)
    if mode == "archive":
        cmd = f"'{PGBACKUP}' --config '{config}' wal-push --target bench %p"
        cluster.sql(f"ALTER SYSTEM SET archive_command = '{cmd.replace(chr(39), chr(39) * 2)}'")
        cluster.sql("SELECT pg_reload_conf()")
    receiver = None
    if mode != "archive":
        receiver = start_receiver(root, config)
        if mode == "synchronous":
            cluster.sql("ALTER SYSTEM SET synchronous_standby_names = 'bench_rx'")
            cluster.sql("SELECT pg_reload_conf()")
            while cluster.sql("SELECT sync_state FROM pg_stat_replication") != [("sync",)]:
                time.sleep(0.2)
    run(root, config, "backup")
    cluster.sql("CREATE TABLE stream_log (n int PRIMARY KEY)")
    acked: list[tuple[int, float, float]] = []  # n, ack time, latency
    stop = threading.Event()

    def commits() -> None:
        try:
            with cluster.connect() as conn:
                conn.autocommit = True
                n = 0
                while not stop.is_set():
                    n += 1
                    t0 = time.monotonic()
                    conn.execute("INSERT INTO stream_log VALUES (%s)", (n,))
                    t1 = time.monotonic()
                    acked.append((n, t1, t1 - t0))
        except Exception:
            pass  # the crash

    writer = threading.Thread(target=commits)
    writer.start()
    time.sleep(seconds)
    cluster.stop("immediate")
    if receiver is not None and mode == "async":
        receiver.send_signal(signal.SIGKILL)
        receiver.wait()
    elif receiver is not None:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(60)
    stop.set()
    writer.join()
    restored = Cluster(root / "restored", free_port())
    run(
        root,
        config,
        "restore",
        "--to",
        str(restored.data_dir),
        "--target",
        "latest",
        "--start",
        "--port",
        str(restored.port),
        "--no-archive",
    )
    exists = restored.sql("SELECT to_regclass('stream_log') IS NOT NULL")[0][0]
    highest = restored.sql("SELECT coalesce(max(n), 0) FROM stream_log")[0][0] if exists else 0
    restored.stop("immediate")
    last = acked[-1]
    times = {n: t for n, t, _l in acked}
    lost = max(0, last[0] - highest)
    lost_seconds = last[1] - times[highest] if highest in times else last[1] - acked[0][1]
    latencies = [lat for _n, _t, lat in acked]
    rmtree(root)
    return {
        "mode": mode,
        "acked": last[0],
        "recovered": highest,
        "lost": lost,
        "lost_seconds": lost_seconds,
        "latency_median_ms": median(latencies) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
    }


def lag_run(seconds: int) -> list[tuple[float, int]]:
    root = scratch("pgbackup-bench-rx-lag-")
    give(root / "repo")
    cluster = make_cluster(root, {"wal_level": "replica", "max_wal_senders": 10})
    config = policy(root, cluster.port, "async")
    receiver = start_receiver(root, config)
    pgbench(cluster, "-i", "-s", "10", "-q")
    samples: list[tuple[float, int]] = []
    bench = subprocess.Popen(
        [
            cluster.program("pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            SERVER_USER or "postgres",
            "-c",
            "4",
            "-T",
            str(seconds),
            "postgres",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    while bench.poll() is None:
        lag = cluster.sql(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), write_lsn), -1)::bigint "
            "FROM pg_stat_replication"
        )
        samples.append((time.monotonic() - t0, int(lag[0][0]) if lag else -1))
        time.sleep(1)
    written = cluster.sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0]
    receiver.send_signal(signal.SIGTERM)
    receiver.wait(60)
    cluster.stop("immediate")
    rmtree(root)
    log(f"pgbench wrote {int(written) / 2**20:.0f} MiB of WAL in {seconds}s")
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--pgbench", type=int, default=60)
    args = ap.parse_args()
    rows = []
    for mode in ("archive", "async", "synchronous"):
        log(f"crash with {mode}")
        r = crash_run(mode, args.seconds)
        rows.append(
            [
                {
                    "archive": "archive_command, archive_timeout 60s",
                    "async": "wal-receive",
                    "synchronous": "wal-receive synchronous",
                }[mode],
                r["acked"],
                r["recovered"],
                r["lost"],
                f"{r['lost_seconds']:.2f} s",
                f"{r['latency_median_ms']:.2f} ms",
                f"{r['latency_p99_ms']:.2f} ms",
            ]
        )
    print(
        table(
            [
                "mode",
                "acknowledged",
                "recovered",
                "lost",
                "lost (time)",
                "commit median",
                "commit p99",
            ],
            rows,
        )
    )
    if args.pgbench:
        samples = lag_run(args.pgbench)
        half = len(samples) // 2
        first = [b for _t, b in samples[:half]]
        second = [b for _t, b in samples[half:]]
        print(
            f"\nlag behind pg_current_wal_lsn() over {args.pgbench}s of pgbench -c 4: "
            f"max {max(b for _t, b in samples) / 2**20:.2f} MiB; median first half "
            f"{median(first) / 2**10:.0f} KiB, second half {median(second) / 2**10:.0f} KiB"
        )


if __name__ == "__main__":
    main()
