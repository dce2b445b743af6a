"""Restore a base backup into a data directory, optionally recovering to a target.

The stored object is streamed: storage -> checksum -> codecs -> ``tar -x`` running as
the server's OS user (so ownership is right) with umask 077 (so permissions are
PostgreSQL's 0700/0600). If anything fails - wrong key, corrupt object, checksum
mismatch - the directory is emptied again: a half-written data directory is never left
behind looking usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pgbackup.codecs import CodecSpec, open_decoder
from pgbackup.config import Policy, Target
from pgbackup.errors import PgBackupError, PostgresError, RestoreError
from pgbackup.postgres.cluster import Cluster, free_port, hand_over, server_os_user
from pgbackup.repository import BackupInfo, Repository
from pgbackup.storage import Storage, open_storage
from pgbackup.ui import LOG, human_bytes, progress

READ_SIZE = 1 << 20


@dataclass
class RestoreResult:
    backup_id: str
    target: str
    directory: str
    stored_bytes: int
    raw_bytes: int
    seconds: float
    port: int | None = None
    started: bool = False
    recovery: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def base_object(info: BackupInfo) -> tuple[str, dict[str, Any]]:
    for name, obj in info.metadata["objects"].items():
        if obj.get("kind") == "base":
            return name, obj
    raise RestoreError(f"backup {info.backup_id} metadata names no base object")


def identities(policy: Policy, info: BackupInfo) -> list[str] | None:
    """The age identities an encrypted backup needs; a clear error when none is named."""
    if not info.metadata.get("encrypted"):
        return None
    from pgbackup.wal import policy_identities

    found = policy_identities(policy)
    if found is None:
        raise PgBackupError(
            f"backup {info.backup_id} is encrypted and the policy names no identity",
            hint="set encryption.identity_file in backup.yaml to the age key that decrypts it",
        )
    return found


def check_destination(directory: Path, force: bool) -> None:
    """Refuse a non-empty directory or a running postmaster unless forced."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise RestoreError(f"{directory} exists and is not a directory")
    pid_file = directory / "postmaster.pid"
    if pid_file.exists():
        probe = Cluster(directory, 0, os_user=server_os_user() or "")
        if probe.is_running():
            if not force:
                raise RestoreError(
                    f"a PostgreSQL server (pid {probe.postmaster_pid()}) is running on {directory}",
                    hint=f"stop it first (pg_ctl -D {directory} stop) or pass --force to stop it and replace its data",
                )
            LOG.warning("stopping the server running on %s (--force)", directory)
            probe.os_user = server_os_user()
            probe.stop("fast")
    if any(directory.iterdir()):
        if not force:
            raise RestoreError(
                f"{directory} is not empty; restore refuses to write into it",
                hint="choose an empty or new directory, or pass --force to replace its contents",
            )
        if directory.resolve() in (Path("/"), Path.home().resolve()):
            raise RestoreError(f"refusing to empty {directory}")
        LOG.warning("emptying %s (--force)", directory)
        empty_directory(directory)


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
) -> int:
    """Stream the stored object into the data directory; returns the stored bytes read.

    Decoding happens in this process (python-zstandard, age), the tar stream is written by
    parallel writers that fsync each file (:mod:`pgbackup.untar`). The sha256 of the stored
    bytes is checked against ``expected`` before anything else is believed.
    """
    from pgbackup import untar

    source = HashingReader(storage.open_read(key))
    problem: PgBackupError | None = None
    with (
        contextlib.closing(source),
        open_decoder(source, spec, identities=identity_list, what=key) as decoded,  # type: ignore[arg-type]
        progress("restore", int(expected.get("raw_bytes", 0)) or None) as bar,
    ):
        try:
            untar.extract(decoded, directory, on_bytes=bar.advance)  # type: ignore[arg-type]
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
    return source.count


