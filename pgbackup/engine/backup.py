"""Base backups: pg_basebackup with server-side compression -> repository, metadata last.

The server compresses the tar stream (``--compress=server-zstd:LEVEL``; gzip and lz4
likewise), so the uncompressed stream never crosses a pipe or touches a disk: it is the
fastest way PostgreSQL offers (see bench/backup.py). pg_basebackup writes
``base.tar.zst``, one ``<oid>.tar.zst`` per tablespace, ``pg_wal.tar`` and
``backup_manifest``. The WAL is streamed while the files are copied (``-X stream`` on a
temporary replication slot, pg_basebackup's own default): with ``-X fetch`` a backup that
runs longer than the server takes to write ``max_wal_size`` fails at its very end because
the WAL it needs was recycled. ``pg_wal.tar`` holds the WAL from the backup's start to its
end, so every backup restores on its own; pgbackup compresses it (``pg_wal.tar.zst``).

- straight into the backup's own directory of a posix repository (fsynced by
  pg_basebackup; nothing is copied), or
- into a local staging directory, from which the compressed objects are streamed to
  object storage and/or through age encryption. Only the compressed form is staged.

Only when every object is stored do we write ``metadata.json``. On any failure the
backup's own directory is removed and the failure recorded; earlier backups are untouched.

Where the time goes (:mod:`pgbackup.engine.phases`; ``phases`` in ``metadata.json`` and in
the run record): ``server`` (pg_basebackup from start to exit: the server reading and
compressing, the stream written; its bytes the backup's raw size), ``compress``
(pg_wal.tar compressed, and encrypted when asked; or the archives, when the server
cannot compress), ``encrypt`` (a staged archive encrypted on its way), ``transfer``
(writes into the repository's storage, and committing each object), ``sync`` (the
thread that hashes what the follower did not and fsyncs what is kept, while pg_wal.tar is
compressed) and ``metadata`` (backup_manifest and ``metadata.json`` stored: in the run
record only, as ``metadata.json`` cannot hold the time of its own writing).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pgbackup import __version__
from pgbackup.engine.backup_preflight import (
    chain_of,
    choose_parent,
    incremental_preflight,
    preflight,
)
from pgbackup.engine.follow import ArchiveFollower, StreamedUpload
from pgbackup.engine.generations import backup_storage, number_of
from pgbackup.engine.locks import target_lock
from pgbackup.engine.phases import Phases
from pgbackup.engine.repository import MANIFEST, BackupInfo, Repository, iso, new_backup_id, utcnow
from pgbackup.engine.streamcompress import CompressionSide, compress_archives
from pgbackup.engine.streamcompress import from_facts as compression_side
from pgbackup.errors import BackupError, PgBackupError, PostgresError, UsageError
from pgbackup.formats.codecs import CodecSpec, Encoder, encode_bytes, load_recipients, suffix
from pgbackup.formats.lsn import format_lsn
from pgbackup.formats.manifest import manifest_facts
from pgbackup.policy import Policy, Target
from pgbackup.policy.records import BACKUP_TYPES
from pgbackup.postgres.binaries import program_for
from pgbackup.postgres.connection import (
    ServerFacts,
    describe,
    replication_refused,
    server_facts,
    to_dsn,
)
from pgbackup.signals import interrupts_deferred, terminate_as_interrupt
from pgbackup.storage import Storage, open_storage
from pgbackup.storage.posix import DIR_MODE, FILE_MODE, PosixStorage, fsync_path
from pgbackup.ui import LOG, human_bytes, interactive, progress

READ_SIZE = 1 << 20
T = TypeVar("T")
# pg_basebackup's names for our compression methods, and the levels it accepts.
SERVER_COMPRESSION = {"zstd": ("zstd", 1, 22), "gzip": ("gzip", 1, 9), "lz4": ("lz4", 1, 12)}
PROGRESS_RE = re.compile(r"(\d+)/(\d+) kB")


def codec_spec(policy: Policy) -> CodecSpec:
    return CodecSpec(
        compression=policy.compression.method,
        level=policy.compression.level,
        encrypted=policy.encryption is not None,
    )


def recipients(policy: Policy) -> list[str] | None:
    return load_recipients(policy.encryption.recipients_file) if policy.encryption else None


def compress_option(spec: CodecSpec, workers: int = 0) -> str | None:
    """``--compress=server-zstd:3`` and friends; None for no compression.

    ``workers`` (zstd only) are threads in the server's WAL sender; without them one
    thread compresses the whole cluster and is the backup's bottleneck.
    """
    if spec.compression == "none":
        return None
    name, low, high = SERVER_COMPRESSION[spec.compression]
    level = min(max(spec.level, low), high)
    if workers and spec.compression == "zstd":
        return f"--compress=server-{name}:level={level},workers={workers}"
    return f"--compress=server-{name}:{level}"


def basebackup_argv(
    program: str,
    conninfo: dict[str, Any],
    label: str,
    directory: Path,
    spec: CodecSpec,
    workers: int = 0,
    max_rate: str | None = None,
    incremental: Path | None = None,
) -> list[str]:
    """pg_basebackup writing base.tar, a tar per tablespace, pg_wal.tar and the manifest
    into ``directory``; ``incremental``: the parent's manifest (PostgreSQL 17+).

    No password in argv: libpq takes it from PGPASSWORD or the passfile.
    """
    argv = [
        program,
        "--dbname",
        to_dsn(conninfo),
        f"--pgdata={directory}",
        "--format=tar",
        "--wal-method=stream",
        "--checkpoint=fast",
        f"--label={label}",
        "--manifest-checksums=CRC32C",
        "--no-password",
        # pgbackup makes durable what it keeps, itself (hash_and_sync): the
        # streamed pg_wal.tar is replaced by its compressed copy, so its 16 MB or more
        # never need to reach the disk, and the other files are synced while pg_wal.tar
        # is compressed. pg_basebackup's --no-sync: "return without waiting" for the
        # files to be written safely to disk (PostgreSQL manual, pg_basebackup).
        "--no-sync",
    ]
    if max_rate:
        argv.append(f"--max-rate={max_rate}")
    if incremental is not None:
        argv.append(f"--incremental={incremental}")
    if interactive():
        argv.append("--progress")  # the server sizes the data directory first: terminals only
    option = compress_option(spec, workers)
    if option:
        argv.append(option)
    return argv


def run_basebackup(
    argv: list[str],
    estimated_size: int,
    started: Callable[[], None] | None = None,
) -> None:
    """Run pg_basebackup, turning its own progress report into a bar; explain a failure.
    ``started`` is called once it runs."""
    proc: Any = None
    messages: list[str] = []
    try:
        # A stop that lands while Popen is still returning is delivered once proc is set,
        # here, where pg_basebackup is stopped too: never left to write after cleanup.
        with interrupts_deferred():
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
        assert proc.stderr is not None
        if started is not None:
            started()
        with progress("backup", estimated_size or None) as bar:
            done = 0
            pending = b""
            while chunk := proc.stderr.read1(4096):
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for raw in lines:
                    line = raw.decode(errors="replace").strip()
                    m = PROGRESS_RE.search(line)
                    if m:
                        now, total = int(m.group(1)) * 1024, int(m.group(2)) * 1024
                        bar.update_total(total)
                        bar.advance(max(0, now - done))
                        done = max(done, now)
                    elif line:
                        messages.append(line)
            if pending.strip():
                messages.append(pending.decode(errors="replace").strip())
            rc = proc.wait()
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if rc != 0:
        detail = "; ".join(m.removeprefix("pg_basebackup: ") for m in messages)
        raise PostgresError(f"pg_basebackup failed: {detail or f'exit status {rc}'}")


def produced_archives(
    directory: Path, facts: ServerFacts, spec: CodecSpec
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """What pg_basebackup wrote, checked against what the server has.

    Returns object name -> (file, metadata entry): the base archive, ``pg_wal.tar`` and
    one archive per tablespace the server reports in ``pg_tablespace``. A tablespace
    without its archive (or an archive the server does not explain) fails the backup:
    a backup that would restore without a tablespace is never kept.
    """
    ext = archive_suffix(spec)
    found = {f.name: f for f in directory.iterdir() if f.name != MANIFEST}
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    if "base" + ext not in found:
        raise BackupError(
            f"pg_basebackup wrote {', '.join(sorted(found)) or 'nothing'} in {directory}, "
            f"not base{ext} (the expected compression)"
        )
    out["base" + ext] = (found.pop("base" + ext), {"kind": "base"})
    if "pg_wal.tar" not in found:
        raise BackupError(f"pg_basebackup wrote no pg_wal.tar in {directory}")
    out["pg_wal.tar"] = (found.pop("pg_wal.tar"), {"kind": "wal"})
    for ts in facts.tablespaces:
        name = f"{ts['oid']}{ext}"
        if name not in found:
            raise BackupError(
                f"tablespace {ts['name']} (oid {ts['oid']}, {ts['location']}) has no archive "
                f"in the backup ({name} is missing); refusing to keep a backup without it"
            )
        out[name] = (
            found.pop(name),
            {
                "kind": "tablespace",
                "oid": int(ts["oid"]),
                "name": ts["name"],
                "location": ts["location"],
            },
        )
    if found:
        raise BackupError(
            f"pg_basebackup wrote archives the server's pg_tablespace does not explain: "
            f"{', '.join(sorted(found))} (a tablespace created during the backup?)",
            hint="run the backup again",
        )
    return out


def file_digest(path: Path, *, sync: bool = False) -> str:
    """sha256 of a file; ``sync``: fsync it too (one open, while its pages are cached)."""
    import hashlib  # here, not at the top: after pg_basebackup started (issue #15)

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_SIZE):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def preload_codec(spec: CodecSpec) -> None:
    """Import the compression library in a thread while pg_basebackup runs: pg_wal.tar is
    compressed right after it, and ``import zstandard`` alone takes ~10 ms (issue #15)."""

    def load() -> None:
        with contextlib.suppress(Exception):  # the real import, later, says what is wrong
            Encoder(CodecSpec(spec.compression, spec.level), lambda _data: None).close()

    threading.Thread(target=load, name="pgbackup-preload", daemon=True).start()


def archive_suffix(spec: CodecSpec) -> str:
    """``.tar.zst`` and friends: how pg_basebackup names the archives it writes."""
    return ".tar" + suffix(CodecSpec(spec.compression, spec.level))


def meanwhile(work: Callable[[], T]) -> Callable[[], T]:
    """Run ``work`` in a thread; the function returned waits for it and gives its result,
    or raises its error in the caller's thread (never a thread traceback). A Future
    without concurrent.futures, whose import costs ~11 ms on a backup's critical path."""
    result: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=run, name="pgbackup-meanwhile", daemon=True)
    worker.start()

    def wait() -> T:
        worker.join()
        if failed:
            raise failed[0]
        return result[0]

    return wait


