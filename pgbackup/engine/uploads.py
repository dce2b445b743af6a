"""Upload destinations: further copies of every completed backup (and its WAL) elsewhere.

``uploads`` in backup.yaml lists destinations of any storage kind, each with its own
``retention_days``. After each successful backup :func:`upload_backup` syncs the backup
and the target's archived WAL to every destination: objects first, ``metadata.json``
last (so an interrupted upload never looks complete there either), WAL with
create-only-if-absent writes. Objects move several at once (:func:`copy_objects`, bounded
by the destination's ``streams``). :func:`cleanup_uploads` applies each destination's
``retention_days`` (never to the newest copy) and removes the WAL no kept copy needs.
``restore --from NAME`` and ``wal-fetch --from NAME`` read a destination through
:func:`upload_storage`.

This module is imported by ``wal-fetch --from``: keep its imports light.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def upload_storage(policy: Any, name: str, *, role: str | None = None) -> Storage:
    """The storage of the upload destination called ``name``; ``role="maintenance"``:
    with its ``maintenance_profile``'s credentials (cleanup, docs/security.md)."""
    spec = upload_spec(policy, name)
    if role:
        spec["role"] = role
    return open_storage({k: v for k, v in spec.items() if k not in UPLOAD_ONLY_KEYS})


# --- copying ----------------------------------------------------------------------------


class CopyCancelled(PgBackupError):
    """A copy stopped before it committed because another copy of its batch failed."""


