"""A stored backup's objects: which archives it holds, the keys that open them, and the
extraction of one into a directory, its checksum checked.

Shared by restore (a full backup), combine (each member of an incremental chain, staged)
and verify; it sits below all three, so none imports another for these steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path
from typing import Any, BinaryIO, cast

from pgbackup.engine.repository import BackupInfo
from pgbackup.errors import PgBackupError, RestoreError
from pgbackup.formats.codecs import CodecSpec, open_decoder
from pgbackup.policy import Policy
from pgbackup.storage import Storage
from pgbackup.ui import Progress, progress

READ_SIZE = 1 << 20


class HashingReader:
    """Wraps a stream and hashes (and counts) what is read through it."""

    def __init__(self, inner: BinaryIO):
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.sha256.update(data)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.inner.close()


def timed_decode(decoded: Any) -> Any:
    """The decoded stream, its reads counted to ``decode`` when the extraction is timed
    (formats/untar.PHASES, set by a restore): storage reads nested inside them count to
    their own phase (engine/phases)."""
    from pgbackup.formats import untar

    phases = untar.PHASES.get()
    if phases is None:
        return decoded
    from pgbackup.engine.phases import Phases, TimedReader

    return TimedReader(decoded, cast(Phases, phases), "decode")


def base_object(info: BackupInfo) -> tuple[str, dict[str, Any]]:
    for name, obj in info.metadata["objects"].items():
        if obj.get("kind") == "base":
            return name, obj
    raise RestoreError(f"backup {info.backup_id} metadata names no base object")


def archive_objects(info: BackupInfo) -> list[tuple[str, dict[str, Any]]]:
    """The backup's tar archives in restore order: base, then its WAL, then tablespaces."""
    order = {"base": 0, "wal": 1, "tablespace": 2}
    found = [
        (name, obj) for name, obj in info.metadata["objects"].items() if obj.get("kind") in order
    ]
    return sorted(found, key=lambda item: (order[item[1]["kind"]], item[1].get("oid", 0)))


def identities(policy: Policy, info: BackupInfo) -> list[str] | None:
    """The age identities an encrypted backup needs; a clear error when none is named."""
    if not info.metadata.get("encrypted"):
        return None
    from pgbackup.engine.wal import policy_identities

    found = policy_identities(policy)
    if found is None:
        raise PgBackupError(
            f"backup {info.backup_id} is encrypted and the policy names no identity",
            hint="set encryption.identity_file in backup.yaml to the age key that decrypts it",
        )
    return found


def empty_directory(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def extract(
    storage: Storage,
    key: str,
    spec: CodecSpec,
    identity_list: list[str] | None,
    directory: Path,
    expected: dict[str, Any],
    keep: Any = None,
    bar: bool = True,
) -> tuple[int, int]:
    """Stream the stored object into the data directory; returns the stored bytes read
    and the bytes written (less than the content when ``keep`` spared files).

    Decoding happens in this process (python-zstandard, age), the tar stream is written by
    parallel writers that fsync each file (:mod:`pgbackup.formats.untar`). The sha256 of the stored
    bytes is checked against ``expected`` before anything else is believed.
    """
    from pgbackup.formats import untar

    source = HashingReader(storage.open_read(key))
    problem: PgBackupError | None = None
    written = 0
    with (
        contextlib.closing(source),
        open_decoder(source, spec, identities=identity_list, what=key) as decoded,  # type: ignore[arg-type]
        progress("restore", int(expected.get("raw_bytes", 0)) or None)
        if bar
        else contextlib.nullcontext(Progress("", None)) as progress_bar,
    ):
        try:
            written = untar.extract(
                timed_decode(decoded),  # type: ignore[arg-type]
                directory,
                on_bytes=progress_bar.advance,
                keep=keep,
            )
        except PgBackupError as exc:
            problem = exc  # the checksum verdict comes first
        # Drain what the tar stream did not need, so the checksum covers every byte.
        while source.read(READ_SIZE):
            pass
    if source.sha256.hexdigest() != expected["sha256"] or source.count != expected["size"]:
        raise RestoreError(
            f"{key} does not match the checksum recorded in its metadata "
            f"({source.count} bytes read, {expected['size']} expected); the stored backup is damaged",
            hint="run `pgbackup verify --backup all` and restore from another backup",
        )
    if problem is not None:
        raise RestoreError(f"cannot restore {key}: {problem.message}", hint=problem.hint)
    return source.count, written
