"""Restore a base backup into a data directory, optionally recovering to a target.

The stored object is streamed: storage -> checksum -> codecs -> ``tar -x`` running as
the server's OS user (so ownership is right) with umask 077 (so permissions are
PostgreSQL's 0700/0600). If anything fails - wrong key, corrupt object, checksum
mismatch - the directory is emptied again: a half-written data directory is never left
behind looking usable.

Where the time goes (:mod:`pgbackup.engine.phases`, ``RestoreResult.phases``):
``transfer`` (storage reads), ``decode`` (decompression, decryption, the sha256 check:
the rest of each read of the decoded stream), ``write`` and ``sync`` (the writer
threads' writes and fsyncs), ``combine`` (pg_combinebackup, for a chain) and
``wal_replay`` (the server's start until recovery ended, when the restore waits for it;
its bytes are the WAL replayed, from the backup's start LSN to the point reached).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO, cast

from pgbackup.engine.combine import chain_members, combine_chain
from pgbackup.engine.delta import (
    DeltaPlan,
    check_delta_destination,
    plan_delta,
    probe_cluster,
    read_manifest,
)
from pgbackup.engine.objects import (
    archive_objects,
    base_object,
    empty_directory,
    extract,
    identities,
)
from pgbackup.engine.phases import Phases, TimedReader, replayed_bytes
from pgbackup.engine.repository import BackupInfo, Repository
from pgbackup.engine.walprefetch import SPOOL_DIR, BeforeServer, end_read_ahead
from pgbackup.errors import PgBackupError, PostgresError, RestoreError, UsageError
from pgbackup.formats.codecs import CodecSpec
from pgbackup.policy import Policy, Target
from pgbackup.postgres.cluster import (
    Cluster,
    free_port,
    hand_over,
    server_os_user,
    spawn_detached,
)
from pgbackup.storage import Storage, open_storage
from pgbackup.ui import LOG, human_bytes


class RestoreResult:
    """What a restore did (``restore --json``). A plain class: importing dataclasses costs
    every restore ~10 ms (issue #15)."""

    def __init__(
        self,
        backup_id: str,
        target: str,
        directory: str,
        stored_bytes: int,
        raw_bytes: int,
        seconds: float,
        port: int | None = None,
        started: bool = False,
        recovery: dict[str, Any] | None = None,
        delta: dict[str, int] | None = None,
        combine: dict[str, Any] | None = None,
        phases: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.backup_id = backup_id
        self.target = target
        self.directory = directory
        self.stored_bytes = stored_bytes
        self.raw_bytes = raw_bytes
        self.seconds = seconds
        self.port = port
        self.started = started
        self.recovery: dict[str, Any] = {} if recovery is None else recovery
        self.delta = delta
        self.combine = combine
        #: seconds and bytes per phase (engine/phases): transfer, decode, write, sync,
        #: combine (a chain), wal_replay (a started server waited for)
        self.phases: dict[str, dict[str, Any]] = phases or {}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_tablespace_map(items: list[str] | None) -> dict[str, str]:
    """``--tablespace-map NAME=DIR`` (repeatable; NAME may be the OID), pgBackRest's syntax."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, directory = item.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise UsageError(
                f"--tablespace-map {item!r}: write it NAME=DIR",
                hint="e.g. --tablespace-map ts1=/srv/ts1",
            )
        out[name.strip()] = directory.strip()
    return out


def tablespace_destinations(
    tablespaces: list[dict[str, Any]],
    mapping: dict[str, str],
    map_all: str | None,
    data_dir: Path,
) -> dict[int, Path]:
    """Where each tablespace of the backup goes: ``--tablespace-map`` by name or OID, then
    ``--tablespace-map-all DIR/<name>``, else its original location. Pure: no I/O."""
    known = {t["name"] for t in tablespaces} | {str(t["oid"]) for t in tablespaces}
    unknown = sorted(set(mapping) - known)
    if unknown:
        have = ", ".join(f"{t['name']} (oid {t['oid']})" for t in tablespaces) or "none"
        raise UsageError(
            f"--tablespace-map names {', '.join(unknown)}, which the backup does not have "
            f"(its tablespaces: {have})"
        )
    out: dict[int, Path] = {}
    for t in tablespaces:
        chosen = mapping.get(t["name"]) or mapping.get(str(t["oid"]))
        if chosen is None and map_all:
            chosen = str(Path(map_all) / t["name"])
        where = Path(chosen or t["location"])
        if not where.is_absolute():
            raise UsageError(f"tablespace {t['name']}: {where} is not an absolute path")
        out[int(t["oid"])] = where
    targets = [str(d) for d in out.values()]
    for d in out.values():
        if targets.count(str(d)) > 1:
            raise UsageError(f"two tablespaces would be restored into {d}")
        if d == data_dir or data_dir in d.parents or d in data_dir.parents:
            raise UsageError(
                f"tablespace directory {d} overlaps the data directory {data_dir}",
                hint="give --tablespace-map NAME=DIR outside the data directory",
            )
    return out


def check_destination(directory: Path, force: bool, pg_bin_dir: Path | None) -> None:
    """Refuse a non-empty directory or a running postmaster unless forced."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise RestoreError(f"{directory} exists and is not a directory")
    pid_file = directory / "postmaster.pid"
    if pid_file.exists():
        probe = probe_cluster(directory, pg_bin_dir)
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


def link_tablespaces(directory: Path, destinations: dict[int, Path], os_user: str | None) -> None:
    """Make ``pg_tblspc/<oid>`` point at each restored tablespace and drop
    ``tablespace_map``, so the server starts on the links as they are."""
    if not destinations:
        return
    links = directory / "pg_tblspc"
    links.mkdir(exist_ok=True)
    for oid, where in destinations.items():
        link = links / str(oid)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(where, link)
        hand_over(where, os_user, 0o700)
    with contextlib.suppress(FileNotFoundError):
        (directory / "tablespace_map").unlink()


def independent_or_standby(directory: Path, standby: bool, info: BackupInfo) -> None:
    """A restored cluster is a primary unless a standby was asked for: a standby.signal
    carried over from the source is removed (``--standby`` writes its own)."""
    for signal_file in ("standby.signal", "recovery.signal"):
        path = directory / signal_file
        if path.exists():
            LOG.info(
                "removing %s carried over from the source of backup %s", signal_file, info.backup_id
            )
            path.unlink()


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
    tablespace_map: dict[str, str] | None = None,
    tablespace_map_all: str | None = None,
    standby: bool = False,
    primary_conninfo: str | None = None,
    delta: bool = False,
    read_ahead: BeforeServer | None = None,
) -> RestoreResult:
    """Restore ``backup_id`` (or the newest) of ``target`` into ``directory``.

    ``delta``: restore over an existing stopped copy, rewriting only the files whose
    size or CRC32C differ from the backup's manifest and removing the files it lacks.

    Tablespaces go to their original locations, or where ``tablespace_map`` (name or
    OID -> directory) and ``tablespace_map_all`` say; pgbackup makes the ``pg_tblspc``
    links itself and removes ``tablespace_map``, so the server never relocates anything
    (a server started on a ``tablespace_map`` recreates the original links). A restored
    cluster is an independent primary unless ``standby`` is asked for: a backup taken
    from a standby loses its ``standby.signal`` and ``primary_conninfo``.

    The procedure: find the backup and where each tablespace goes, check the destination
    (or plan a delta), restore the files (one archive after another, or a chain combined),
    configure the server, and start it when asked. A failure before the server is
    configured, or while it starts, empties every directory written again.
    """
    run = RestoreRun(
        policy, target, backup_id, directory, storage, tablespace_map, tablespace_map_all, delta
    )
    run.prepare_destination(force)
    run.restore_files()
    independent_or_standby(run.directory, standby, run.info)
    cluster, port = run.configure_server(
        port, start, archive, recovery_settings, standby, primary_conninfo
    )
    result = run.result(port)
    if start:
        run.start_server(cluster, result, wait_for_recovery, bool(recovery_settings), read_ahead)
    result.phases = run.phases.as_dict()
    result.seconds = round(time.monotonic() - run.t0, 3)
    LOG.info(
        "restored %s (%s) into %s in %.1fs%s",
        run.info.backup_id,
        human_bytes(result.raw_bytes),
        run.directory,
        result.seconds,
        f", server on port {port}" if start else "",
    )
    return result


class RestoreRun:
    """One restore of one backup into one directory, as :func:`run_restore` follows it:
    the backup, where its tablespaces go, what has been written (emptied again on a
    failure), and the bytes counted."""

    def __init__(
        self,
        policy: Policy,
        target: Target,
        backup_id: str | None,
        directory: Path,
        storage: Storage | None,
        tablespace_map: dict[str, str] | None,
        tablespace_map_all: str | None,
        delta: bool,
    ) -> None:
        self.t0 = time.monotonic()
        self.policy = policy
        self.target = target
        self.storage = storage or open_storage(policy.repository)
        self.repo = Repository(self.storage)
        self.info = info = self.repo.find_backup(target.name, backup_id)
        base_object(info)  # a clear error for metadata without one
        self.identities = identities(policy, info)
        self.directory = directory.absolute()
        self.destinations = tablespace_destinations(
            list(info.metadata.get("tablespaces") or []),
            tablespace_map or {},
            tablespace_map_all,
            self.directory,
        )
        self.prefix = self.repo.base_prefix(target.name, info.backup_id)
        self.members = (
            chain_members(self.repo, target.name, info) if info.metadata.get("parent") else []
        )
        if self.members and delta:
            raise UsageError(
                f"backup {info.backup_id} is incremental; --delta restores full backups only",
                hint="restore without --delta into an empty directory",
            )
        self.delta = delta
        self.plan: DeltaPlan | None = None
        self.os_user: str | None = None
        self.written: list[Path] = [self.directory]  # emptied again on a failure
        self.stored = 0
        self.payload_written = 0  # data files written (a delta restore's measure)
        self.wal_written = 0
        self.combined: dict[str, Any] | None = None
        self.phases = Phases()

    def prepare_destination(self, force: bool) -> None:
        """Before anything is written: the delta plan over the stopped copy, or each
        destination empty (``force``: emptied, its server stopped); the data directory
        made, the server's OS user's."""
        directory = self.directory
        if self.delta:
            check_delta_destination(directory, self.target.pg_bin_dir)
            manifest = read_manifest(self.storage, self.prefix, self.info, self.identities)
            self.plan = plan = plan_delta(directory, self.destinations, manifest)
            LOG.info(
                "delta restore into %s: %d files (%s) already equal to the backup, %d removed",
                directory,
                len(plan.keep),
                human_bytes(plan.reused_bytes),
                plan.removed_files,
            )
        else:
            check_destination(directory, force, self.target.pg_bin_dir)
            for where in self.destinations.values():
                check_destination(where, force, self.target.pg_bin_dir)  # before any write
        self.os_user = server_os_user()
        directory.mkdir(parents=True, exist_ok=True)
        hand_over(directory, self.os_user, 0o700)
        LOG.info(
            "restoring backup %s of %s into %s", self.info.backup_id, self.target.name, directory
        )

    def restore_files(self) -> None:
        """The backup's files in place: an incremental chain combined, or each archive
        extracted; then the tablespaces' links. On a failure every directory written is
        emptied again."""
        try:
            if self.members:
                # pg_combinebackup -T writes each tablespace there
                self.written += self.destinations.values()
                with self.timed():
                    self.combined = combine_chain(
                        self.timed_storage(),
                        self.repo,
                        self.policy,
                        self.target,
                        self.members,
                        self.directory,
                        self.os_user,
                        self.destinations,
                    )
                self.stored = self.combined["stored_bytes"]
                self.phases.add(
                    "combine", self.combined["combine_seconds"], self.combined["combined_bytes"]
                )
            else:
                self.extract_archives(archive_objects(self.info))
            link_tablespaces(self.directory, self.destinations, self.os_user)
        except BaseException:
            self.empty_written()
            LOG.error(
                "restore of %s into %s failed; the directory was emptied again",
                self.info.backup_id,
                self.directory,
            )
            raise

    def extract_archives(self, objects: list[tuple[str, dict[str, Any]]]) -> None:
        """Each archive of a full backup, the base archive first. The WAL archive is
        restored beside the base archive, not after it: its 16 MB or more are decoded and
        written while the base's writers wait on the disk (issue #15). Not for a delta
        restore, which compares files as it goes."""
        beside = [o for o in objects if o[1]["kind"] == "wal"] if self.plan is None else []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-wal") as pool:
            wal_jobs = [pool.submit(self.restore_object, n, o, False) for n, o in beside]
            try:
                for name, obj in objects:
                    if (name, obj) in beside:
                        continue
                    stored_here, written_here = self.restore_object(name, obj)
                    self.stored += stored_here
                    if obj["kind"] == "wal":
                        self.wal_written += written_here
                    else:
                        self.payload_written += written_here
                    if obj["kind"] == "base" and not (self.directory / "PG_VERSION").exists():
                        raise RestoreError(
                            f"{self.prefix + name} did not contain a PostgreSQL data directory"
                        )
            finally:
                wait(wal_jobs)  # nothing may still write when the directory is emptied
            for job in wal_jobs:
                stored_here, written_here = job.result()
                self.stored += stored_here
                self.wal_written += written_here

    def restore_object(self, name: str, obj: dict[str, Any], bar: bool = True) -> tuple[int, int]:
        """One archive where its kind goes (pg_wal, a tablespace's directory, the data
        directory); (stored bytes read, bytes written)."""
        where, inside = self.directory, ""
        if obj["kind"] == "wal":
            where, inside = self.directory / "pg_wal", "pg_wal/"
        elif obj["kind"] == "tablespace":
            where = self.destinations[int(obj["oid"])]
            inside = f"pg_tblspc/{obj['oid']}/"
            where.mkdir(parents=True, exist_ok=True)
            self.written.append(where)
        where.mkdir(parents=True, exist_ok=True)
        raw = self.info.metadata.get("raw_bytes", 0) if obj["kind"] == "base" else 0
        with self.timed():
            return extract(
                self.timed_storage(),
                self.prefix + name,
                CodecSpec.from_dict(obj["codec"]),
                self.identities,
                where,
                {**obj, "raw_bytes": raw},
                keep=self.kept_in(inside),
                bar=bar,
            )

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Extractions on this thread count to this restore's phases (formats/untar:
        decode, write, sync)."""
        from pgbackup.formats import untar

        token = untar.PHASES.set(self.phases)
        try:
            yield
        finally:
            untar.PHASES.reset(token)

    def timed_storage(self) -> Storage:
        """The repository as extraction reads it: each object's reads count to
        ``transfer``."""
        return cast(Storage, _TimedStorage(self.storage, self.phases))

    def kept_in(self, inside: str) -> Callable[[str], bool] | None:
        """A delta restore's filter for the archive extracted at ``inside``: the members
        whose file is already the backup's (None: a full restore writes everything)."""
        if self.plan is None:
            return None
        kept = self.plan.keep

        def keep(name: str) -> bool:
            return inside + (name[2:] if name.startswith("./") else name) in kept

        return keep

    def empty_written(self) -> None:
        """The data directory and the tablespaces restored, emptied: nothing is left that
        looks usable."""
        for d in self.written:
            with contextlib.suppress(OSError):
                empty_directory(d)

    def configure_server(
        self,
        port: int | None,
        start: bool,
        archive: bool,
        recovery_settings: dict[str, Any] | None,
        standby: bool,
        primary_conninfo: str | None,
    ) -> tuple[Cluster, int | None]:
        """The restored server's settings (a minimal postgresql.conf when the backup has
        none, its port, archive_mode, recovery or standby with its signal file), and the
        server; (the server, its port: None unless asked for or started)."""
        directory, info = self.directory, self.info
        settings: dict[str, Any] = {}
        if not (directory / "postgresql.conf").exists():
            (directory / "postgresql.conf").write_text(MINIMAL_CONF)
        if port or start:
            port = port or free_port()
            settings["port"] = port
        if not archive:
            settings["archive_mode"] = "off"
        cluster = Cluster(
            directory,
            port or 0,
            os_user=self.os_user,
            major=info.metadata["server_version_num"] // 10000,
            # The target's own programs, as backup used, when they include the server's.
            pg_bin_dir=self.target.pg_bin_dir,
        )
        if standby:
            settings.update(recovery_settings or {})
            if primary_conninfo:
                settings["primary_conninfo"] = primary_conninfo
            (directory / "standby.signal").write_text("")
        elif recovery_settings:
            settings.update(recovery_settings)
            (directory / "recovery.signal").write_text("")
        if info.metadata.get("source") == "standby" and not standby:
            # The source's replication settings must not make the restored cluster follow it.
            settings.setdefault("primary_conninfo", "")
            settings.setdefault("primary_slot_name", "")
        if settings:
            cluster.configure(settings)
        hand_over(directory, self.os_user, 0o700)
        return cluster, port

    def result(self, port: int | None) -> RestoreResult:
        plan = self.plan
        return RestoreResult(
            backup_id=self.info.backup_id,
            target=self.target.name,
            directory=str(self.directory),
            stored_bytes=self.stored,
            raw_bytes=int(self.info.metadata.get("raw_bytes", 0)),
            seconds=0.0,
            port=port,
            delta=({**plan.as_dict(), "written_bytes": self.payload_written} if plan else None),
            combine=self.combined,
        )

    def start_server(
        self,
        cluster: Cluster,
        result: RestoreResult,
        wait_for_recovery: Any,
        recovering: bool,
        read_ahead: BeforeServer | None = None,
    ) -> None:
        """Start the restored server and wait for its recovery (``wait_for_recovery``).
        A server not where it was asked to be (one that died in recovery included) is
        stopped and its directories emptied: nothing is left that looks usable.
        ``read_ahead``: wal-fetch's prefetcher is started first, so that it has opened
        the archive and fetched the first segments when PostgreSQL asks for them."""
        try:
            t0 = time.monotonic()
            if read_ahead is not None:
                start_read_ahead(read_ahead, cluster)
            cluster.start()
            result.started = True
            if wait_for_recovery is not None:
                result.recovery = wait_for_recovery(cluster)
                if result.recovery.get("state") != "standby":  # a standby replays on
                    self.phases.add(
                        "wal_replay",
                        time.monotonic() - t0,
                        replayed_bytes(
                            self.info.metadata.get("start_lsn"),
                            result.recovery.get("last_replay_lsn"),
                        ),
                    )
        except BaseException as exc:
            reason = recovery_failure(cluster) if recovering else None
            with contextlib.suppress(Exception):
                cluster.stop("immediate")
            # a prefetcher started before a server that never came up writes on into its
            # spool: stopped (and the spool removed) before the directory is emptied
            end_read_ahead(cluster.data_dir)
            self.empty_written()
            LOG.error(
                "recovery of %s into %s failed; the directory was emptied",
                self.info.backup_id,
                self.directory,
            )
            if isinstance(exc, PostgresError) and reason:
                raise recovery_stopped(reason, cluster) from None
            raise