def copy_object(
    src: Storage,
    dst: Storage,
    key: str,
    *,
    if_absent: bool = False,
    sha256: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Stream ``key`` from ``src`` to ``dst``; returns the bytes copied.

    With ``sha256`` the bytes read must match it, or nothing is committed. When ``stop``
    is set while the bytes move, the write is aborted (nothing committed) with
    :class:`CopyCancelled`.
    """
    digest = hashlib.sha256()
    size = 0
    with dst.open_write(key, if_absent=if_absent) as writer:
        for chunk in src.iter_chunks(key):
            if stop is not None and stop.is_set():
                raise CopyCancelled(f"copy of {key} cancelled")
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise StorageError(
                f"{key} in the repository does not match its recorded checksum; not uploaded",
                hint="run `pgbackup verify`",
            )
        if stop is not None and stop.is_set():
            raise CopyCancelled(f"copy of {key} cancelled")
    return size


# --- several objects at once --------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """One object to copy: its key, its size in the source, and the write's rules."""

    key: str
    size: int
    if_absent: bool = False
    sha256: str | None = None


@dataclass
class Copied:
    """What became of one :class:`Copy`: ``done`` with ``size`` bytes (``existed``: an
    ``if_absent`` copy found the object already there), or ``error``; neither when it
    never started (an earlier failure stopped the batch)."""

    copy: Copy
    done: bool = False
    size: int = 0
    existed: bool = False
    error: BaseException | None = None


def parts_in_flight(dst: Storage) -> int:
    """Upload requests one object may have in flight at ``dst``: its ``streams`` (1 for a
    posix destination; 1 for GCS, whose resumable session takes one chunk at a time)."""
    streams = int(getattr(dst, "streams", 1) or 1)
    return streams if getattr(dst, "parallel_parts", False) else 1


def object_weight(dst: Storage, size: int) -> int:
    """Requests an object of ``size`` bytes can have in flight at ``dst`` at once: one per
    part it is cut into, at most the destination's per-object window."""
    part = int(getattr(dst, "part_size", 0) or 0)
    parts = -(-size // part) if part > 0 else 1
    return max(1, min(parts_in_flight(dst), parts))


class _Slots:
    """A counting semaphore taken by weight, in the order asked (the one caller asks)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = self.free = capacity
        self.cond = threading.Condition()

    def take(self, n: int, stop: threading.Event) -> bool:
        n = min(n, self.capacity)
        with self.cond:
            self.cond.wait_for(lambda: self.free >= n or stop.is_set())
            if stop.is_set():
                return False
            self.free -= n
            return True

    def give(self, n: int) -> None:
        with self.cond:
            self.free += min(n, self.capacity)
            self.cond.notify_all()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


def copy_objects(
    src: Storage,
    dst: Storage,
    copies: Sequence[Copy],
    *,
    streams: int | None = None,
    copy: Callable[..., int] | None = None,
) -> list[Copied]:
    """Copy ``copies`` from ``src`` to ``dst``, several at once; one outcome per copy, in
    the order given (started in that order too).

    The bound: each object takes as many slots as it can have upload requests in flight
    (:func:`object_weight`: one for an object of one part, i.e. every WAL segment and
    manifest; one per part up to the destination's per-object ``streams`` for a larger
    one), and at most ``streams`` slots (the destination's, by default) are taken at a
    time. So about ``streams`` upload requests are in flight per destination whatever
    mix of objects there is (many small ones at once, or one large one with its own
    ``streams`` parts). Memory: an object of weight w holds at most w + 1 parts (w in
    flight, one filling; a one-part object only its own bytes), so a batch holds at most
    (``streams`` + objects in flight) × ``part_size``: (``streams`` + 1) × ``part_size``
    while one large object moves, as a single object already took, and never more than
    2 × ``streams`` × ``part_size`` (64 MiB with the defaults; GCS, one part in flight
    per object, reaches it with ``streams`` objects near one part each). A posix
    destination (no ``streams``) copies one object at a time, as before. Each object is
    streamed (``copy_object``), never read whole; the source's own reads of a large
    object are ranged with the source's ``streams``.

    A copy that fails (after the storage's own retries, which resend only the failed
    request) stops the batch: no copy starts after it, those in flight are cancelled
    (aborted, nothing committed) or finish, and then this returns; the failure is the
    ``error`` of its :class:`Copied`, and :func:`first_failure` raises it. An
    ``if_absent`` copy that finds its object already there is ``existed``, not a failure.
    """
    copy_fn = copy if copy is not None else copy_object
    width = max(1, streams if streams is not None else int(getattr(dst, "streams", 1) or 1))
    out = [Copied(c) for c in copies]
    stop = threading.Event()
    slots = _Slots(width)
    threads: list[threading.Thread] = []

    def run(i: int, weight: int) -> None:
        c = out[i].copy
        try:
            out[i].size = copy_fn(
                src, dst, c.key, if_absent=c.if_absent, sha256=c.sha256, stop=stop
            )
            out[i].done = True
        except BaseException as exc:  # the batch's failure: said once, by the caller
            if c.if_absent and isinstance(exc, ObjectExists):
                out[i].done = out[i].existed = True
            else:
                out[i].error = exc
                stop.set()
                slots.wake()
        finally:
            slots.give(weight)

    try:
        for i, c in enumerate(copies):
            weight = object_weight(dst, c.size)
            if stop.is_set() or not slots.take(weight, stop):
                break
            if width == 1:  # no thread for one object at a time
                run(i, weight)
                continue
            t = threading.Thread(target=run, args=(i, weight), name="pgbackup-copy", daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C / SIGTERM (signals.py): cancel what is in flight
        stop.set()
        slots.wake()
        for t in threads:
            t.join()
        raise
    return out


def first_failure(outcomes: Sequence[Copied]) -> BaseException | None:
    """The failure to report for a batch: the first copy (in order) that failed by itself,
    not one cancelled because of it."""
    errors = [o.error for o in outcomes if o.error is not None]
    real = [e for e in errors if not isinstance(e, CopyCancelled)]
    chosen = real or errors
    return chosen[0] if chosen else None


def raise_first_failure(outcomes: Sequence[Copied]) -> None:
    """Raise :func:`first_failure`, if any (its own type: a StorageError stays one)."""
    error = first_failure(outcomes)
    if error is not None:
        raise error


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

    copy_archive_info(source, dest, target)
    first = first_needed_segment(dest.complete_backups(target))
    present = {i.key: i.size for i in dest.storage.list(Repository.wal_prefix(target))}
    todo: list[Copy] = []
    refused: UploadError | None = None
    for obj in sorted(source.storage.list(Repository.wal_prefix(target)), key=lambda o: o.key):
        if obj.key in present:
            if present[obj.key] != obj.size and not obj.key.endswith(".sha256"):
                refused = UploadError(
                    f"{obj.key} differs at the destination ({present[obj.key]} bytes there, "
                    f"{obj.size} here); refusing to overwrite archived WAL",
                    hint="two clusters may be uploading into one destination prefix",
                )
                break  # what comes before it is still copied
            continue
        name = obj.key.rsplit("/", 1)[-1]
        base = name[: -len(".sha256")] if name.endswith(".sha256") else parse_suffix(name)[0]
        if first is not None and not is_history(base) and base[8:24] < first[8:24]:
            continue  # older than anything a copy there needs (maybe expired there)
        todo.append(Copy(obj.key, obj.size, if_absent=True))
    outcomes = copy_objects(source.storage, dest.storage, todo)
    raise_first_failure(outcomes)
    if refused is not None:
        raise refused
    # an object found there already: a concurrent sync stored it first
    return sum(1 for o in outcomes if o.done and not o.existed)


def copy_backup(source: Repository, dest: Repository, target: str, backup_id: str) -> int:
    """Copy one complete backup: its objects (several at once, :func:`copy_objects`), then
    metadata.json, only once every other object is stored. Returns bytes copied."""
    prefix = Repository.base_prefix(target, backup_id)
    meta_key = prefix + METADATA
    if dest.storage.stat(meta_key) is not None:
        return 0  # already complete there
    meta = source.read_metadata(target, backup_id)
    objects = meta.get("objects") or {}
    present = {i.key: i.size for i in dest.storage.list(prefix)}
    todo: list[Copy] = []
    for obj in sorted(source.storage.list(prefix), key=lambda o: o.key):
        if obj.key == meta_key:
            continue
        recorded = objects.get(obj.key[len(prefix) :]) or {}
        if present.get(obj.key) == obj.size:
            continue  # committed writes are whole: an earlier, interrupted sync stored it
        todo.append(Copy(obj.key, obj.size, sha256=recorded.get("sha256")))
    # the largest first: the small ones fill the slots a large one leaves free at its end
    todo.sort(key=lambda c: -c.size)
    outcomes = copy_objects(source.storage, dest.storage, todo)
    raise_first_failure(outcomes)  # metadata.json is never written after a failure
    copy_object(source.storage, dest.storage, meta_key)
    return sum(o.size for o in outcomes)


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
    from pgbackup.engine.generations import copy_history, number_of, restore_storage, view
    from pgbackup.ui import LOG, human_bytes

    name = _target_name(target)
    # The backup's generation (engine/generations): copied into the same namespace there.
    base = open_storage(policy.repository)
    generation = restore_storage(base, name, backup_id, None, None)
    source = Repository(generation)
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
            dest_base = upload_storage(policy, dest_name)
            if number_of(generation) != 1:
                copy_history(base, dest_base, name)
            dest = Repository(view(dest_base, name, number_of(generation)))
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
    from pgbackup.engine.generations import generation_views
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
            storage = upload_storage(policy, dest_name, role="maintenance")
            for target in policy.targets:
                # Every generation's copies (engine/generations: a later one's live under
                # gen/<n>/ there too), each generation seen through its view.
                views = [Repository(st) for _g, st in generation_views(storage, target)]
                by_view = [(r, r.backups(target)) for r in views]
                complete = [
                    b for _r, bs in by_view for b in bs if b.complete and b.stop_time is not None
                ]
                # Across generations: the newest copy of all (the newest generation's) is
                # never removed; an older generation's expire after the days, its WAL stays
                # (as in the repository: docs/upgrades.md).
                expired = spare_chains(
                    set(
                        expire_after_days(
                            [(b.backup_id, b.stop_time) for b in complete if b.stop_time], days, now
                        )
                    ),
                    {b.backup_id: b.metadata.get("parent") for b in complete},
                )
                plans = []
                for gen_repo, backups in by_view:
                    newest = max((b.backup_id for b in backups if b.complete), default=None)
                    leftovers = [
                        b.backup_id
                        for b in backups
                        if not b.complete and newest is not None and b.backup_id < newest
                    ]
                    mine = {b.backup_id for b in backups}
                    kept = [b for b in backups if b.complete and b.backup_id not in expired]
                    wal_keys = plan_wal_expiry(gen_repo, target, kept)
                    plans.append((gen_repo, sorted(expired & mine) + leftovers, wal_keys))
                gone[target] = sorted(i for _r, ids, _w in plans for i in ids)
                if dry_run:
                    continue
                held = 0  # expired but still under an object lock: removed by a later run
                wal_keys = []
                for repo, ids, gen_wal in plans:
                    for backup_id in ids:
                        prefix = repo.base_prefix(target, backup_id)
                        _, until = repo.storage.expire_prefix(prefix)
                        if until is not None:
                            held += 1
                            gone[target] = [i for i in gone[target] if i != backup_id]
                            continue
                        LOG.info("upload %s: removed copy %s of %s", dest_name, backup_id, target)
                    for key in gen_wal:
                        held += repo.storage.expire(key) is not None
                    wal_keys += gen_wal
                if held:
                    LOG.info(
                        "upload %s: %d expired objects of %s kept by their lock",
                        dest_name,
                        held,
                        target,
                    )
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
