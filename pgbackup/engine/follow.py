"""Hash (and start writing back) the archives pg_basebackup writes, while it writes them.

A backup stores ``base.tar.zst`` and each ``<oid>.tar.zst`` as pg_basebackup wrote them,
and metadata.json records each one's sha256. Reading them back after pg_basebackup ends
costs a pass over every byte on the backup's critical path (issue #15: a fixed cost of
the whole command). pg_basebackup writes these archives strictly front to back: in tar
format without client-side compression, parsing or injection (no ``-R``), each archive
goes through ``bbstreamer_plain_writer``, which only ``fwrite``\\ s what the server sends
(src/bin/pg_basebackup/pg_basebackup.c, CreateBackupStreamer; src/fe_utils/
astreamer_file.c in 18, bbstreamer_file.c before). So a thread can read each archive as
it grows, hashing every byte once, while the server is still compressing.

Not followed: ``pg_wal.tar`` (the WAL writer pads each segment first and seeks back to
fill it and its tar header: src/bin/pg_basebackup/walmethods.c) and ``backup_manifest``
(written whole at the end, under a temporary name).

The result is trusted only for a file whose size at the end equals the bytes hashed;
the caller hashes any other file again from the start. The thread also calls
``fdatasync`` every :data:`WRITEBACK_BYTES`, so the disk writes the archive while the
server works and the final fsync (pg_basebackup runs with ``--no-sync``) has little
left to do.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import hashlib

READ_SIZE = 1 << 20
WRITEBACK_BYTES = 8 << 20
IDLE_SECONDS = 0.01


class ArchiveFollower:
    """Follow the files named ``*<suffix>`` (not ``pg_wal.tar``) that appear in
    ``directory``: :meth:`start` before pg_basebackup, :meth:`finish` after it exits."""

    def __init__(self, directory: Path, suffix: str) -> None:
        self.directory = directory
        self.suffix = suffix
        self._done = threading.Event()
        self._files: dict[str, tuple[BinaryIO, hashlib._Hash, list[int]]] = {}
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pgbackup-follow", daemon=True)

    def start(self) -> ArchiveFollower:
        self._thread.start()
        return self

    def _wanted(self, name: str) -> bool:
        return name.endswith(self.suffix) and name != "pg_wal.tar" and not name.startswith(".")

    def _discover(self) -> None:
        import hashlib  # in this thread: off the main thread's way to pg_basebackup (#15)

        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(self.directory):
                if entry.name not in self._files and self._wanted(entry.name):
                    f = open(entry.path, "rb")  # noqa: SIM115 - closed in _close_all
                    # [bytes hashed, bytes hashed at the last fdatasync]
                    self._files[entry.name] = (f, hashlib.sha256(), [0, 0])

    def _catch_up(self) -> bool:
        """Read what every followed file holds now; True if anything was read."""
        progressed = False
        for f, digest, counts in self._files.values():
            while chunk := f.read(READ_SIZE):
                digest.update(chunk)
                counts[0] += len(chunk)
                progressed = True
            if counts[0] - counts[1] >= WRITEBACK_BYTES:
                os.fdatasync(f.fileno())
                counts[1] = counts[0]
        return progressed

    def _run(self) -> None:
        try:
            while not self._done.is_set():
                self._discover()
                if not self._catch_up():
                    self._done.wait(IDLE_SECONDS)
            # pg_basebackup has exited: everything it wrote is there to read.
            self._discover()
            self._catch_up()
        except BaseException as exc:  # reported by finish(); the caller hashes again
            self._failed = exc

    def finish(self) -> dict[Path, tuple[int, str]]:
        """Stop following; path -> (bytes hashed, sha256 hex) for each file followed to its
        end without an error. Call after pg_basebackup has exited (also on failure)."""
        self._done.set()
        if self._thread.ident is None:  # never started: pg_basebackup did not run
            return {}
        self._thread.join()
        out: dict[Path, tuple[int, str]] = {}
        for name, (f, digest, counts) in self._files.items():
            f.close()
            if self._failed is None:
                out[self.directory / name] = (counts[0], digest.hexdigest())
        return out