def hash_and_sync(
    hash_paths: list[Path], sync_paths: list[Path], known: dict[Path, str] | None = None
) -> dict[Path, str]:
    """sha256 of ``hash_paths`` (path -> hex digest, ``known`` digests included), then
    fsync of each file or directory in ``sync_paths``, in their order. Run
    :func:`meanwhile` while the caller compresses ``pg_wal.tar``: hashlib, fsync and zstd
    all release the GIL."""
    out: dict[Path, str] = dict(known or {})
    for p in hash_paths:
        out[p] = file_digest(p, sync=p in sync_paths)
    for p in sync_paths:
        if p not in hash_paths:
            fsync_path(p)
    return out


def timed_sync(
    phases: Phases, hash_paths: list[Path], sync_paths: list[Path], known: dict[Path, str]
) -> dict[Path, str]:
    """:func:`hash_and_sync`, its time counted to ``sync`` (bytes: the files synced)."""
    if not hash_paths and not sync_paths:
        return dict(known)
    with phases.timed("sync") as timing:
        timing.bytes = sum(p.stat().st_size for p in sync_paths if p.is_file())
        return hash_and_sync(hash_paths, sync_paths, known)


class Removal:
    """Unlink a file in a thread (dropping 16 MiB or more of page cache takes a few ms of
    a backup's critical path, issue #15); :meth:`wait` raises what the unlink met. A file
    already gone is no error: a failed backup's directory may be removed meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failed: list[OSError] = []
        self._thread = threading.Thread(target=self._remove, name="pgbackup-unlink", daemon=True)

    def _remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # raised by wait(), in the caller's thread
            self._failed.append(exc)

    def start(self) -> None:
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()
        if self._failed:
            raise BackupError(f"cannot remove {self.path}: {self._failed[0].strerror}")


def settle_in_repository(storage: PosixStorage, directory: Path) -> None:
    """pg_basebackup's files get the repository's modes (0750/0640) and owner."""
    owner = storage.owner()
    os.chmod(directory, DIR_MODE)
    if owner:
        os.chown(directory, *owner)
    for f in directory.iterdir():
        os.chmod(f, FILE_MODE)
        if owner:
            os.chown(f, *owner)


def upload_staged(
    storage: Storage,
    source: Path,
    key: str,
    encrypted: bool,
    recipients_list: list[str] | None,
    compress: CodecSpec | None = None,
    when_read: Callable[[], None] | None = None,
    phases: Phases | None = None,
) -> dict[str, Any]:
    """Stream a staged file to storage, encrypting when asked; ``compress`` compresses it
    on the way (pg_wal.tar, which pg_basebackup writes uncompressed). ``when_read`` is
    called once every byte of the file is read, before the stored copy is committed.

    ``phases``: the writes into storage (and its open and commit) count to ``transfer``,
    the rest (reading the file, compressing, encrypting, hashing) to ``compress``, or to
    ``encrypt``/``transfer`` for a file stored as it is."""
    import hashlib  # here, not at the top: after pg_basebackup started (issue #15)

    phases = phases or Phases()
    phase = "compress" if compress else "encrypt" if encrypted else "transfer"
    digest = hashlib.sha256()
    size = 0
    with phases.timed("transfer"), storage.open_write(key) as writer:

        def sink(data: bytes) -> None:
            nonlocal size
            digest.update(data)
            size += len(data)
            began = phases.begin()
            try:
                writer.write(data)
            finally:
                phases.end("transfer", began, len(data))

        codec = CodecSpec(compress.compression, compress.level, encrypted) if compress else None
        encoder = Encoder(
            codec or CodecSpec("none", 0, encrypted), sink, recipients=recipients_list
        )
        with phases.timed(phase, source.stat().st_size):
            encoder.write_file(source, READ_SIZE)
            if when_read is not None:
                when_read()
            encoder.close()
    return {"size": size, "sha256": digest.hexdigest()}


@contextlib.contextmanager
def backup_directory(
    storage: Storage, repo: Repository, target: str, backup_id: str, direct: bool
) -> Iterator[Path]:
    """Where pg_basebackup writes: the backup's own repository directory, or a staging dir."""
    if direct:
        assert isinstance(storage, PosixStorage)
        parent = storage.path_of(repo.base_prefix(target, backup_id)).parent
        storage.ensure_dir(parent)
        yield parent / backup_id
        return
    import shutil
    import tempfile

    stage = Path(
        tempfile.mkdtemp(prefix="pgbackup-stage-", dir=os.environ.get("PGBACKUP_STAGING_DIR"))
    )
    try:
        yield stage / backup_id
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def target_conninfo(policy: Policy, target: Target) -> dict[str, Any]:
    """The target's connection keywords; a sandbox that is down is started first."""
    if target.sandbox is None:
        return dict(target.connection)
    from pgbackup.postgres.sandbox import resolve_conninfo

    return resolve_conninfo(policy, target, LOG)


