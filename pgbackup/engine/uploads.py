"""Upload destinations: further copies of every completed backup (and its WAL) elsewhere.

``uploads`` in backup.yaml lists destinations of any storage kind, each with its own
``retention_days``. After each successful backup :func:`upload_backup` syncs the backup
and the target's archived WAL to every destination: objects first, ``metadata.json``
last (so an interrupted upload never looks complete there either), WAL with
create-only-if-absent writes. :func:`cleanup_uploads` applies each destination's
``retention_days`` (never to the newest copy) and removes the WAL no kept copy needs.
``restore --from NAME`` and ``wal-fetch --from NAME`` read a destination through
:func:`upload_storage`.

This module is imported by ``wal-fetch --from``: keep its imports light.
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime
from typing import Any

from pgbackup.engine.repository import METADATA, Repository, iso, utcnow
from pgbackup.errors import ConfigError, ObjectExists, PgBackupError, StorageError
from pgbackup.storage import Storage, open_storage

#: keys of an upload entry that are not storage options
UPLOAD_ONLY_KEYS = ("name", "retention_days")


class UploadError(PgBackupError):
    """Copying a backup to one or more upload destinations failed."""


def _target_name(target: Any) -> str:
    return target if isinstance(target, str) else str(target.name)


def upload_spec(policy: Any, name: str) -> dict[str, Any]:
    for spec in policy.uploads or []:
        if spec.get("name") == name:
            return dict(spec)
    names = ", ".join(str(u.get("name")) for u in policy.uploads or []) or "none declared"
    raise ConfigError(
        f"no upload destination {name!r} in {policy.path} (uploads: {names})",
        hint="use one of the names under uploads: in backup.yaml",
    )


def upload_storage(policy: Any, name: str) -> Storage:
    """The storage of the upload destination called ``name``."""
    spec = upload_spec(policy, name)
    return open_storage({k: v for k, v in spec.items() if k not in UPLOAD_ONLY_KEYS})


# --- copying ----------------------------------------------------------------------------


def copy_object(
    src: Storage, dst: Storage, key: str, *, if_absent: bool = False, sha256: str | None = None
) -> int:
    """Stream ``key`` from ``src`` to ``dst``; returns the bytes copied.

    With ``sha256`` the bytes read must match it, or nothing is committed.
    """
    digest = hashlib.sha256()
    size = 0
    with dst.open_write(key, if_absent=if_absent) as writer:
        for chunk in src.iter_chunks(key):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise StorageError(
                f"{key} in the repository does not match its recorded checksum; not uploaded",
                hint="run `pgbackup verify`",
            )
    return size


def copy_archive_info(source: Repository, dest: Repository, target: str) -> None:
    """The target's archive.json (whose cluster its WAL is) at ``dest`` too, once."""
    from pgbackup.engine.wal import ARCHIVE_INFO

    info_key = f"{target}/{ARCHIVE_INFO}"
    if source.storage.stat(info_key) is not None and dest.storage.stat(info_key) is None:
        with contextlib.suppress(ObjectExists):
            copy_object(source.storage, dest.storage, info_key, if_absent=True)


def sync_wal(source: Repository, dest: Repository, target: str) -> int:
    """Copy the target's archived WAL missing at ``dest`` (only what its copies can need)."""
    from pgbackup.engine.walchain import first_needed_segment
    from pgbackup.formats.codecs import parse_suffix
    from pgbackup.formats.lsn import is_history

    copied = 0
    copy_archive_info(source, dest, target)
    first = first_needed_segment(dest.complete_backups(target))
    present = {i.key: i.size for i in dest.storage.list(Repository.wal_prefix(target))}
    for obj in sorted(source.storage.list(Repository.wal_prefix(target)), key=lambda o: o.key):
        if obj.key in present:
            if present[obj.key] != obj.size and not obj.key.endswith(".sha256"):
                raise UploadError(
                    f"{obj.key} differs at the destination ({present[obj.key]} bytes there, "
                    f"{obj.size} here); refusing to overwrite archived WAL",
                    hint="two clusters may be uploading into one destination prefix",
                )
            continue
        name = obj.key.rsplit("/", 1)[-1]
        base = name[: -len(".sha256")] if name.endswith(".sha256") else parse_suffix(name)[0]
        if first is not None and not is_history(base) and base[8:24] < first[8:24]:
            continue  # older than anything a copy there needs (maybe expired there)
        try:
            copy_object(source.storage, dest.storage, obj.key, if_absent=True)
            copied += 1
        except ObjectExists:
            pass  # a concurrent sync stored it first
    return copied


def copy_backup(source: Repository, dest: Repository, target: str, backup_id: str) -> int:
    """Copy one complete backup: its objects, then metadata.json. Returns bytes copied."""
    prefix = Repository.base_prefix(target, backup_id)
    meta_key = prefix + METADATA
    if dest.storage.stat(meta_key) is not None:
        return 0  # already complete there
    meta = source.read_metadata(target, backup_id)
    objects = meta.get("objects") or {}
    present = {i.key: i.size for i in dest.storage.list(prefix)}
    copied = 0
    for obj in sorted(source.storage.list(prefix), key=lambda o: o.key):
        if obj.key == meta_key:
            continue
        recorded = objects.get(obj.key[len(prefix) :]) or {}
        if present.get(obj.key) == obj.size:
            continue  # committed writes are whole: an earlier, interrupted sync stored it
        copied += copy_object(source.storage, dest.storage, obj.key, sha256=recorded.get("sha256"))
    copy_object(source.storage, dest.storage, meta_key)
    return copied


