"""wal-receive: WAL streamed into the repository as it is written (RPO of about a second).

``archive_command`` hands over a segment only once it is full or ``archive_timeout``
switches it, so a lost host loses everything since the last switch. The receiver
instead supervises ``pg_receivewal`` of the server's major on a replication slot and
stores what it writes:

- every completed segment (and ``.history`` file) goes through :func:`pgbackup.engine.wal.push`,
  so the rules of ``wal-push`` hold unchanged (compressed, never overwritten with other
  content, durable before it counts, the cluster's identity checked);
- the segment being written (pg_receivewal's ``NAME.partial``, pre-padded with zeros to
  the segment size, renamed to ``NAME`` once complete and flushed: "Write-ahead log
  files that are not completed are marked with the suffix .partial", pg_receivewal's
  documentation; ``close_walfile`` in src/bin/pg_basebackup/receivelog.c) is stored as
  ``<target>/wal/NAME.partial`` whenever it changed, at most ``interval`` seconds
  apart, replacing the previous copy atomically. It is the only object of the archive
  that is ever replaced: a newer copy holds the older one as a prefix. ``wal-fetch``
  serves it for ``NAME`` at the end of the archive (see :func:`pgbackup.engine.wal.fetch`).

The slot makes the server keep WAL the receiver has not confirmed, so a receiver that was
down resumes where it stopped: pg_receivewal starts from the newest file in its spool
directory, or from the slot's ``restart_lsn`` when the spool is empty
(``FindStreamingStart`` and ``READ_REPLICATION_SLOT`` in src/bin/pg_basebackup/pg_receivewal.c).
``--no-loop`` makes pg_receivewal exit when the connection ends; this supervisor
restarts it with a growing backoff and logs why.

``synchronous: true`` runs pg_receivewal ``--synchronous`` ("Flush the WAL data to disk
immediately after it has been received. Also send a status packet back to the server
immediately after flushing, regardless of --status-interval"): with the receiver named in
``synchronous_standby_names``, a commit returns only once the receiver has flushed it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pgbackup.errors import PgBackupError
from pgbackup.formats.lsn import is_history, is_partial, is_segment
from pgbackup.ui import LOG

INTERVAL = float(os.environ.get("PGBACKUP_RECEIVER_INTERVAL", "0.5"))
BACKOFF_MAX = 30.0


class ReceiverError(PgBackupError):
    """The receiver cannot start (no slot, no permission, no pg_receivewal)."""

    exit_code = 3


class ReceiverSettings(NamedTuple):
    slot: str
    synchronous: bool
    directory: Path
    application_name: str


def settings(policy: Any, target: Any) -> ReceiverSettings:
    """The target's ``wal_receiver`` block, or a clear error when it has none."""
    spec = getattr(target, "wal_receiver", None)
    if not spec:
        raise ReceiverError(
            f"target {target.name!r} has no wal_receiver in {policy.path}",
            hint=f"add under targets.{target.name}: wal_receiver: {{slot: pgbackup_{target.name}}}",
        )
    directory = spec.get("directory")
    if directory is None:
        root = os.environ.get("PGBACKUP_SPOOL") or f"/var/tmp/pgbackup-spool-{os.getuid()}"
        key = hashlib.sha256(f"{policy.path}\0{target.name}".encode()).hexdigest()[:16]
        directory = Path(root) / f"receiver-{key}"
    return ReceiverSettings(
        slot=str(spec["slot"]),
        synchronous=bool(spec.get("synchronous", False)),
        directory=Path(directory),
        application_name=str(spec["slot"]),
    )


def receivewal_argv(
    program: str, dsn: str, rs: ReceiverSettings, status_interval: int = 1
) -> list[str]:
    """pg_receivewal's command line (pure: unit-tested).

    ``application_name`` is the slot's name, so ``synchronous_standby_names`` and
    ``pg_stat_replication`` name the receiver as ``plan`` says.
    """
    argv = [
        program,
        "--dbname",
        f"{dsn} application_name='{rs.application_name}'",
        "--directory",
        str(rs.directory),
        "--slot",
        rs.slot,
        "--no-loop",
        "--no-password",
        "--verbose",
        "--status-interval",
        str(status_interval),
    ]
    if rs.synchronous:
        argv.append("--synchronous")
    return argv