@contextlib.contextmanager
def parent_manifest_file(
    policy: Policy, storage: Storage, repo: Repository, target: str, parent: BackupInfo | None
) -> Iterator[Path | None]:
    """The parent's ``backup_manifest``, read from the repository (decrypted when needed)
    into a temporary file for ``pg_basebackup --incremental``; None for a full backup."""
    if parent is None:
        yield None
        return
    import tempfile

    from pgbackup.engine.delta import read_manifest_bytes
    from pgbackup.engine.objects import identities

    with tempfile.TemporaryDirectory(prefix="pgbackup-parent-") as scratch:
        path = Path(scratch) / MANIFEST
        path.write_bytes(
            read_manifest_bytes(
                storage,
                repo.base_prefix(target, parent.backup_id),
                parent,
                identities(policy, parent),
            )
        )
        LOG.info("incremental on %s (chain %s)", parent.backup_id, chain_of(parent))
        yield path


class BackupRun:
    """One backup of one target, as the procedure :func:`run_backup` follows: what it
    knows so far, and ``step``, the words a failure is reported with."""

    def __init__(self, policy: Policy, target: Target, backup_type: str) -> None:
        if backup_type not in BACKUP_TYPES:
            raise UsageError(
                f"--type {backup_type!r}: a backup is full or incremental",
                hint="pgbackup backup --type full|incremental",
            )
        self.policy = policy
        self.target = target
        self.backup_type = backup_type
        self.storage = open_storage(policy.repository)
        self.repo = Repository(self.storage)
        self.spec = codec_spec(policy)
        # pg_basebackup writes straight into a posix repository's directory, unless the
        # archives must be encrypted on their way in (then they are staged).
        self.direct = isinstance(self.storage, PosixStorage) and not self.spec.encrypted
        self.t0 = time.monotonic()
        self.started_at = utcnow()
        self.step = "connecting to the server"
        self.backup_id = ""
        self.conninfo: dict[str, Any] = {}
        self.parent: BackupInfo | None = None
        self.phases = Phases()  # where the time goes (engine/phases)

    def ask_server(self) -> tuple[ServerFacts, str, CompressionSide]:
        """The server's facts, checked (a refusal says what is missing), the parent of an
        incremental, and what pg_basebackup's command line takes from the server: which
        program runs, and which side compresses."""
        self.conninfo = target_conninfo(self.policy, self.target)
        facts = server_facts(self.conninfo, self.target.pg_bin_dir)
        preflight(facts, self.conninfo)
        self.storage = backup_storage(self.storage, self.target.name, facts)
        self.repo = Repository(self.storage)
        if self.backup_type == "incremental":
            self.step = "checking the server for incremental backups"
            incremental_preflight(facts, self.conninfo)
            self.parent = choose_parent(self.repo, self.target.name, facts)
        program = program_for(self.target, "pg_basebackup", facts.major)
        return facts, program, compression_side(facts, self.spec.compression)

    def new_id(self) -> str:
        """A backup id no backup of this target has: ids have one-second resolution, so a
        backup begun this second means waiting for the next second (not a whole one)."""
        backup_id = new_backup_id(self.started_at)
        while any(
            True for _ in self.storage.list(self.repo.base_prefix(self.target.name, backup_id))
        ):
            time.sleep(1.001 - time.time() % 1)
            backup_id = new_backup_id()
        return backup_id

    def record_failure(self, exc: BaseException) -> BaseException:
        """Remove what this backup stored, record the failed run, log it; the error to
        raise (one message naming the step)."""
        name = self.target.name
        message = (
            exc.message if isinstance(exc, PgBackupError) else (str(exc) or type(exc).__name__)
        )
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        # A locked repository is written once (docs/security.md): the host deletes
        # nothing; the failed backup has no metadata.json, and cleanup removes it.
        if self.backup_id and not self.policy.repository.get("object_lock"):
            with contextlib.suppress(Exception):
                self.storage.delete_prefix(self.repo.base_prefix(name, self.backup_id))
        self.repo.record_run(
            name,
            "backup",
            {
                "status": "failed",
                "backup_id": self.backup_id or None,
                "step": self.step,
                "error": message,
                "started_at": iso(self.started_at),
                "duration_seconds": round(time.monotonic() - self.t0, 3),
            },
        )
        LOG.error("backup of %s failed while %s: %s", name, self.step, message)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return BackupError(
                f"backup of {name!r} interrupted while {self.step}; nothing was kept"
            )
        if isinstance(exc, PgBackupError):
            return BackupError(
                f"backup of {name!r} failed while {self.step}: {exc.message}", hint=exc.hint
            )
        return exc


