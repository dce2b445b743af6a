"""Prometheus metrics of what the repositories hold, through ``prometheus_client``.

One collector feeds both outputs: ``pgbackup exporter`` serves it on an HTTP ``/metrics``
endpoint (as WAL-G's and pgBackRest's exporters do), and ``pgbackup check --prometheus
FILE`` writes the same families, plus the check results, as a node_exporter textfile.

Per target and per repository (``repository="primary"`` for ``repository:``, the upload's
name for each upload destination): the newest restorable backup (end time, duration,
sizes), the number of restorable backups, the recoverable window, the newest archived WAL
and the archive lag, missing WAL segments. Per target, from the primary repository's
records: the last verify and drill, the drill's RTO, the objectives and the SLA verdicts.

Reading a repository means listing backups and WAL and reading records: seconds on object
storage. So a scrape never reads. Each repository has a :class:`SourceCache` that a
background thread refreshes at most once per ``interval``; a scrape waits for a refresh
at most ``timeout`` seconds in all, then serves the last good values with
``pgbackup_repository_up 0`` and their age. A hanging object store therefore delays
nothing but its own values.

Imported by the exporter, ``check`` and the report only: never on the wal-push path.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

LOG = logging.getLogger("pgbackup")

PRIMARY = "primary"  # the repository label of the policy's `repository:`
SLA_PERIOD = 30 * 86400  # the SLA verdicts cover what `sla-report` covers by default
SLA_LEVEL = {"COMPLIANT": 0, "AT RISK": 1, "BREACHED": 2}
CHECK_LEVEL = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}

TR = ("target", "repository")
T = ("target",)
R = ("repository",)

#: name -> (type, help, label names). Units in the name, as Prometheus' naming rules ask.
SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pgbackup_backup_last_success_timestamp_seconds": (
        "gauge",
        "End (consistency point) of the newest restorable backup, as a Unix time.",
        TR,
    ),
    "pgbackup_backup_last_duration_seconds": (
        "gauge",
        "Wall time the newest restorable backup took.",
        TR,
    ),
    "pgbackup_backup_last_stored_bytes": (
        "gauge",
        "Bytes the newest restorable backup occupies in the repository (compressed, encrypted).",
        TR,
    ),
    "pgbackup_backup_last_database_bytes": (
        "gauge",
        "Bytes of database files in the newest restorable backup, before compression.",
        TR,
    ),
    "pgbackup_backup_last_tablespaces": (
        "gauge",
        "Tablespaces (besides pg_default and pg_global) the newest restorable backup holds.",
        TR,
    ),
    "pgbackup_backup_last_from_standby": (
        "gauge",
        "1 if the newest restorable backup was taken from a hot standby, else 0.",
        TR,
    ),
    "pgbackup_backups_restorable": (
        "gauge",
        "Complete backups a restore can start from.",
        TR,
    ),
    "pgbackup_recovery_window_start_timestamp_seconds": (
        "gauge",
        "Earliest point a restore can reach (the oldest backup's end), as a Unix time.",
        TR,
    ),
    "pgbackup_recovery_window_end_timestamp_seconds": (
        "gauge",
        "Latest point a restore can reach (end of the unbroken WAL after the newest backup), as a Unix time.",
        TR,
    ),
    "pgbackup_wal_missing_segments": (
        "gauge",
        "WAL segments missing after the newest backup (0: the chain is unbroken).",
        TR,
    ),
    "pgbackup_wal_archived_segments": (
        "gauge",
        "WAL segments stored in the repository.",
        TR,
    ),
    "pgbackup_wal_last_archived_timestamp_seconds": (
        "gauge",
        "When the newest WAL segment arrived in the repository, as a Unix time.",
        TR,
    ),
    "pgbackup_wal_archive_lag_seconds": (
        "gauge",
        "Seconds from the newest WAL segment's arrival in the repository to this scrape.",
        TR,
    ),
    "pgbackup_verify_last_timestamp_seconds": (
        "gauge",
        "When the last `pgbackup verify` ran, as a Unix time.",
        T,
    ),
    "pgbackup_verify_last_success": (
        "gauge",
        "1 if the last `pgbackup verify` found no problem, else 0.",
        T,
    ),
    "pgbackup_drill_last_timestamp_seconds": (
        "gauge",
        "When the last restore drill finished, as a Unix time.",
        T,
    ),
    "pgbackup_drill_last_success": (
        "gauge",
        "1 if the last restore drill restored, recovered and passed its checks, else 0.",
        T,
    ),
    "pgbackup_drill_last_rto_seconds": (
        "gauge",
        "Recovery time measured by the newest successful drill (restore start to checks answered).",
        T,
    ),
    "pgbackup_sla_rto_objective_seconds": ("gauge", "The policy's sla.rto.", T),
    "pgbackup_sla_rpo_objective_seconds": ("gauge", "The policy's sla.rpo.", T),
    "pgbackup_generations": (
        "gauge",
        "Clusters the target's repository holds, one generation each (pg_upgrade or a new "
        "initdb recorded by `pgbackup upgrade`; 1 before any).",
        T,
    ),
    "pgbackup_generation_window_start_timestamp_seconds": (
        "gauge",
        "Earliest point a restore can reach inside one generation, as a Unix time.",
        ("target", "generation", "major"),
    ),
    "pgbackup_generation_window_end_timestamp_seconds": (
        "gauge",
        "Latest point a restore can reach inside one generation (the gap to the next "
        "generation's start is not restorable), as a Unix time.",
        ("target", "generation", "major"),
    ),
    "pgbackup_sla_status": (
        "gauge",
        "SLA verdict over the last 30 days (0 COMPLIANT, 1 AT RISK, 2 BREACHED); area overall or one of the report's (rpo, rto, backups, retention, verification, archive).",
        ("target", "area"),
    ),
    "pgbackup_repository_up": (
        "gauge",
        "1 if the values of this repository come from a read that succeeded and none is overdue; 0: they are the last good ones (see the age).",
        R,
    ),
    "pgbackup_repository_read_age_seconds": (
        "gauge",
        "Age of the values served for this repository (seconds since their read finished).",
        R,
    ),
    "pgbackup_repository_read_duration_seconds": (
        "gauge",
        "Wall time of the last finished read of this repository.",
        R,
    ),
    "pgbackup_repository_read_failures_total": (
        "counter",
        "Reads of this repository that failed or ran past the scrape timeout.",
        R,
    ),
    # The results of `pgbackup check` (textfile output only).
    "pgbackup_check_status": (
        "gauge",
        "Check status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN); check overall is the worst.",
        ("target", "check"),
    ),
    "pgbackup_check_timestamp_seconds": ("gauge", "When `pgbackup check` ran, as a Unix time.", ()),
}

#: `check` report metrics -> metric names (each also in SPECS).
CHECK_METRICS: dict[str, tuple[str, str]] = {
    "last_backup_age_seconds": ("gauge", "Seconds since the newest complete backup ended."),
    "last_backup_stored_bytes": ("gauge", "Bytes stored for the newest complete backup."),
    "archiver_failing": ("gauge", "1 if the server's last archive attempt failed, else 0."),
    "archiver_failed_count": (
        "counter",
        "Failed archive attempts since the server's statistics were reset (pg_stat_archiver).",
    ),
    "rpo_exposure_seconds": (
        "gauge",
        "Seconds of committed WAL not yet safe in the archive, at the check.",
    ),
    "wal_last_archived_age_seconds": (
        "gauge",
        "Seconds since the server last archived a segment (pg_stat_archiver), at the check.",
    ),
    "database_bytes": ("gauge", "Size of all databases of the server."),
    "repository_free_bytes": ("gauge", "Free bytes where the repository lives."),
    "last_drill_age_seconds": ("gauge", "Seconds since the newest successful drill finished."),
    "last_drill_rto_seconds": ("gauge", "RTO measured by the newest successful drill."),
}


def _check_metric_name(key: str) -> str:
    if key == "archiver_failed_count":
        return "pgbackup_archiver_failed_total"
    return f"pgbackup_{key}"


Sample = tuple[str, dict[str, str], float]


def _ts(value: Any) -> float | None:
    """An ISO 8601 text or datetime as a Unix time; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# --------------------------------------------------------------------------- reading


