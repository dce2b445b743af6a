"""Incremental chains: an incremental backup rebuilt into a whole data directory.

An incremental backup (PostgreSQL 17+) restores only with the chain it builds on: every
member, full backup first, is extracted into a staging directory and PostgreSQL's own
pg_combinebackup rebuilds the data directory from them. That is a restore of several
backups and a program of its own, so it lives beside restore.py, which calls it for a
backup that has a parent.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pgbackup.engine.delta import read_manifest_bytes
from pgbackup.engine.repository import BackupInfo, Repository
from pgbackup.errors import PgBackupError, RestoreError
from pgbackup.formats.codecs import CodecSpec
from pgbackup.policy import Policy, Target
from pgbackup.postgres.cluster import hand_over
from pgbackup.storage import Storage
from pgbackup.ui import LOG


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


def combine_chain(
    storage: Storage,
    repo: Repository,
    policy: Policy,
    target: Target,
    members: list[BackupInfo],
    directory: Path,
    os_user: str | None,
) -> dict[str, Any]:
    """Extract each member (full first) into a staging directory beside ``directory`` and
    rebuild the data directory with pg_combinebackup of the backup's major; returns what
    was read and how it was combined."""
    # restore.py's own steps; restore.py imports this module, so not at the top
    from pgbackup.engine.restore import archive_objects, empty_directory, extract, identities
    from pgbackup.postgres.binaries import find_program
    from pgbackup.postgres.cluster import run_as

    last = members[-1]
    program = find_program(
        "pg_combinebackup", int(last.metadata["server_version_num"]) // 10000, target.pg_bin_dir
    )
    staging = Path(tempfile.mkdtemp(prefix=".pgbackup-combine-", dir=directory.parent))
    stored = 0
    try:
        dirs = []
        t0 = time.monotonic()
        for member in members:
            prefix = repo.base_prefix(target.name, member.backup_id)
            identity_list = identities(policy, member)
            where = staging / member.backup_id
            for name, obj in archive_objects(member):
                if obj["kind"] == "wal" and member is not last:
                    continue  # only the newest member's WAL is needed
                into = where / "pg_wal" if obj["kind"] == "wal" else where
                into.mkdir(parents=True, exist_ok=True)
                read, _ = extract(
                    storage,
                    prefix + name,
                    CodecSpec.from_dict(obj["codec"]),
                    identity_list,
                    into,
                    obj,
                )
                stored += read
            (where / "backup_manifest").write_bytes(
                read_manifest_bytes(storage, prefix, member, identity_list)
            )
            dirs.append(str(where))
        extracted = time.monotonic() - t0
        hand_over(staging, os_user, 0o700)
        failures = []
        for method in COMBINE_METHODS:
            t1 = time.monotonic()
            proc = run_as(
                [program, "--output", str(directory), *method, *dirs],
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
                return {
                    "members": [m.backup_id for m in members],
                    "method": (method[0].lstrip("-") if method else "copy"),
                    "extract_seconds": round(extracted, 3),
                    "combine_seconds": round(time.monotonic() - t1, 3),
                    "stored_bytes": stored,
                }
            failures.append(f"{' '.join(method) or 'copy'}: {(proc.stdout or '').strip()[-500:]}")
            empty_directory(directory)
        raise RestoreError(
            f"pg_combinebackup could not rebuild backup {last.backup_id} from its chain "
            f"({' <- '.join(m.backup_id for m in members)}): {failures[-1]}",
            hint="run `pgbackup verify --backup " + last.backup_id + "`",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
