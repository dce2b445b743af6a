"""WAL archiving: wal-push (archive_command), wal-fetch (restore_command), and the chain.

wal-push runs once per 16 MiB segment, so this module imports only what that needs
(no jsonschema, psycopg, invoke or cloud SDKs for a posix repository). Its rules:

- the file is durable before we return 0 (the storage writes temp + fsync + atomic
  link/rename + directory fsync, or completes the upload);
- an archived name is never overwritten: pushing identical content again is success,
  different content is a loud failure that leaves the archived copy untouched;
- a segment from another cluster (system identifier in its page header) is refused.
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
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_name,
)
from pgbackup.storage import Storage, open_storage

ARCHIVE_INFO = "archive.json"
# zstd worker threads for one segment (-1: one per core, 0: the calling thread). Measured
# on pgbench segments with 2 cores: a full-page-image-heavy segment (5.7 MiB stored)
# compresses in 37 ms instead of 50; a light one (1.3 MiB) gains nothing and loses nothing.
WAL_THREADS = int(os.environ.get("PGBACKUP_WAL_THREADS", "-1"))
MAP_THRESHOLD = 1024 * 1024
XLP_LONG_HEADER = 0x0002
# XLOG_PAGE_MAGIC of each major version (src/include/access/xlog_internal.h): the first two
# bytes of every WAL page, bumped whenever the WAL format changes. A page of any of these
# has the same header layout (XLogPageHeaderData, XLogLongPageHeaderData) since 9.3.
WAL_PAGE_MAGIC = {14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}
MAGIC_MAJOR = {magic: major for major, magic in WAL_PAGE_MAGIC.items()}


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


def segment_sysid(data: bytes) -> tuple[int, int] | None:
    """(system identifier, segment size) from a segment's long page header, if present.

    XLogPageHeaderData is 24 bytes when aligned (magic, info, tli, pageaddr, rem_len);
    the long header adds xlp_sysid (uint64) and xlp_seg_size (uint32).
    """
    if len(data) < 40:
        return None
    magic, info = struct.unpack_from("<HH", data, 0)
    if magic not in MAGIC_MAJOR or not info & XLP_LONG_HEADER:
        return None
    sysid, seg_size = struct.unpack_from("<QI", data, 24)
    return sysid, seg_size


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
    info = read_archive_info(storage, target)
    if info is None:
        payload = json.dumps(
            {"system_identifier": str(sysid), "wal_segment_size": seg_size}
        ).encode()
        try:
            storage.write_bytes(f"{target}/{ARCHIVE_INFO}", payload, if_absent=True)
            return
        except ObjectExists:
            info = read_archive_info(storage, target) or {}
    if str(info.get("system_identifier")) != str(sysid):
        raise WalError(
            f"WAL from cluster {sysid} refused: the archive of target {target!r} belongs to "
            f"cluster {info.get('system_identifier')}",
            hint="check archive_command's --target and --config; each cluster needs its own target",
        )


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
    raise WalError(
        f"cannot tell which target this WAL belongs to (targets: {', '.join(names)})",
        hint="add --target NAME to archive_command / restore_command",
    )


def wal_key(target: str, name: str, spec: CodecSpec) -> str:
    return f"{target}/wal/{name}{suffix(spec)}"


def read_wal_file(path: Path) -> bytes:
    """The file's bytes; a segment is mapped rather than copied.

    A private 16 MiB buffer costs a page fault per 4 KiB page (about 8 ms a segment,
    which is a tenth of wal-push); the map reads the page cache in place. PostgreSQL
    neither writes nor truncates a segment while its archive_command runs.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < MAP_THRESHOLD:
            return f.read()
        import mmap

        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)  # type: ignore[return-value]


