"""Start pg_basebackup before the rest of pgbackup is imported: the command line the last
full backup of the same command ran, adopted only if the engine builds the same one.

A plain ``pgbackup backup`` spent ~30 ms importing Python modules and reading its policy
before pg_basebackup started (issue #15: the backup's fixed cost on a 0.6 s backup). The
console script calls :func:`begin` before those imports. When this file remembers the
command line the last full backup of the same ``pgbackup`` command ran, it takes the
target's lock, creates the backup's directory and starts pg_basebackup at once. Then the
engine runs as always and builds pg_basebackup's command line from the validated policy
and the server (engine/backup.py). The running process is adopted only when the two
command lines are equal word for word (:meth:`EarlyStart.adopt`); else it is stopped and
its directory removed before the engine starts its own. A guess never decides what is
kept; a wrong one costs a few milliseconds and one aborted base backup on the server.

What makes starting first safe:

- **The same lock, first.** The target's ``backup.lock`` is taken without waiting, the
  same ``flock`` engine/locks.py takes, and handed to the engine (:func:`held_lock`); a
  busy lock means no early start. The directory is made under it with ``os.mkdir``, which
  fails if the name exists: an early start only ever removes what it created.
- **Nothing left running.** Until the engine adopts it, SIGTERM and SIGHUP interrupt the
  command like Ctrl-C, and the console script stops an unadopted start
  (:func:`stop_unadopted`) before it exits. pg_basebackup runs in a process group of its
  own, so a stop reaches the child that streams its WAL into ``pg_wal.tar`` too. The
  first backup of the process claims it (:func:`claim`); another target, a second target
  or a failure before pg_basebackup's turn stops it.
- **Only this user's file.** The plan lives in ``$XDG_CACHE_HOME/pgbackup/early-start``,
  written 0600; a file of another owner, or that others may write, is ignored, and so is
  a plan whose program is not an absolute path named ``pg_basebackup``, or whose lock and
  directory are not a posix repository's ``<target>/backup.lock`` and
  ``<target>/base/<id>`` (engine/locks.lock_path, engine/backup.backup_directory). It holds no
  password: pg_basebackup's command line never has one (engine/backup.basebackup_argv;
  libpq reads PGPASSWORD or the passfile).
- **Its outcome is the backup's.** An adopted start that fails fails the backup, as the
  engine's own start would have; it is never started again, which would hide that the
  server went away in the middle. So a plan for a sandbox names its ``postmaster.pid``,
  and there is no early start unless that names a live server: a sandbox that is down is
  started by the engine first, as without an early start.
- **Keyed by the command:** the words after ``pgbackup``, the working directory, and the
  policy file's path, size, mtime and inode. Any change: no early start, and the next
  successful backup writes the plan again.

Imports here are what the interpreter has loaded at its start (os, time) and
``_signal``, the C half of ``signal``: this module runs before everything else, and
``import signal`` would first import ``enum`` (with ``functools`` and ``collections``),
3 ms before pg_basebackup could start (the engine imports them later, beside it).
"""

from __future__ import annotations

import _signal
import os
import time

MAGIC = "pgbackup-early-start 2"
ID_MARK = "{backup_id}"
SEP = "\0"
PLAN_MAX_BYTES = 1 << 16


def plan_file() -> str:
    """``$XDG_CACHE_HOME/pgbackup/early-start`` (``~/.cache/...``), as policy/cache.py's root."""
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "pgbackup", "early-start")


def command_key(words: list[str]) -> str:
    """What a plan is remembered for: the command's words, the working directory and the
    policy file's identity (a plan for another command, place or policy is not used)."""
    config = os.environ.get("PGBACKUP_CONFIG", "")
    try:
        st = os.stat(config) if config else None
    except OSError:
        st = None
    ident = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" if st else "-"
    return "\x1f".join([*words, "\x1e", os.getcwd(), config, ident])