def create_slot_argv(program: str, dsn: str, rs: ReceiverSettings) -> list[str]:
    return [
        program,
        "--dbname",
        dsn,
        "--slot",
        rs.slot,
        "--create-slot",
        "--if-not-exists",
        "--no-password",
    ]


def explain_receivewal_error(text: str, where: str) -> ReceiverError:
    low = text.lower()
    if "superuser or replication role" in low or "permission denied" in low:
        hint = "ALTER ROLE <user> REPLICATION; (the receiver streams like a standby)"
    elif "pg_hba.conf" in low:
        hint = "add a 'host replication <user> <receiver host>/32 scram-sha-256' line to pg_hba.conf and reload"
    elif "replication slots can only be used if wal_level" in low:
        hint = "set wal_level = replica (or logical) and restart the server"
    elif "all replication slots are in use" in low or "max_replication_slots" in low:
        hint = "raise max_replication_slots and restart the server"
    elif "could not connect" in low or "connection refused" in low:
        hint = "is the server running and listening there? check the target's connection"
    else:
        hint = "see the message above; `pgbackup check` reports the slot's state"
    first = text.strip().splitlines()[-1] if text.strip() else "pg_receivewal failed"
    return ReceiverError(f"pg_receivewal for {where}: {first}", hint=hint)