def find_archived(storage: Storage, target: str, name: str, spec: CodecSpec) -> str | None:
    """The stored key of ``name`` whatever codec it was written with (policy's first)."""
    key = wal_key(target, name, spec)
    if storage.stat(key) is not None:
        return key
    prefix = f"{target}/wal/{name}"
    for info in storage.list(prefix):
        base, _spec = parse_suffix(info.key.rsplit("/", 1)[-1])
        if base == name:
            return info.key
    return None


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
    storage = open_storage(policy.repository)
    header = segment_sysid(data) if (is_segment(name) or is_partial(name)) else None
    sysid = header[0] if header else control_sysid(Path.cwd())
    target_name = pick_target(policy, storage, target, sysid)
    if sysid is not None:
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
    encoded = encode_bytes(spec, data, recipients=recipients, threads=WAL_THREADS)
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
) -> None:
    """Write archived ``name`` decoded to ``dest`` atomically; WalNotFound when absent,
    WalGap when absent while later WAL of its timeline is archived.

    ``storage`` (an upload destination) is read instead of the policy's repository.
    ``until``: the last segment the recovery target needs (pgbackup restore knows it);
    a later one that is missing is an ordinary miss, because PostgreSQL reads ahead
    (recovery_prefetch) past a target that lies just before a hole.
    """
    if storage is None:
        storage = open_storage(policy.repository)
    target_name = pick_target(policy, storage, target, control_sysid(Path.cwd()))
    spec = codec_for(policy)
    key = find_archived(storage, target_name, name, spec)
    later: str | None = None
    if key is None:
        beyond_target = until is not None and is_segment(name) and name[8:] > until[8:24]
        later = None if beyond_target else later_archived(storage, target_name, name)
        if later is None and not beyond_target and is_segment(name):
            key = _streamed_partial(storage, target_name, name, spec)
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


def _streamed_partial(storage: Storage, target: str, name: str, spec: CodecSpec) -> str | None:
    """At the end of the archive, the key to serve for segment ``name``: its ``.partial``
    copy (the segment wal-receive is streaming; pg_receivewal pre-pads it with zeros, so
    recovery replays its complete records and ends at the first invalid one, as at the
    end of pg_wal), or the segment itself when the receiver completed it meanwhile."""
    key = find_archived(storage, target, name + ".partial", spec)
    return key if key is not None else find_archived(storage, target, name, spec)


def later_archived(storage: Storage, target: str, name: str) -> str | None:
    """The newest archived segment of ``name``'s timeline that comes after it, or None.

    Only segments have an order; a missing ``.history`` or ``.backup`` file is an
    ordinary miss (PostgreSQL probes for timelines that do not exist). The listing is
    limited to the timeline's prefix, and runs only when a file is missing: once at the
    end of a recovery, not for every segment.
    """
    if not is_segment(name):
        return None
    newest: str | None = None
    for info in storage.list(f"{target}/wal/{name[:8]}"):
        base, _spec = parse_suffix(info.key.rsplit("/", 1)[-1])
        segment = base[:24]
        if (is_segment(base) or is_partial(base)) and segment > name:
            newest = segment if newest is None or segment > newest else newest
    return newest


# --- the chain: what is archived, its gaps, the recoverable window, expiry ----------------


def archived_names(storage: Storage, target: str) -> dict[str, str]:
    """Plain WAL name -> stored key, for everything in a target's archive."""
    names: dict[str, str] = {}
    for info in storage.list(f"{target}/wal/"):
        base, _spec = parse_suffix(info.key.rsplit("/", 1)[-1])
        if is_wal_name(base):
            names[base] = info.key
    return names


def timeline_switches(
    storage: Storage, target: str, names: dict[str, str], policy: Any = None
) -> dict[int, list[tuple[int, int, str]]]:
    """Timeline -> its history (parent timeline, switch LSN) read from ``.history`` files."""
    result: dict[int, list[tuple[int, int, str]]] = {}
    try:
        identities = policy_identities(policy)
    except PgBackupError:
        identities = None  # encrypted histories then stay unread, as when no key is named
    for name, key in names.items():
        if not is_history(name):
            continue
        tli = int(name[:8], 16)
        _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
        try:
            text = decode_bytes(
                spec, storage.read_bytes(key), identities=identities, what=key
            ).decode()
        except PgBackupError:
            continue
        result[tli] = parse_history(text)
    return result