def backup_id_at(when: float) -> str:
    """engine/repository.new_backup_id's form (``20261123T020000Z``), without datetime."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def holder_line(action: str) -> bytes:
    """What a lock's holder writes in the lock file (engine/locks.py shows it to the next)."""
    return f"{action} by pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode()


class EarlyStart:
    """A pg_basebackup started by :func:`begin`, its directory and the target's lock."""

    def __init__(
        self, argv: list[str], backup_id: str, directory: str, lock_path: str, lock_fd: int
    ) -> None:
        self.argv = argv
        self.backup_id = backup_id
        self.directory = directory
        self.lock_path = lock_path
        self.lock_fd: int | None = lock_fd
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.pid = 0
        self.stderr: object = None
        self.returncode: int | None = None
        self.adopted = False
        self.stopped = False

    # -- the subprocess.Popen calls engine/backup.run_basebackup makes --------------------

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                import subprocess

                raise subprocess.TimeoutExpired(self.argv, timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """To pg_basebackup and its WAL-streaming child (one process group: see begin),
        so that no child of a stopped start still writes ``pg_wal.tar``."""
        if self.poll() is None:
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(_signal.SIGKILL)

    # -- the engine's side ------------------------------------------------------------------

    def adopt(self, argv: list[str]) -> EarlyStart | None:
        """This process, if ``argv`` (the engine's own command line) is the one it runs;
        else it is stopped and its directory removed (the engine then starts its own)."""
        # Its outcome is the backup's, failed or not: the engine's own start of the same
        # command line would meet the same server. Starting again after a failure would
        # hide that the backup was cut off (the server stopped in the middle, say). A
        # sandbox that was down, which the engine starts first, gets no early start
        # (begin: the plan's postmaster.pid).
        if argv == self.argv and not self.stopped:
            self.adopted = True
            return self
        self.stop()
        return None

    def stop(self) -> None:
        """Stop pg_basebackup and remove the directory it wrote in (made by :func:`begin`,
        under the lock): nothing of an unadopted start stays. The lock stays with whoever
        holds it now (the engine, after :func:`claim`)."""
        if self.stopped or self.adopted:
            return
        self.stopped = True
        if self.poll() is None:
            self.send_signal(_signal.SIGTERM)
            try:
                self.wait(timeout=10)
            except Exception:
                self.kill()
                self.wait()
        if self.stderr is not None:
            self.stderr.close()  # type: ignore[attr-defined]
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


_pending: EarlyStart | None = None
_claimed = False
_key: str | None = None  # this command's key, when begin() looked for a plan
_read_plan: list[str] | None = None
_noted: list[str] | None = None


def _read(path: str) -> list[str] | None:
    """The plan's fields, from a file of this user that no one else may write; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or st.st_size > PLAN_MAX_BYTES:
            return None
        data = os.read(fd, PLAN_MAX_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = data.decode("utf-8", "replace").split(SEP)
    return fields if len(fields) >= 6 and fields[0] == MAGIC else None


def _server_runs(pid_file: str) -> bool:
    """The postmaster named in ``pid_file`` is alive: its first line is the postmaster's
    pid (LOCK_FILE_LINE_PID, src/include/miscadmin.h); kill(pid, 0) asks without a
    signal. The same test as postgres/cluster.Cluster.postmaster_pid."""
    try:
        with open(pid_file, "rb") as f:
            os.kill(int(f.readline()), 0)
    except PermissionError:  # alive, another user's
        return True
    except (OSError, ValueError):
        return False
    return True


def begin(words: list[str]) -> None:
    """Console script, first thing for a ``backup`` line: start the remembered
    pg_basebackup if this command has a plan and the target's lock is free. Any doubt
    (no plan, another command, a busy lock, a taken directory name): nothing is started."""
    global _pending, _key, _read_plan
    try:
        _key = command_key(words)
        fields = _read(plan_file())
    except (OSError, ValueError):  # no working directory, say: no early start
        return
    _read_plan = fields
    if fields is None or fields[1] != _key:
        return
    lock_path, dir_template, pid_file, argv_template = fields[2], fields[3], fields[4], fields[5:]
    program = argv_template[0]
    if not os.path.isabs(program) or os.path.basename(program) != "pg_basebackup":
        return  # the plan runs pg_basebackup and nothing else
    target_dir = os.path.dirname(lock_path)
    if (
        not os.path.isabs(lock_path)
        or os.path.basename(lock_path) != "backup.lock"
        or dir_template != os.path.join(target_dir, "base", ID_MARK)
    ):
        return  # and touches only <repository>/<target>/backup.lock and base/<id>
    if pid_file and not _server_runs(pid_file):
        return  # a sandbox that is down: the engine starts it, then pg_basebackup
    import fcntl

    try:
        lock_fd = os.open(lock_path, os.O_RDWR)  # engine/locks.py made it, with its owner
    except OSError:
        return
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = time.time()
        backup_id = backup_id_at(now)
        directory = dir_template.replace(ID_MARK, backup_id)
        os.mkdir(directory, 0o700)  # settle_in_repository gives it the repository's mode
    except OSError:  # busy, or this second's name is taken: the engine decides
        os.close(lock_fd)
        return
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, holder_line("backup"), 0)
    argv = [a.replace(ID_MARK, backup_id) for a in argv_template]
    start = EarlyStart(argv, backup_id, directory, lock_path, lock_fd)
    # A stop by SIGTERM (or a hangup) unwinds and stops pg_basebackup like Ctrl-C, which
    # no longer reaches it (its own process group); signals.py's terminate_as_interrupt
    # does the same for SIGTERM later, and puts this handler back after it.
    _signal.signal(_signal.SIGTERM, _interrupt)
    _signal.signal(_signal.SIGHUP, _interrupt)
    read_end, write_end = os.pipe()
    try:
        start.pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            setpgroup=0,  # its own process group: send_signal reaches the WAL child too
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, write_end, 2),
            ],
        )
    except OSError:  # the program went away: the engine will say so
        os.close(read_end)
        os.rmdir(directory)
        os.close(lock_fd)
        return
    finally:
        os.close(write_end)
    start.stderr = os.fdopen(read_end, "rb")
    _pending = start


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def claim(lock_path: str) -> EarlyStart | None:
    """The engine's first backup of this process, about to take ``lock_path``: the early
    start if it is for that lock (then :func:`held_lock` has it); else it is stopped."""
    global _claimed
    if _claimed or _pending is None:
        return None
    _claimed = True
    if _pending.lock_path != lock_path:
        stop_unadopted()
        return None
    return _pending


def held_lock(lock_path: str) -> int | None:
    """The lock :func:`begin` took, handed over once to the engine that claimed it."""
    if _pending is None or not _claimed or _pending.lock_path != lock_path:
        return None
    fd, _pending.lock_fd = _pending.lock_fd, None
    return fd


def stop_unadopted() -> None:
    """Before the process exits (and when another target claims first): stop an early
    start no backup adopted, and let its lock go."""
    if _pending is None:
        return
    _pending.stop()
    if _pending.lock_fd is not None:
        os.close(_pending.lock_fd)
        _pending.lock_fd = None


def note(
    lock_path: str, directory: str, backup_id: str, argv: list[str], server_pid_file: str = ""
) -> None:
    """The engine ran a direct full backup with ``argv``: what :func:`remember` would keep.
    ``server_pid_file``: a sandbox's postmaster.pid, which must name a live server for the
    next run to start early ("" for a server pgbackup does not start)."""
    global _noted
    template = [a.replace(backup_id, ID_MARK) for a in argv]
    directory_template = directory.replace(backup_id, ID_MARK)
    _noted = [MAGIC, _key or "", lock_path, directory_template, server_pid_file, *template]


def remember() -> None:
    """After a successful single backup: keep the noted plan for the next run of this
    command (a cache: a failure to write it only costs the next run its early start)."""
    if _key is None or _noted is None or _noted == _read_plan:
        return
    path = plan_file()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, SEP.join(_noted).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(tmp)