def run_backup(policy: Policy, target: Target, backup_type: str = "full") -> dict[str, Any]:
    """Take one base backup of ``target`` (``full``, or ``incremental`` on the newest
    complete backup: PostgreSQL 17+); returns its metadata.

    The procedure: ask the server (and refuse what it cannot give), take the target's
    lock, run pg_basebackup into the backup's directory, store its archives, and write
    ``metadata.json`` last. A failure at any step removes what this backup stored and
    records the failed run; earlier backups are untouched."""
    run = BackupRun(policy, target, backup_type)
    with terminate_as_interrupt():  # a stopped backup still cleans up after itself
        try:
            facts, program, side = run.ask_server()
            run.step = "taking the lock"
            with target_lock(policy.repository, target.name, "backup", wait_for=("cleanup",)):
                run.backup_id = run.new_id()
                metadata = take_backup(run, facts, program, side)
        except BaseException as exc:
            error = run.record_failure(exc)
            if error is exc:
                raise
            raise error from None
    run.repo.record_run(
        target.name,
        "backup",
        {
            "status": "ok",
            "backup_id": run.backup_id,
            "started_at": metadata["start_time"],
            "duration_seconds": metadata["duration_seconds"],
            "stored_bytes": metadata["stored_bytes"],
            "raw_bytes": metadata["raw_bytes"],
            "phases": run.phases.as_dict(),
        },
    )
    LOG.info(
        "backup %s of %s complete: %s read, %s stored, %.1fs, LSN %s..%s",
        run.backup_id,
        target.name,
        human_bytes(metadata["raw_bytes"]),
        human_bytes(metadata["stored_bytes"]),
        metadata["duration_seconds"],
        metadata["start_lsn"],
        metadata["stop_lsn"],
    )
    return metadata


