"""A PostgreSQL cluster's lifecycle: initdb, configure, start, wait, stop.

One class serves the sandbox, restore drills and the test-suite. PostgreSQL refuses to
run as root, so when we are root every server-side program runs as the ``postgres``
OS user (Popen's ``user=``), and the directories it needs are handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pgbackup.errors import PostgresError
from pgbackup.postgres.binaries import server_bin_dir

# pg_ctl's named stop modes (as in Patroni's postmaster.STOP_SIGNALS).
STOP_MODES = ("smart", "fast", "immediate")
START_TIMEOUT = float(os.environ.get("PGBACKUP_START_TIMEOUT", "120"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_os_user() -> str | None:
    """The OS user servers must run as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    user = os.environ.get("PGBACKUP_SERVER_USER", "postgres")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise PostgresError(
            f"running as root, but there is no {user!r} OS user to run PostgreSQL as",
            hint="create it (apt-get install postgresql creates it) or run pgbackup as a non-root user",
        ) from None
    return user


def hand_over(path: Path, user: str | None, mode: int | None = None) -> None:
    """Give ``path`` (recursively) to the server's OS user; no-op when not root."""
    if mode is not None:
        os.chmod(path, mode)
    if user is None:
        return
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)


def run_as(
    argv: Sequence[str],
    user: str | None,
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as ``user`` when given, and explain a failure."""
    full_env, kwargs = _as_user(user, env)
    try:
        proc = subprocess.run(
            list(argv),
            env=full_env,
            cwd="/",
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            timeout=timeout,
            **kwargs,
        )
    except FileNotFoundError:
        raise PostgresError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise PostgresError(f"{Path(argv[0]).name} did not finish within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        out = (proc.stdout or "").strip()
        raise PostgresError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): {out[-2000:]}")
    return proc


def _as_user(
    user: str | None, env: Mapping[str, str] | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment and Popen arguments of a process run as ``user`` (its uid, gid,
    no other groups, its HOME; the caller's XDG cache is not its): what the server's
    processes, restore_command included, see."""
    full_env = dict(os.environ if env is None else env)
    kwargs: dict[str, Any] = {}
    if user is not None:
        pw = pwd.getpwnam(user)
        kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        full_env["HOME"] = pw.pw_dir
        full_env.pop("XDG_CACHE_HOME", None)
    return full_env, kwargs


def spawn_detached(argv: Sequence[str], user: str | None, *, cwd: Path, log_file: Path) -> None:
    """Start a helper of the server (wal-fetch's prefetcher) in a session of its own, as
    ``user`` with the server's environment, its standard error appended to the server's
    log; not waited for (it ends with recovery)."""
    full_env, kwargs = _as_user(user)
    with open(log_file, "ab") as log:
        subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            **kwargs,
        )


class SqlAccess:
    """Connections and one-shot queries, for any cluster that knows its ``conninfo``."""

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    @contextlib.contextmanager
    def connect(self, dbname: str = "postgres", user: str | None = None) -> Iterator[Any]:
        import psycopg

        with psycopg.connect(
            **self.conninfo(dbname, user), autocommit=True, connect_timeout=10
        ) as conn:
            yield conn

    def sql(
        self, query: str, dbname: str = "postgres", user: str | None = None
    ) -> list[tuple[Any, ...]]:
        with self.connect(dbname, user) as conn, conn.cursor() as cur:
            cur.execute(query)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