def repository_samples(
    policy: Any, repo: Any, target: str, repository: str, window: dict[str, Any] | None = None
) -> list[Sample]:
    """What one repository holds for one target. ``window``: an already computed
    ``recoverable_window`` (the SLA report computes it for the primary repository)."""
    from pgbackup.engine.inventory import recoverable_window
    from pgbackup.operations.recoverability import wal_arrivals

    labels = {"target": target, "repository": repository}
    out: list[Sample] = []

    def add(name: str, value: float | None) -> None:
        if value is not None:
            out.append((name, labels, float(value)))

    complete = repo.complete_backups(target)
    add("pgbackup_backups_restorable", len(complete))
    if complete:
        meta = complete[-1].metadata
        add("pgbackup_backup_last_success_timestamp_seconds", _ts(meta.get("stop_time")))
        add("pgbackup_backup_last_duration_seconds", meta.get("duration_seconds"))
        add(
            "pgbackup_backup_last_stored_bytes",
            meta.get("stored_bytes") or complete[-1].stored_bytes,
        )
        add("pgbackup_backup_last_database_bytes", meta.get("raw_bytes"))
        add("pgbackup_backup_last_tablespaces", len(meta.get("tablespaces") or []))
        add("pgbackup_backup_last_from_standby", 1.0 if meta.get("source") == "standby" else 0.0)
        if window is None:
            window = recoverable_window(repo, policy, target)
        add("pgbackup_recovery_window_start_timestamp_seconds", _ts(window.get("earliest_time")))
        add("pgbackup_recovery_window_end_timestamp_seconds", _ts(window.get("latest_time")))
        add("pgbackup_wal_missing_segments", len(window.get("wal_gaps") or []))
    wal = wal_arrivals(repo, target)
    add("pgbackup_wal_archived_segments", len(wal))
    if wal:
        # The lag is computed at each scrape from this time (see RepositoryCollector).
        add("pgbackup_wal_last_archived_timestamp_seconds", max(wal.values()))
    return out


