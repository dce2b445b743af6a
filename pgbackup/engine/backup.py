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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pgbackup import __version__
from pgbackup.engine import early_start, known_server
from pgbackup.engine.backup_preflight import (
    chain_of,
    choose_parent,
    incremental_preflight,
    preflight,
)
from pgbackup.engine.follow import ArchiveFollower
from pgbackup.engine.known_server import ServerChanged
from pgbackup.engine.locks import lock_path, target_lock
from pgbackup.engine.repository import MANIFEST, BackupInfo, Repository, iso, new_backup_id, utcnow
from pgbackup.engine.streamcompress import CompressionSide, compress_archives
from pgbackup.engine.streamcompress import from_facts as compression_side
from pgbackup.errors import BackupError, PgBackupError, PostgresError, UsageError
from pgbackup.formats.codecs import CodecSpec, Encoder, encode_bytes, load_recipients, suffix
from pgbackup.formats.lsn import format_lsn
from pgbackup.formats.manifest import manifest_facts
from pgbackup.policy import Policy, Target
from pgbackup.policy.records import BACKUP_TYPES
from pgbackup.postgres.binaries import find_program
from pgbackup.postgres.connection import (
    PendingPreflight,
    ServerFacts,
    describe,
    replication_refused,
    to_dsn,
)
from pgbackup.signals import terminate_as_interrupt
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
    running: Any = None,
) -> None:
    """Run pg_basebackup, turning its own progress report into a bar; explain a failure.
    ``started`` is called once it runs; ``running``: that command line, already started
    (engine/early_start.py), instead of a new process."""
    proc: Any = running or subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stderr is not None
    messages: list[str] = []
    try:
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
        if proc.poll() is None:
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
) -> dict[str, Any]:
    """Stream a staged file to storage, encrypting when asked; ``compress`` compresses it
    on the way (pg_wal.tar, which pg_basebackup writes uncompressed). ``when_read`` is
    called once every byte of the file is read, before the stored copy is committed."""
    import hashlib  # here, not at the top: after pg_basebackup started (issue #15)

    digest = hashlib.sha256()
    size = 0
    with storage.open_write(key) as writer:

        def sink(data: bytes) -> None:
            nonlocal size
            digest.update(data)
            size += len(data)
            writer.write(data)

        codec = CodecSpec(compress.compression, compress.level, encrypted) if compress else None
        encoder = Encoder(
            codec or CodecSpec("none", 0, encrypted), sink, recipients=recipients_list
        )
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


def target_conninfo(policy: Policy, target: Target, *, start: bool = True) -> dict[str, Any]:
    """The target's connection keywords; a sandbox's module (and its imports: socket,
    pwd, the cluster code) only for a sandbox target (issue #15: a backup's start).
    ``start=False``: a sandbox that is down stays down (see _run_backup)."""
    if target.sandbox is None:
        return dict(target.connection)
    from pgbackup.postgres.sandbox import resolve_conninfo

    return resolve_conninfo(policy, target, LOG, start=start)


def server_pid_file(policy: Policy, target: Target) -> str:
    """A sandbox's ``postmaster.pid``: its next backup starts early only while that names a
    live server (else the engine starts the sandbox first); "" for any other target."""
    if target.sandbox is None:
        return ""
    from pgbackup.postgres.sandbox import Sandbox

    return str(Sandbox(policy, target).data_dir / "postmaster.pid")


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


#: A preflight started before the lock was taken is used only if the lock came at once:
#: after a wait (for a cleanup), the server is asked again.
PREFLIGHT_FRESH_SECONDS = 1.0


def run_backup(
    policy: Policy,
    target: Target,
    backup_type: str = "full",
    started: PendingPreflight | None = None,
) -> dict[str, Any]:
    """Take one base backup of ``target`` (``full``, or ``incremental`` on the newest
    complete backup: PostgreSQL 17+); returns its metadata.

    ``started``: the preflight of this target, already under way (interface/direct.py
    starts it before importing this module, so the handshakes overlap the imports)."""
    try:
        return _run_backup(policy, target, backup_type, started, guess=True)
    except ServerChanged as changed:  # nothing was kept of the first start
        LOG.info("the server changed since the last backup: starting again")
        return _run_backup(policy, target, backup_type, None, guess=False, answer=changed.facts)