def start_read_ahead(read_ahead: BeforeServer, cluster: Cluster) -> None:
    """wal-fetch's prefetcher, started before the server as the server's OS user; never a
    reason for the restore to fail (the first wal-fetch starts one then, as always)."""
    try:
        argv = read_ahead.prepare(str(cluster.data_dir))
        hand_over(cluster.data_dir / SPOOL_DIR, cluster.os_user)
        cluster.prepare_log_file()  # the prefetcher writes to it before the server does
        spawn_detached(argv, cluster.os_user, cwd=cluster.data_dir, log_file=cluster.log_file)
    except (OSError, PgBackupError) as exc:
        LOG.warning("read-ahead not started before the server: %s", exc)


class _TimedStorage:
    """A storage whose ``open_read`` streams count to ``transfer``; the rest delegated."""

    def __init__(self, storage: Storage, phases: Phases) -> None:
        self.storage = storage
        self.phases = phases

    def open_read(self, key: str) -> BinaryIO:
        stream = self.storage.open_read(key)
        return cast(BinaryIO, TimedReader(stream, self.phases, "transfer"))

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.storage, attr)


def recovery_stopped(reason: str, cluster: Cluster) -> RestoreError:
    """The error of a recovery PostgreSQL gave up, with what to do about it."""
    hint = f"the archive misses or cannot deliver a file (pgbackup verify --wal); see {cluster.log_file}"
    missing = re.search(r'directory "([^"]+)" does not exist', reason)
    if missing:
        # CREATE TABLESPACE after the backup: its redo uses the path in the WAL record and
        # requires it to exist (tablespace.c, in recovery).
        hint = (
            f"a tablespace created after the backup is replayed into its original "
            f"location {missing.group(1)}: create it (empty, owned by the server's "
            "OS user) and restore again, or restore to a point before it was created"
        )
    return RestoreError(f"recovery stopped before reaching its target: {reason}", hint=hint)