def target_samples(policy: Any, repo: Any, target: Any) -> tuple[list[Sample], dict[str, Any]]:
    """Records kept in the primary repository: verify runs, drills, SLA verdicts.

    Returns the samples and the SLA report (whose recoverable window is reused)."""
    from pgbackup.operations.monitor import drill_records
    from pgbackup.operations.sla_report import build_report

    labels = {"target": target.name}
    out: list[Sample] = []

    def add(name: str, value: float | None, extra: dict[str, str] | None = None) -> None:
        if value is not None:
            out.append((name, {**labels, **(extra or {})}, float(value)))

    verifies = list(repo.runs(target.name, "verify"))
    if verifies:
        add("pgbackup_verify_last_timestamp_seconds", _ts(verifies[-1].get("recorded_at")))
        add("pgbackup_verify_last_success", 1.0 if verifies[-1].get("status") == "ok" else 0.0)
    drills = drill_records(repo, target.name)
    if drills:
        last = drills[-1]
        add(
            "pgbackup_drill_last_timestamp_seconds",
            _ts(last.get("finished_at") or last.get("started_at")),
        )
        add("pgbackup_drill_last_success", 1.0 if last.get("status") == "ok" else 0.0)
    good = [d for d in drills if d.get("status") == "ok" and d.get("rto_seconds") is not None]
    if good:
        add("pgbackup_drill_last_rto_seconds", good[-1]["rto_seconds"])
    add("pgbackup_sla_rto_objective_seconds", policy.sla.rto)
    add("pgbackup_sla_rpo_objective_seconds", policy.sla.rpo)
    report = build_report(policy, repo, target, SLA_PERIOD, timeline=False)
    gens = report.get("generations") or []
    add("pgbackup_generations", len(gens) or 1)
    for g in gens:
        extra = {"generation": str(g["generation"]), "major": str(g.get("major") or "")}
        add(
            "pgbackup_generation_window_start_timestamp_seconds",
            _ts(g["window"].get("earliest_time")),
            extra,
        )
        add(
            "pgbackup_generation_window_end_timestamp_seconds",
            _ts(g["window"].get("latest_time")),
            extra,
        )
    add("pgbackup_sla_status", SLA_LEVEL[report["verdict"]], {"area": "overall"})
    for area, section in report["sections"].items():
        add("pgbackup_sla_status", SLA_LEVEL[section["verdict"]], {"area": area})
    return out, report


def read_primary(policy: Any, targets: list[Any]) -> list[Sample]:
    """Everything the primary repository says about ``targets``."""
    from pgbackup.engine.repository import Repository
    from pgbackup.storage import open_storage

    repo = Repository(open_storage(policy.repository))
    out: list[Sample] = []
    from pgbackup.engine.generations import generation_views

    for t in targets:
        samples, report = target_samples(policy, repo, t)
        out += samples
        newest = Repository(generation_views(repo.storage, t.name)[-1][1])
        out += repository_samples(policy, newest, t.name, PRIMARY, report.get("window") or None)
    return out