def _run_backup(
    policy: Policy,
    target: Target,
    backup_type: str,
    started: PendingPreflight | None,
    *,
    guess: bool,
    answer: ServerFacts | None = None,
) -> dict[str, Any]:
    """:func:`run_backup`. ``guess``: a full backup may start pg_basebackup on the facts
    the last backup met (engine/known_server.py) and check the server's answer while it
    runs; ``answer``: the server's answer, already had (a start again)."""
    if backup_type not in BACKUP_TYPES:
        raise UsageError(
            f"--type {backup_type!r}: a backup is full or incremental",
            hint="pgbackup backup --type full|incremental",
        )
    storage = open_storage(policy.repository)
    repo = Repository(storage)
    spec = codec_spec(policy)
    direct = isinstance(storage, PosixStorage) and not spec.encrypted
    # The console script may have started this command's pg_basebackup already, under
    # this target's lock: the first backup of the process claims it (or stops it).
    lock_file = str(lock_path(policy.repository, target.name))
    early = early_start.claim(lock_file)
    if early is not None and not (direct and backup_type == "full" and answer is None):
        early.stop()  # not a start it could have made; the lock is still handed over
    t0 = time.monotonic() if early is None else early.started_monotonic
    started_at = utcnow() if early is None else datetime.fromtimestamp(early.started_at, UTC)
    step = "taking the lock"
    backup_id = ""
    with (
        terminate_as_interrupt(),  # a stopped backup still cleans up after itself
        target_lock(policy.repository, target.name, "backup", wait_for=("cleanup",)),
    ):
        try:
            step = "connecting to the server"
            # A sandbox that is down is started first, unless pg_basebackup already runs:
            # it started early only because the sandbox was up (early_start.begin), so
            # down now means stopped in the middle, which fails this backup.
            conninfo = target_conninfo(policy, target, start=early is None or early.stopped)
            fresh = time.monotonic() - t0 < PREFLIGHT_FRESH_SECONDS
            if answer is None and (started is None or not fresh or started.conninfo != conninfo):
                if started is not None:
                    started.close()
                started = PendingPreflight(conninfo, target.pg_bin_dir, replication=False)
            # A full backup starts pg_basebackup on the facts the last one met, if its
            # program is here; the server's answer is checked once it runs (meanwhile_start).
            guessed = (
                known_server.recall(target.name, conninfo, target.pg_bin_dir)
                if guess and backup_type == "full"
                else None
            )

            def start_plan(server: ServerFacts) -> tuple[str, CompressionSide]:
                """All pg_basebackup's command line takes from the server: which
                pg_basebackup runs, and which side compresses."""
                program = find_program("pg_basebackup", server.major, target.pg_bin_dir)
                return program, compression_side(server, spec.compression)  # server's, else ours

            if guessed is not None:
                try:
                    program, side = start_plan(guessed)
                except PgBackupError:
                    guessed = None  # the server's answer decides, as without a guess
            facts: ServerFacts
            if guessed is not None:
                facts = guessed
            else:
                if answer is None:
                    assert started is not None
                    answer, _ = started.wait()  # no replication handshake: see run_basebackup
                facts = answer
                preflight(facts, conninfo)
            parent: BackupInfo | None = None
            if backup_type == "incremental":
                step = "checking the server for incremental backups"
                incremental_preflight(facts, conninfo)
                parent = choose_parent(repo, target.name, facts)
            if guessed is None:
                program, side = start_plan(facts)
            recipients_list = recipients(policy)

            if early is not None and not early.stopped:  # its directory, made under the lock
                backup_id = early.backup_id
            else:
                backup_id = new_backup_id(started_at)
            while (early is None or early.stopped) and any(
                True for _ in storage.list(repo.base_prefix(target.name, backup_id))
            ):
                # A backup of this target began this second (ids have one-second
                # resolution): wait for the next second, not a whole one.
                time.sleep(1.001 - time.time() % 1)
                backup_id = new_backup_id()
            prefix = repo.base_prefix(target.name, backup_id)
            manifest_spec = CodecSpec("none", 0, spec.encrypted)
            manifest_name = MANIFEST + suffix(manifest_spec)
            if parent is not None:
                step = f"reading the manifest of parent backup {parent.backup_id}"
            with (
                backup_directory(storage, repo, target.name, backup_id, direct) as directory,
                parent_manifest_file(policy, storage, repo, target.name, parent) as parent_manifest,
            ):
                step = "running pg_basebackup"
                argv = basebackup_argv(
                    program,
                    conninfo,
                    f"pgbackup {backup_id}",
                    directory,
                    side.argv_spec(spec),
                    policy.compression.workers,
                    target.max_rate,
                    incremental=parent_manifest,
                )
                # Hash the archives while pg_basebackup writes them (direct only: they
                # are stored as written; a staged upload hashes what it sends).
                follower = (
                    ArchiveFollower(directory, archive_suffix(spec))
                    if direct and side.side != "pgbackup"
                    else None
                )

                def meanwhile_start() -> None:
                    nonlocal facts, side, step
                    if guessed is not None:  # the server's answer, now: as good as before?
                        assert started is not None
                        step = "connecting to the server"
                        said, _ = started.wait()
                        preflight(said, conninfo)  # a refusal stops pg_basebackup
                        said_program, said_side = start_plan(said)
                        if said_program != program or said_side.argv_spec(spec) != side.argv_spec(
                            spec
                        ):
                            raise ServerChanged(said)  # stops pg_basebackup
                        facts, side = said, said_side  # what metadata.json records
                        step = "running pg_basebackup"
                    # Threads start once pg_basebackup runs: before, their first steps
                    # (importing zstandard) would take the GIL from the process start.
                    # The first message, too, imports logging (pgbackup.ui.LOG).
                    if follower is not None:
                        follower.start()
                    preload_codec(spec)
                    LOG.info(
                        "backup %s of %s (%s, PostgreSQL %s, %s) -> %s",
                        backup_id,
                        target.name,
                        describe(conninfo),
                        facts.version,
                        "a hot standby" if facts.in_recovery else "a primary",
                        storage.describe(),
                    )
                    if running is not None:
                        LOG.info(
                            "pg_basebackup was started early, as the last backup ran it: adopted"
                        )
                    elif early is not None:
                        LOG.info(
                            "pg_basebackup's early start differed from this backup's: "
                            "stopped, its directory removed, started again"
                        )

                running = early.adopt(argv) if early is not None else None
                try:
                    try:
                        run_basebackup(argv, facts.database_size, meanwhile_start, running)
                    except PostgresError as exc:
                        # pg_hba.conf has no replication line for us: say which one to add.
                        raise replication_refused(conninfo, exc.message) or exc from None
                finally:
                    followed = follower.finish() if follower else {}
                if side.side == "pgbackup":
                    step = f"compressing with {spec.compression} (the server cannot)"
                    compress_archives(directory, spec, policy.compression.workers or -1)
                produced = produced_archives(directory, facts, spec)
                if direct:
                    assert isinstance(storage, PosixStorage)
                    settle_in_repository(storage, directory)  # before the fsyncs below
                manifest = (directory / MANIFEST).read_bytes()
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
                # Synced in the thread: the kept files, then the names pg_basebackup
                # created (it ran with --no-sync): the backup's directory and its parent.
                # pg_wal.tar's compressed copy is stored below by a writer that syncs
                # itself and its directory. All before metadata.json says "complete".
                to_hash = [p for p in kept_as_is if p not in known]
                to_sync = [*kept_as_is, directory / MANIFEST, directory, directory.parent]
                digests = meanwhile(
                    lambda: hash_and_sync(to_hash, to_sync if direct else [], known)
                )
                manifest_read = meanwhile(lambda: manifest_facts(manifest, facts.wal_segment_size))
                # pg_wal.tar first: it is compressed while the thread hashes the rest.
                wal_first = sorted(produced.items(), key=lambda item: item[1][1]["kind"] != "wal")
                for name, (path, entry) in wal_first:
                    if entry["kind"] == "wal" and not (direct and spec.compression == "none"):
                        # pg_basebackup leaves the streamed WAL uncompressed: compress it
                        # (and encrypt it) on its way into the repository.
                        stored_name = "pg_wal.tar" + suffix(spec)
                        step = f"storing {stored_name}"
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
                        )
                        objects[stored_name] = {**entry, **obj, "codec": spec.to_dict()}
                    elif direct:
                        step = f"checking {name}"
                        objects[name] = {
                            **entry,
                            "size": path.stat().st_size,
                            "sha256": digests()[path],
                            "codec": spec.to_dict(),
                        }
                    else:
                        stored_name = name + suffix(CodecSpec("none", 0, spec.encrypted))
                        step = f"storing {stored_name}"
                        obj = upload_staged(
                            storage, path, prefix + stored_name, spec.encrypted, recipients_list
                        )
                        objects[stored_name] = {**entry, **obj, "codec": spec.to_dict()}
                import hashlib  # not at the top: after pg_basebackup started (issue #15)

                if direct:
                    digests()  # every kept file hashed and synced, and the directories
                    manifest_obj = {
                        "size": len(manifest),
                        "sha256": hashlib.sha256(manifest).hexdigest(),
                    }
                else:
                    step = "storing backup_manifest"
                    stored = encode_bytes(manifest_spec, manifest, recipients=recipients_list)
                    storage.write_bytes(prefix + manifest_name, stored)
                    manifest_obj = {
                        "size": len(stored),
                        "sha256": hashlib.sha256(stored).hexdigest(),
                    }
                m = manifest_read()
            stopped_at = utcnow()
            metadata: dict[str, Any] = {
                "format_version": 1,
                "backup_id": backup_id,
                "target": target.name,
                "status": "complete",
                "system_identifier": facts.system_identifier,
                "server_version": facts.version,
                "server_version_num": facts.version_num,
                "timezone": facts.timezone,
                "wal_segment_size": facts.wal_segment_size,
                "timeline": m["timeline"],
                "start_lsn": format_lsn(m["start_lsn"]),
                "stop_lsn": format_lsn(m["stop_lsn"]),
                "start_time": iso(started_at),
                "stop_time": iso(stopped_at),
                "duration_seconds": round(time.monotonic() - t0, 3),
                "raw_bytes": m["raw_bytes"],
                "stored_bytes": sum(o["size"] for o in objects.values()) + manifest_obj["size"],
                "files": m["files"],
                "database_size": facts.database_size,
                "compression": {
                    "method": spec.compression,
                    "level": spec.level,
                    "workers": policy.compression.workers,
                },
                "encrypted": spec.encrypted,
                "source": "standby" if facts.in_recovery else "primary",
                "tablespaces": [
                    {"oid": int(t["oid"]), "name": t["name"], "location": t["location"]}
                    for t in facts.tablespaces
                ],
                "objects": {
                    **objects,
                    manifest_name: {
                        "kind": "manifest",
                        **manifest_obj,
                        "codec": manifest_spec.to_dict(),
                    },
                },
                "pgbackup_version": __version__,
                "pg_basebackup": program,
                "compressed_by": side.as_dict(),
                "wal_method": "stream",
                "backup_type": backup_type,
                "parent": parent.backup_id if parent else None,
                "chain": chain_of(parent) if parent else [],
            }
            if unlinking is not None:
                unlinking.wait()  # nothing but what metadata.json lists stays behind
            step = "writing metadata.json"
            repo.write_metadata(target.name, backup_id, metadata)
        except BaseException as exc:
            if early is not None:
                early.stop()  # unless adopted: then run_basebackup has stopped it
            message = (
                exc.message if isinstance(exc, PgBackupError) else (str(exc) or type(exc).__name__)
            )
            if isinstance(exc, KeyboardInterrupt):
                message = "interrupted"
            if backup_id:
                with contextlib.suppress(Exception):
                    storage.delete_prefix(repo.base_prefix(target.name, backup_id))
            if isinstance(exc, ServerChanged):
                raise  # not a failure: run_backup starts again
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
    known_server.remember(target.name, conninfo, target.pg_bin_dir, facts)
    if direct and backup_type == "full":
        early_start.note(
            lock_file, str(directory), backup_id, argv, server_pid_file(policy, target)
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
