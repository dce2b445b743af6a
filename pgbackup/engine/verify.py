"""Integrity checks for stored backups, without extracting them to disk.

Two layers, in one pass over each stored object: the sha256 of the stored bytes against
``metadata.json`` (catches any flipped byte, encrypted or not), then every file in the
tar stream against PostgreSQL's ``backup_manifest`` (size and CRC32C), plus the WAL
segments the manifest says the backup needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import crc32c

from pgbackup.engine.objects import HashingReader, archive_objects, identities
from pgbackup.engine.repository import BackupInfo, Repository
from pgbackup.errors import PgBackupError
from pgbackup.formats.codecs import CodecSpec, decode_bytes, open_decoder
from pgbackup.formats.lsn import parse_lsn, segment_name
from pgbackup.policy import Policy, Target
from pgbackup.ui import LOG, LOG_FILE_ONLY, progress

READ_SIZE = 1 << 20
# Present in the tar but, by design, not in the manifest (as pg_verifybackup ignores them).
NOT_IN_MANIFEST = ("backup_manifest",)


@dataclass
class VerifyReport:
    backup_id: str
    target: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def manifest_checksum_ok(manifest: bytes) -> bool:
    """PostgreSQL's manifest ends with the sha256 of everything before that line."""
    idx = manifest.rfind(b'"Manifest-Checksum"')
    if idx < 0:
        return False
    try:
        expected = json.loads(manifest)["Manifest-Checksum"]
    except (ValueError, KeyError):
        return False
    return hashlib.sha256(manifest[:idx]).hexdigest() == expected


def crc32c_hex(value: int) -> str:
    """The way PostgreSQL prints a CRC32C in a manifest (its in-memory byte order)."""
    return value.to_bytes(4, "little").hex()


def needed_wal(manifest: dict[str, Any], seg_size: int) -> list[str]:
    names = []
    for r in manifest.get("WAL-Ranges", []):
        tli = int(r["Timeline"])
        start, end = parse_lsn(r["Start-LSN"]), parse_lsn(r["End-LSN"])
        seg = start // seg_size
        last = max(end - 1, start) // seg_size
        while seg <= last:
            names.append(segment_name(tli, seg * seg_size, seg_size))
            seg += 1
    return names


def verify_backup(policy: Policy, repo: Repository, info: BackupInfo) -> VerifyReport:
    report = VerifyReport(info.backup_id, info.target)
    meta = info.metadata
    prefix = repo.base_prefix(info.target, info.backup_id)
    try:
        identity_list = identities(policy, info)
    except PgBackupError as exc:
        report.fail(exc.message)
        return report
    # 1. The manifest itself.
    manifest: dict[str, Any] | None = None
    for name, obj in meta["objects"].items():
        if obj.get("kind") != "manifest":
            continue
        try:
            stored = repo.storage.read_bytes(prefix + name)
        except PgBackupError as exc:
            report.fail(f"{name}: {exc.message}")
            continue
        if hashlib.sha256(stored).hexdigest() != obj["sha256"]:
            report.fail(f"{name}: stored object does not match its sha256 in metadata.json")
            continue
        try:
            raw = decode_bytes(
                CodecSpec.from_dict(obj["codec"]), stored, identities=identity_list, what=name
            )
        except PgBackupError as exc:
            report.fail(f"{name}: {exc.message}")
            continue
        if not manifest_checksum_ok(raw):
            report.fail(f"{name}: Manifest-Checksum does not match its content")
            continue
        manifest = json.loads(raw)
    if manifest is None:
        report.fail("backup_manifest missing or unusable; files cannot be checked")
    # 2. Every tar archive (base, its WAL, each tablespace), streamed.
    expected = {f["Path"]: f for f in (manifest or {}).get("Files", [])}
    seen: set[str] = set()
    wal_seen: set[str] = set()
    readable = True
    for name, obj in archive_objects(info):
        if obj["kind"] == "wal":
            where = "pg_wal/"
        elif obj["kind"] == "tablespace":
            where = f"pg_tblspc/{obj['oid']}/"
        else:
            where = ""
        readable &= check_archive(
            repo,
            prefix + name,
            name,
            obj,
            where,
            identity_list,
            meta,
            manifest,
            expected,
            seen,
            wal_seen,
            report,
        )
    if not readable:
        return report
    for path in sorted(set(expected) - seen):
        report.fail(f"{path}: listed in backup_manifest but missing from the backup")
    if manifest is not None:
        seg_size = int(meta.get("wal_segment_size", 16 * 1024 * 1024))
        for seg in needed_wal(manifest, seg_size):
            if seg not in wal_seen:
                report.fail(f"pg_wal/{seg}: WAL needed for consistency is missing from the backup")
    return report


