#!/usr/bin/env python3
"""Backup and restore of a pgbench database to S3 (moto in server mode) vs to posix.

    .venv/bin/python bench/s3.py [--scale 50] [--repeat 1] [--part-size 16MiB] [--keep]
        [--latency-ms 20 --conn-mbps 25] [--code before=/tmp/before --code after=/tmp/after]

With ``--latency-ms``/``--conn-mbps`` a shaping proxy (this process, no netem) sits between
pgbackup and moto: every request is answered no sooner than the latency after it was
sent, and every connection moves at most that many MB/s each way — what makes one
request at a time slow and several in flight fast, as on a real WAN link to a cloud
store. With ``--code LABEL=DIR`` (repeatable) the same runs are made with pgbackup
imported from each DIR (a git worktree; PYTHONPATH), in turn, against the same cluster
and server, and the table adds each version's ratio to the first one's.

For each repository kind: ``pgbackup backup`` then ``pgbackup restore --backup latest``
(into an empty directory, server not started): wall time and peak RSS of the pgbackup
process tree (sum of RSS over pgbackup and its children, sampled every 20 ms; see
common.py). The goal in issue 4: a backup of a 1.5 GB database to S3 stays under
250 MB peak RSS (multipart upload with bounded memory).

moto runs in this benchmark's own process (threaded server) and holds every stored
object in memory; its footprint is reported separately and is not part of pgbackup's
figures. Run as root (PostgreSQL runs as ``postgres``); everything lives in a scratch
directory under /tmp, removed at the end unless ``--keep``.

With ``--offsite N`` it measures upload copies and wal-ship instead (issue #26 point 1,
several objects at once): one backup to a posix repository, then per round and code
(rotating who goes first) the copy of that backup to a fresh S3 upload destination
(``upload_backup`` in a subprocess, as ``pgbackup backup`` runs it after the backup) and
``pgbackup wal-ship --once`` of N WAL files of ``--wal-size`` bytes each (random, so
incompressible; a zstd-compressed pgbench segment is a few MiB) to another fresh one.
Each destination's objects are deleted after its run (moto keeps them in memory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
    pgbackrest_conf,
    pgbackup_env,
    pgbench,
    rmtree,
    scratch,
    table,
    timed,
    write_policy,
)

RSS_GOAL = 250 * 1024 * 1024


class ShapedProxy:
    """A TCP relay in front of moto: per-request latency and per-connection bandwidth.

    Bytes are relayed as they come (nothing is buffered whole). On each connection the
    first byte of an answer waits until ``latency`` seconds after the first byte of the
    request it follows; each direction of each connection is paced to ``rate`` bytes/s.
    """

    def __init__(self, upstream_port: int, latency: float, rate: float):
        self.upstream = ("127.0.0.1", upstream_port)
        self.latency, self.rate = latency, rate
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._relay(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ShapedProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = {"turn": "answer", "asked": 0.0}

        def pump(src: socket.socket, dst: socket.socket, is_request: bool) -> None:
            due = 0.0  # when the bytes sent so far are allowed to have left
            try:
                while True:
                    data = src.recv(256 * 1024)
                    if not data:
                        break
                    now = time.monotonic()
                    if not is_request and state["turn"] == "request":
                        state["turn"] = "answer"
                        wait = state["asked"] + self.latency - now
                        if wait > 0:
                            time.sleep(wait)
                        now = time.monotonic()
                    if self.rate:
                        for i in range(0, len(data), 64 * 1024):
                            piece = data[i : i + 64 * 1024]
                            due = max(due, now) + len(piece) / self.rate
                            dst.sendall(piece)
                            now = time.monotonic()
                            if due > now:
                                time.sleep(due - now)
                    else:
                        dst.sendall(data)
                    if is_request:  # the answer is due ``latency`` after the last byte
                        state["turn"], state["asked"] = "request", time.monotonic()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        up = threading.Thread(target=pump, args=(client, upstream, True), daemon=True)
        up.start()
        pump(upstream, client, False)
        up.join()
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()


class TlsProxy:
    """stunnel4 in front of ``upstream_port``: HTTPS on a free loopback port."""

    def __init__(self, directory: Path, upstream_port: int):
        self.dir = directory  # its certificate, key, configuration and log
        self.dir.mkdir(parents=True)
        self.cert = self.dir / "cert.pem"
        must_run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(self.dir / "key.pem"), "-out", str(self.cert),
            ]
        )  # fmt: skip
        self.cert.chmod(0o644)
        self.port = services.free_port()
        conf = self.dir / "stunnel.conf"
        conf.write_text(
            "foreground = yes\ndebug = 3\n"
            f"pid =\noutput = {self.dir / 'stunnel.log'}\n"
            "[s3]\n"
            f"accept = 127.0.0.1:{self.port}\n"
            f"connect = 127.0.0.1:{upstream_port}\n"
            f"cert = {self.cert}\nkey = {self.dir / 'key.pem'}\n"
        )
        self.conf = conf
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TlsProxy:
        self.proc = subprocess.Popen(
            ["stunnel4", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        services.wait_for_port(self.port)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


def must_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def pgbackrest_s3_conf(
    root: Path,
    cluster: Any,
    spec: dict[str, Any],
    env: dict[str, str],
    tls_port: int,
    process_max: int,
    *,
    name: str = "pgbackrest.conf",
    extra: dict[str, str] | None = None,
) -> Path:
    """pgBackRest's stanza ``bench``, its repository in the bucket under ``pgbr/``, reached
    through the TLS proxy on ``tls_port`` (a file ``name`` beside the others)."""
    s3 = {
        "repo1-type": "s3",
        "repo1-s3-bucket": spec["bucket"],
        "repo1-s3-endpoint": "127.0.0.1",
        "repo1-s3-region": spec["region"],
        "repo1-s3-key": env["AWS_ACCESS_KEY_ID"],
        "repo1-s3-key-secret": env["AWS_SECRET_ACCESS_KEY"],
        "repo1-s3-uri-style": "path",
        "repo1-storage-port": str(tls_port),
        "repo1-storage-verify-tls": "n",
    }
    default = pgbackrest_conf(root, cluster, process_max=process_max, extra=s3)
    text = default.read_text().replace(
        f"repo1-path={root / 'pgbackrest' / 'repo'}", "repo1-path=/pgbr"
    )
    for key, value in (extra or {}).items():  # pgBackRest refuses an option set twice
        text, found = re.subn(rf"(?m)^{re.escape(key)}=.*$", f"{key}={value}", text)
        if not found:
            text = text.replace("[global]\n", f"[global]\n{key}={value}\n", 1)
    conf = default.with_name(name)
    conf.write_text(text)
    conf.chmod(0o644)
    return conf


def cache_moto_values() -> None:
    """moto keeps each object in a spool file and reads all of it for every GET, ranged or
    not (0.2 s for 8 MiB of a 300 MiB object): a ranged GET would cost what the whole
    object costs, which S3 does not. Keep each object's bytes once read, in this process,
    so that a ranged GET costs a slice; and let a version listing copy no bytes (below)."""
    from moto.s3.models import FakeKey

    prop = FakeKey.value
    assert isinstance(prop, property) and prop.fget and prop.fset

    def get(self: Any) -> bytes:
        cached = self.__dict__.get("_bench_value")
        if cached is None:
            cached = self.__dict__["_bench_value"] = prop.fget(self)
        return cached  # type: ignore[no-any-return]

    def put(self: Any, value: bytes) -> None:
        self.__dict__.pop("_bench_value", None)
        prop.fset(self, value)

    FakeKey.value = property(get, put)  # type: ignore[method-assign,assignment]

    def listed_copy(self: Any, memo: dict[int, Any]) -> Any:
        """moto's ListObjectVersions deep-copies every version in the bucket (to mark the
        newest of each name), whatever the prefix: through FakeKey's pickling, each
        copy reads the object's bytes and writes them into a new spool file. S3 answers
        that listing from its index: a cost that grew by ~5 s a round with each 400 MiB
        backup stored (pgbackup lists the versions of ``archive.json`` before a backup to
        a versioned bucket, generations.refuse_deleted). A listing's copy shares the
        bytes instead, with its ETag computed once, on the original."""
        import tempfile
        import threading

        self.etag  # noqa: B018 - computed (once, cached on the key) before the copy
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._value_buffer = tempfile.SpooledTemporaryFile(0)  # noqa: SIM115 - its own, disposed alone
        other.lock = threading.Lock()
        return other

    FakeKey.__deepcopy__ = listed_copy  # type: ignore[attr-defined]


@contextlib.contextmanager
def shaped(spec: dict[str, Any], latency_ms: float, mbps: float) -> Iterator[dict[str, Any]]:
    if not latency_ms and not mbps:
        yield spec
        return
    port = int(spec["endpoint_url"].rsplit(":", 1)[1])
    with ShapedProxy(port, latency_ms / 1000, mbps * 1_000_000) as proxy:
        yield dict(spec, endpoint_url=proxy.url)


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


def ceiling(moto_spec: dict[str, Any], s3env: dict[str, str], args: Any) -> None:
    """pgbackup's storage layer alone (this process, no PostgreSQL): 400 MiB up and down
    with 1 and 4 streams, unshaped and shaped: what moto itself can take."""
    import os

    from pgbackup.storage import open_storage

    os.environ.update(s3env)
    data = bytes(range(256)) * (32 * 1024)  # 8 MiB
    rows = []
    for label, latency, mbps in (("unshaped", 0, 0), ("shaped", args.latency_ms, args.conn_mbps)):
        if label == "shaped" and not (latency or mbps):
            continue
        with shaped(moto_spec, latency, mbps) as spec:
            for streams in (1, 4):
                storage = open_storage(
                    dict(spec, part_size="8MiB", streams=streams, prefix=f"c-{label}-{streams}/")
                )
                t0 = time.perf_counter()
                with storage.open_write("big") as w:
                    for _ in range(50):
                        w.write(data)
                up = time.perf_counter() - t0
                t0 = time.perf_counter()
                n = sum(len(c) for c in storage.iter_chunks("big"))
                down = time.perf_counter() - t0
                storage.delete("big")
                rows.append(
                    [f"{label}, {streams} stream(s)", f"{400 / up:.0f}", f"{n / 2**20 / down:.0f}"]
                )
    print(table(["storage layer alone, 400 MiB", "up MiB/s", "down MiB/s"], rows))


COPY_SCRIPT = """
import sys
from pgbackup.engine.uploads import upload_backup
from pgbackup.policy.loading import load_policy
upload_backup(load_policy(sys.argv[1]), "bench", sys.argv[2])
"""


def offsite_policy(
    posix_policy: Path, path: Path, spec: dict[str, Any], part_size: str, prefix: str
) -> Path:
    """The posix policy plus a target ``ship`` (only its WAL is used) and one S3 upload
    destination ``offsite`` at ``prefix``."""
    text = posix_policy.read_text()
    conn = re.search(r"^    connection: .*$", text, re.M)
    assert conn is not None
    text = text.replace("targets:\n", f"targets:\n  ship:\n{conn.group(0)}\n", 1)
    text += (
        "uploads:\n"
        f"  - {{name: offsite, kind: s3, bucket: {spec['bucket']}, prefix: {prefix}, "
        f"region: {spec['region']}, endpoint_url: {spec['endpoint_url']}, "
        f"part_size: {part_size}}}\n"
    )
    path.write_text(text)
    path.chmod(0o644)
    return path


def offsite(
    args: Any,
    root: Path,
    posix_cfg: Path,
    spec: dict[str, Any],
    moto_spec: dict[str, Any],
    s3env: Any,
    codes: list[tuple[str, str]],
) -> dict[tuple[str, str], list[Run]]:
    """Upload copy of one backup and wal-ship of ``args.offsite`` files, per round and code."""
    import os

    from pgbackup.storage import open_storage

    env0 = pgbackup_env(root, **s3env)
    must(timed([PGBACKUP, "--config", str(posix_cfg), "backup"], env=env0), "backup to posix")
    backup_id = sorted(p.name for p in (root / "repo" / "bench" / "base").iterdir())[-1]
    wal = root / "repo" / "ship" / "wal"
    wal.mkdir(parents=True, exist_ok=True)
    for i in range(args.offsite):
        (wal / f"0000000100000001{i:08X}.zst").write_bytes(os.urandom(args.wal_size))
    os.environ.update(s3env)
    results: dict[tuple[str, str], list[Run]] = {}
    for n in range(args.repeat):
        turn = n % len(codes)
        for label, code in codes[turn:] + codes[:turn]:
            extra: dict[str, Any] = {"PYTHONPATH": code} if code else {}
            env = pgbackup_env(root, **s3env, **extra)
            for op in ("upload copy", "wal-ship"):
                prefix = f"{op.split()[0]}-{label}-{n}/"
                cfg = offsite_policy(
                    posix_cfg, root / f"{prefix[:-1]}.yaml", spec, args.part_size, prefix
                )
                log(f"round {n + 1}: {label}: {op}")
                if op == "upload copy":
                    argv = [sys.executable, "-c", COPY_SCRIPT, str(cfg), backup_id]
                else:
                    argv = [
                        PGBACKUP,
                        "--config",
                        str(cfg),
                        "wal-ship",
                        "--once",
                        "--target",
                        "ship",
                    ]
                results.setdefault((label, op), []).append(must(timed(argv, env=env), op))
                open_storage(dict(moto_spec, prefix=prefix)).delete_prefix("")
    return results


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
    ap.add_argument("--latency-ms", type=float, default=0, help="per-request latency to S3")
    ap.add_argument("--conn-mbps", type=float, default=0, help="MB/s per S3 connection")
    ap.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="run pgbackup from DIR (a worktree) as LABEL; repeatable (default: this tree)",
    )
    ap.add_argument(
        "--moto-spool",
        action="store_true",
        help="leave moto reading the whole object for each ranged GET (see cache_moto_values)",
    )
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="only the storage layer against moto (no PostgreSQL): 1 and 4 streams",
    )
    ap.add_argument(
        "--offsite",
        type=int,
        default=0,
        metavar="N",
        help="measure an upload copy and wal-ship of N WAL files instead (see above)",
    )
    ap.add_argument("--wal-size", type=int, default=2 * 1024 * 1024, help="bytes a WAL file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    if not args.moto_spool:
        cache_moto_values()
    if args.ceiling:
        with services.moto_s3() as (moto_spec, s3env):
            ceiling(moto_spec, s3env, args)
        return
    codes = [tuple(c.split("=", 1)) for c in args.code] or [("this", "")]

    root = scratch("pgbackup-bench-s3-")
    log(f"scratch {root}; {loadavg()}")
    cluster = make_cluster(root)
    results: dict[tuple[str, str, str], list[Run]] = {}
    sizes: dict[tuple[str, str], int | None] = {}
    try:
        log(f"pgbench -i -s {args.scale}")
        pgbench(cluster, "-i", "-s", str(args.scale), "-q")
        db_size = int(cluster.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0])
        log(f"cluster size {mib(db_size)}")
        with (
            services.moto_s3() as (moto_spec, s3env),
            shaped(moto_spec, args.latency_ms, args.conn_mbps) as spec,
        ):
            posix_cfg = write_policy(root / "posix.yaml", give(root / "repo"), cluster.port)
            if args.compression != "zstd":  # write_policy says {method: zstd, level: 3, workers: 0}
                posix_cfg.write_text(
                    re.sub(
                        r"\{method: zstd, level: 3(, workers: \d+)?\}",
                        f"{{method: {args.compression}}}",
                        posix_cfg.read_text(),
                    )
                )
                assert f"method: {args.compression}" in posix_cfg.read_text()
            s3_cfg = s3_policy(posix_cfg, root / "s3.yaml", spec, args.part_size)
            if args.offsite:
                offsite_runs = offsite(args, root, posix_cfg, spec, moto_spec, s3env, codes)
                copied = du(root / "repo" / "bench" / "base")
            for n in range(args.repeat if not args.offsite else 0):
                turn = n % len(codes)  # who goes first rotates, round by round
                for label, code in codes[turn:] + codes[:turn]:
                    extra = {"PYTHONPATH": code} if code else {}
                    env = pgbackup_env(root, **s3env, **extra)
                    for kind, cfg in (("posix", posix_cfg), ("s3", s3_cfg)):
                        log(f"round {n + 1}: {label}: backup to {kind}")
                        run = must(
                            timed([PGBACKUP, "--config", str(cfg), "backup"], env=env),
                            f"backup to {kind}",
                        )
                        results.setdefault((label, kind, "backup"), []).append(run)
                        sizes[(label, kind)] = stored_bytes(cfg, env)
                        target = root / f"restore-{label}-{kind}-{n}"
                        log(f"round {n + 1}: {label}: restore from {kind}")
                        argv = [PGBACKUP, "--config", str(cfg), "restore", "--backup", "latest"]
                        run = must(
                            timed([*argv, "--to", str(target)], env=env),
                            f"restore from {kind}",
                        )
                        results.setdefault((label, kind, "restore"), []).append(run)
                        restored = du(target)
                        rmtree(target)
            moto_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        cluster.stop("fast")
        if not args.keep:
            rmtree(root)

    if args.offsite:
        first = codes[0][0]
        rows = []
        for (label, op), op_runs in offsite_runs.items():
            wall = median([r.seconds for r in op_runs])
            base = median([r.seconds for r in offsite_runs[(first, op)]])
            rows.append(
                [
                    f"{op} ({label})",
                    f"{wall:.2f}",
                    f"{wall / base:.2f}",
                    mib(max(r.peak_rss for r in op_runs)),
                    f"{median([r.cpu for r in op_runs]):.1f}",
                ]
            )
        print(
            f"\nupload copy of one backup ({mib(copied)}, pgbench scale {args.scale}, "
            f"compression {args.compression}) and wal-ship --once of {args.offsite} files of "
            f"{mib(args.wal_size)} to S3 (part size {args.part_size}, streams 4) through a "
            f"shaping proxy: {args.latency_ms:g} ms a request, {args.conn_mbps:g} MB/s a "
            f"connection; {args.repeat} round(s), medians; {loadavg()}"
        )
        print(table(["run", "wall s", f"vs {first}", "peak RSS", "cpu s"], rows))
        return

    def secs(key: tuple[str, str, str]) -> float:
        return median([r.seconds for r in results[key]])

    first = codes[0][0]
    rows = []
    for (label, kind, op), runs in results.items():
        row = [
            f"{op} {kind}" + (f" ({label})" if len(codes) > 1 else ""),
            f"{secs((label, kind, op)):.1f}",
            f"{secs((label, kind, op)) / secs((label, 'posix', op)):.2f}",
        ]
        if len(codes) > 1:
            row.append(f"{secs((label, kind, op)) / secs((first, kind, op)):.2f}")
        size = sizes.get((label, kind))
        row += [
            mib(max(r.peak_rss for r in runs)),
            f"{median([r.cpu for r in runs]):.1f}",
            mib(size) if size else "?",
        ]
        rows.append(row)
    shaping = (
        f"S3 through a shaping proxy: {args.latency_ms:g} ms a request, "
        f"{args.conn_mbps:g} MB/s a connection"
        if args.latency_ms or args.conn_mbps
        else "S3 unshaped (loopback)"
    ) + ("; moto reads its spool file whole for each GET" if args.moto_spool else "")
    print(
        f"\npgbench scale {args.scale}: cluster {mib(db_size)}, restored data directory "
        f"{mib(restored)}; compression {args.compression}; S3 part size {args.part_size}; "
        f"{shaping}; {args.repeat} round(s), medians; {loadavg()}"
    )
    headers = ["run", "wall s", "vs posix"]
    if len(codes) > 1:
        headers.append(f"vs {first}")
    print(table([*headers, "peak RSS", "cpu s", "stored"], rows))
    for label, _ in codes:
        s3_peak = max(r.peak_rss for r in results[(label, "s3", "backup")])
        verdict = "meets" if s3_peak < RSS_GOAL else "MISSES"
        print(
            f"{label}: backup to S3 peak RSS {mib(s3_peak)}: {verdict} the < {mib(RSS_GOAL)} "
            f"goal (database {mib(db_size)}; the goal is stated for 1.5 GB)"
        )
    print(f"moto server (this process, all objects in memory) peak RSS {mib(moto_peak)}")


if __name__ == "__main__":
    main()
