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
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pgbackup.codecs import CodecSpec, load_identities, open_decoder
from pgbackup.config import Policy, Target
from pgbackup.errors import PgBackupError, RestoreError
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
    if not info.metadata.get("encrypted"):
        return None
    if policy.encryption is None or policy.encryption.identity_file is None:
        raise PgBackupError(
            f"backup {info.backup_id} is encrypted and the policy names no identity",
            hint="set encryption.identity_file in backup.yaml to the age key that decrypts it",
        )
    return load_identities(policy.encryption.identity_file)


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


# tar runs these for decompression in a process of their own, in parallel with extraction.
DECOMPRESSORS = {"zstd": "zstd", "gzip": "gzip", "lz4": "lz4"}


def extract(
    storage: Storage,
    key: str,
    spec: CodecSpec,
    identity_list: list[str] | None,
    directory: Path,
    os_user: str | None,
    expected: dict[str, Any],
) -> int:
    """Stream the stored object into ``tar -x``; returns the stored bytes read.

    Python only moves (and hashes, and decrypts) the compressed bytes; ``tar -I zstd``
    decompresses in a process of its own while tar writes. The sha256 of the stored
    bytes is checked against ``expected`` before anything else is believed.
    """
    kwargs: dict[str, Any] = {}
    env = dict(os.environ)
    if os_user is not None:
        pw = pwd.getpwnam(os_user)
        kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        env["HOME"] = pw.pw_dir
    argv = [
        "tar",
        "-x",
        "-f",
        "-",
        "-C",
        str(directory),
        "--no-same-owner",
        "--delay-directory-restore",
    ]
    program = DECOMPRESSORS.get(spec.compression)
    if program and shutil.which(program):
        argv += ["-I", program]
        decode_spec = CodecSpec("none", 0, spec.encrypted)  # only decryption left for us
    else:
        decode_spec = spec
    source = HashingReader(storage.open_read(key))
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", env=env, umask=0o077, **kwargs
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with (
            contextlib.closing(source),
            open_decoder(source, decode_spec, identities=identity_list, what=key) as decoded,  # type: ignore[arg-type]
            progress("restore", int(expected.get("size", 0)) or None) as bar,
        ):
            while chunk := decoded.read(READ_SIZE):
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:
                    break
                bar.advance(len(chunk))
            # Drain what tar did not need, so the checksum covers every byte.
            while source.read(READ_SIZE):
                pass
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        rc = proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    if source.sha256.hexdigest() != expected["sha256"] or source.count != expected["size"]:
        raise RestoreError(
            f"{key} does not match the checksum recorded in its metadata "
            f"({source.count} bytes read, {expected['size']} expected); the stored backup is damaged",
            hint="run `pgbackup verify --backup all` and restore from another backup",
        )
    if rc != 0:
        raise RestoreError(f"tar failed extracting {key} into {directory}: {err[-500:]}")
    return source.count


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
        stored = extract(storage, key, spec, identity_list, directory, os_user, obj)
        raw = int(info.metadata.get("raw_bytes", 0))
        if not (directory / "PG_VERSION").exists():
            raise RestoreError(f"{key} did not contain a PostgreSQL data directory")
        # Durable before we say "restored" (one syncfs rather than an fsync per file).
        subprocess.run(["sync", "-f", str(directory)], check=False)
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
        cluster.start()
        result.started = True
        if wait_for_recovery is not None:
            try:
                result.recovery = wait_for_recovery(cluster)
            except BaseException:
                # Not where it was asked to be: leave nothing that looks usable.
                cluster.stop("immediate")
                with contextlib.suppress(OSError):
                    empty_directory(directory)
                LOG.error(
                    "recovery of %s into %s failed; the directory was emptied",
                    info.backup_id,
                    directory,
                )
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
