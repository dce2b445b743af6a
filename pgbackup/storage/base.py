"""The storage contract every repository kind implements.

Keys are ``/``-separated paths relative to the repository root (for instance
``platform/base/20261123T020000Z/metadata.json``). Required operations are streamed
write, streamed read, list, stat and delete; ``if_absent`` writes give the atomic
"create only if absent" that wal-push's no-overwrite rule rests on.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

from pgbackup.errors import ObjectNotFound, StorageError

CHUNK_SIZE = 1024 * 1024


class ObjectInfo(NamedTuple):
    """What a listing says of one stored object."""

    key: str
    size: int
    mtime: float  # seconds since the epoch


class ObjectWriter(ABC):
    """A streamed upload: ``write`` chunks, then ``commit`` (visible) or ``abort`` (nothing left).

    Until ``commit`` returns, nothing is visible under the key: a reader never sees a
    partial object.
    """

    @abstractmethod
    def write(self, data: bytes) -> int: ...

    @abstractmethod
    def commit(self) -> None:
        """Make the object durable and visible; raise ObjectExists for an if_absent clash."""

    @abstractmethod
    def abort(self) -> None:
        """Discard whatever was written; safe to call twice or after a failed commit."""


class Storage(ABC):
    """A repository: the same operations on a directory, a bucket or a container."""

    kind: str = "abstract"
    #: Listing the objects of one key's prefix costs what a stat costs: one request to an
    #: object store; on a directory it reads every entry of it, so a stat comes first there.
    prefix_listing_is_one_request: bool = False

    @abstractmethod
    def writer(self, key: str, *, if_absent: bool = False) -> ObjectWriter:
        """Start a streamed write of ``key``; with ``if_absent`` the commit never overwrites."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable stream of ``key``'s bytes; raises ObjectNotFound when absent."""

    @abstractmethod
    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively), in no set order;
        with ``start_after``, only keys sorting after it (an object store starts its
        listing there rather than send every key before it: the end of a long timeline)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""

    def describe(self) -> str:
        """A human-readable location for messages (never includes credentials)."""
        return self.kind

    # --- generic helpers built on the primitives -------------------------------------

    @contextlib.contextmanager
    def open_write(self, key: str, *, if_absent: bool = False) -> Iterator[ObjectWriter]:
        """``with storage.open_write(key) as w: w.write(...)`` commits on success, aborts on error."""
        writer = self.writer(key, if_absent=if_absent)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        try:
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        with self.open_write(key, if_absent=if_absent) as w:
            w.write(data)

    def read_bytes(self, key: str) -> bytes:
        with contextlib.closing(self.open_read(key)) as f:
            return f.read()

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete_prefix(self, prefix: str) -> int:
        """Delete everything under ``prefix``; returns how many objects were removed."""
        keys = [info.key for info in self.list(prefix)]
        # Delete metadata.json first so that an interrupted removal never leaves a
        # backup that looks complete with parts missing.
        keys.sort(key=lambda k: (not k.endswith("metadata.json"), k))
        for key in keys:
            self.delete(key)
        return len(keys)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with contextlib.closing(self.open_read(key)) as f:
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    def free_bytes(self) -> int | None:
        """Free space where the repository lives, when the kind can tell (posix); else None."""
        return None

    def make_durable(self, key: str) -> None:
        """Make an object found already stored durable before it is counted: a retry may
        follow a crash between the object's link and its directory's fsync. Object stores
        acknowledge only durable objects, so by default there is nothing to do."""
        return None

    # --- versions and locks (optional: S3 with versioning and object lock) ---------------
    # docs/security.md. A kind without them says so: check reports "not checked", cleanup
    # deletes as before, --as-of is refused before anything is read.

    #: Whether the kind keeps versions (list them, read one, lock one).
    versioned: bool = False

    def versions(self, prefix: str = "") -> Iterator[Any]:
        """Every version and delete marker under ``prefix``, as
        :class:`pgbackup.policy.immutability.Version` records (keys relative)."""
        raise StorageError(f"{self.describe()} keeps no object versions")

    def retention_of(self, key: str, version_id: str) -> Any:
        """(mode, retain-until datetime) of one version, or None when it is not locked."""
        raise StorageError(f"{self.describe()} cannot lock objects")

    def extend_retention(self, key: str, version_id: str, until: Any) -> None:
        """Lock one version until ``until`` (only ever later than it is)."""
        raise StorageError(f"{self.describe()} cannot lock objects")

    def delete_version(self, key: str, version_id: str) -> None:
        """Remove one version for good (refused by the store while it is locked)."""
        raise StorageError(f"{self.describe()} keeps no object versions")

    def expire(self, key: str) -> Any:
        """Remove ``key`` for good, as retention decided; returns None, or the date a lock
        still holds it until (then nothing is removed). Without locks: :meth:`delete`."""
        self.delete(key)
        return None

    def expire_prefix(self, prefix: str) -> tuple[int, Any]:
        """:meth:`expire` for everything under ``prefix`` at once (a backup): (objects
        removed, None), or (0, the date a lock holds any of them until) and nothing
        removed, so a backup is never left in part."""
        return self.delete_prefix(prefix), None

    def protection(self) -> dict[str, Any]:
        """What the container enforces: ``{"versioning": bool, "object_lock": bool}``."""
        return {"versioning": False, "object_lock": False}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Storage:
        raise NotImplementedError


def not_found(storage: Storage, key: str) -> ObjectNotFound:
    return ObjectNotFound(f"{key} is not in the repository ({storage.describe()})")
