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

**Staged backups** (object storage, or encryption): the same thread also sends each
archive to storage as it grows (:class:`StreamedUpload`: multipart parts in flight, the
storage's ``streams``), so that the upload overlaps the server's reading and compressing
instead of starting when pg_basebackup ends (issue #26: a 20 GB cluster to S3 took the
server's 33 s and then the link's 65 s). Nothing is visible until the caller commits an
upload, which it does only for an archive followed to its end once pg_basebackup has
succeeded; any other is aborted and sent again from the staged file. No fdatasync then:
the staged file is removed once stored.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import hashlib

    from pgbackup.engine.phases import Phases
    from pgbackup.storage.base import ObjectWriter

READ_SIZE = 1 << 20
WRITEBACK_BYTES = 8 << 20
IDLE_SECONDS = 0.01


class StreamedUpload:
    """One archive on its way to storage while pg_basebackup writes it: encrypted when
    asked (as ``upload_staged`` would), counted to the ``transfer`` phase, hashed as
    stored. :meth:`commit` makes it visible; until then :meth:`abort` leaves nothing."""

    def __init__(
        self,
        writer: ObjectWriter,
        encrypted: bool,
        recipients: list[str] | None,
        phases: Phases,
    ) -> None:
        import hashlib

        from pgbackup.formats.codecs import CodecSpec, Encoder

        self.writer, self.phases = writer, phases
        self.digest = hashlib.sha256()
        self.size = 0
        self.encoder = Encoder(CodecSpec("none", 0, encrypted), self._sink, recipients=recipients)

    def _sink(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        began = self.phases.begin()
        try:
            self.writer.write(data)
        finally:
            self.phases.end("transfer", began, len(data))

    def write(self, chunk: bytes) -> None:
        self.encoder.write(chunk)

    def commit(self) -> dict[str, Any]:
        """Visible and durable; the stored object's size and sha256."""
        with self.phases.timed("transfer"):
            self.encoder.close()
            self.writer.commit()
        return {"size": self.size, "sha256": self.digest.hexdigest()}

    def abort(self) -> None:
        self.writer.abort()


class ArchiveFollower:
    """Follow the files named ``*<suffix>`` (not ``pg_wal.tar``) that appear in
    ``directory``: :meth:`start` before pg_basebackup, :meth:`finish` after it exits.
    With ``upload`` (file name -> a :class:`StreamedUpload`), each is also sent to
    storage as it grows: :meth:`upload_of` the caller commits, :meth:`abort_uploads`
    the rest."""

    def __init__(
        self,
        directory: Path,
        suffix: str,
        upload: Callable[[str], StreamedUpload] | None = None,
    ) -> None:
        self.directory = directory
        self.suffix = suffix
        self._upload = upload
        self._uploads: dict[str, StreamedUpload] = {}
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
                    if self._upload is not None:
                        self._uploads[entry.name] = self._upload(entry.name)

    def _catch_up(self) -> bool:
        """Read what every followed file holds now; True if anything was read."""
        progressed = False
        for name, (f, digest, counts) in self._files.items():
            upload = self._uploads.get(name)
            while chunk := f.read(READ_SIZE):
                digest.update(chunk)
                if upload is not None:
                    upload.write(chunk)
                counts[0] += len(chunk)
                progressed = True
            if upload is None and counts[0] - counts[1] >= WRITEBACK_BYTES:
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

    def upload_of(self, path: Path, followed: dict[Path, tuple[int, str]]) -> StreamedUpload | None:
        """The upload of ``path`` if it carries every byte of the file as it is now (the
        caller commits it); any other upload of it is aborted, and None returned."""
        upload = self._uploads.pop(path.name, None)
        if upload is None:
            return None
        if path in followed and followed[path][0] == path.stat().st_size:
            return upload
        upload.abort()
        return None

    def abort_uploads(self) -> None:
        """Abort every upload not handed out (a failed backup leaves nothing behind)."""
        while self._uploads:
            _name, upload = self._uploads.popitem()
            with contextlib.suppress(Exception):
                upload.abort()