def expected_segments(
    start_tli: int,
    start_lsn: int,
    end_tli: int,
    end_lsn: int,
    history: list[tuple[int, int, str]],
    seg_size: int,
) -> list[str]:
    """Segment names needed to replay from (start_tli, start_lsn) to (end_tli, end_lsn).

    ``history`` is the end timeline's history: each (parent, switch LSN) in order.
    """
    # Build the path of timelines: [(tli, from_lsn, to_lsn)].
    spans: list[tuple[int, int, int]] = []
    begin = start_lsn
    for parent, switch, _reason in history:
        if parent < start_tli:
            continue
        # The segment holding the switch point is read from the newer timeline.
        spans.append((parent, begin, switch - 1))
        begin = switch
    spans.append((end_tli, begin, end_lsn))
    names: list[str] = []
    for tli, lo, hi in spans:
        if hi < lo:
            continue
        seg = lo // seg_size
        last = hi // seg_size
        while seg <= last:
            names.append(segment_name(tli, seg * seg_size, seg_size))
            seg += 1
    return names


def newest_segment(names: dict[str, str]) -> tuple[int, int] | None:
    """(timeline, segment number) of the newest archived segment (highest timeline first)."""
    segs = [parse_segment_name(n) for n in names if is_segment(n)]
    valid = [s for s in segs if s is not None]
    return max(valid) if valid else None


def streamed_names(names: dict[str, str]) -> dict[str, str]:
    """``names`` plus segment name -> key of its ``.partial`` copy where only that is stored."""
    out = dict(names)
    for name, key in names.items():
        if is_partial(name) and name[:24] not in out:
            out[name[:24]] = key
    return out


def chain_from(
    backup_meta: dict[str, Any],
    names: dict[str, str],
    switches: dict[int, list[tuple[int, int, str]]],
    timeline: int | None = None,
) -> dict[str, Any]:
    """Follow archived segments from a backup's start: how far the unbroken run reaches.

    Walks the newest timeline that descends from the backup's timeline. Returns
    ``{"timeline", "last_segment", "gaps": [...], "segments": n}``.

    A ``.partial`` copy stands for its segment when the segment itself is not archived
    (wal-receive's segment in progress; wal-fetch serves it at the end of the archive),
    so a hole before it is a gap here as it is for wal-fetch. ``newest_segment`` stays
    the newest *complete* one: the point recovery must reach at least.
    """
    complete = names
    names = streamed_names(names)
    seg_size = int(backup_meta.get("wal_segment_size", 16 * 1024 * 1024))
    start_tli = int(backup_meta["timeline"])
    start_lsn = parse_lsn(backup_meta["start_lsn"])
    newest = newest_segment(names)
    if newest is None:
        return {
            "timeline": start_tli,
            "last_segment": None,
            "gaps": [],
            "segments": 0,
            "end_lsn": None,
        }
    # Choose the highest timeline whose history includes ours (or is ours).
    candidates = [start_tli] + [
        t for t, hist in switches.items() if any(p == start_tli for p, _, _ in hist)
    ]
    end_tli = timeline if timeline in candidates else max(candidates)
    history = switches.get(end_tli, [])
    tli_segments = [parse_segment_name(n) for n in names if is_segment(n)]
    last_on_end = max((s[1] for s in tli_segments if s and s[0] == end_tli), default=None)
    if last_on_end is None:
        end_tli = start_tli
        history = []
        last_on_end = max(
            (s[1] for s in tli_segments if s and s[0] == start_tli), default=start_lsn // seg_size
        )
    newest_complete = max(
        (
            s[1]
            for s in (parse_segment_name(n) for n in complete if is_segment(n))
            if s and s[0] == end_tli
        ),
        default=last_on_end,
    )
    end_lsn = (last_on_end + 1) * seg_size - 1  # the last byte of the newest segment
    expected = expected_segments(start_tli, start_lsn, end_tli, end_lsn, history, seg_size)
    gaps: list[str] = []
    reached: str | None = None
    for seg in expected:
        if seg in names:
            if not gaps:
                reached = seg
        else:
            gaps.append(seg)
    return {
        "timeline": end_tli,
        "last_segment": reached,
        "newest_segment": segment_name(end_tli, newest_complete * seg_size, seg_size),
        "gaps": gaps,
        "segments": len(expected),
    }


