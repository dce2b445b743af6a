#!/usr/bin/env python3
"""What would make ``pgbackup backup`` as fast as its peer? Streaming variants, one cluster.

    .venv/bin/python bench/backup_variants.py --scale 50 [--repeat 3]

Each variant reproduces the core of ``pgbackup.backup.stream_base_backup`` (pipe from
``pg_basebackup -D - -Ft -X fetch --checkpoint=fast``, 1 MiB reads, tar scan for
backup_label/backup_manifest, sha256 of the stored bytes, write + fsync of one file)
without the CLI around it, so only the streaming design differs:

  current (threads=-1)   raw tar through the pipe, python-zstandard compresses (threads=-1)
  threads=0              the same, compression on the reading thread
  threads=1              the same, one zstd worker thread
  client-zstd:3 in pg_basebackup, scan by decompressing
                         pg_basebackup -D - --compress=client-zstd:3 (it compresses, and still
                         injects the manifest); Python stores the bytes as they come and
                         decompresses a copy only to scan the tar
  client-zstd:3, no scan the lower bound of the above (no decompression)
and the peer, ``pg_basebackup -D DIR --compress=client-zstd:3``. CPU seconds are the
user+sys of the client-side process tree (the server's share is not included).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    REPO,
    SERVER_USER,
    give,
    loadavg,
    log,
    make_cluster,
    median,
    mib,
    pgbench,
    rmtree,
    scratch,
    table,
)  # noqa: E402

sys.path.insert(0, str(REPO))
import zstandard  # noqa: E402

from pgbackup.tarstream import TarScanner  # noqa: E402

READ = 1 << 20


def variant(bb: list[str], out: Path, mode: str) -> tuple[float, float, int]:
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    argv = [*bb, "-D", "-"]
    if mode.startswith("client"):
        argv.append("--compress=client-zstd:3")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout
    import fcntl

    fcntl.fcntl(proc.stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), READ)
    fd = proc.stdout.fileno()
    scanner = TarScanner({"backup_label", "backup_manifest"})
    digest = hashlib.sha256()
    stored = 0
    with open(out, "wb") as f:
        if mode.startswith("threads"):
            threads = int(mode.split("=")[1])
            comp = zstandard.ZstdCompressor(level=3, threads=threads).compressobj()
            while chunk := os.read(fd, READ):
                scanner.feed(chunk)
                data = comp.compress(chunk)
                if data:
                    digest.update(data)
                    f.write(data)
                    stored += len(data)
            data = comp.flush()
            digest.update(data)
            f.write(data)
            stored += len(data)
        else:
            scan = mode == "client-scan"
            dec = zstandard.ZstdDecompressor().decompressobj() if scan else None
            while chunk := os.read(fd, READ):
                digest.update(chunk)
                f.write(chunk)
                stored += len(chunk)
                if dec is not None:
                    scanner.feed(dec.decompress(chunk))
        f.flush()
        os.fsync(f.fileno())
    rc = proc.wait()
    dt = time.perf_counter() - t0
    assert rc == 0, rc
    if mode != "client-noscan":
        assert "backup_manifest" in scanner.captured and "backup_label" in scanner.captured, mode
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) + (
        s1.ru_utime - s0.ru_utime + s1.ru_stime - s0.ru_stime
    )
    return dt, cpu, stored


def peer(bb: list[str], out: Path) -> tuple[float, float, int]:
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([*bb, "-D", str(out), "--compress=client-zstd:3"], check=True)
    dt = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    size = sum(p.stat().st_size for p in out.iterdir())
    rmtree(out)
    return dt, ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime, size


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = scratch("pgbackup-variants-")
    cluster = make_cluster(root)
    try:
        pgbench(cluster, "-i", "-q", "-s", str(args.scale))
        cluster.sql("CHECKPOINT")
        bb = [
            cluster.program("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            SERVER_USER or "postgres",
            "-Ft",
            "-X",
            "fetch",
            "--checkpoint=fast",
        ]
        give(root / "o", 0o755)
        modes = ["threads=-1", "threads=0", "threads=1", "client-scan", "client-noscan", "peer"]
        labels = {
            "threads=-1": "current: raw pipe, python-zstandard threads=-1",
            "threads=0": "raw pipe, python-zstandard threads=0",
            "threads=1": "raw pipe, python-zstandard threads=1",
            "client-scan": "pg_basebackup -D - client-zstd:3, decompress to scan",
            "client-noscan": "pg_basebackup -D - client-zstd:3, no scan",
            "peer": "peer: pg_basebackup -D DIR client-zstd:3",
        }
        res: dict[str, list[tuple[float, float, int]]] = {m: [] for m in modes}
        for i in range(args.repeat):
            order = modes[i % len(modes) :] + modes[: i % len(modes)]
            for m in order:
                r = (
                    peer(bb, root / "o" / "peer")
                    if m == "peer"
                    else variant(bb, root / "o" / "x.zst", m)
                )
                res[m].append(r)
                log(f"{m}: {r[0]:.2f}s wall, {r[1]:.2f}s cpu, {mib(r[2])}")
        print(f"\nscale {args.scale}; {args.repeat} runs, medians; {loadavg()}")
        print(
            table(
                ["variant", "wall s", "runs", "client CPU s", "stored"],
                [
                    [
                        labels[m],
                        f"{median([x[0] for x in v]):.2f}",
                        " / ".join(f"{x[0]:.2f}" for x in v),
                        f"{median([x[1] for x in v]):.2f}",
                        mib(median([x[2] for x in v])),
                    ]
                    for m, v in res.items()
                ],
            )
        )
    finally:
        cluster.destroy()
        rmtree(root)


if __name__ == "__main__":
    main()