def take_backup(
    run: BackupRun, facts: ServerFacts, program: str, side: CompressionSide
) -> dict[str, Any]:
    """Under the target's lock: pg_basebackup into the backup's directory, its archives
    stored, then ``metadata.json``; the metadata."""
    policy, target, spec = run.policy, run.target, run.spec
    storage, repo, direct = run.storage, run.repo, run.direct
    recipients_list = recipients(policy)
    prefix = repo.base_prefix(target.name, run.backup_id)
    if run.parent is not None:
        run.step = f"reading the manifest of parent backup {run.parent.backup_id}"
    with (
        backup_directory(storage, repo, target.name, run.backup_id, direct) as directory,
        parent_manifest_file(policy, storage, repo, target.name, run.parent) as parent_manifest,
    ):
        run.step = "running pg_basebackup"
        argv = basebackup_argv(
            program,
            run.conninfo,
            f"pgbackup {run.backup_id}",
            directory,
            side.argv_spec(spec),
            policy.compression.workers,
            target.max_rate,
            incremental=parent_manifest,
        )
        # Hash the archives while pg_basebackup writes them (stored as written: direct),
        # or send them to storage meanwhile (staged: engine/follow.StreamedUpload).
        follower = (
            ArchiveFollower(
                directory,
                archive_suffix(spec),
                None if direct else streamed_upload(run, prefix, recipients_list),
            )
            if side.side != "pgbackup"
            else None
        )

        def once_running() -> None:
            if follower is not None:
                follower.start()
            preload_codec(spec)
            LOG.info(
                "backup %s of %s (%s, PostgreSQL %s, %s) -> %s",
                run.backup_id,
                target.name,
                describe(run.conninfo),
                facts.version,
                "a hot standby" if facts.in_recovery else "a primary",
                storage.describe(),
            )

        with uploads_left_behind(follower):
            try:
                try:
                    with run.phases.timed("server"):
                        run_basebackup(argv, facts.database_size, once_running)
                except PostgresError as exc:
                    # pg_hba.conf has no replication line for us: say which one to add.
                    raise replication_refused(run.conninfo, exc.message) or exc from None
            finally:
                followed = follower.finish() if follower else {}
            objects, manifest, m, unlinking = finish_archives(
                run, directory, facts, side, followed, follower, recipients_list
            )
    run.phases.add("server", 0.0, m["raw_bytes"])  # its seconds were counted above
    began = time.monotonic()
    metadata = backup_metadata(run, facts, program, side, objects, m)
    if unlinking is not None:
        unlinking.wait()  # nothing but what metadata.json lists stays behind
    run.step = "writing metadata.json"
    repo.write_metadata(target.name, run.backup_id, metadata)
    run.phases.add("metadata", time.monotonic() - began, len(manifest))
    return metadata