def verify_wal_chain(policy: Any, repo: Any, target: Any) -> dict[str, Any]:
    """Continuity from each kept backup's start LSN to the newest archived segment, and
    the content of every archived file (decodes, header names this cluster and place)."""
    storage = repo.storage
    names = archived_names(storage, target.name)
    switches = timeline_switches(storage, target.name, names, policy)
    gaps: list[str] = []
    segments = 0
    for b in repo.complete_backups(target.name):
        chain = chain_from(b.metadata, names, switches)
        segments = max(segments, chain["segments"])
        for g in chain["gaps"]:
            msg = f"missing {g} (needed after backup {b.backup_id})"
            if msg not in gaps:
                gaps.append(msg)
    damaged, skipped = check_wal_content(policy, storage, target.name, names)
    return {
        "gaps": gaps + damaged,
        "segments": segments,
        "archived": len(names),
        "content_checked": len(names) - skipped,
    }


def wal_major(data: bytes) -> int | None:
    """The PostgreSQL major whose WAL format wrote this page (None: not a WAL page we know)."""
    return MAGIC_MAJOR.get(struct.unpack_from("<H", data, 0)[0]) if len(data) >= 2 else None


def check_wal_content(
    policy: Any, storage: Storage, target: str, names: dict[str, str]
) -> tuple[list[str], int]:
    """Decode every archived file (compression and age carry checksums) and check each
    segment's first page header: this cluster, this position. Uncompressed segments are
    read by pg_waldump, whose record CRCs find a flipped byte. Returns (problems, skipped)."""
    info = read_archive_info(storage, target) or {}
    sysid = info.get("system_identifier")
    identities = policy_identities(policy)
    problems: list[str] = []
    skipped = 0
    for name in sorted(names):
        key = names[name]
        _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
        if spec.encrypted and identities is None:
            skipped += 1
            continue
        try:
            data = decode_bytes(spec, storage.read_bytes(key), identities=identities, what=key)
        except PgBackupError as exc:
            problems.append(f"damaged {name}: {exc.message}")
            continue
        if not is_segment(name):
            continue
        seg_size = int(info.get("wal_segment_size", 16 * 1024 * 1024))
        parsed = parse_segment_name(name, seg_size)
        magic = struct.unpack_from("<H", data, 0)[0] if len(data) >= 2 else None
        pageaddr = struct.unpack_from("<Q", data, 8)[0] if len(data) >= 16 else None
        header = segment_sysid(data)
        if len(data) != seg_size:
            problems.append(f"damaged {name}: {len(data)} bytes, a segment has {seg_size}")
        elif magic not in MAGIC_MAJOR or parsed is None or pageaddr != parsed[1] * seg_size:
            problems.append(
                f"damaged {name}: its first page header does not belong at this position"
            )
        elif header is not None and sysid is not None and str(header[0]) != str(sysid):
            problems.append(f"damaged {name}: written by cluster {header[0]}, not {sysid}")
        elif spec.compression == "none":
            reason = _waldump_problem(name, data)
            if reason:
                problems.append(f"damaged {name}: {reason}")
    return problems, skipped


def _waldump_problem(name: str, data: bytes) -> str | None:
    """A record checksum failure reported by pg_waldump (end-of-WAL messages are normal)."""
    import subprocess
    import tempfile

    from pgbackup.postgres.binaries import find_program

    try:
        # pg_waldump reads only its own major's WAL format (it checks XLOG_PAGE_MAGIC).
        program = find_program("pg_waldump", wal_major(data))
    except PgBackupError:
        return None
    with tempfile.TemporaryDirectory(prefix="pgbackup-walcheck-") as tmp:
        (Path(tmp) / name).write_bytes(data)
        proc = subprocess.run(
            [program, "-q", "-p", tmp, name], capture_output=True, text=True, timeout=60
        )
    text = proc.stderr + proc.stdout
    if "checksum" in text or "invalid resource manager" in text or "incorrect prev-link" in text:
        return text.strip().splitlines()[-1]
    return None