def _die_with_parent() -> None:
    """In the child: SIGINT (pg_receivewal's clean stop) when the supervisor dies, even by
    SIGKILL; an orphan would hold the slot and the restarted receiver could not stream."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)


class Receiver:
    """Supervises pg_receivewal and moves what it writes into the repository."""

    def __init__(
        self,
        policy: Any,
        target: Any,
        argv: list[str],
        rs: ReceiverSettings,
        interval: float = INTERVAL,
    ) -> None:
        from pgbackup.engine.wal import codec_for
        from pgbackup.storage import open_storage

        self.policy = policy
        self.target = target
        self.argv = argv
        self.rs = rs
        self.interval = interval
        self.storage = open_storage(policy.repository)
        self.views: dict[int | None, Any] = {}  # per cluster: its generation (storage_for)
        self.spec = codec_for(policy)
        self.proc: subprocess.Popen[bytes] | None = None
        self.uploaded: dict[str, tuple[int, str]] = {}  # partial name -> (mtime_ns, sha256)
        self.pushed: set[str] = set()  # stored (or found identical) by this process
        self.stored = 0
        self.partial_uploads = 0
        self.restarts = 0

    # --- pg_receivewal --------------------------------------------------------------

    def _start(self) -> None:
        LOG.info("wal-receive %s: starting %s", self.target.name, " ".join(self.argv[:1]))
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.started = time.monotonic()
        threading.Thread(target=self._log_stderr, args=(self.proc,), daemon=True).start()

    def _log_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.last_error = line
            LOG.info("pg_receivewal: %s", line)

    def _stop_child(self) -> None:
        """SIGINT is pg_receivewal's clean stop: it flushes and closes the current file."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # --- the spool -> the repository ------------------------------------------------

    def sync_once(self) -> None:
        """Store completed files in order, then the partial segment(s) that changed.

        Completed segments go first, so the archive never holds ``N+1.partial`` without
        ``N``; a stored segment's stale ``.partial`` copy is removed after it.
        """
        from pgbackup.engine.wal import push, wal_key

        d = self.rs.directory
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return
        complete = [n for n in names if is_segment(n) or is_history(n)]
        complete.sort(key=lambda n: (not is_history(n), n))  # a timeline's history first
        segments = [n for n in complete if is_segment(n)]
        for name in complete:
            if name in self.pushed:
                continue
            outcome = push(self.policy, d / name, self.target.name)
            self.pushed.add(name)
            if outcome == "stored":
                self.stored += 1
                LOG.info("wal-receive %s: stored %s", self.target.name, name)
            # A locked repository is written once (docs/security.md): the host deletes
            # nothing, the stale .partial stays until cleanup removes it with the WAL.
            if is_segment(name) and not self.policy.repository.get("object_lock"):
                stale = wal_key(self.target.name, name + ".partial", self.spec)
                with contextlib.suppress(PgBackupError, OSError):
                    with open(d / name, "rb") as f:
                        storage = self.storage_for(f.read(64))
                    if storage.stat(stale) is not None:
                        storage.delete(stale)
                self.uploaded.pop(name + ".partial", None)
        # The newest completed segment stays: pg_receivewal restarts after it.
        for name in segments[:-1]:
            if name in self.pushed:
                with contextlib.suppress(FileNotFoundError):
                    (d / name).unlink()
        for name in names:
            if is_partial(name):
                self._store_partial(d / name)

    def storage_for(self, data: bytes) -> Any:
        """The repository as the generation of the cluster that wrote ``data`` sees it
        (engine/generations; the page header's system identifier), remembered per cluster."""
        from pgbackup.engine.wal import generation_storage
        from pgbackup.formats.walpage import segment_sysid

        header = segment_sysid(data)
        sysid = header[0] if header else None
        if sysid not in self.views:
            self.views[sysid] = generation_storage(
                self.storage, self.target.name, sysid, strict=sysid is not None
            )
        return self.views[sysid]

    def _store_partial(self, path: Path) -> None:
        from pgbackup.engine.wal import WAL_THREADS, wal_key
        from pgbackup.formats.codecs import encode_bytes

        try:
            st = path.stat()
            previous = self.uploaded.get(path.name)
            if previous is not None and previous[0] == st.st_mtime_ns:
                return
            data = path.read_bytes()
        except FileNotFoundError:
            return  # completed and renamed meanwhile: the next round stores the segment
        digest = hashlib.sha256(data).hexdigest()
        if previous is not None and previous[1] == digest:
            self.uploaded[path.name] = (st.st_mtime_ns, digest)
            return
        recipients = None
        if self.spec.encrypted:
            from pgbackup.formats.codecs import load_recipients

            recipients = load_recipients(self.policy.encryption.recipients_file)
        encoded = encode_bytes(self.spec, data, recipients=recipients, threads=WAL_THREADS)
        self.storage_for(data).write_bytes(wal_key(self.target.name, path.name, self.spec), encoded)
        self.uploaded[path.name] = (st.st_mtime_ns, digest)
        self.partial_uploads += 1

    # --- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        """Until ``stop``: keep pg_receivewal running, store its files every ``interval``."""
        self.rs.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        backoff = 1.0
        next_start = 0.0
        self.last_error = ""
        try:
            while not stop.is_set():
                now = time.monotonic()
                if (self.proc is None or self.proc.poll() is not None) and now >= next_start:
                    if self.proc is not None:
                        ran = now - self.started
                        backoff = 1.0 if ran > BACKOFF_MAX else min(backoff * 2, BACKOFF_MAX)
                        self.restarts += 1
                        LOG.warning(
                            "wal-receive %s: pg_receivewal exited with status %s (%s); "
                            "restarting in %.0fs",
                            self.target.name,
                            self.proc.returncode,
                            self.last_error or "no message",
                            backoff,
                        )
                        self.proc = None
                        next_start = now + backoff
                        continue
                    self._start()
                    if ready is not None:
                        ready()
                        ready = None
                try:
                    self.sync_once()
                except PgBackupError as exc:
                    LOG.error("wal-receive %s: %s (retrying)", self.target.name, exc)
                stop.wait(self.interval)
        finally:
            self._stop_child()
            # What pg_receivewal wrote before it stopped is stored before we exit 0.
            self.sync_once()