def streamed_upload(
    run: BackupRun, prefix: str, recipients_list: list[str] | None
) -> Callable[[str], StreamedUpload]:
    """For a staged backup: each archive pg_basebackup writes goes to storage as it grows,
    under the name ``store_archives`` would give it."""
    stored_suffix = suffix(CodecSpec("none", 0, run.spec.encrypted))

    def start(name: str) -> StreamedUpload:
        writer = run.storage.writer(prefix + name + stored_suffix)
        return StreamedUpload(writer, run.spec.encrypted, recipients_list, run.phases)

    return start


@contextlib.contextmanager
def uploads_left_behind(follower: ArchiveFollower | None) -> Iterator[None]:
    """Whatever happens, no upload begun while pg_basebackup wrote stays open."""
    try:
        yield
    finally:
        if follower is not None:
            follower.abort_uploads()


def finish_archives(
    run: BackupRun,
    directory: Path,
    facts: ServerFacts,
    side: CompressionSide,
    followed: dict[Path, tuple[int, str]],
    follower: ArchiveFollower | None,
    recipients_list: list[str] | None,
) -> tuple[dict[str, dict[str, Any]], bytes, dict[str, Any], Removal | None]:
    """After pg_basebackup: compress what the server could not, store every archive and
    the manifest; (objects, the manifest, its facts, pg_wal.tar's removal under way)."""
    spec, storage = run.spec, run.storage
    if side.side == "pgbackup":
        run.step = f"compressing with {spec.compression} (the server cannot)"
        with run.phases.timed("compress") as timing:
            timing.bytes = sum(f.stat().st_size for f in directory.glob("*.tar"))
            compress_archives(directory, spec, run.policy.compression.workers or -1)
    produced = produced_archives(directory, facts, spec)
    if run.direct:
        assert isinstance(storage, PosixStorage)
        settle_in_repository(storage, directory)  # before the fsyncs below
    manifest = (directory / MANIFEST).read_bytes()
    manifest_read = meanwhile(lambda: manifest_facts(manifest, facts.wal_segment_size))
    objects, unlinking = store_archives(
        run, directory, produced, followed, recipients_list, follower
    )
    manifest_spec = CodecSpec("none", 0, spec.encrypted)
    prefix = run.repo.base_prefix(run.target.name, run.backup_id)
    objects[MANIFEST + suffix(manifest_spec)] = {
        "kind": "manifest",
        **store_manifest(run, prefix, manifest, manifest_spec, recipients_list),
        "codec": manifest_spec.to_dict(),
    }
    return objects, manifest, manifest_read(), unlinking