def read_upload(policy: Any, name: str, targets: list[Any]) -> list[Sample]:
    """What the upload destination ``name`` holds of ``targets``."""
    from pgbackup.engine.repository import Repository
    from pgbackup.engine.uploads import upload_storage

    repo = Repository(upload_storage(policy, name))
    out: list[Sample] = []
    for t in targets:
        out += repository_samples(policy, repo, t.name, name)
    return out


# --------------------------------------------------------------------------- cache


@dataclass
class Reading:
    """What a scrape serves for one repository."""

    samples: list[Sample]
    up: bool
    age: float | None  # seconds since the served values were read
    duration: float | None
    failures: int


@dataclass
class SourceCache:
    """One repository's samples, read by a background thread at most once per ``interval``.

    A scrape that finds the values older than ``interval`` starts a read (unless one runs)
    and waits for it until its deadline; past it, the last good values are served, marked
    down. A read that raises or overruns counts as a failure; the values stay."""

    name: str
    read: Callable[[], list[Sample]]
    interval: float
    clock: Callable[[], float] = time.monotonic
    samples: list[Sample] = field(default_factory=list)
    read_at: float | None = None  # when the last good read finished
    duration: float | None = None
    failures: int = 0
    ok: bool = False
    error: str | None = None
    _attempt_at: float | None = None
    _thread: threading.Thread | None = None
    _overrun_counted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh_if_due(self) -> threading.Thread | None:
        """Start a read if the last one began an interval ago and none runs; the runner."""
        with self._lock:
            now = self.clock()
            due = self._attempt_at is None or now - self._attempt_at >= self.interval
            if self._thread is None and due:
                self._attempt_at = now
                self._overrun_counted = False
                self._thread = threading.Thread(
                    target=self._run, name=f"pgbackup-read-{self.name}", daemon=True
                )
                self._thread.start()
            return self._thread

    def _run(self) -> None:
        started = self.clock()
        try:
            samples = self.read()
        except Exception as exc:  # any failure of one repository: serve the old values
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.ok, self.error = False, message
                if not self._overrun_counted:
                    self.failures += 1
                self.duration = self.clock() - started
                self._thread = None
            LOG.warning("exporter: reading repository %s failed: %s", self.name, message)
            return
        with self._lock:
            self.samples, self.ok, self.error = samples, True, None
            self.read_at = self.clock()
            self.duration = self.read_at - started
            self._thread = None

    def reading(self, timeout: float) -> Reading:
        """The values to serve now; a read running longer than ``timeout`` marks them down."""
        with self._lock:
            now = self.clock()
            overdue = (
                self._thread is not None
                and self._attempt_at is not None
                and now - self._attempt_at > timeout
            )
            if overdue and not self._overrun_counted:
                self.failures += 1
                self._overrun_counted = True
            return Reading(
                samples=list(self.samples),
                up=self.ok and not overdue and self.read_at is not None,
                age=now - self.read_at if self.read_at is not None else None,
                duration=self.duration,
                failures=self.failures,
            )