def prepare(
    policy: Any, target: Any, create_slot: bool = True
) -> tuple[list[str], ReceiverSettings]:
    """Check the server, find pg_receivewal of its major, create the slot when missing."""
    from pgbackup.engine.wal import bind_archive, generation_storage
    from pgbackup.postgres.binaries import program_for
    from pgbackup.postgres.connection import describe, preflight_facts, to_dsn
    from pgbackup.postgres.majors import unsupported
    from pgbackup.postgres.sandbox import resolve_conninfo
    from pgbackup.storage import open_storage

    rs = settings(policy, target)
    conninfo = resolve_conninfo(policy, target, LOG)
    facts, problem = preflight_facts(conninfo, target.pg_bin_dir)
    where = describe(conninfo)
    refusal = unsupported(facts.major, f"{where}: the server")
    if refusal is not None:
        raise refusal
    if not facts.can_replicate:
        raise ReceiverError(
            f"{where}: role {conninfo.get('user')!r} lacks the REPLICATION attribute, "
            "which streaming WAL needs",
            hint=f"ALTER ROLE {conninfo.get('user')} REPLICATION;",
        )
    if problem is not None:
        raise problem
    if facts.wal_level not in ("replica", "logical"):
        raise ReceiverError(
            f"{where}: wal_level is {facts.wal_level!r}; a replication slot needs replica",
            hint="ALTER SYSTEM SET wal_level = replica; then restart the server",
        )
    program = program_for(target, "pg_receivewal", facts.major)
    dsn = to_dsn(conninfo)
    sysid = int(facts.system_identifier)
    bind_archive(
        # The generation of the server's cluster (engine/generations); one nobody
        # declared is refused with the command to run.
        generation_storage(open_storage(policy.repository), target.name, sysid),
        target.name,
        sysid,
        facts.wal_segment_size,
    )
    if create_slot:
        proc = subprocess.run(
            create_slot_argv(program, dsn, rs), capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise explain_receivewal_error(proc.stderr, where)
    return receivewal_argv(program, dsn, rs), rs


def receive(policy: Any, target: Any, ready: Callable[[str], None] | None = None) -> Receiver:
    """Run until SIGTERM/SIGINT, then flush what was received and return."""
    argv, rs = prepare(policy, target)
    receiver = Receiver(policy, target, argv, rs)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # With upload destinations, what is stored (the .partial included) goes off-site too,
    # a round every INTERVAL (pgbackup/engine/shipper.py): a lost host loses about a second there.
    shipper = None
    if policy.uploads:
        from pgbackup.engine.shipper import Shipper

        shipper = Shipper(policy, target.name)
        shipping = threading.Thread(target=shipper.run, args=(stop, INTERVAL), daemon=True)
        shipping.start()
    try:
        receiver.run(
            stop,
            ready=(lambda: ready(f"streaming {target.name} on slot {rs.slot} into {rs.directory}"))
            if ready
            else None,
        )
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if shipper is not None:
            stop.set()
            shipping.join(60)
            with contextlib.suppress(PgBackupError):
                shipper.once()  # what the receiver's last round stored
    return receiver


def receiver_plan(policy: Any, target: Any) -> dict[str, Any] | None:
    """What ``plan`` shows for a streaming target: the command, the slot, and the server
    settings it needs (None for a target without ``wal_receiver``)."""
    spec = getattr(target, "wal_receiver", None)
    if not spec:
        return None
    rs = settings(policy, target)
    conf = {
        "max_replication_slots": ">= 1 more than the slots in use",
        "max_wal_senders": ">= 3 (the receiver and a backup's two)",
        # Bounds what a stalled or stopped receiver makes the server keep; check warns at
        # half of it and is CRITICAL at a quarter left, before PostgreSQL invalidates the slot.
        "max_slot_wal_keep_size": "10GB (the WAL written while the receiver may be down; "
        "below pg_wal's free space)",
    }
    if rs.synchronous:
        # pg_receivewal does not apply WAL: with synchronous_commit = remote_apply every
        # commit would wait forever (pg_receivewal's documentation, --synchronous).
        conf["synchronous_standby_names"] = f"'{rs.application_name}'"
        conf["synchronous_commit"] = "on (not remote_apply)"
    return {
        "command": f"pgbackup --config {policy.path} wal-receive --target {target.name}",
        "slot": rs.slot,
        "mode": "synchronous (RPO 0)" if rs.synchronous else "asynchronous (RPO about 1 s)",
        "spool": str(rs.directory),
        "postgresql_conf": conf,
        "unit": "examples/pgbackup-wal-receive@.service",
    }