def check_archive(
    repo: Repository,
    key: str,
    name: str,
    obj: dict[str, Any],
    where: str,
    identity_list: list[str] | None,
    meta: dict[str, Any],
    manifest: dict[str, Any] | None,
    expected: dict[str, Any],
    seen: set[str],
    wal_seen: set[str],
    report: VerifyReport,
) -> bool:
    """One stored tar archive: its sha256, then each file against the manifest (paths
    inside it are relative to ``where`` in the data directory). False if unreadable."""
    try:
        source = HashingReader(repo.storage.open_read(key))
    except PgBackupError as exc:
        report.fail(f"{name}: {exc.message}")
        return False
    total = int(meta.get("raw_bytes", 0)) if obj["kind"] == "base" else None
    try:
        with (
            contextlib.closing(source),
            open_decoder(
                cast(BinaryIO, source),
                CodecSpec.from_dict(obj["codec"]),
                identities=identity_list,
                what=name,
            ) as decoded,
            progress(f"verify {info_label(meta)} {name}", total or None) as bar,
            tarfile.open(fileobj=decoded, mode="r|") as tar,
        ):
            for member in tar:
                inner = member.name[2:] if member.name.startswith("./") else member.name
                path = where + inner
                if not member.isfile():
                    continue
                if path.startswith("pg_wal/"):
                    wal_seen.add(path.rsplit("/", 1)[-1])
                size, crc = member_crc32c(tar, member)
                bar.advance(size + 512)
                report.bytes_checked += size
                if manifest is not None and path not in NOT_IN_MANIFEST:
                    check_against_manifest(path, size, crc, expected, seen, report)
            while source.read(READ_SIZE):
                pass
    except (tarfile.TarError, EOFError) as exc:
        report.fail(f"{name}: the tar stream is damaged ({exc})")
        return False
    except PgBackupError as exc:
        report.fail(f"{name}: {exc.message}")
        return False
    if source.sha256.hexdigest() != obj["sha256"] or source.count != obj["size"]:
        report.fail(f"{name}: stored object does not match its sha256 in metadata.json")
    return True


def member_crc32c(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, int]:
    """(size, CRC32C) of one file of the archive, read through."""
    fileobj = tar.extractfile(member)
    crc = 0
    size = 0
    if fileobj is not None:
        while True:
            chunk = fileobj.read(READ_SIZE)
            if not chunk:
                break
            crc = crc32c.crc32c(chunk, crc)
            size += len(chunk)
    return size, crc


def check_against_manifest(
    path: str,
    size: int,
    crc: int,
    expected: dict[str, Any],
    seen: set[str],
    report: VerifyReport,
) -> None:
    """One file of the backup against its backup_manifest entry: listed, its size, its
    CRC32C."""
    entry = expected.get(path)
    if entry is None:
        # WAL in pg_wal/ is checked by name below, not by the manifest.
        if not path.startswith("pg_wal/"):
            report.fail(f"{path}: in the backup but not in backup_manifest")
        return
    seen.add(path)
    report.files_checked += 1
    if size != int(entry["Size"]):
        report.fail(f"{path}: size {size} differs from the manifest's {entry['Size']}")
    elif entry.get("Checksum-Algorithm") == "CRC32C" and crc32c_hex(crc) != entry["Checksum"]:
        report.fail(f"{path}: checksum mismatch (file content differs from the manifest)")


def info_label(meta: dict[str, Any]) -> str:
    return str(meta.get("backup_id", ""))


def chain_problems(reports: list[VerifyReport], broken: dict[str, list[str]]) -> None:
    """Each report of a backup whose incremental chain is broken fails with why."""
    for backup_id, problems in broken.items():
        for r in reports:
            if r.backup_id == backup_id:
                for p in problems:
                    r.fail(f"incremental chain broken: {p}")


def run_verify(
    policy: Policy, target: Target, which: str | None, repo: Repository
) -> list[VerifyReport]:
    """Verify one backup (id), the newest (``latest``/None), or ``all``: of every
    generation of the target (engine/generations), each read in its own namespace."""
    from pgbackup.engine.generations import generation_views, restore_storage
    from pgbackup.policy.chains import broken_chains

    base = repo
    if which == "all":
        reports = []
        found = False
        for _gen, storage in generation_views(base.storage, target.name):
            repo = Repository(storage)
            backups = repo.backups(target.name)
            found = found or bool(backups)
            one = []
            for b in backups:
                if b.complete:
                    one.append(verify_backup(policy, repo, b))
                elif b.problem:
                    r = VerifyReport(b.backup_id, target.name)
                    r.fail(b.problem)
                    one.append(r)
            chain_problems(one, broken_chains(backups))
            reports += one
        if not found:
            raise PgBackupError(f"target {target.name!r} has no backups to verify")
    else:
        repo = Repository(restore_storage(base.storage, target.name, which, None, None))
        chosen = repo.find_backup(target.name, which)
        backups = repo.backups(target.name)
        by_id = {b.backup_id: b for b in backups}
        # An incremental restores only with its chain: every member is verified too.
        members = [by_id[m] for m in chosen.metadata.get("chain") or [] if m in by_id]
        reports = [verify_backup(policy, repo, b) for b in [*members, chosen] if b.complete]
        chain_problems(reports, broken_chains(backups))
    for r in reports:
        if r.ok:
            LOG.info("verify %s/%s: ok (%d files)", r.target, r.backup_id, r.files_checked)
        else:
            for p in r.problems:
                LOG.error("verify %s/%s: %s", r.target, r.backup_id, p, extra=LOG_FILE_ONLY)
    base.record_run(
        target.name,
        "verify",
        {
            "status": "ok" if all(r.ok for r in reports) else "failed",
            "backups": {r.backup_id: ("ok" if r.ok else r.problems[:5]) for r in reports},
        },
    )
    return reports