def plan_wal_expiry(repo: Any, target: str, kept: list[Any]) -> list[str]:
    """Keys of archived WAL no kept backup needs (all timelines; history files stay)."""
    from pgbackup.policy.retention import wal_cleanup_candidates

    if not kept:
        return []
    names = archived_names(repo.storage, target)
    oldest = min(kept, key=lambda b: parse_lsn(b.metadata["start_lsn"]))
    seg_size = int(oldest.metadata.get("wal_segment_size", 16 * 1024 * 1024))
    first_needed = segment_name(
        int(oldest.metadata["timeline"]), parse_lsn(oldest.metadata["start_lsn"]), seg_size
    )
    expire = set(wal_cleanup_candidates(list(names), first_needed))
    keys = [names[n] for n in sorted(expire)]
    # Their plain checksums (encrypted archives) go too.
    sidecars = {i.key for i in repo.storage.list(f"{target}/wal/") if i.key.endswith(".sha256")}
    for n in sorted(expire):
        side = f"{target}/wal/{n}.sha256"
        if side in sidecars:
            keys.append(side)
    return keys


def waldump(policy: Any, storage: Storage, key: str, name: str, major: int | None) -> str:
    """pg_waldump's description of every complete record in an archived segment ("" when
    pg_waldump or the key is missing)."""
    import subprocess
    import tempfile

    from pgbackup.postgres.binaries import find_program

    try:
        program = find_program("pg_waldump", major)
    except PgBackupError:
        return ""
    _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
    identities = policy_identities(policy) if spec.encrypted else None
    if spec.encrypted and identities is None:
        return ""
    data = decode_bytes(spec, storage.read_bytes(key), identities=identities, what=key)
    with tempfile.TemporaryDirectory(prefix="pgbackup-waldump-") as tmp:
        (Path(tmp) / name).write_bytes(data)
        proc = subprocess.run(
            [program, "-p", tmp, name],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": "UTC", "PGTZ": "UTC"},
            timeout=60,
        )
    return proc.stdout


def segment_summary(
    policy: Any, storage: Storage, key: str, name: str, major: int | None
) -> dict[str, str | None]:
    """The last complete record's LSN and the last commit/abort time in an archived
    segment, read by pg_waldump.

    The last record's LSN is a point an inclusive ``recovery_target_lsn`` can reach
    with this segment alone: recovery stops right after replaying the record that
    starts at or after it (PostgreSQL's recoveryStopsAfter), so it needs no later file.
    """
    import re

    text = waldump(policy, storage, key, name, major)
    stamps = re.findall(
        r"desc: (?:COMMIT|ABORT)\S* (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC", text
    )
    records = re.findall(r"lsn: ([0-9A-F]+/[0-9A-F]+),", text)
    return {
        "last_record_lsn": records[-1] if records else None,
        "last_commit_time": stamps[-1].replace(" ", "T") + "Z" if stamps else None,
    }


def locate_record(
    policy: Any,
    storage: Storage,
    target: str,
    backup_meta: dict[str, Any],
    last_segment: str,
    kind: str,
    value: Any,
) -> str | None:
    """The archived segment, from the backup's start to ``last_segment``, that holds
    the commit of transaction ``value`` (kind ``xid``) or the restore point named
    ``value`` (kind ``name``); None when none does. Used only when the chain has a hole,
    to tell whether such a target lies before it."""
    import re

    seg_size = int(backup_meta.get("wal_segment_size", 16 * 1024 * 1024))
    first = parse_lsn(backup_meta["start_lsn"]) // seg_size
    last = last_segment[8:]
    names = archived_names(storage, target)
    candidates = sorted(
        (n for n in names if is_segment(n) and n[8:] <= last),
        key=lambda n: (n[8:], n[:8]),
    )
    if kind == "xid":
        pattern = re.compile(rf"tx:\s+{int(value)}, lsn: \S+ prev \S+ desc: (?:COMMIT|ABORT)")
    else:
        pattern = re.compile(rf"desc: RESTORE_POINT {re.escape(str(value))}$", re.MULTILINE)
    major = int(backup_meta.get("server_version_num", 0)) // 10000 or None
    for name in candidates:
        parsed = parse_segment_name(name, seg_size)
        if parsed is None or parsed[1] < first:
            continue
        if pattern.search(waldump(policy, storage, names[name], name, major)):
            return name
    return None


def last_commit_time(
    policy: Any, storage: Storage, key: str, name: str, major: int | None
) -> str | None:
    """Timestamp of the last commit/abort record in an archived segment (via pg_waldump)."""
    return segment_summary(policy, storage, key, name, major).get("last_commit_time")


