"""Base backups: pg_basebackup's tar stream -> codecs -> repository, metadata last.

The tar stream is never staged on disk: pg_basebackup writes it to a pipe
(``-D - -Ft``), we encode it chunk by chunk into a streamed repository write, and pick
up ``backup_label`` and ``backup_manifest`` on the way. ``-X fetch`` puts the WAL that
makes the backup consistent inside the tar, so every backup restores on its own.
Only when every object is stored do we write ``metadata.json``; on any failure the
backup's own directory is removed and the failure is recorded, earlier backups untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pgbackup import __version__
from pgbackup.codecs import CodecSpec, Encoder, encode_bytes, load_recipients, suffix
from pgbackup.config import Policy, Target
from pgbackup.errors import BackupError, PgBackupError, PostgresError
from pgbackup.locks import target_lock
from pgbackup.lsn import format_lsn, parse_lsn
from pgbackup.postgres.binaries import find_program
from pgbackup.postgres.connection import (
    ServerFacts,
    check_replication_connection,
    connect,
    describe,
    server_facts,
    to_dsn,
)
from pgbackup.repository import MANIFEST, Repository, iso, new_backup_id, utcnow
from pgbackup.sandbox import resolve_conninfo
from pgbackup.storage import open_storage
from pgbackup.tarstream import TarScanner, parse_backup_label
from pgbackup.ui import LOG, human_bytes, progress

READ_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def codec_spec(policy: Policy) -> CodecSpec:
    return CodecSpec(
        compression=policy.compression.method,
        level=policy.compression.level,
        encrypted=policy.encryption is not None,
    )


def recipients(policy: Policy) -> list[str] | None:
    return load_recipients(policy.encryption.recipients_file) if policy.encryption else None


def basebackup_argv(program: str, conninfo: dict[str, Any], label: str) -> list[str]:
    """pg_basebackup writing one tar (manifest injected) to stdout, WAL included.

    No password in argv: libpq takes it from PGPASSWORD or the passfile.
    """
    return [
        program,
        "--dbname",
        to_dsn(conninfo),
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        "--checkpoint=fast",
        f"--label={label}",
        "--manifest-checksums=CRC32C",
        "--no-password",
    ]


def preflight(facts: ServerFacts, conninfo: dict[str, Any]) -> None:
    """Say precisely what is missing before copying anything."""
    where = describe(conninfo)
    if facts.wal_level not in ("replica", "logical"):
        raise PostgresError(
            f"{where}: wal_level is {facts.wal_level!r}; a base backup needs 'replica' or 'logical'",
            hint="ALTER SYSTEM SET wal_level = 'replica'; then restart the server",
        )
    if not facts.can_replicate:
        raise PostgresError(
            f"{where}: role {conninfo.get('user')!r} lacks the REPLICATION attribute",
            hint=f"ALTER ROLE {conninfo.get('user')} REPLICATION;",
        )
    if facts.max_wal_senders < 1:
        raise PostgresError(
            f"{where}: max_wal_senders is 0; pg_basebackup needs a WAL sender",
            hint="ALTER SYSTEM SET max_wal_senders = 10; then restart the server",
        )


@dataclass
class StreamResult:
    raw_bytes: int
    stored_bytes: int
    sha256: str
    label: dict[str, str]
    manifest: bytes
    files: int


def _stderr_collector(pipe: Any, sink: list[str]) -> threading.Thread:
    def run() -> None:
        for line in iter(pipe.readline, b""):
            sink.append(line.decode(errors="replace").rstrip())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def stream_base_backup(
    argv: list[str],
    writer: Any,
    spec: CodecSpec,
    recipients_list: list[str] | None,
    estimated_size: int,
) -> StreamResult:
    """Run pg_basebackup and pump its stdout through the encoder into ``writer``."""
    digest = hashlib.sha256()
    stored = 0

    def sink(data: bytes) -> None:
        nonlocal stored
        digest.update(data)
        stored += len(data)
        writer.write(data)

    scanner = TarScanner({"backup_label", "backup_manifest"})
    encoder = Encoder(spec, sink, recipients=recipients_list, threads=-1)
    errors: list[str] = []
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stderr is not None
    with contextlib.suppress(OSError):
        fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, READ_SIZE)
    err_thread = _stderr_collector(proc.stderr, errors)
    raw = 0
    fd = proc.stdout.fileno()
    try:
        with progress("backup", estimated_size or None) as bar:
            while True:
                chunk = os.read(fd, READ_SIZE)
                if not chunk:
                    break
                raw += len(chunk)
                scanner.feed(chunk)
                encoder.write(chunk)
                bar.advance(len(chunk))
            rc = proc.wait()
            err_thread.join(timeout=5)
            if rc != 0:
                detail = "; ".join(e for e in errors if e) or f"exit status {rc}"
                raise PostgresError(f"pg_basebackup failed: {detail}")
            encoder.close()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(Exception):
            encoder.abort()
        raise
    if "backup_manifest" not in scanner.captured or "backup_label" not in scanner.captured:
        raise BackupError("pg_basebackup's stream lacked backup_label or backup_manifest")
    return StreamResult(
        raw_bytes=raw,
        stored_bytes=stored,
        sha256=digest.hexdigest(),
        label=parse_backup_label(scanner.captured["backup_label"].decode(errors="replace")),
        manifest=scanner.captured["backup_manifest"],
        files=scanner.members,
    )


def store_small(repo: Repository, key: str, data: bytes) -> dict[str, Any]:
    repo.storage.write_bytes(key, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def wal_range(manifest: bytes) -> tuple[int, int, int]:
    """(timeline, start LSN, end LSN) from the manifest's WAL-Ranges (last range's end)."""
    ranges = json.loads(manifest).get("WAL-Ranges") or []
    if not ranges:
        raise BackupError("backup_manifest has no WAL-Ranges")
    return (
        int(ranges[-1]["Timeline"]),
        parse_lsn(ranges[0]["Start-LSN"]),
        parse_lsn(ranges[-1]["End-LSN"]),
    )


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so a stopped backup still cleans up after itself."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_backup(policy: Policy, target: Target) -> dict[str, Any]:
    """Take one base backup of ``target``; returns its metadata."""
    storage = open_storage(policy.repository)
    repo = Repository(storage)
    spec = codec_spec(policy)
    t0 = time.monotonic()
    started_at = utcnow()
    step = "taking the lock"
    backup_id = ""
    with _terminate_as_interrupt(), target_lock(policy.repository, target.name, "backup"):
        try:
            step = "connecting to the server"
            conninfo = resolve_conninfo(policy, target, LOG)
            with connect(conninfo) as conn:
                facts = server_facts(conn)
            preflight(facts, conninfo)
            step = "opening a replication connection"
            check_replication_connection(conninfo)
            program = find_program("pg_basebackup", facts.major, target.pg_bin_dir)
            recipients_list = recipients(policy)

            backup_id = new_backup_id(started_at)
            while any(True for _ in storage.list(repo.base_prefix(target.name, backup_id))):
                time.sleep(1)
                backup_id = new_backup_id()
            prefix = repo.base_prefix(target.name, backup_id)
            base_name = "base.tar" + suffix(spec)
            LOG.info(
                "backup %s of %s (%s, PostgreSQL %s) -> %s",
                backup_id,
                target.name,
                describe(conninfo),
                facts.version,
                storage.describe(),
            )
            step = f"streaming the base backup into {base_name}"
            with storage.open_write(prefix + base_name) as writer:
                result = stream_base_backup(
                    basebackup_argv(program, conninfo, f"pgbackup {backup_id}"),
                    writer,
                    spec,
                    recipients_list,
                    facts.database_size,
                )
            step = "storing backup_manifest"
            manifest_spec = CodecSpec("none", 0, spec.encrypted)
            manifest_name = MANIFEST + suffix(manifest_spec)
            manifest_stored = encode_bytes(
                manifest_spec, result.manifest, recipients=recipients_list
            )
            manifest_obj = store_small(repo, prefix + manifest_name, manifest_stored)
            timeline, start_lsn, stop_lsn = wal_range(result.manifest)
            stopped_at = utcnow()
            metadata: dict[str, Any] = {
                "format_version": 1,
                "backup_id": backup_id,
                "target": target.name,
                "status": "complete",
                "system_identifier": facts.system_identifier,
                "server_version": facts.version,
                "server_version_num": facts.version_num,
                "wal_segment_size": facts.wal_segment_size,
                "timeline": timeline,
                "start_lsn": format_lsn(start_lsn),
                "stop_lsn": format_lsn(stop_lsn),
                "start_time": iso(started_at),
                "label_start_time": result.label.get("START TIME"),
                "stop_time": iso(stopped_at),
                "duration_seconds": round(time.monotonic() - t0, 3),
                "raw_bytes": result.raw_bytes,
                "stored_bytes": result.stored_bytes + manifest_obj["size"],
                "files": result.files,
                "database_size": facts.database_size,
                "compression": {"method": spec.compression, "level": spec.level},
                "encrypted": spec.encrypted,
                "objects": {
                    base_name: {
                        "kind": "base",
                        "size": result.stored_bytes,
                        "sha256": result.sha256,
                        "codec": spec.to_dict(),
                    },
                    manifest_name: {
                        "kind": "manifest",
                        **manifest_obj,
                        "codec": manifest_spec.to_dict(),
                    },
                },
                "pgbackup_version": __version__,
                "pg_basebackup": program,
                "wal_method": "fetch",
            }
            step = "writing metadata.json"
            repo.write_metadata(target.name, backup_id, metadata)
        except BaseException as exc:
            message = (
                exc.message if isinstance(exc, PgBackupError) else (str(exc) or type(exc).__name__)
            )
            if isinstance(exc, KeyboardInterrupt):
                message = "interrupted"
            if backup_id:
                with contextlib.suppress(Exception):
                    storage.delete_prefix(repo.base_prefix(target.name, backup_id))
            repo.record_run(
                target.name,
                "backup",
                {
                    "status": "failed",
                    "backup_id": backup_id or None,
                    "step": step,
                    "error": message,
                    "started_at": iso(started_at),
                    "duration_seconds": round(time.monotonic() - t0, 3),
                },
            )
            LOG.error("backup of %s failed while %s: %s", target.name, step, message)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise BackupError(
                    f"backup of {target.name!r} interrupted while {step}; nothing was kept"
                ) from None
            if isinstance(exc, PgBackupError):
                raise BackupError(
                    f"backup of {target.name!r} failed while {step}: {exc.message}",
                    hint=exc.hint,
                ) from None
            raise
    repo.record_run(
        target.name,
        "backup",
        {
            "status": "ok",
            "backup_id": backup_id,
            "started_at": metadata["start_time"],
            "duration_seconds": metadata["duration_seconds"],
            "stored_bytes": metadata["stored_bytes"],
            "raw_bytes": metadata["raw_bytes"],
        },
    )
    LOG.info(
        "backup %s of %s complete: %s read, %s stored, %.1fs, LSN %s..%s",
        backup_id,
        target.name,
        human_bytes(metadata["raw_bytes"]),
        human_bytes(metadata["stored_bytes"]),
        metadata["duration_seconds"],
        metadata["start_lsn"],
        metadata["stop_lsn"],
    )
    return metadata