class Cluster(SqlAccess):
    """A data directory and the postmaster that serves it on 127.0.0.1:``port``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        major: int | None = None,
        os_user: str | None = None,
        pg_bin_dir: str | os.PathLike[str] | None = None,
    ):
        """``bin_dir``: the server programs' directory, used as it is; else they are
        looked for (postgres/binaries), the target's ``pg_bin_dir`` first."""
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.bin_dir = Path(bin_dir) if bin_dir else server_bin_dir(major, pg_bin_dir)
        self.os_user = os_user if os_user is not None else server_os_user()

    # --- paths & facts ----------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def program(self, name: str) -> str:
        return str(self.bin_dir / name)

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "dbname": dbname}
        info["user"] = user or self.os_user or pwd.getpwuid(os.geteuid()).pw_name
        return info

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return " ".join(f"{k}={v}" for k, v in self.conninfo(dbname, user).items())

    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid when that process is alive, else None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            pid = int(first)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        """A postmaster holds this data directory: its pid is alive, or, when that pid is
        not visible here (a server in a container sharing the directory runs in another
        PID namespace, where kill(0) cannot see it), its lock file's port answers."""
        return self.postmaster_pid() is not None or self._lock_file_port_answers()

    def _lock_file_port_answers(self) -> bool:
        # postmaster.pid, line by line (LOCK_FILE_LINE_* in src/include/miscadmin.h): pid,
        # data directory, start time, port, socket directory, listen address, shmem key,
        # status. A stale file of a crashed server names a port nobody answers on.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().split("\n")
            port = int(lines[3])
        except (OSError, ValueError, IndexError):
            return False
        sockets: list[tuple[int, Any]] = []
        if len(lines) > 4 and lines[4].strip():
            sockets.append((socket.AF_UNIX, f"{lines[4].strip()}/.s.PGSQL.{port}"))
        if len(lines) > 5 and lines[5].strip():
            sockets.append((socket.AF_INET, ("127.0.0.1", port)))
        for family, address in sockets:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                try:
                    probe.connect(address)
                except OSError:
                    continue
                return True
        return False

    # --- lifecycle ----------------------------------------------------------------------

    def prepare_dir(self, path: Path, mode: int = 0o700) -> None:
        """Create ``path`` for the server user; parents must let that user traverse."""
        path.mkdir(parents=True, exist_ok=True)
        hand_over(path, self.os_user, mode)

    def initdb(self, settings: Mapping[str, Any] | None = None, *, checksums: bool = True) -> None:
        if self.exists():
            raise PostgresError(f"{self.data_dir} already holds a cluster")
        self.prepare_dir(self.data_dir)
        argv = [self.program("initdb"), "-D", str(self.data_dir), "-A", "trust", "-E", "UTF8"]
        argv += ["--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"]
        if checksums:
            argv.append("--data-checksums")
        run_as(argv, self.os_user, timeout=300)
        base = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": "",
            "wal_level": "replica",
            "max_wal_senders": 10,
            "fsync": "on",
            "logging_collector": "off",
        }
        base.update(settings or {})
        self.configure(base)

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Write settings to postgresql.auto.conf (takes effect at next start/reload)."""
        auto = self.data_dir / "postgresql.auto.conf"
        lines = auto.read_text().splitlines() if auto.exists() else []
        keep = [ln for ln in lines if ln.split("=", 1)[0].strip() not in settings]
        for key, value in settings.items():
            keep.append(f"{key} = {quote_setting(value)}")
        auto.write_text("\n".join(keep) + "\n")
        hand_over(auto, self.os_user, 0o600)

    def prepare_log_file(self) -> None:
        """The server's log file, there and the server's OS user's (pg_ctl -l appends)."""
        self.log_file.touch(exist_ok=True)
        hand_over(self.log_file, self.os_user, 0o640)

    def start(self, timeout: float = START_TIMEOUT, extra_options: str = "") -> None:
        """Start the postmaster and wait until it accepts connections."""
        if self.is_running():
            return
        self.prepare_log_file()
        argv = [
            self.program("pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {self.port} {extra_options}".strip(),
            "-W",
            "start",
        ]
        proc = run_as(argv, self.os_user, check=False, timeout=60)
        if proc.returncode != 0:
            raise PostgresError(
                f"PostgreSQL in {self.data_dir} did not start: {(proc.stdout or '').strip()[-500:]}"
                f"\n{self.log_tail()}",
                hint=f"see {self.log_file}",
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll until the server accepts connections (or is still recovering but reachable)."""
        deadline = time.monotonic() + timeout
        isready = self.program("pg_isready")
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [
                    isready,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-t",
                    "2",
                    "-d",
                    "postgres",
                    "-U",
                    str(self.conninfo()["user"]),
                ],
                capture_output=True,
            )
            if proc.returncode == 0:
                return
            if not self.is_running() and time.monotonic() > deadline - timeout + 5:
                raise PostgresError(
                    f"PostgreSQL in {self.data_dir} exited during start-up\n{self.log_tail()}",
                    hint=f"see {self.log_file}",
                )
            time.sleep(0.2)
        raise PostgresError(
            f"PostgreSQL on port {self.port} not ready after {timeout:.0f}s\n{self.log_tail()}",
            hint=f"see {self.log_file}",
        )

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {STOP_MODES}")
        if not self.is_running():
            return
        argv = [
            self.program("pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(timeout)),
            "stop",
        ]
        proc = run_as(argv, self.os_user, check=False, timeout=timeout + 10)
        if proc.returncode != 0 and self.is_running():
            pid = self.postmaster_pid()
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                time.sleep(1)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Stop (immediately) and remove the data directory and its log."""
        with contextlib.suppress(PostgresError):
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.log_file.unlink()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def quote_setting(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(x.lower() in ("c.utf8", "c.utf-8") for x in out.split())