def recovery_failure(cluster: Any) -> str | None:
    """The reason PostgreSQL gave for stopping recovery, from its log (None if it did not)."""
    tail = cluster.log_tail(60)
    fatal = [ln.split("FATAL:", 1)[1].strip() for ln in tail.splitlines() if "FATAL:" in ln]
    fatal = [f for f in fatal if "the database system is" not in f and "role " not in f]
    # wal-fetch's own line (stderr of restore_command lands in the server log) says why
    # a file could not be restored; PostgreSQL's FATAL only names the file.
    ours = [
        ln.split("error:", 1)[1].strip()
        for ln in tail.splitlines()
        if ln.startswith("pgbackup wal-fetch: error:")
    ]
    if fatal and ours:
        return f"{fatal[-1]}: {ours[-1]}"
    return fatal[-1] if fatal else None


MINIMAL_CONF = """# written by pgbackup restore: the backup carried no postgresql.conf
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
"""


def run_restore(
    policy: Policy,
    target: Target,
    backup_id: str | None,
    directory: Path,
    *,
    force: bool = False,
    start: bool = False,
    port: int | None = None,
    archive: bool = True,
    recovery_settings: dict[str, Any] | None = None,
    storage: Storage | None = None,
    wait_for_recovery: Any = None,
) -> RestoreResult:
    """Restore ``backup_id`` (or the newest) of ``target`` into ``directory``."""
    t0 = time.monotonic()
    storage = storage or open_storage(policy.repository)
    repo = Repository(storage)
    info = repo.find_backup(target.name, backup_id)
    name, obj = base_object(info)
    spec = CodecSpec.from_dict(obj["codec"])
    identity_list = identities(policy, info)
    directory = directory.absolute()
    check_destination(directory, force)
    os_user = server_os_user()
    directory.mkdir(parents=True, exist_ok=True)
    hand_over(directory, os_user, 0o700)
    key = repo.base_prefix(target.name, info.backup_id) + name
    LOG.info("restoring backup %s of %s into %s", info.backup_id, target.name, directory)
    try:
        stored = extract(
            storage,
            key,
            spec,
            identity_list,
            directory,
            {**obj, "raw_bytes": info.metadata.get("raw_bytes", 0)},
        )
        raw = int(info.metadata.get("raw_bytes", 0))
        if not (directory / "PG_VERSION").exists():
            raise RestoreError(f"{key} did not contain a PostgreSQL data directory")
    except BaseException:
        with contextlib.suppress(OSError):
            empty_directory(directory)
        LOG.error(
            "restore of %s into %s failed; the directory was emptied again",
            info.backup_id,
            directory,
        )
        raise
    settings: dict[str, Any] = {}
    if not (directory / "postgresql.conf").exists():
        (directory / "postgresql.conf").write_text(MINIMAL_CONF)
    if port or start:
        port = port or free_port()
        settings["port"] = port
    if not archive:
        settings["archive_mode"] = "off"
    cluster = Cluster(
        directory, port or 0, os_user=os_user, major=info.metadata["server_version_num"] // 10000
    )
    if recovery_settings:
        settings.update(recovery_settings)
        (directory / "recovery.signal").write_text("")
    if settings:
        cluster.configure(settings)
    hand_over(directory, os_user, 0o700)
    result = RestoreResult(
        backup_id=info.backup_id,
        target=target.name,
        directory=str(directory),
        stored_bytes=stored,
        raw_bytes=raw,
        seconds=0.0,
        port=port,
    )
    if start:
        try:
            cluster.start()
            result.started = True
            if wait_for_recovery is not None:
                result.recovery = wait_for_recovery(cluster)
        except BaseException as exc:
            # Not where it was asked to be (a server that died in recovery included):
            # leave nothing that looks usable.
            reason = recovery_failure(cluster) if recovery_settings else None
            with contextlib.suppress(Exception):
                cluster.stop("immediate")
            with contextlib.suppress(OSError):
                empty_directory(directory)
            LOG.error(
                "recovery of %s into %s failed; the directory was emptied",
                info.backup_id,
                directory,
            )
            if isinstance(exc, PostgresError) and reason:
                raise RestoreError(
                    f"recovery stopped before reaching its target: {reason}",
                    hint=f"the archive misses or cannot deliver a file (pgbackup verify --wal); "
                    f"see {cluster.log_file}",
                ) from None
            raise
    result.seconds = round(time.monotonic() - t0, 3)
    LOG.info(
        "restored %s (%s) into %s in %.1fs%s",
        info.backup_id,
        human_bytes(raw),
        directory,
        result.seconds,
        f", server on port {port}" if start else "",
    )
    return result
