"""A repository on a local (or mounted) filesystem.

Durability follows PostgreSQL's own rules for its archive: write a temporary file,
fsync it, rename (or hard-link, for create-only-if-absent) into place, fsync the
directory. Directories are created 0750 and files 0640. The protocol's steps and
constants are :mod:`pgbackup.durable`'s (wal-push's fast path writes the same way).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pgbackup.durable import (
    DIR_MODE,
    FILE_MODE,
    TMP_SUFFIX,
    fsync_path,
    open_temp,
    place,
    remove_quietly,
    repository_owner,
    write_all,
)
from pgbackup.errors import ObjectExists, StorageError
from pgbackup.storage.base import ObjectInfo, ObjectWriter, Storage, not_found

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "TMP_SUFFIX",
    "PosixStorage",
    "PosixWriter",
    "fsync_path",
    "storage_error",
]


def storage_error(action: str, path: Path, exc: OSError) -> StorageError:
    """Turn an OSError into a message that names the path and what to do."""
    if exc.errno == errno.ENOSPC:
        return StorageError(
            f"{action} {path}: no space left on device",
            hint="free space in the repository (invoke cleanup) or grow its filesystem",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(
            f"{action} {path}: permission denied",
            hint="run as the repository's owner or fix its permissions (0750 directories)",
        )
    if exc.errno == errno.EROFS:
        return StorageError(f"{action} {path}: read-only filesystem")
    return StorageError(f"{action} {path}: {exc.strerror or exc}")


class PosixWriter(ObjectWriter):
    def __init__(self, storage: PosixStorage, key: str, if_absent: bool):
        self.storage = storage
        self.final = storage.path_of(key)
        self.if_absent = if_absent
        try:
            storage.ensure_dir(self.final.parent)
            fd, tmp = open_temp(str(self.final), storage.owner())
        except OSError as exc:
            raise storage_error("cannot create", self.final, exc) from None
        self.tmp = Path(tmp)
        self.file: BinaryIO | None = os.fdopen(fd, "wb", buffering=0)
        self.done = False

    def write(self, data: bytes) -> int:
        assert self.file is not None, "write after commit/abort"
        try:
            write_all(self.file.fileno(), data)
        except OSError as exc:
            raise storage_error("cannot write", self.final, exc) from None
        return len(data)

    def commit(self) -> None:
        assert self.file is not None, "commit after commit/abort"
        try:
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            try:
                place(str(self.tmp), str(self.final), if_absent=self.if_absent)
            except FileExistsError:
                raise ObjectExists(f"{self.final} already exists") from None
            fsync_path(self.final.parent)
            self.done = True
        except OSError as exc:
            raise storage_error("cannot store", self.final, exc) from None

    def abort(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        if not self.done:
            remove_quietly(self.tmp)


class PosixStorage(Storage):
    kind = "posix"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._owner_checked = False
        self._owner: tuple[int, int] | None = None

    def owner(self) -> tuple[int, int] | None:
        """When we run as root in a repository owned by another user (the server's user,
        whose archive_command writes here too), new files and directories go to that user."""
        if not self._owner_checked and self.root.exists():
            self._owner_checked = True
            self._owner = repository_owner(self.root)
        return self._owner

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PosixStorage:
        return cls(spec["path"])

    def describe(self) -> str:
        return str(self.root)

    def path_of(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid repository key {key!r}")
        return self.root / key

    def ensure_dir(self, path: Path) -> None:
        if path.is_dir():
            return
        # Create each missing level with 0750, whatever the umask says.
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, DIR_MODE)
                os.chmod(d, DIR_MODE)
                owner = self.owner()
                if owner:
                    os.chown(d, *owner)
            except FileExistsError:
                pass

    def writer(self, key: str, *, if_absent: bool = False) -> ObjectWriter:
        return PosixWriter(self, key, if_absent)

    def open_read(self, key: str) -> BinaryIO:
        path = self.path_of(key)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise not_found(self, key) from None
        except OSError as exc:
            raise storage_error("cannot read", path, exc) from None

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix``. A directory that cannot be read is an error, never an
        empty listing: wal-fetch would report "not archived", and PostgreSQL would end
        recovery there (engine/wal.fetch)."""
        # Walk only the directory that contains the prefix, then filter by name.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        try:
            if not stat_module.S_ISDIR(os.stat(start).st_mode):
                return
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error("cannot list", start, exc) from None

        def refuse(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError):  # a directory removed meanwhile
                raise storage_error("cannot list", Path(exc.filename or start), exc) from None

        for dirpath, dirnames, filenames in os.walk(start, onerror=refuse):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(TMP_SUFFIX) or name.endswith(".lock") or name == "backup.log":
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                    continue
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise storage_error("cannot read", full, exc) from None
                yield ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable is not absent
            raise storage_error("cannot read", path, exc) from None
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def make_durable(self, key: str) -> None:
        path = self.path_of(key)
        try:
            fsync_path(path)
            fsync_path(path.parent)
        except OSError as exc:
            raise storage_error("make durable", path, exc) from None

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error("cannot delete", path, exc) from None
        # Remove now-empty parent directories up to the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def delete_prefix(self, prefix: str) -> int:
        """Objects under ``prefix``, then a directory that names it and holds nothing: one
        a writer made and never filled (an early-started pg_basebackup's, failed before
        writing) is no object, but is not left behind either."""
        removed = super().delete_prefix(prefix)
        if prefix.endswith("/"):
            path = self.path_of(prefix.rstrip("/"))
            if path != self.root and path.is_relative_to(self.root):
                with contextlib.suppress(OSError):  # absent, or not empty: leave it
                    path.rmdir()
        return removed

    def remove_leftover_temp_files(self, prefix: str = "", min_age: float = 3600) -> int:
        """Remove temporary files of interrupted writes older than ``min_age`` seconds
        (younger ones may belong to a write still in progress)."""
        import time

        cutoff = time.time() - min_age
        start = self.root / prefix if prefix else self.root
        count = 0
        if not start.is_dir():
            return 0
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.endswith(TMP_SUFFIX):
                    full = os.path.join(dirpath, name)
                    try:
                        if os.stat(full).st_mtime > cutoff:
                            continue
                        os.unlink(full)
                        count += 1
                    except OSError:
                        pass
        return count

    def free_bytes(self) -> int | None:
        p = self.root
        while not p.exists():
            p = p.parent
        import shutil

        return shutil.disk_usage(p).free