def missed_backups(
    source: Repository, dest: Repository, target: str, backup_id: str, spec: dict[str, Any]
) -> list[str]:
    """Earlier complete backups a destination lacks (an earlier upload failed), within its
    ``retention_days`` (older ones its cleanup would remove anyway), oldest first."""
    from datetime import timedelta

    cutoff = utcnow() - timedelta(days=int(spec.get("retention_days", 30)))
    there = {b.backup_id for b in dest.complete_backups(target)}
    complete = source.complete_backups(target)
    # An incremental is copied with its whole chain, however old its members are.
    chain = {m for b in complete if b.backup_id == backup_id for m in b.metadata.get("chain") or []}
    return [
        b.backup_id
        for b in complete
        if b.backup_id != backup_id
        and b.backup_id not in there
        and b.stop_time is not None
        and (b.stop_time >= cutoff or b.backup_id in chain)
    ]


def upload_backup(policy: Any, target: Any, backup_id: str) -> dict[str, dict[str, Any]]:
    """Copy backup ``backup_id`` of ``target`` and its WAL to every upload destination.

    A sync: earlier backups a destination is missing (within its retention) are copied
    too, and objects already there are not copied again.

    Each destination is tried; a failure at one does not stop the others. Every outcome
    is recorded as an ``upload`` run in the repository. Raises :class:`UploadError` naming
    each failed destination; the local backup is complete and untouched either way.
    """
    from pgbackup.ui import LOG, human_bytes

    name = _target_name(target)
    source = Repository(open_storage(policy.repository))
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for spec in policy.uploads or []:
        dest_name = str(spec.get("name"))
        started = utcnow()
        record: dict[str, Any] = {
            "destination": dest_name,
            "backup_id": backup_id,
            "started_at": iso(started),
        }
        try:
            dest = Repository(upload_storage(policy, dest_name))
            record["location"] = dest.storage.describe()
            copied = 0
            synced = []
            for other in missed_backups(source, dest, name, backup_id, spec):
                copied += copy_backup(source, dest, name, other)
                synced.append(other)
            copied += copy_backup(source, dest, name, backup_id)
            wal = sync_wal(source, dest, name)
            record.update(status="ok", bytes=copied, wal_files=wal)
            if synced:
                record["also_copied"] = synced
            LOG.info(
                "upload %s: backup %s of %s copied to %s (%s, %d WAL files)",
                dest_name,
                backup_id,
                name,
                dest.storage.describe(),
                human_bytes(copied),
                wal,
            )
        except PgBackupError as exc:
            record.update(status="failed", error=exc.message)
            failures.append(f"upload {dest_name}: {exc.message}")
            LOG.error("upload %s of backup %s failed: %s", dest_name, backup_id, exc.message)
        record["duration_seconds"] = round((utcnow() - started).total_seconds(), 3)
        source.record_run(name, "upload", record)
        results[dest_name] = record
    if failures:
        raise UploadError(
            f"backup {backup_id} of {name!r} is complete in the repository, but copying it failed:\n  "
            + "\n  ".join(failures),
            hint="fix the destination and run the backup again (uploads copy what is missing)",
        )
    return results


# --- retention at destinations ----------------------------------------------------------


def cleanup_uploads(
    policy: Any, now: datetime, dry_run: bool = False
) -> dict[str, dict[str, list[str]]]:
    """Apply each destination's ``retention_days``; destination -> target -> removed ids.

    The newest complete copy is never removed; WAL no kept copy needs goes with the rest.
    Incomplete copies (interrupted uploads) older than the newest complete one are removed.
    """
    from pgbackup.engine.walchain import plan_wal_expiry
    from pgbackup.policy.retention import expire_after_days, spare_chains
    from pgbackup.ui import LOG

    removed: dict[str, dict[str, list[str]]] = {}
    failures: list[str] = []
    for spec in policy.uploads or []:
        dest_name = str(spec.get("name"))
        days = int(spec.get("retention_days", 30))
        gone: dict[str, list[str]] = {}
        try:
            repo = Repository(upload_storage(policy, dest_name))
            for target in policy.targets:
                backups = repo.backups(target)
                complete = [b for b in backups if b.complete and b.stop_time is not None]
                expired = spare_chains(
                    set(
                        expire_after_days(
                            [(b.backup_id, b.stop_time) for b in complete if b.stop_time], days, now
                        )
                    ),
                    {b.backup_id: b.metadata.get("parent") for b in complete},
                )
                newest = max((b.backup_id for b in complete), default=None)
                leftovers = [
                    b.backup_id
                    for b in backups
                    if not b.complete and newest is not None and b.backup_id < newest
                ]
                kept = [b for b in complete if b.backup_id not in expired]
                wal_keys = plan_wal_expiry(repo, target, kept)
                ids = sorted(expired) + leftovers
                gone[target] = ids
                if dry_run:
                    continue
                for backup_id in ids:
                    repo.storage.delete_prefix(repo.base_prefix(target, backup_id))
                    LOG.info("upload %s: removed copy %s of %s", dest_name, backup_id, target)
                for key in wal_keys:
                    repo.storage.delete(key)
                if wal_keys:
                    LOG.info(
                        "upload %s: removed %d WAL files of %s", dest_name, len(wal_keys), target
                    )
        except PgBackupError as exc:
            failures.append(f"upload {dest_name}: {exc.message}")
        removed[dest_name] = gone
    if failures:
        raise UploadError(
            "cleanup of upload destinations failed:\n  " + "\n  ".join(failures),
            hint="copies at the other destinations were cleaned up; fix the destination and rerun",
        )
    return removed