def store_archives(
    run: BackupRun,
    directory: Path,
    produced: dict[str, tuple[Path, dict[str, Any]]],
    followed: dict[Path, tuple[int, str]],
    recipients_list: list[str] | None,
    follower: ArchiveFollower | None = None,
) -> tuple[dict[str, dict[str, Any]], Removal | None]:
    """Each archive pg_basebackup wrote, into the repository: kept as written (direct),
    or streamed (encrypted) to storage; pg_wal.tar compressed on its way, first, while a
    thread hashes and syncs the rest. Returns the metadata's objects, and the removal of
    the streamed pg_wal.tar when it is still under way."""
    spec, storage, direct = run.spec, run.storage, run.direct
    prefix = run.repo.base_prefix(run.target.name, run.backup_id)
    objects: dict[str, dict[str, Any]] = {}
    unlinking: Removal | None = None
    kept_as_is = [  # what the direct branch below stores as pg_basebackup wrote it
        p
        for p, e in produced.values()
        if direct and (e["kind"] != "wal" or spec.compression == "none")
    ]
    known = {  # followed to the end: the size now is the size hashed
        p: followed[p][1]
        for p in kept_as_is
        if p in followed and followed[p][0] == p.stat().st_size
    }
    # Synced in the thread: the kept files, then the names pg_basebackup created (it ran
    # with --no-sync): the backup's directory and its parent. pg_wal.tar's compressed
    # copy is stored below by a writer that syncs itself and its directory. All before
    # metadata.json says "complete".
    to_hash = [p for p in kept_as_is if p not in known]
    to_sync = [*kept_as_is, directory / MANIFEST, directory, directory.parent]
    digests = meanwhile(lambda: timed_sync(run.phases, to_hash, to_sync if direct else [], known))
    wal_first = sorted(produced.items(), key=lambda item: item[1][1]["kind"] != "wal")
    for name, (path, entry) in wal_first:
        if entry["kind"] == "wal" and not (direct and spec.compression == "none"):
            # pg_basebackup leaves the streamed WAL uncompressed: compress it (and
            # encrypt it) on its way into the repository.
            stored_name = "pg_wal.tar" + suffix(spec)
            run.step = f"storing {stored_name}"
            if direct:  # the streamed original goes once read, meanwhile
                unlinking = Removal(path)
            obj = upload_staged(
                storage,
                path,
                prefix + stored_name,
                spec.encrypted,
                recipients_list,
                compress=spec,
                when_read=unlinking.start if unlinking else None,
                phases=run.phases,
            )
        elif direct:
            stored_name = name
            run.step = f"checking {name}"
            obj = {"size": path.stat().st_size, "sha256": digests()[path]}
        elif streamed := follower and follower.upload_of(path, followed):
            stored_name = name + suffix(CodecSpec("none", 0, spec.encrypted))
            run.step = f"storing {stored_name} (sent while pg_basebackup wrote it)"
            obj = streamed.commit()
        else:
            stored_name = name + suffix(CodecSpec("none", 0, spec.encrypted))
            run.step = f"storing {stored_name}"
            obj = upload_staged(
                storage,
                path,
                prefix + stored_name,
                spec.encrypted,
                recipients_list,
                phases=run.phases,
            )
        objects[stored_name] = {**entry, **obj, "codec": spec.to_dict()}
    digests()  # every kept file hashed and synced, and the directories
    return objects, unlinking


