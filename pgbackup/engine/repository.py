"""The repository layout, the same on every storage kind.

```
<target>/base/<backup_id>/base.tar<suffix>      pg_basebackup's tar stream, encoded
<target>/base/<backup_id>/backup_manifest       PostgreSQL's manifest
<target>/base/<backup_id>/metadata.json         written LAST: marks the backup complete
<target>/wal/<segment><suffix>                  archived WAL, .history, .backup files
<target>/drills/<timestamp>.json                drill results
<target>/runs/<timestamp>-<kind>.json           outcome of every backup/verify/cleanup run
```
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pgbackup.errors import ObjectNotFound, PgBackupError
from pgbackup.storage.base import Storage

METADATA = "metadata.json"
MANIFEST = "backup_manifest"
FORMAT_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time: ``20261123T020000Z``."""
    return (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")


def iso(ts: datetime | float) -> str:
    if isinstance(ts, int | float):
        ts = datetime.fromtimestamp(ts, UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class BackupInfo:
    """One backup as the repository shows it: complete (metadata present) or not.

    A plain class, not a dataclass: importing dataclasses costs every backup and restore
    ~10 ms (issue #15)."""

    __slots__ = ("target", "backup_id", "complete", "metadata", "stored_bytes", "problem")

    def __init__(
        self,
        target: str,
        backup_id: str,
        complete: bool,
        metadata: dict[str, Any] | None = None,
        stored_bytes: int = 0,
        problem: str | None = None,  # why an existing metadata.json could not be used
    ) -> None:
        self.target = target
        self.backup_id = backup_id
        self.complete = complete
        self.metadata: dict[str, Any] = {} if metadata is None else metadata
        self.stored_bytes = stored_bytes
        self.problem = problem

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackupInfo) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"BackupInfo({self.target!r}, {self.backup_id!r}, complete={self.complete})"

    @property
    def stop_time(self) -> datetime | None:
        t = self.metadata.get("stop_time")
        return parse_iso(t) if t else None

    @property
    def start_time(self) -> datetime | None:
        t = self.metadata.get("start_time")
        return parse_iso(t) if t else None

    @property
    def status(self) -> str:
        if self.problem:
            return "damaged"
        return "complete" if self.complete else "incomplete"


class Repository:
    """Layout-aware access to a storage: keys, backups, records."""

    def __init__(self, storage: Storage):
        self.storage = storage

    # --- keys ----------------------------------------------------------------------------

    @staticmethod
    def base_prefix(target: str, backup_id: str) -> str:
        return f"{target}/base/{backup_id}/"

    @staticmethod
    def wal_prefix(target: str) -> str:
        return f"{target}/wal/"

    # --- backups --------------------------------------------------------------------------

    def backups(self, target: str) -> list[BackupInfo]:
        """Every backup directory of ``target``, oldest first."""
        prefix = f"{target}/base/"
        sizes: dict[str, int] = {}
        has_meta: set[str] = set()
        for obj in self.storage.list(prefix):
            rest = obj.key[len(prefix) :]
            if "/" not in rest:
                continue
            backup_id, name = rest.split("/", 1)
            sizes[backup_id] = sizes.get(backup_id, 0) + obj.size
            if name == METADATA:
                has_meta.add(backup_id)
        result = []
        for backup_id in sorted(sizes):
            info = BackupInfo(target, backup_id, complete=False, stored_bytes=sizes[backup_id])
            if backup_id in has_meta:
                try:
                    info.metadata = self.read_metadata(target, backup_id)
                    info.complete = info.metadata.get("status") == "complete"
                except PgBackupError as exc:
                    info.problem = exc.message
            result.append(info)
        return result

    def complete_backups(self, target: str) -> list[BackupInfo]:
        return [b for b in self.backups(target) if b.complete]

    def read_metadata(self, target: str, backup_id: str) -> dict[str, Any]:
        key = self.base_prefix(target, backup_id) + METADATA
        try:
            data = json.loads(self.storage.read_bytes(key))
        except ObjectNotFound:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise PgBackupError(f"{key} is damaged (not valid JSON: {exc})") from None
        if not isinstance(data, dict) or "backup_id" not in data or "objects" not in data:
            raise PgBackupError(f"{key} is damaged (missing fields)")
        return data

    def write_metadata(self, target: str, backup_id: str, metadata: dict[str, Any]) -> None:
        key = self.base_prefix(target, backup_id) + METADATA
        self.storage.write_bytes(
            key, json.dumps(metadata, indent=2, sort_keys=True).encode() + b"\n"
        )

    def find_backup(self, target: str, backup_id: str | None) -> BackupInfo:
        """A complete backup by id, or the newest complete one for ``latest``/None."""
        backups = self.backups(target)
        complete = [b for b in backups if b.complete]
        if backup_id in (None, "", "latest"):
            if not complete:
                raise PgBackupError(
                    f"target {target!r} has no complete backup in {self.storage.describe()}",
                    hint="run `pgbackup backup` first",
                )
            return complete[-1]
        for b in backups:
            if b.backup_id == backup_id:
                if not b.complete:
                    raise PgBackupError(
                        f"backup {backup_id} of {target!r} is {b.status}"
                        + (f": {b.problem}" if b.problem else "")
                        + "; it cannot be used",
                        hint="pick a complete backup from `pgbackup list`",
                    )
                return b
        known = ", ".join(b.backup_id for b in complete[-5:]) or "none"
        raise PgBackupError(
            f"no backup {backup_id!r} for target {target!r} (newest complete: {known})",
            hint="see `pgbackup list`",
        )

    # --- records --------------------------------------------------------------------------

    def record_run(self, target: str, kind: str, record: dict[str, Any]) -> None:
        """Keep the outcome of a run (for check and sla-report); never fails the run."""
        stamp = new_backup_id() + f"-{int(time.time() * 1000) % 1000:03d}"
        key = f"{target}/runs/{stamp}-{kind}.json"
        payload = {"kind": kind, "target": target, "recorded_at": iso(utcnow()), **record}
        with contextlib.suppress(PgBackupError):
            self.storage.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True).encode())

    def runs(self, target: str, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Recorded runs, oldest first."""
        keys = sorted(i.key for i in self.storage.list(f"{target}/runs/"))
        for key in keys:
            if kind and not key.endswith(f"-{kind}.json"):
                continue
            try:
                yield json.loads(self.storage.read_bytes(key))
            except (PgBackupError, ValueError):
                continue
