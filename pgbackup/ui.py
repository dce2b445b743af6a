"""Logging and progress: talkative on a terminal, quiet in cron, always in the log file.

Every task logs what it did, timestamped, to the policy's log file (by default
``<repository>/backup.log``, mode 0640). On a terminal, long operations show a rich
progress bar; without one (cron, CI), only warnings and the summary line are printed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import logging


class _DeferredLogger:
    """``logging.getLogger("pgbackup")``, reached on first use. A plain backup imports
    logging (~5 ms with traceback, string and weakref) only once pg_basebackup runs:
    before, it is the only work between the start and pg_basebackup (issue #15).
    ``setup_logging(..., deferred=True)`` configures it then too."""

    def __init__(self) -> None:
        self.pending: tuple[Any, bool] | None = None  # setup_logging's arguments

    def __getattr__(self, name: str) -> Any:
        import logging

        pending, self.pending = self.pending, None
        if pending is not None:
            _configure(*pending)
        return getattr(logging.getLogger("pgbackup"), name)


_DEFERRED = _DeferredLogger()
LOG = cast("logging.Logger", _DEFERRED)
_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(message)s"
#: ``LOG.error(..., extra=LOG_FILE_ONLY)``: for the log file, not the terminal, where the
#: command's own report already says it (verify's problems would be printed twice).
LOG_FILE_ONLY = {"console": False}


def interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("PGBACKUP_QUIET") != "1"


def default_log_file(policy: Any) -> Path | None:
    if getattr(policy, "log_file", None):
        return Path(policy.log_file)
    repo = policy.repository
    if repo.get("kind", "posix") == "posix":
        return Path(repo["path"]) / "backup.log"
    return None


def setup_logging(policy: Any = None, *, verbose: bool = False, deferred: bool = False) -> None:
    """Console handler (stderr) plus the policy's log file; safe to call more than once.
    ``deferred``: at the first use of :data:`LOG` (unless logging is already imported)."""
    if deferred and "logging" not in sys.modules:
        _DEFERRED.pending = (policy, verbose)
        return
    _DEFERRED.pending = None
    _configure(policy, verbose)


def _configure(policy: Any, verbose: bool) -> None:
    import logging

    logger = logging.getLogger("pgbackup")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(
        logging.DEBUG if verbose else logging.INFO if interactive() else logging.WARNING
    )
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(lambda record: getattr(record, "console", True))
    logger.addHandler(console)
    if policy is None:
        return
    path = default_log_file(policy)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.close(fd)
        if os.geteuid() == 0:
            st = path.parent.stat()
            if st.st_uid != 0:
                os.chown(path, st.st_uid, st.st_gid)
        file_handler = logging.FileHandler(path)
    except OSError as exc:
        logger.warning("cannot write log file %s: %s", path, exc.strerror or exc)
        return
    level = getattr(logging, str(getattr(policy, "log_level", "info")).upper(), logging.INFO)
    file_handler.setLevel(level)
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(file_handler)


class Progress:
    """Bytes progress (rate, ETA) on a terminal; a no-op elsewhere."""

    def __init__(self, description: str, total: int | None):
        self.description = description
        self.total = total
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if interactive():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def update_total(self, total: int) -> None:
        if self._progress is not None and total:
            self._progress.update(self._task, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Progress]:
    with Progress(description, total) as p:
        yield p


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