def store_manifest(
    run: BackupRun,
    prefix: str,
    manifest: bytes,
    manifest_spec: CodecSpec,
    recipients_list: list[str] | None,
) -> dict[str, Any]:
    """``backup_manifest``: kept as written in a direct backup (synced with the rest),
    else stored (encrypted when asked); its size and sha256 as stored."""
    import hashlib

    if run.direct:
        return {"size": len(manifest), "sha256": hashlib.sha256(manifest).hexdigest()}
    run.step = "storing backup_manifest"
    stored = encode_bytes(manifest_spec, manifest, recipients=recipients_list)
    run.storage.write_bytes(prefix + MANIFEST + suffix(manifest_spec), stored)
    return {"size": len(stored), "sha256": hashlib.sha256(stored).hexdigest()}


def backup_metadata(
    run: BackupRun,
    facts: ServerFacts,
    program: str,
    side: CompressionSide,
    objects: dict[str, dict[str, Any]],
    m: dict[str, Any],
) -> dict[str, Any]:
    """``metadata.json`` of a complete backup (DESIGN.md's repository format)."""
    spec, parent = run.spec, run.parent
    return {
        "format_version": 1,
        "backup_id": run.backup_id,
        "target": run.target.name,
        "status": "complete",
        "system_identifier": facts.system_identifier,
        "generation": number_of(run.storage),
        "server_version": facts.version,
        "server_version_num": facts.version_num,
        "timezone": facts.timezone,
        "wal_segment_size": facts.wal_segment_size,
        "timeline": m["timeline"],
        "start_lsn": format_lsn(m["start_lsn"]),
        "stop_lsn": format_lsn(m["stop_lsn"]),
        "start_time": iso(run.started_at),
        "stop_time": iso(utcnow()),
        "duration_seconds": round(time.monotonic() - run.t0, 3),
        "raw_bytes": m["raw_bytes"],
        "stored_bytes": sum(o["size"] for o in objects.values()),
        "files": m["files"],
        "database_size": facts.database_size,
        "compression": {
            "method": spec.compression,
            "level": spec.level,
            "workers": run.policy.compression.workers,
        },
        "encrypted": spec.encrypted,
        "source": "standby" if facts.in_recovery else "primary",
        "tablespaces": [
            {"oid": int(t["oid"]), "name": t["name"], "location": t["location"]}
            for t in facts.tablespaces
        ],
        "objects": objects,
        "pgbackup_version": __version__,
        "pg_basebackup": program,
        "compressed_by": side.as_dict(),
        "wal_method": "stream",
        "backup_type": run.backup_type,
        "parent": parent.backup_id if parent else None,
        "chain": chain_of(parent) if parent else [],
        # measured so far: the run record adds ``metadata``, the writing of this file
        "phases": run.phases.as_dict(),
    }
