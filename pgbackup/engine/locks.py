"""One backup per target at a time.

An advisory ``flock`` on ``<repository>/<target>/backup.lock`` (posix) or on a file in
the local state directory (object storage). The second backup refuses at once rather
than waiting: a cron job that queues behind a stuck one hides the real problem.
Cleanup takes the same lock, so it never removes a backup that is being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgbackup.errors import LockError


def lock_path(repository: dict[str, Any], target: str) -> Path:
    if repository.get("kind", "posix") == "posix":
        return Path(repository["path"]) / target / "backup.lock"
    import hashlib  # only here: a posix repository's backup needs none (issue #15)

    ident = json.dumps({k: repository.get(k) for k in sorted(repository)}, sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "pgbackup" / "locks" / f"{digest}-{target}.lock"


def holder_line(action: str) -> bytes:
    """What a lock's holder writes in the lock file, for the next one's refusal."""
    return f"{action} by pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode()


@contextlib.contextmanager
def target_lock(
    repository: dict[str, Any],
    target: str,
    action: str,
    *,
    wait_for: tuple[str, ...] = (),
    wait_seconds: float = 600,
) -> Iterator[None]:
    """Hold the target's lock; refuse at once if busy, except that a holder doing one of
    ``wait_for`` (a short job, like cleanup) is waited for, at most ``wait_seconds``."""
    path = lock_path(repository, target)
    owner = None
    if repository.get("kind", "posix") == "posix":
        from pgbackup.storage.posix import PosixStorage

        storage = PosixStorage(repository["path"])
        storage.ensure_dir(path.parent)  # 0750, and the repository owner's when we are root
        owner = storage.owner()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    if owner:
        os.fchown(fd, *owner)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
                if holder.split(" ", 1)[0] in wait_for and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
            raise LockError(
                f"target {target!r} is busy: {holder}; this {action} refuses to run alongside it",
                hint="wait for it to finish (or, if that process is gone, run again: the lock is released with it)",
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_line(action), 0)
        yield
    finally:
        os.close(fd)
