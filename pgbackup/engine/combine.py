"""Incremental chains: an incremental backup rebuilt into a whole data directory.

An incremental backup (PostgreSQL 17+) restores only with the chain it builds on: every
member, full backup first, is extracted into a staging directory and PostgreSQL's own
pg_combinebackup rebuilds the data directory from them. That is a restore of several
backups and a program of its own, so it lives beside restore.py, which calls it for a
backup that has a parent.

Tablespaces. A tar-format backup holds each tablespace as ``<oid>.tar`` and, in base.tar,
a ``tablespace_map`` instead of the ``pg_tblspc`` links (pg_basebackup asks the server
for TABLESPACE_MAP when ``format == 't'``: src/bin/pg_basebackup/pg_basebackup.c). But
pg_combinebackup reads plain directories: it lists the tablespaces by scanning
``pg_tblspc`` of the FINAL backup for links (``scan_for_existing_tablespaces``), demands
a ``-T OLDDIR=NEWDIR`` for each link target there ("tablespace at ... has no tablespace
mapping"), and reaches a tablespace's files in the earlier backups through
``<backup>/pg_tblspc/<oid>/`` (src/bin/pg_combinebackup/pg_combinebackup.c,
reconstruct.c). So each member's ``<oid>.tar`` is extracted into a staging directory of
its own with ``pg_tblspc/<oid>`` a link to it, and the final member's staging
directories are mapped to the restore's destinations. ``tablespace_map`` is an ordinary
file to pg_combinebackup and is copied into the output; restore.py's
``link_tablespaces`` then removes it, as for a full restore (a server started on it
would recreate the original links).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pgbackup.engine.delta import read_manifest_bytes
from pgbackup.engine.objects import archive_objects, empty_directory, extract, identities
from pgbackup.engine.repository import BackupInfo, Repository
from pgbackup.errors import PgBackupError, RestoreError
from pgbackup.formats.codecs import CodecSpec
from pgbackup.formats.manifest import manifest_facts
from pgbackup.policy import Policy, Target
from pgbackup.postgres.cluster import hand_over
from pgbackup.storage import Storage
from pgbackup.ui import LOG


def combined_bytes(directory: Path, wal_segment_size: int) -> int:
    """Bytes of the rebuilt data directory, tablespaces included, as the manifest that
    pg_combinebackup writes into it counts them (its files plus the WAL it covers): read
    from one file rather than a walk of the whole tree, which only a drill's throughput
    figure needs."""
    manifest = (directory / "backup_manifest").read_bytes()
    return int(manifest_facts(manifest, wal_segment_size)["raw_bytes"])


def chain_members(repo: Repository, target: str, info: BackupInfo) -> list[BackupInfo]:
    """The backups an incremental restores from, full backup first, ``info`` last; a
    missing or incomplete member is one clear error (before anything is written)."""
    members = []
    for backup_id in info.metadata.get("chain") or []:
        try:
            member = repo.find_backup(target, backup_id)
        except PgBackupError as exc:
            raise RestoreError(
                f"backup {info.backup_id} is an incremental whose chain member {backup_id} "
                f"cannot be used: {exc.message}",
                hint="restore another backup (pgbackup list shows the chains)",
            ) from None
        members.append(member)
    return [*members, info]


#: pg_combinebackup's ways of copying, fastest first: reflinks, copy_file_range, copy.
COMBINE_METHODS = (("--clone",), ("--copy-file-range",), ())


def combine_methods(major: int) -> tuple[tuple[str, ...], ...]:
    """The ways to try, fastest first. PostgreSQL 18 adds ``--link`` (hard links:
    src/bin/pg_combinebackup/copy_file.c, copy_file_link), which its manual says is "best
    used when the input directories are only copies that will be removed after
    pg_combinebackup has completed" and needs inputs and output on one filesystem: the
    staging directories here are exactly that (ours, beside the output, removed when it
    ends), so a file whole in one member is linked rather than written a second time.
    Output on another filesystem (a mount point, a tablespace elsewhere) fails with EXDEV
    and the next way is tried. pg_combinebackup still fsyncs the output (sync_pgdata),
    which covers the linked files' data."""
    return ((("--link",),) if major >= 18 else ()) + COMBINE_METHODS


def combine_chain(
    storage: Storage,
    repo: Repository,
    policy: Policy,
    target: Target,
    members: list[BackupInfo],
    directory: Path,
    os_user: str | None,
    destinations: dict[int, Path] | None = None,
) -> dict[str, Any]:
    """Extract each member (full first) into a staging directory beside ``directory`` and
    rebuild the data directory with pg_combinebackup of the backup's major; returns what
    was read and how it was combined. ``destinations``: where each tablespace of the
    newest member (by OID) is written (restore.py's ``tablespace_destinations``; the
    caller has checked they are empty or absent)."""
    from pgbackup.postgres.binaries import program_for

    last = members[-1]
    major = int(last.metadata["server_version_num"]) // 10000
    program = program_for(target, "pg_combinebackup", major)
    staging = Path(tempfile.mkdtemp(prefix=".pgbackup-combine-", dir=directory.parent))
    destinations = destinations or {}
    try:
        t0 = time.monotonic()
        stage = Staged()
        for member in members:
            stage_member(stage, storage, repo, policy, target, member, staging, destinations, last)
        extracted = time.monotonic() - t0
        hand_over(staging, os_user, 0o700)
        for where in destinations.values():
            # pg_combinebackup, run as the server's OS user, fills an existing empty
            # directory or creates a missing one (create_output_directory).
            where.mkdir(parents=True, exist_ok=True)
            hand_over(where, os_user, 0o700)
        method, t1 = run_combine(program, major, members, stage, directory, destinations, os_user)
        return {
            "members": [m.backup_id for m in members],
            "method": (method[0].lstrip("-") if method else "copy"),
            "extract_seconds": round(extracted, 3),
            "combine_seconds": round(time.monotonic() - t1, 3),
            "stored_bytes": stage.stored,
            "staged_bytes": stage.staged,
            "combined_bytes": combined_bytes(directory, int(last.metadata["wal_segment_size"])),
        }
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Staged:
    """What the members' extraction left for pg_combinebackup: a directory per member
    (full first), the newest member's tablespace mappings, and the bytes read and written."""

    def __init__(self) -> None:
        self.dirs: list[str] = []
        self.mappings: list[str] = []
        self.stored = 0
        self.staged = 0  # bytes written into the staging directories


