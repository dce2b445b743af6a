"""Delta restore planning: what of an existing, stopped copy a restore can keep.

``restore --delta`` writes over an old copy of the data directory: every file whose size
and CRC32C equal the backup_manifest's is kept, every other file is removed before the
backup's members are written. The planning (reading the manifest, comparing, removing)
is its own step with its own checks, separate from streaming the backup in, so it lives
here; restore.py calls it before it writes. combine.py reads manifests with it too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pgbackup.engine.repository import BackupInfo
from pgbackup.errors import RestoreError
from pgbackup.formats.codecs import CodecSpec
from pgbackup.postgres.cluster import Cluster, server_os_user
from pgbackup.storage import Storage

READ_SIZE = 1 << 20


class DeltaPlan:
    """What a delta restore keeps, and what it removed before writing."""

    def __init__(
        self, keep: set[str] | None = None, reused_bytes: int = 0, removed_files: int = 0
    ) -> None:
        self.keep: set[str] = set() if keep is None else keep
        self.reused_bytes = reused_bytes
        self.removed_files = removed_files

    def as_dict(self) -> dict[str, int]:
        return {
            "kept_files": len(self.keep),
            "reused_bytes": self.reused_bytes,
            "removed_files": self.removed_files,
        }


def read_manifest(
    storage: Storage, prefix: str, info: BackupInfo, identity_list: list[str] | None
) -> dict[str, Any]:
    """The backup's own backup_manifest (decoded), as PostgreSQL wrote it."""
    import json

    return dict(json.loads(read_manifest_bytes(storage, prefix, info, identity_list)))


def read_manifest_bytes(
    storage: Storage, prefix: str, info: BackupInfo, identity_list: list[str] | None
) -> bytes:
    """The backup's backup_manifest, checked against its metadata and decoded."""
    from pgbackup.formats.codecs import decode_bytes

    for name, obj in info.metadata["objects"].items():
        if obj.get("kind") == "manifest":
            stored = storage.read_bytes(prefix + name)
            if hashlib.sha256(stored).hexdigest() != obj["sha256"]:
                raise RestoreError(f"{name} does not match its checksum; the backup is damaged")
            return decode_bytes(
                CodecSpec.from_dict(obj["codec"]), stored, identities=identity_list, what=name
            )
    raise RestoreError(f"backup {info.backup_id} has no backup_manifest; --delta needs one")


def manifest_path_on_disk(path: str, directory: Path, destinations: dict[int, Path]) -> Path:
    """Where a manifest path (relative to the data directory) lives on disk: tablespace
    files (``pg_tblspc/<oid>/...``) under their restore destinations."""
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "pg_tblspc" and parts[1].isdigit():
        where = destinations.get(int(parts[1]))
        if where is not None:
            return where.joinpath(*parts[2:])
    return directory.joinpath(*parts)


def plan_delta(
    directory: Path, destinations: dict[int, Path], manifest: dict[str, Any]
) -> DeltaPlan:
    """Keep every file whose size and CRC32C equal the manifest's; remove every other
    file (and link) the backup does not have, pg_wal's content included (stale WAL must
    never be replayed). Files kept are not written again."""
    import crc32c

    plan = DeltaPlan()
    wanted: dict[Path, dict[str, Any]] = {}
    for entry in manifest.get("Files", []):
        wanted[manifest_path_on_disk(entry["Path"], directory, destinations)] = entry
    for on_disk, entry in wanted.items():
        try:
            if on_disk.is_symlink() or not on_disk.is_file():
                continue
            if on_disk.stat().st_size != int(entry["Size"]):
                continue  # truncated or grown: rewritten
            if entry.get("Checksum-Algorithm") != "CRC32C":
                continue  # nothing to compare with: rewritten
            crc = 0
            with open(on_disk, "rb") as f:
                while chunk := f.read(READ_SIZE):
                    crc = crc32c.crc32c(chunk, crc)
            if crc.to_bytes(4, "little").hex() != entry["Checksum"]:
                continue  # right size, wrong content: rewritten
        except OSError:
            continue
        plan.keep.add(entry["Path"])
        plan.reused_bytes += int(entry["Size"])
    keep_on_disk = {manifest_path_on_disk(p, directory, destinations) for p in plan.keep}
    for root in [directory, *destinations.values()]:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            base = Path(dirpath)
            for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
                path = base / name
                if path not in keep_on_disk:
                    path.unlink()
                    plan.removed_files += 1
    return plan


def probe_cluster(directory: Path, pg_bin_dir: Path | None) -> Cluster:
    """The server that may run on ``directory``, with the programs of its major
    (PG_VERSION) found through the target's ``pg_bin_dir`` first (postgres/binaries)."""
    try:
        major: int | None = int((directory / "PG_VERSION").read_text().split(".")[0])
    except (OSError, ValueError):
        major = None
    return Cluster(directory, 0, major=major, os_user=server_os_user() or "", pg_bin_dir=pg_bin_dir)


def check_delta_destination(directory: Path, pg_bin_dir: Path | None) -> None:
    """--delta writes into an existing, STOPPED data directory of PostgreSQL's."""
    if not (directory / "PG_VERSION").is_file():
        raise RestoreError(
            f"{directory} holds no PostgreSQL data directory; --delta restores over an "
            "existing copy",
            hint="leave out --delta to restore into an empty or new directory",
        )
    if (directory / "postmaster.pid").exists():
        probe = probe_cluster(directory, pg_bin_dir)
        if probe.is_running():
            raise RestoreError(
                f"a PostgreSQL server (pid {probe.postmaster_pid()}) is running on {directory}; "
                "a delta restore never writes under a running server",
                hint=f"stop it first: pg_ctl -D {directory} stop",
            )
