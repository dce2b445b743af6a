"""Shared helpers for the benchmarks: scratch dirs, clusters, timed runs with peak RSS.

Benchmarks run everything in one process tree on one machine: the same cluster, the
same compression, measured the same way. Peak memory is the peak of the *sum* of the
resident set sizes of the measured process and all its descendants, sampled from
/proc every 20 ms (so pgbackup's figure includes the pg_basebackup it runs; the server
side - walsender, server-side compression - is not counted for anyone).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pgbackup.postgres.cluster import Cluster, free_port, server_os_user  # noqa: E402

PGBACKUP = str(Path(sys.executable).parent / "pgbackup")
SERVER_USER = server_os_user()  # "postgres" when we are root, else None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def scratch(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    return root


def give(path: Path, mode: int = 0o750) -> Path:
    """mkdir ``path`` and hand it to the server OS user (pgBackRest, archive_command)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if SERVER_USER:
        pw = pwd.getpwnam(SERVER_USER)
        for dirpath, _dirnames, filenames in os.walk(path):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            for n in filenames:
                os.chown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid)
    return path


def as_server_user() -> dict[str, Any]:
    """Popen kwargs that run a child as the server OS user (pgBackRest needs that)."""
    if not SERVER_USER:
        return {}
    pw = pwd.getpwnam(SERVER_USER)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if SERVER_USER:
        env["HOME"] = pwd.getpwnam(SERVER_USER).pw_dir
    env.update(extra or {})
    return env


def pgbackup_env(root: Path, *, as_server: bool = False, **extra: str) -> dict[str, str]:
    """Environment for pgbackup processes, as an installed package would run.

    pip compiles an installed package's modules at install time (and Debian's Python and
    the virtualenv's packages have theirs); this environment sets
    PYTHONDONTWRITEBYTECODE=1, under which an editable install's modules are compiled
    from source by every process that imports them. So the variable is dropped, and
    pgbackup's own modules are compiled once, in their ``__pycache__`` (ignored by git),
    before anything is timed: the server's OS user, which runs wal-fetch and the
    prefetcher, could not write them there. (A PYTHONPYCACHEPREFIX directory, used
    before, made every module, the standard library's too, compile into directories
    created by whichever user imported it first: the server's user could not write into
    root's, so what only it imported was compiled again by every process.)
    """
    env = server_env() if as_server else dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.update(
        {
            "PGBACKUP_QUIET": "1",
            "XDG_CACHE_HOME": str(give(root / "xdg-cache", 0o777)),
        }
    )
    env.update(extra)
    _compile_pgbackup()
    return env


@functools.cache
def _compile_pgbackup() -> None:
    """pgbackup's modules compiled in place, once per benchmark process."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "pgbackup")],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"},
        check=True,
    )


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under path (what a durable restore has to do)."""
    for dirpath, _dirs, files in os.walk(path):
        for n in files:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_cluster(root: Path, settings: Mapping[str, Any] | None = None) -> Cluster:
    cluster = Cluster(root / "data", free_port())
    base = {
        "shared_buffers": "256MB",
        "max_wal_size": "4GB",
        "checkpoint_timeout": "30min",
    }
    base.update(settings or {})
    cluster.initdb(base)
    cluster.start()
    return cluster


def pgbench(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    user = SERVER_USER or pwd.getpwuid(os.geteuid()).pw_name
    argv = [
        cluster.program("pgbench"),
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.port),
        "-U",
        user,
        *args,
        "postgres",
    ]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def write_policy(
    path: Path, repo: Path, port: int, target: str = "bench", *, workers: int = 0
) -> Path:
    user = SERVER_USER or pwd.getpwuid(os.geteuid()).pw_name
    path.write_text(
        "version: 1\n"
        f"repository:\n  path: {repo}\n"
        f"compression: {{method: zstd, level: 3, workers: {workers}}}\n"
        "targets:\n"
        f"  {target}:\n"
        f"    connection: {{host: 127.0.0.1, port: {port}, user: {user}, dbname: postgres}}\n"
        "retention: {days: 7, weekly: 4, monthly: 12}\n"
        'schedules: {backup: "0 2 * * *"}\n'
        "sla: {rto: 1h, rpo: 5m}\n"
    )
    os.chmod(path, 0o644)
    proc = subprocess.run(
        [PGBACKUP, "--config", str(path), "validate"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark policy {path} invalid:\n{proc.stdout}{proc.stderr}")
    return path


def pgbackrest_conf(
    root: Path, cluster: Cluster, *, process_max: int = 2, extra: Mapping[str, Any] | None = None
) -> Path:
    """A private pgbackrest.conf (stanza ``bench``) with its repo/log/lock/spool under root."""
    pbr = give(root / "pgbackrest")
    for sub in ("repo", "log", "lock", "spool"):
        give(pbr / sub)
    sock = cluster.data_dir.parent / "sock"
    lines = [
        "[global]",
        f"repo1-path={pbr / 'repo'}",
        "repo1-retention-full=9",
        f"log-path={pbr / 'log'}",
        f"lock-path={pbr / 'lock'}",
        f"spool-path={pbr / 'spool'}",
        "log-level-console=warn",
        "log-level-file=off",
        f"process-max={process_max}",
        "compress-type=zst",
        "compress-level=3",
        "start-fast=y",
        "archive-async=n",
    ]
    lines += [f"{k}={v}" for k, v in (extra or {}).items()]
    lines += [
        "",
        "[bench]",
        f"pg1-path={cluster.data_dir}",
        f"pg1-port={cluster.port}",
        f"pg1-socket-path={sock}",
        "",
    ]
    conf = pbr / "pgbackrest.conf"
    conf.write_text("\n".join(lines))
    os.chmod(conf, 0o644)
    return conf


def socket_settings(root: Path) -> dict[str, Any]:
    """pgBackRest talks to the local server over a Unix socket; give it one."""
    give(root / "sock", 0o755)
    return {"unix_socket_directories": str(root / "sock")}


def pgbackrest(conf: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["pgbackrest", f"--config={conf}", "--stanza=bench", *args]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=server_env(), cwd="/", **as_server_user()
    )
    if check and proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


# --- measuring ------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    kids = _children_map()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss_kib(pid)
        stack.extend(kids.get(pid, ()))
    return total


@dataclass
class Run:
    seconds: float
    peak_rss: int  # bytes, sum over the process tree
    returncode: int
    output: str
    cpu: float = 0.0  # user+sys seconds of the process and its (waited-for) descendants


def timed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    server_user: bool = False,
    sample: float = 0.02,
) -> Run:
    """Run argv to completion; wall time and the peak summed RSS of its process tree."""
    kwargs: dict[str, Any] = as_server_user() if server_user else {}
    if server_user and env is None:
        env = server_env()
    out = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd or "/", **kwargs
    )
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_kib(proc.pid))
            stop.wait(sample)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _pid, status, ru = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    stop.set()
    th.join()
    out.seek(0)
    text = out.read().decode(errors="replace")
    out.close()
    return Run(seconds, peak * 1024, rc, text, ru.ru_utime + ru.ru_stime)


def must(run: Run, what: str) -> Run:
    if run.returncode != 0:
        raise SystemExit(f"{what} failed (exit {run.returncode}):\n{run.output[-3000:]}")
    return run


def du(path: Path) -> int:
    """Apparent size in bytes of the files under path."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for n in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