def stage_member(
    stage: Staged,
    storage: Storage,
    repo: Repository,
    policy: Policy,
    target: Target,
    member: BackupInfo,
    staging: Path,
    destinations: dict[int, Path],
    last: BackupInfo,
) -> None:
    """One member as a plain-format backup under ``staging``: its archives extracted (the
    WAL of the newest member only; each tablespace in a directory of its own, linked from
    the member's pg_tblspc), and its backup_manifest beside them."""
    prefix = repo.base_prefix(target.name, member.backup_id)
    identity_list = identities(policy, member)
    where = staging / member.backup_id
    for name, obj in archive_objects(member):
        if obj["kind"] == "wal" and member is not last:
            continue  # only the newest member's WAL is needed
        into = where / "pg_wal" if obj["kind"] == "wal" else where
        if obj["kind"] == "tablespace":
            into = staged_tablespace(staging, member.backup_id, where, int(obj["oid"]))
            if member is last:
                stage.mappings += tablespace_mapping(into, obj, destinations)
        into.mkdir(parents=True, exist_ok=True)
        read, wrote = extract(
            storage, prefix + name, CodecSpec.from_dict(obj["codec"]), identity_list, into, obj
        )
        stage.stored += read
        stage.staged += wrote
    (where / "backup_manifest").write_bytes(
        read_manifest_bytes(storage, prefix, member, identity_list)
    )
    stage.dirs.append(str(where))


def run_combine(
    program: str,
    major: int,
    members: list[BackupInfo],
    stage: Staged,
    directory: Path,
    destinations: dict[int, Path],
    os_user: str | None,
) -> tuple[tuple[str, ...], float]:
    """pg_combinebackup into ``directory``, each way of copying in turn (the output
    emptied after a way that failed); the way that worked and when its run started, or
    one error with the last failure."""
    from pgbackup.postgres.cluster import run_as

    failures = []
    for method in combine_methods(major):
        t1 = time.monotonic()
        proc = run_as(
            [program, "--output", str(directory), *stage.mappings, *method, *stage.dirs],
            os_user,
            check=False,
        )
        if proc.returncode == 0:
            LOG.info(
                "combined %d backups into %s with pg_combinebackup %s in %.1fs",
                len(members),
                directory,
                " ".join(method) or "(copy)",
                time.monotonic() - t1,
            )
            return method, t1
        failures.append(f"{' '.join(method) or 'copy'}: {(proc.stdout or '').strip()[-500:]}")
        for out in (directory, *destinations.values()):
            empty_directory(out)
    last = members[-1]
    raise RestoreError(
        f"pg_combinebackup could not rebuild backup {last.backup_id} from its chain "
        f"({' <- '.join(m.backup_id for m in members)}): {failures[-1]}",
        hint="run `pgbackup verify --backup " + last.backup_id + "`",
    )


def staged_tablespace(staging: Path, backup_id: str, member_dir: Path, oid: int) -> Path:
    """The staging directory of tablespace ``oid`` of one member, linked from the member's
    ``pg_tblspc/<oid>`` as in a plain-format backup (the link target must be absolute:
    pg_combinebackup refuses a relative one)."""
    into = (staging / f"{backup_id}.tablespaces" / str(oid)).absolute()
    links = member_dir / "pg_tblspc"
    links.mkdir(parents=True, exist_ok=True)
    link = links / str(oid)
    if not link.is_symlink():
        os.symlink(into, link)
    return into


def tablespace_mapping(
    staged: Path, obj: dict[str, Any], destinations: dict[int, Path]
) -> list[str]:
    """``-T STAGED=DESTINATION`` for one tablespace of the newest member; pg_combinebackup
    reads a backslash before ``=`` as a literal ``=`` (add_tablespace_mapping)."""
    oid = int(obj["oid"])
    if oid not in destinations:
        raise RestoreError(
            f"tablespace {obj.get('name', oid)} (oid {oid}) is in the backup's archives but "
            "not in its metadata's tablespaces; cannot tell where to restore it",
            hint="run `pgbackup verify` on the backup",
        )

    def escape(path: Path) -> str:
        return str(path).replace("=", "\\=")

    return [f"--tablespace-mapping={escape(staged)}={escape(destinations[oid])}"]