class RepositoryCollector(Collector):
    """The families of every repository of a policy, from their caches."""

    def __init__(
        self,
        policy: Any,
        targets: list[Any],
        *,
        interval: float = 60.0,
        timeout: float = 5.0,
        readers: dict[str, Callable[[], list[Sample]]] | None = None,
    ) -> None:
        self.timeout = timeout
        if readers is None:
            readers = {PRIMARY: lambda: read_primary(policy, targets)}
            for spec in policy.uploads or []:
                name = str(spec["name"])
                readers[name] = lambda name=name: read_upload(policy, name, targets)  # type: ignore[misc]
        self.caches = [SourceCache(name, fn, interval) for name, fn in readers.items()]

    def warm(self) -> None:
        """Start the first reads now, so the first scrape finds values."""
        for cache in self.caches:
            cache.refresh_if_due()

    def describe(self) -> Iterable[Any]:
        return []  # never read a repository at registration

    def readings(self) -> dict[str, Reading]:
        """Refresh what is due and wait for it, at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + self.timeout
        runners = [(c, c.refresh_if_due()) for c in self.caches]
        for _cache, runner in runners:
            if runner is not None:
                runner.join(max(0.0, deadline - time.monotonic()))
        return {c.name: c.reading(self.timeout) for c in self.caches}

    def collect(self) -> Iterator[Any]:
        now = time.time()
        samples: list[Sample] = []
        for name, r in self.readings().items():
            labels = {"repository": name}
            samples += r.samples
            samples.append(("pgbackup_repository_up", labels, 1.0 if r.up else 0.0))
            if r.age is not None:
                samples.append(("pgbackup_repository_read_age_seconds", labels, r.age))
            if r.duration is not None:
                samples.append(("pgbackup_repository_read_duration_seconds", labels, r.duration))
            samples.append(("pgbackup_repository_read_failures_total", labels, float(r.failures)))
        lag = [
            ("pgbackup_wal_archive_lag_seconds", labels, max(0.0, now - value))
            for name, labels, value in samples
            if name == "pgbackup_wal_last_archived_timestamp_seconds"
        ]
        yield from families(samples + lag)


def families(samples: list[Sample]) -> Iterator[Any]:
    """Samples grouped into metric families, in SPECS order (one family per name)."""
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in samples:
        by_name.setdefault(name, []).append((labels, value))
    for name, rows in by_name.items():
        kind, help_text, labelnames = SPECS.get(name) or _extra_spec(name)
        family: Any
        if kind == "counter":
            family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labelnames)
        else:
            family = GaugeMetricFamily(name, help_text, labels=labelnames)
        for labels, value in rows:
            family.add_metric([labels.get(n, "") for n in labelnames], value)
        yield family


def _extra_spec(name: str) -> tuple[str, str, tuple[str, ...]]:
    """A check metric the monitor added after this table was written: a plain gauge."""
    for key, (kind, help_text) in CHECK_METRICS.items():
        if _check_metric_name(key) == name:
            return kind, help_text, T
    return "gauge", f"{name.removeprefix('pgbackup_')} as measured by `pgbackup check`.", T


class CheckCollector(Collector):
    """The results of one `pgbackup check` run (monitor.TargetReport objects)."""

    def __init__(self, reports: list[Any], checked_at: datetime | None = None) -> None:
        self.reports = reports
        self.checked_at = checked_at or datetime.now(UTC)

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        samples: list[Sample] = []
        for r in self.reports:
            status = ("pgbackup_check_status", {"target": r.target, "check": "overall"})
            samples.append((*status, float(CHECK_LEVEL[r.status])))
            for c in r.checks:
                labels = {"target": r.target, "check": c.name}
                samples.append(("pgbackup_check_status", labels, float(CHECK_LEVEL[c.status])))
            for key, value in r.metrics.items():
                if key != "status":
                    samples.append((_check_metric_name(key), {"target": r.target}, float(value)))
        samples.append(("pgbackup_check_timestamp_seconds", {}, self.checked_at.timestamp()))
        yield from families(samples)


def check_textfile(
    policy: Any, targets: list[Any], reports: list[Any], *, timeout: float = 30.0
) -> str:
    """The node_exporter textfile of a check: its results and the repository metrics."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    registry.register(CheckCollector(reports))
    registry.register(RepositoryCollector(policy, targets, interval=0, timeout=timeout))
    return generate_latest(registry).decode()


# --------------------------------------------------------------------------- the exporter


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:9188``, ``:9188`` for every interface) -> (addr, port)."""
    from pgbackup.errors import UsageError

    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(
            f"--listen {text!r}: expected ADDR:PORT with a port from 1 to 65535, "
            "e.g. 127.0.0.1:9188, [::1]:9188 or :9188 (every interface)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "[" in host or "]" in host:
        raise UsageError(f"--listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:9188")
    return host or "0.0.0.0", int(port_text)


def serve(
    policy: Any,
    targets: list[Any],
    listen: str,
    *,
    interval: float,
    timeout: float,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve ``/metrics`` until ``stop`` is set (or SIGTERM/SIGINT ends the process)."""
    from prometheus_client import start_http_server

    from pgbackup.errors import PgBackupError

    addr, port = parse_listen(listen)
    collector = RepositoryCollector(policy, targets, interval=interval, timeout=timeout)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise PgBackupError(
            f"cannot listen on {listen}: {exc.strerror or exc}",
            hint="pick a free port or address with --listen ADDR:PORT",
        ) from None
    collector.warm()
    if ready:
        ready(f"http://{f'[{addr}]' if ':' in addr else addr}:{port}/metrics")
    stop = stop or threading.Event()
    try:
        _wait(stop)
    finally:
        with contextlib.suppress(Exception):
            server.shutdown()
            server.server_close()
            thread.join(5)


def _wait(stop: threading.Event) -> None:
    """Sleep until ``stop`` is set; SIGTERM (a service manager) and SIGINT (Ctrl-C) set it:
    stopping is the normal end of an exporter, not an interruption."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread: the caller stops us
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
