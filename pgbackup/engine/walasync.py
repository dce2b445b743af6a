"""Asynchronous WAL archiving: ``wal-push --async``, as pgBackRest's archive-async.

A Python process costs ~60 ms to start and import before it does any work, which is
more than pgBackRest's whole synchronous push. So, like pgBackRest, the archive_command
can hand the work to a background process that pushes every ``.ready`` segment ahead of
PostgreSQL's requests, in parallel, and records each outcome in a spool directory:

- ``<spool>/<name>.ok`` is written only after the file is durable in the repository;
- ``<spool>/<name>.error`` holds the message of a failed push.

The foreground ``wal-push --async pg_wal/NAME`` returns 0 as soon as ``NAME.ok`` exists
(importing nothing but ``os``), 3 with the message for ``NAME.error`` (PostgreSQL retries),
and otherwise starts the background pusher if none runs and waits for the outcome. The
rules of the synchronous push (no overwrite, durable before success) are unchanged: the
pusher calls the same :func:`pgbackup.engine.wal.push`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time

WAIT_SECONDS = float(os.environ.get("PGBACKUP_ASYNC_TIMEOUT", "120"))
IDLE_SECONDS = 2.0
STALE_SECONDS = 3600


def spool_dir(config: str, target: str | None, base: str | None = None) -> str:
    """A spool directory per (policy, target), private to the OS user."""
    key = hashlib.sha256(f"{os.path.abspath(config)}\0{target or ''}".encode()).hexdigest()[:16]
    root = base or os.environ.get("PGBACKUP_SPOOL") or f"/var/tmp/pgbackup-spool-{os.getuid()}"
    return os.path.join(root, key)


def _outcome(spool: str, name: str) -> tuple[int, str] | None:
    ok = os.path.join(spool, name + ".ok")
    try:
        os.unlink(ok)
        return 0, ""
    except FileNotFoundError:
        pass
    err = os.path.join(spool, name + ".error")
    try:
        with open(err) as f:
            message = f.read().strip()
        os.unlink(err)
        return 3, message or "asynchronous push failed"
    except FileNotFoundError:
        return None


def _pusher_running(spool: str) -> bool:
    try:
        fd = os.open(os.path.join(spool, "pusher.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases our probe lock
    return False


def _start_pusher(config: str, target: str | None, spool: str, data_dir: str) -> None:
    import subprocess

    argv = [sys.executable, "-m", "pgbackup.engine.walasync", config, target or "", spool, data_dir]
    with open(os.path.join(spool, "pusher.log"), "ab") as log:
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=data_dir,
        )


def push_async(config: str, target: str | None, path: str) -> int:
    """The foreground half: PostgreSQL's archive_command with --async."""
    name = os.path.basename(path)
    spool = spool_dir(config, target)
    found = _outcome(spool, name)
    if found is None:
        os.makedirs(spool, mode=0o700, exist_ok=True)
        data_dir = os.getcwd()  # PostgreSQL runs archive_command in the data directory
        deadline = time.monotonic() + WAIT_SECONDS
        while found is None and time.monotonic() < deadline:
            if not _pusher_running(spool):
                _start_pusher(config, target, spool, data_dir)
                time.sleep(0.05)
            found = _outcome(spool, name)
            if found is None:
                time.sleep(0.01)
    if found is None:
        code, message = 3, f"{name} not archived within {WAIT_SECONDS:.0f}s"
    else:
        code, message = found
        message = f"error: {message}"
    if code:
        # Logged, not printed: before setup_logging (as here) the message reaches stderr
        # as it is, for PostgreSQL's log; the success path imports no logging at all.
        from pgbackup.ui import LOG

        LOG.error("pgbackup wal-push --async: %s", message)
    return code


def _write_outcome(spool: str, name: str, suffix: str, text: str) -> None:
    tmp = os.path.join(spool, f".{name}{suffix}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(spool, name + suffix))


def run_pusher(config: str, target: str | None, spool: str, data_dir: str) -> int:
    """The background half: push every .ready WAL file, record outcomes, exit when idle."""
    from concurrent.futures import ThreadPoolExecutor

    from pgbackup.engine import wal
    from pgbackup.errors import PgBackupError
    from pgbackup.policy import load_policy_fast

    fd = os.open(os.path.join(spool, "pusher.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another pusher has it
    status_dir = os.path.join(data_dir, "pg_wal", "archive_status")
    try:
        policy = load_policy_fast(config or None)
    except PgBackupError as exc:
        policy = None
        config_error = str(exc)

    def push_one(name: str) -> None:
        try:
            if policy is None:
                raise PgBackupError(config_error)
            wal.push(policy, os.path.join(data_dir, "pg_wal", name), target)
        except PgBackupError as exc:
            _write_outcome(spool, name, ".error", str(exc))
        except Exception as exc:  # a bug: still an outcome PostgreSQL will retry
            _write_outcome(spool, name, ".error", f"internal error: {type(exc).__name__}: {exc}")
        else:
            _write_outcome(spool, name, ".ok", "")

    idle_since = time.monotonic()
    workers = int(os.environ.get("PGBACKUP_ASYNC_WORKERS", "2"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            try:
                ready = sorted(n[:-6] for n in os.listdir(status_dir) if n.endswith(".ready"))
            except FileNotFoundError:
                ready = []
            todo = [
                n
                for n in ready
                if not os.path.exists(os.path.join(spool, n + ".ok"))
                and not os.path.exists(os.path.join(spool, n + ".error"))
            ]
            if not todo:
                if time.monotonic() - idle_since > IDLE_SECONDS:
                    break
                time.sleep(0.02)
                continue
            list(pool.map(push_one, todo))
            idle_since = time.monotonic()
    # Outcomes PostgreSQL never came back for (e.g. after a restart) do not pile up.
    now = time.time()
    for entry in os.listdir(spool):
        if entry.endswith((".ok", ".error")):
            path = os.path.join(spool, entry)
            try:
                if now - os.stat(path).st_mtime > STALE_SECONDS:
                    os.unlink(path)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    _config, _target, _spool, _data_dir = sys.argv[1:5]
    sys.exit(run_pusher(_config, _target or None, _spool, _data_dir))
