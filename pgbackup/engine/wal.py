"""WAL archiving: wal-push (archive_command) and wal-fetch (restore_command), file by file.

wal-push runs once per 16 MiB segment, so this module imports only what that needs
(no jsonschema, psycopg, invoke or cloud SDKs for a posix repository). Its rules:

- the file is durable before we return 0 (the storage writes temp + fsync + atomic
  link/rename + directory fsync, or completes the upload);
- an archived name is never overwritten: pushing identical content again is success,
  different content is a loud failure that leaves the archived copy untouched;
- a segment from another cluster (system identifier in its page header) is refused.

A WAL page's rules (magics, the long header) and ``archive.json``'s bytes are
:mod:`pgbackup.formats.walpage`'s; the common case of a push is stored by
:mod:`pgbackup.engine.wal_fastpush` with them and with the same write protocol
(:mod:`pgbackup.durable`), before this module is imported.

The archive read as a whole (its gaps, the recoverable window, expiry) is
:mod:`pgbackup.engine.walchain`.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from pgbackup.errors import ObjectExists, PgBackupError
from pgbackup.formats.codecs import CodecSpec, decode_bytes, encode_bytes, parse_suffix, suffix
from pgbackup.formats.lsn import (
    is_backup_label_file,
    is_history,
    is_partial,
    is_segment,
)
from pgbackup.formats.walpage import ARCHIVE_INFO, archive_info_bytes, read_wal_file, segment_sysid
from pgbackup.formats.walpage import MAGIC_MAJOR as MAGIC_MAJOR  # for walchain
from pgbackup.formats.walpage import wal_major as wal_major  # for walchain
from pgbackup.storage import Storage, open_storage

# zstd worker threads for one segment in the long-running receiver (-1: one per core, 0:
# the calling thread). wal-push decides per segment (formats.zstdlib.wal_threads: workers
# only on idle cores).
WAL_THREADS = int(os.environ.get("PGBACKUP_WAL_THREADS", "-1"))


class WalError(PgBackupError):
    """A WAL file could not be archived or fetched."""

    exit_code = 3


class WalNotFound(PgBackupError):
    """The archive does not hold the requested file (restore_command's ordinary 'no')."""

    exit_code = 1


class WalGap(WalError):
    """The archive lacks the file but holds later WAL of the same timeline: a hole.

    PostgreSQL cannot tell a hole from the end of the archive (every restore_command
    status from 1 to 125 means "not there" to it, and archive recovery ends on it); only
    pgbackup knows what its archive holds, so a hole is a failure, never a quiet miss.
    """


# A hole may be a segment that an async pusher (two at a time) is storing right now:
# look again after this many seconds before calling it a gap.
GAP_GRACE_SECONDS = float(os.environ.get("PGBACKUP_GAP_GRACE", "2"))


def is_wal_name(name: str) -> bool:
    return is_segment(name) or is_history(name) or is_backup_label_file(name) or is_partial(name)


def control_sysid(data_dir: Path) -> int | None:
    """System identifier from ``global/pg_control`` (its first 8 bytes)."""
    try:
        with open(data_dir / "global" / "pg_control", "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return struct.unpack("<Q", head)[0] if len(head) == 8 else None


def policy_identities(policy: Any) -> list[str] | None:
    """The policy's age identities, or None when it names none (loaded only when asked)."""
    if policy is None or not policy.encryption or not policy.encryption.identity_file:
        return None
    from pgbackup.formats.codecs import load_identities

    return load_identities(policy.encryption.identity_file)


def codec_for(policy: Any) -> CodecSpec:
    return CodecSpec(
        compression=policy.compression.method,
        level=policy.compression.level,
        encrypted=policy.encryption is not None,
    )


def read_archive_info(storage: Storage, target: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(storage.read_bytes(f"{target}/{ARCHIVE_INFO}")))
    except PgBackupError:
        return None
    except ValueError:
        raise WalError(f"{target}/{ARCHIVE_INFO} is damaged (not JSON)") from None


def bind_archive(storage: Storage, target: str, sysid: int, seg_size: int) -> None:
    """Tie a target's archive to one cluster (first push wins; conditional create)."""
    from pgbackup.engine.generations import (
        GenerationError,
        refuse_deleted,
        refuse_deleted_history,
    )

    info = read_archive_info(storage, target)
    if info is None:
        # Absent because never written, or because someone deleted it (a delete marker
        # on a versioned bucket): bound again, the archive would take whichever cluster
        # pushes next, a later generation's into generation 1's namespace.
        try:
            refuse_deleted(storage, target, f"{target}/{ARCHIVE_INFO}", f"WAL from cluster {sysid}")
            refuse_deleted_history(storage, target, f"WAL from cluster {sysid}")
        except GenerationError as exc:
            raise WalError(exc.message, hint=exc.hint) from None
        payload = archive_info_bytes(sysid, seg_size)
        try:
            storage.write_bytes(f"{target}/{ARCHIVE_INFO}", payload, if_absent=True)
            return
        except ObjectExists:
            info = read_archive_info(storage, target) or {}
    if str(info.get("system_identifier")) != str(sysid):
        from pgbackup.engine.generations import undeclared

        try:  # a later generation's cluster, its history deleted: say so
            refuse_deleted_history(storage, target, f"WAL from cluster {sysid}")
        except GenerationError as exc:
            raise WalError(exc.message, hint=exc.hint) from None

        _message, hint = undeclared(target, sysid, [str(info.get("system_identifier"))])
        raise WalError(
            f"WAL from cluster {sysid} refused: the archive of target {target!r} belongs to "
            f"cluster {info.get('system_identifier')}",
            hint=hint,
        )


def generation_storage(
    storage: Storage, target: str, sysid: int | None, *, strict: bool = True
) -> Storage:
    """The generation of ``target`` that holds cluster ``sysid`` (engine/generations);
    a cluster nobody declared is a WalError (exit 3) here."""
    from pgbackup.engine.generations import GenerationError, for_cluster

    try:
        got: Storage = for_cluster(storage, target, sysid, strict=strict)
    except GenerationError as exc:
        raise WalError(f"WAL from cluster {sysid} refused: {exc.message}", hint=exc.hint) from None
    return got


def pick_target(policy: Any, storage: Storage, explicit: str | None, sysid: int | None) -> str:
    if explicit:
        return str(policy.target(explicit).name)
    names = list(policy.targets)
    if len(names) == 1:
        return str(names[0])
    if sysid is not None:
        for name in names:
            info = read_archive_info(storage, name)
            if info and str(info.get("system_identifier")) == str(sysid):
                return str(name)
        from pgbackup.engine.generations import of_sysid, read_history

        for name in names:
            if of_sysid(read_history(storage, name), sysid) is not None:
                return str(name)
    raise WalError(
        f"cannot tell which target this WAL belongs to (targets: {', '.join(names)})",
        hint="add --target NAME to archive_command / restore_command",
    )


def wal_key(target: str, name: str, spec: CodecSpec) -> str:
    return f"{target}/wal/{name}{suffix(spec)}"


def find_archived(storage: Storage, target: str, name: str, spec: CodecSpec) -> str | None:
    """The stored key of ``name`` whatever codec it was written with (policy's first).

    An object store answers with one listing of the name's prefix, found or not (a
    timeline's history file is asked for, and missing, as every recovery starts and
    ends); a directory is asked with a stat first (its listing reads every entry)."""
    key = wal_key(target, name, spec)
    if not storage.prefix_listing_is_one_request and storage.stat(key) is not None:
        return key
    found = [
        info.key
        for info in storage.list(f"{target}/wal/{name}")
        if parse_suffix(info.key.rsplit("/", 1)[-1])[0] == name
    ]
    return _preferred(found, key)


def _preferred(keys: list[str], *first: str) -> str | None:
    """Of the keys stored for one name, the first of ``first`` (the policy's codec's
    key) that is there, else the lowest (a key written under another codec)."""
    return next((k for k in first if k in keys), min(keys, default=None))


def push(policy: Any, path: str | Path, target: str | None = None) -> str:
    """Archive one WAL file; returns 'stored' or 'already archived'."""
    path = Path(path)
    name = path.name
    if not is_wal_name(name):
        raise WalError(f"{name} is not a WAL file name (segment, .history, .backup or .partial)")
    try:
        data = read_wal_file(path)
    except FileNotFoundError:
        raise WalError(
            f"{path}: no such file (archive_command runs in the data directory; use %p)"
        ) from None
    except OSError as exc:
        raise WalError(f"cannot read {path}: {exc.strerror}") from None
    from pgbackup.postgres.majors import wal_file_refusal

    refusal = wal_file_refusal(data, name)
    if refusal is not None:
        raise WalError(refusal.message, hint=refusal.hint)
    storage = open_storage(policy.repository)
    header = segment_sysid(data) if (is_segment(name) or is_partial(name)) else None
    sysid = header[0] if header else control_sysid(Path.cwd())
    target_name = pick_target(policy, storage, target, sysid)
    if sysid is not None:
        storage = generation_storage(storage, target_name, sysid)
        bind_archive(storage, target_name, sysid, header[1] if header else 16 * 1024 * 1024)
    spec = codec_for(policy)
    existing = find_archived(storage, target_name, name, spec)
    if existing is not None:
        return _compare_existing(policy, storage, existing, data, target_name, name)
    recipients = None
    if spec.encrypted:
        from pgbackup.formats.codecs import load_recipients

        recipients = load_recipients(policy.encryption.recipients_file)
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        _claim_checksum(storage, f"{target_name}/wal/{name}.sha256", digest, name)
    from pgbackup.formats.zstdlib import wal_threads

    encoded = encode_bytes(spec, data, recipients=recipients, threads=wal_threads())
    key = wal_key(target_name, name, spec)
    try:
        storage.write_bytes(key, encoded, if_absent=True)
    except ObjectExists:
        return _compare_existing(policy, storage, key, data, target_name, name)
    return "stored"


def _claim_checksum(storage: Storage, key: str, digest: str, name: str) -> None:
    """Record the plain sha256 beside an encrypted WAL file (create-only-if-absent).

    It lets a retry prove "identical" without the key. A checksum already there for other
    content means a concurrent push of different bytes under the same name: refuse.
    """
    try:
        storage.write_bytes(key, digest.encode(), if_absent=True)
        return
    except ObjectExists:
        pass
    recorded = storage.read_bytes(key).decode(errors="replace").strip()
    if recorded != digest:
        raise WalError(
            f"{name} is being (or was) archived with DIFFERENT content (checksum {key}); refusing",
            hint="two clusters may be archiving into one target: give each its own target",
        )


def _compare_existing(
    policy: Any, storage: Storage, key: str, data: bytes, target: str, name: str
) -> str:
    """Identical content is success (a retry); different content is a loud failure."""
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
    stored = storage.read_bytes(key)
    if spec.encrypted:
        try:
            recorded = storage.read_bytes(f"{target}/wal/{name}.sha256").decode().strip()
        except PgBackupError:
            recorded = None
        identities = policy_identities(policy) if recorded is None else None
        if identities is not None:
            plain = decode_bytes(spec, stored, identities=identities, what=key)
            recorded = hashlib.sha256(plain).hexdigest()
        if recorded is None:
            raise WalError(
                f"{name} is already archived (encrypted) and cannot be compared without the identity",
                hint="make encryption.identity_file readable to pgbackup, or remove the archived copy after checking it",
            )
        same = recorded == digest
    else:
        same = hashlib.sha256(decode_bytes(spec, stored, what=key)).hexdigest() == digest
    if same:
        # A retry: the first push may have died after linking the file but before its
        # directory was fsynced; PostgreSQL counts exit 0 as "archived" and may recycle
        # the segment, so the stored copy is made durable before we say so.
        storage.make_durable(key)
        return "already archived"
    raise WalError(
        f"{name} is already archived with DIFFERENT content ({key}); refusing to overwrite it",
        hint="two clusters may be archiving into one target, or the archive belongs to an older "
        "cluster: point archive_command at a separate target and investigate before removing anything",
    )


def fetch(
    policy: Any,
    name: str,
    dest: str | Path,
    target: str | None = None,
    storage: Storage | None = None,
    until: str | None = None,
    *,
    resolved: tuple[str, Storage] | None = None,
) -> None:
    """Write archived ``name`` decoded to ``dest`` atomically; WalNotFound when absent,
    WalGap when absent while later WAL of its timeline is archived.

    ``storage`` (an upload destination) is read instead of the policy's repository.
    ``until``: the last segment the recovery target needs (pgbackup restore knows it);
    a later one that is missing is an ordinary miss, because PostgreSQL reads ahead
    (recovery_prefetch) past a target that lies just before a hole.
    ``resolved``: the target's name and the generation holding this data directory's
    cluster, as :func:`pick_target` and :func:`generation_storage` found them for an
    earlier fetch of the same recovery (the read-ahead's prefetcher, which answers
    several questions with one open archive): not looked up again, a request or more
    each.
    """
    if resolved is not None:
        target_name, storage = resolved
    else:
        if storage is None:
            storage = open_storage(policy.repository)
        sysid = control_sysid(Path.cwd())
        target_name = pick_target(policy, storage, target, sysid)
        storage = generation_storage(storage, target_name, sysid, strict=False)
    spec = codec_for(policy)
    key = find_archived(storage, target_name, name, spec)
    later: str | None = None
    if key is None and is_segment(name) and not (until is not None and name[8:] > until[8:24]):
        # (A segment past ``until`` is an ordinary miss: nothing after it is looked for.)
        key, later = beyond_the_archived(storage, target_name, name, spec)
    if key is None:
        if later is None or (Path.cwd() / "pg_wal" / name).is_file():
            # The end of the archive; or a file the restored backup carries in pg_wal,
            # which PostgreSQL reads when restore_command has none (RestoreArchivedFile's
            # "not_available" path).
            raise WalNotFound(f"{name} is not in the archive")
        import time

        time.sleep(GAP_GRACE_SECONDS)
        key = find_archived(storage, target_name, name, spec)
        if key is None:
            raise WalGap(
                f"{name} is missing from the archive of {target_name!r}, which holds later WAL "
                f"of the same timeline (up to {later}): the archive has a gap here, and recovery "
                "must not end at it as if it were the end of the archive",
                hint="restore the missing file into the archive (an upload copy: wal-fetch --from "
                "NAME), or restore to a point before it (pgbackup restore names the last point "
                "that can be reached)",
            )
    _base, stored_spec = parse_suffix(key.rsplit("/", 1)[-1])
    identities = policy_identities(policy) if stored_spec.encrypted else None
    if stored_spec.encrypted and identities is None:
        from pgbackup.errors import EncryptionError

        raise EncryptionError(
            f"{key} is encrypted and the policy names no identity",
            hint="set encryption.identity_file in backup.yaml",
        )
    data = decode_bytes(stored_spec, storage.read_bytes(key), identities=identities, what=key)
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.pgbackup-fetch")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WalError(f"cannot write {dest}: {exc.strerror}") from None


def beyond_the_archived(
    storage: Storage, target: str, name: str, spec: CodecSpec
) -> tuple[str | None, str | None]:
    """For segment ``name``, not found archived: what one listing of its timeline from
    ``name`` on says, as (the key to serve, the newest later segment of the timeline).

    The key to serve is the segment itself, archived meanwhile, or, with nothing later,
    its ``.partial`` copy (the segment wal-receive is streaming; pg_receivewal pre-pads it
    with zeros, so recovery replays its complete records and ends at the first invalid
    one, as at the end of pg_wal). A later segment with neither is a hole (wal.fetch).
    Only segments have an order: a missing ``.history`` or ``.backup`` file is an ordinary
    miss and never comes here. The listing starts at the name (one character short of
    it, so the name's own keys are in it): the end of a recovery, or a standby asking
    every few seconds for the next segment, never lists the whole timeline."""
    own: list[str] = []
    partial: list[str] = []
    newest: str | None = None
    for info in storage.list(f"{target}/wal/{name[:8]}", start_after=f"{target}/wal/{name[:-1]}"):
        base, _spec = parse_suffix(info.key.rsplit("/", 1)[-1])
        if base == name:
            own.append(info.key)
        elif base == name + ".partial":
            partial.append(info.key)
        elif (is_segment(base) or is_partial(base)) and base[:24] > name:
            newest = base[:24] if newest is None or base[:24] > newest else newest
    key = _preferred(
        own or ([] if newest is not None else partial),
        wal_key(target, name, spec),
        wal_key(target, name + ".partial", spec),
    )
    return key, newest