def reachable(
    policy: Any,
    storage: Storage,
    target: str,
    backup_meta: dict[str, Any],
    timeline: int | None = None,
) -> dict[str, Any]:
    """How far recovery from this backup can replay with what the archive holds.

    ``gap``: the first segment missing before the newest archived one (None: no hole);
    ``newest_segment``: the newest archived segment on the timeline recovery follows;
    with a gap, also the last point before it that can be reached (``last_lsn``, the
    last complete record of the last segment before the hole, and ``last_commit_time``,
    the last commit found in the segments before the hole).
    """
    names = streamed_names(archived_names(storage, target))
    switches = timeline_switches(storage, target, names, policy)
    chain = chain_from(backup_meta, names, switches, timeline)
    out: dict[str, Any] = {
        "timeline": chain["timeline"],
        "gap": chain["gaps"][0] if chain["gaps"] else None,
        "gaps": chain["gaps"],
        "newest_segment": chain.get("newest_segment"),
        "last_segment": chain["last_segment"],
    }
    if out["gap"] is None:
        return out
    major = int(backup_meta.get("server_version_num", 0)) // 10000 or None
    last = chain["last_segment"]
    out["last_lsn"] = backup_meta.get("stop_lsn")
    out["last_commit_time"] = None
    if last is not None:
        summary = segment_summary(policy, storage, names[last], last, major)
        if summary.get("last_record_lsn") and parse_lsn(summary["last_record_lsn"] or "0/0") > (
            parse_lsn(backup_meta["stop_lsn"])
        ):
            out["last_lsn"] = summary["last_record_lsn"]
        out["last_commit_time"] = summary.get("last_commit_time")
        # An idle segment has no commit: look back a few segments for the last one.
        seg_size = int(backup_meta.get("wal_segment_size", 16 * 1024 * 1024))
        parsed = parse_segment_name(last, seg_size)
        for back in range(1, 9):
            segno = parsed[1] - back if parsed else -1
            if out["last_commit_time"] is not None or parsed is None or segno < 0:
                break
            earlier = segment_name(parsed[0], segno * seg_size, seg_size)
            if earlier not in names:
                break
            out["last_commit_time"] = last_commit_time(
                policy, storage, names[earlier], earlier, major
            )
    stop_time = backup_meta.get("stop_time")
    if out["last_commit_time"] and stop_time and out["last_commit_time"] < stop_time:
        out["last_commit_time"] = None  # before the backup's end: not a reachable point
    return out


def window_end(
    policy: Any, repo: Any, target: str, backups: list[Any], timeline: int | None = None
) -> dict[str, Any]:
    """The latest recoverable point after the newest complete backup."""
    from pgbackup.formats.lsn import format_lsn

    storage = repo.storage
    names = streamed_names(archived_names(storage, target))
    switches = timeline_switches(storage, target, names, policy)
    newest = backups[-1].metadata
    chain = chain_from(newest, names, switches, timeline)
    seg_size = int(newest.get("wal_segment_size", 16 * 1024 * 1024))
    last = chain.get("last_segment")
    if not last:
        return {"timeline": newest["timeline"], "gaps": chain["gaps"]}
    parsed = parse_segment_name(last, seg_size)
    assert parsed is not None
    tli, segno = parsed
    end_lsn = (segno + 1) * seg_size
    major = int(newest.get("server_version_num", 0)) // 10000 or None
    summary = segment_summary(policy, storage, names[last], last, major)
    if is_partial(parse_suffix(names[last].rsplit("/", 1)[-1])[0]) and summary["last_record_lsn"]:
        # wal-receive's segment in progress: the window ends at its last complete record.
        end_lsn = parse_lsn(summary["last_record_lsn"])
    if end_lsn <= parse_lsn(newest["stop_lsn"]):
        return {"timeline": newest["timeline"], "gaps": chain["gaps"]}
    when = summary.get("last_commit_time")
    return {
        "timeline": tli,
        "lsn": format_lsn(end_lsn),
        "time": when if when and when > newest["stop_time"] else None,
        "gaps": chain["gaps"],
        "last_segment": last,
    }
