"""``pgbackup check``: is every target protected as the policy promises, right now?

Per target: age of the newest complete backup against its schedule, the last backup's
outcome, WAL archiving (``pg_stat_archiver``: failing or not, age of the last archived
segment against ``sla.rpo``), gaps in the WAL chain, repository free space against three
times the database size, permissions of the repository and of secret files, and the age
and outcome of the last restore drill.

Each check is OK, WARNING, CRITICAL or UNKNOWN (Nagios' 0/1/2/3); a target's status is its
worst check. Every run is recorded (``<target>/runs/...-check.json``) so that the SLA report
can show the RPO exposure measured at each check.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pgbackup.engine.repository import Repository, iso, parse_iso
from pgbackup.operations.checks import (
    CRITICAL,
    LEVEL,
    OK,
    UNKNOWN,
    WARNING,
    Check,
    TargetReport,
    human_age,
    worst,
)

GRACE = timedelta(minutes=30)  # a scheduled run may take this long before it counts as missed
DEFAULT_INTERVAL = timedelta(days=1)


# --------------------------------------------------------------------------- schedules


def missed_runs(
    expression: str | None, last: datetime | None, now: datetime, *, grace: timedelta = GRACE
) -> tuple[int, datetime | None]:
    """How many scheduled runs came (and their grace passed) after ``last``; and the first.

    Without a schedule a daily run is assumed. With no ``last`` at all, one missed run.
    """
    if last is None:
        return 1, None
    if not expression:
        due = last + DEFAULT_INTERVAL
        missed = 0
        first = None
        while due + grace <= now and missed < 1000:
            first = first or due
            missed += 1
            due += DEFAULT_INTERVAL
        return missed, first
    from croniter import croniter

    it = croniter(expression, last)
    missed = 0
    first = None
    while missed < 1000:
        due = it.get_next(datetime)
        if due + grace > now:
            break
        first = first or due
        missed += 1
    return missed, first


def schedule_status(
    what: str, expression: str | None, last: datetime | None, now: datetime
) -> Check:
    missed, first = missed_runs(expression, last, now)
    if last is None:
        return Check(f"{what}_age", CRITICAL, f"no successful {what} yet")
    age = (now - last).total_seconds()
    text = f"last successful {what} {human_age(age)} ago"
    if missed == 0:
        return Check(f"{what}_age", OK, text, age)
    status = WARNING if missed == 1 else CRITICAL
    return Check(
        f"{what}_age",
        status,
        f"{text}; {missed} scheduled run(s) missed since {iso(first) if first else '?'}",
        age,
    )


# --------------------------------------------------------------------------- drills


def drill_records(repo: Repository, target: str) -> list[dict[str, Any]]:
    """Drill results of ``target``, oldest first."""
    out = []
    keys = sorted(o.key for o in repo.storage.list(f"{target}/drills/") if o.key.endswith(".json"))
    for key in keys:
        with contextlib.suppress(Exception):
            data = json.loads(repo.storage.read_bytes(key))
            if isinstance(data, dict):
                out.append(data)
    return out


# --------------------------------------------------------------------------- archiver


def archiver_facts(conninfo: dict[str, Any]) -> dict[str, Any]:
    """pg_stat_archiver, the current WAL file, the database size; times as aware datetimes."""
    from pgbackup.postgres.connection import connect

    with connect(conninfo) as conn:
        row = conn.execute(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
            "last_failed_wal, last_failed_time, stats_reset, now(), "
            "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, "
            "(SELECT sum(pg_database_size(oid)) FROM pg_database), "
            "current_setting('archive_mode'), "
            "(SELECT system_identifier::text FROM pg_control_system()) FROM pg_stat_archiver"
        ).fetchone()
    assert row is not None
    keys = (
        "archived_count",
        "last_archived_wal",
        "last_archived_time",
        "failed_count",
        "last_failed_wal",
        "last_failed_time",
        "stats_reset",
        "server_now",
        "current_wal",
        "database_size",
        "archive_mode",
        "system_identifier",
    )
    return dict(zip(keys, row, strict=True))


def identity_check(repo: Repository, target: str, sysid: str | None) -> Check | None:
    """``cluster_identity``: the server is a cluster the target's archive holds (one of
    its generations); CRITICAL, naming the upgrade step, for one nobody declared (after
    pg_upgrade or a new initdb, until `pgbackup upgrade` records it). None before the
    archive is bound to any cluster."""
    from pgbackup.engine.generations import generations, of_sysid, undeclared

    gens = [g for g in generations(repo.storage, target) if g.get("system_identifier")]
    if not gens or sysid is None:
        return None
    gen = of_sysid(gens, sysid)
    if gen is None:
        message, hint = undeclared(target, sysid, [str(g["system_identifier"]) for g in gens])
        return Check("cluster_identity", CRITICAL, f"{message}: its WAL is refused; {hint}")
    if gen is not gens[-1]:
        return Check(
            "cluster_identity",
            CRITICAL,
            f"the server is cluster {sysid}, generation {gen['generation']} of target "
            f"{target!r}, but generation {gens[-1]['generation']} (cluster "
            f"{gens[-1]['system_identifier']}) is the newest: the connection reaches an old server",
        )
    return Check(
        "cluster_identity",
        OK,
        f"cluster {sysid}"
        + (f", generation {gen['generation']}" if len(gens) > 1 else "")
        + " as the archive records it",
    )


def rpo_exposure(facts: dict[str, Any], now: datetime) -> tuple[bool, float]:
    """(archiving failing?, seconds of committed WAL not yet safe in the archive).

    Failing: the last failure is newer than the last success. Exposure: when failing, or
    when a completed segment waits behind the current one, everything since the last
    archived segment (an upper bound); otherwise zero — the segment being written is
    shipped by ``archive_timeout`` as designed.
    """
    last_ok = facts.get("last_archived_time")
    last_bad = facts.get("last_failed_time")
    failing = last_bad is not None and (last_ok is None or last_bad > last_ok)
    # ``last_safe_time``: when the archive refuses this cluster (a new one nobody declared),
    # what is safe ends with the newest WAL the archive holds, whatever the server counts.
    since = facts.get("last_safe_time") or last_ok or facts.get("stats_reset")
    pending = False
    current, archived = facts.get("current_wal"), facts.get("last_archived_wal")
    if current and archived and len(archived) >= 24:
        with contextlib.suppress(ValueError):
            pending = int(current[8:24], 16) > int(archived[8:24], 16) + 1
    if (failing or pending) and since is not None:
        return failing, max(0.0, (now - since).total_seconds())
    return failing, 0.0


def archiving_checks(policy: Any, facts: dict[str, Any], now: datetime) -> list[Check]:
    rpo = policy.sla.rpo
    failing, exposure = rpo_exposure(facts, now)
    checks = []
    if str(facts.get("archive_mode")) == "off":
        checks.append(Check("wal_archiving", CRITICAL, "archive_mode is off: no WAL is archived"))
        return checks
    if failing:
        checks.append(
            Check(
                "wal_archiving",
                CRITICAL,
                f"WAL archiving is failing: {facts.get('last_failed_wal')} failed at "
                f"{iso(facts['last_failed_time'])}; last success "
                f"{iso(facts['last_archived_time']) if facts.get('last_archived_time') else 'never'}"
                f" ({facts.get('failed_count')} failure(s) since the statistics were reset)",
                float(facts.get("failed_count") or 0),
            )
        )
    else:
        checks.append(
            Check(
                "wal_archiving",
                OK,
                f"archiving works (last {facts.get('last_archived_wal') or 'none yet'})",
                float(facts.get("failed_count") or 0),
            )
        )
    last = facts.get("last_archived_time")
    age = (now - last).total_seconds() if last else None
    if rpo is None:
        checks.append(
            Check("rpo", OK, f"no RPO declared; exposure {human_age(exposure)}", exposure)
        )
    elif exposure > rpo:
        checks.append(
            Check(
                "rpo",
                CRITICAL,
                f"RPO exposure {human_age(exposure)} exceeds the objective {human_age(rpo)}",
                exposure,
            )
        )
    elif exposure > rpo / 2:
        checks.append(
            Check(
                "rpo",
                WARNING,
                f"RPO exposure {human_age(exposure)} is over half the objective {human_age(rpo)}",
                exposure,
            )
        )
    else:
        idle = f"; last segment archived {human_age(age)} ago" if age is not None else ""
        checks.append(
            Check(
                "rpo",
                OK,
                f"RPO exposure {human_age(exposure)} within {human_age(rpo)}{idle}",
                exposure,
            )
        )
    return checks


# --------------------------------------------------------------------------- permissions


def permission_checks(policy: Any) -> list[Check]:
    checks: list[Check] = []
    repo = policy.repository
    if repo.get("kind", "posix") == "posix":
        path = Path(repo["path"])
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as exc:
            checks.append(Check("repository_permissions", CRITICAL, f"{path}: {exc.strerror}"))
        else:
            if mode & 0o027:
                status = CRITICAL if mode & 0o007 else WARNING
                checks.append(
                    Check(
                        "repository_permissions",
                        status,
                        f"{path} has mode {mode:04o}; make it 0750 or tighter (chmod 750 {path})",
                        mode,
                    )
                )
            else:
                checks.append(Check("repository_permissions", OK, f"{path} mode {mode:04o}", mode))
    secrets: list[Path] = []
    if policy.encryption and policy.encryption.identity_file:
        secrets.append(Path(policy.encryption.identity_file))
    for t in policy.targets.values():
        if t.connection.get("passfile"):
            secrets.append(Path(t.connection["passfile"]))
    if os.environ.get("PGPASSFILE"):
        secrets.append(Path(os.environ["PGPASSFILE"]))
    bad = []
    for p in dict.fromkeys(secrets):
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except OSError:
            continue  # absence is reported by the commands that need the file
        if mode & 0o177:
            bad.append(f"{p} has mode {mode:04o} (chmod 600 {p})")
    if bad:
        checks.append(Check("secret_permissions", CRITICAL, "; ".join(bad)))
    elif secrets:
        checks.append(
            Check("secret_permissions", OK, f"{len(secrets)} secret file(s) are 0600 or tighter")
        )
    return checks


# --------------------------------------------------------------------------- one target


def check_target(
    policy: Any, repo: Repository, target: Any, now: datetime | None = None, *, connect: bool = True
) -> TargetReport:
    """Every check of one target, and the metrics measured on the way: its backups, the
    server's WAL archiving and slots (``connect``), the WAL chain in the repository and at
    each upload destination, free space, permissions, restore drills."""
    from pgbackup.engine.walchain import one_listing

    with one_listing():  # wal_chain and rto_projection read one listing of the archive
        return target_report(policy, repo, target, now or datetime.now(UTC), connect)


def target_report(
    policy: Any, repo: Repository, target: Any, now: datetime, connect: bool
) -> TargetReport:
    """:func:`check_target`'s checks, in their order: backups and WAL of the target's
    newest generation (engine/generations)."""
    from pgbackup.engine.generations import generation_views

    repo = Repository(generation_views(repo.storage, target.name)[-1][1])
    report = TargetReport(target.name)
    complete = backup_checks(report, policy, repo, target, now)
    database_size = server_checks(report, policy, repo, target, now) if connect else None
    if complete:
        report.checks.extend(wal_chain_checks(policy, repo, target))
    if policy.uploads:
        from pgbackup.operations.offsite_checks import offsite_checks

        for name, status, text, lag in offsite_checks(policy, repo, target.name):
            report.checks.append(Check(name, status, text, lag))
    space_check(report, repo, database_size)
    report.checks.extend(permission_checks(policy))
    if policy.repository.get("object_lock") or any(u.get("object_lock") for u in policy.uploads):
        from pgbackup.operations.tampering import tamper_checks

        report.checks.extend(tamper_checks(policy, repo, target))
    drill_checks(report, policy, repo, target, now, complete)
    report.metrics["status"] = float(LEVEL[report.status])
    return report


def backup_checks(
    report: TargetReport, policy: Any, repo: Repository, target: Any, now: datetime
) -> list[Any]:
    """Backups: the newest one's age against the schedule, incremental chains whole, the
    last run's outcome. Returns the complete backups."""
    add = report.checks.append
    complete = repo.complete_backups(target.name)
    newest = complete[-1].stop_time if complete else None
    add(schedule_status("backup", policy.schedules.get("backup"), newest, now))
    if newest:
        report.metrics["last_backup_age_seconds"] = (now - newest).total_seconds()
        report.metrics["last_backup_stored_bytes"] = float(
            complete[-1].metadata.get("stored_bytes") or 0
        )
    if any(b.metadata.get("parent") for b in complete):
        from pgbackup.policy.chains import broken_chains

        broken = broken_chains(repo.backups(target.name))
        if broken:
            detail = "; ".join(f"{b}: {', '.join(p)}" for b, p in sorted(broken.items()))
            add(Check("backup_chains", CRITICAL, f"incremental backups cannot restore: {detail}"))
        else:
            add(Check("backup_chains", OK, "every incremental backup's chain is whole"))
    runs = list(repo.runs(target.name, "backup"))
    if runs and runs[-1].get("status") != "ok":
        last = runs[-1]
        add(
            Check(
                "last_backup",
                CRITICAL,
                f"the last backup ({last.get('started_at') or last.get('recorded_at')}) failed: {last.get('error') or '?'}",
            )
        )
    else:
        add(
            Check(
                "last_backup", OK, "the last backup succeeded" if runs else "no backup run recorded"
            )
        )
    return complete


def server_checks(
    report: TargetReport, policy: Any, repo: Repository, target: Any, now: datetime
) -> int | None:
    """WAL archiving, from the server (pg_stat_archiver), the server's cluster against
    the archive's, and its replication slots. Returns the database size (None: the server
    did not answer)."""
    try:
        from pgbackup.postgres.sandbox import resolve_conninfo

        facts = archiver_facts(resolve_conninfo(policy, target))
    except Exception as exc:
        report.checks.append(
            Check(
                "wal_archiving", UNKNOWN, f"cannot ask the server: {getattr(exc, 'message', exc)}"
            )
        )
        return None
    database_size = int(facts.get("database_size") or 0)
    identity = identity_check(repo, target.name, facts.get("system_identifier"))
    if identity is not None:
        report.checks.append(identity)
        if identity.status == CRITICAL:
            newest = max((o.mtime for o in repo.storage.list(f"{target.name}/wal/")), default=None)
            if newest is not None:
                facts["last_safe_time"] = datetime.fromtimestamp(newest, UTC)
    streamed = getattr(target, "wal_receiver", None)
    if streamed and str(facts.get("archive_mode")) == "off":
        report.checks.append(
            Check("wal_archiving", OK, "archive_mode is off; WAL is streamed (wal-receive)")
        )
    else:
        report.checks.extend(archiving_checks(policy, facts, now))
    failing, exposure = rpo_exposure(facts, now)
    report.metrics["archiver_failing"] = 1.0 if failing else 0.0
    report.metrics["archiver_failed_count"] = float(facts.get("failed_count") or 0)
    report.metrics["rpo_exposure_seconds"] = exposure
    if facts.get("last_archived_time"):
        report.metrics["wal_last_archived_age_seconds"] = (
            now - facts["last_archived_time"]
        ).total_seconds()
    report.metrics["database_bytes"] = float(database_size)
    # Replication slots: the receiver's (pgbackup/operations/slots.py) and stray ones.
    try:
        from pgbackup.operations.slots import slot_checks
        from pgbackup.postgres.sandbox import resolve_conninfo

        slot_results, slot_metrics = slot_checks(policy, target, resolve_conninfo(policy, target))
    except Exception as exc:
        report.checks.append(
            Check("wal_receiver", UNKNOWN, f"cannot read replication slots: {exc}")
        )
    else:
        report.checks.extend(slot_results)
        report.metrics.update(slot_metrics)
    return database_size


def wal_chain_checks(policy: Any, repo: Repository, target: Any) -> list[Check]:
    """WAL continuity in the repository, after the oldest backup; and ``wal_content``,
    UNKNOWN, when part of the archive's content could not be checked (a missing
    pg_waldump: said, never passed in silence)."""
    try:
        from pgbackup.engine.walchain import verify_wal_chain

        chain = verify_wal_chain(policy, repo, target)
    except Exception as exc:
        return [
            Check(
                "wal_chain", UNKNOWN, f"cannot read the WAL archive: {getattr(exc, 'message', exc)}"
            )
        ]
    unchecked = (
        [Check("wal_content", UNKNOWN, "not checked: " + "; ".join(chain["not_checked"]))]
        if chain["not_checked"]
        else []
    )
    if chain["gaps"]:
        return [
            Check(
                "wal_chain",
                CRITICAL,
                f"{len(chain['gaps'])} gap(s): " + "; ".join(chain["gaps"][:3]),
                len(chain["gaps"]),
            ),
            *unchecked,
        ]
    text = f"continuous ({chain['segments']} segments after the oldest backup)"
    return [Check("wal_chain", OK, text, 0), *unchecked]


def space_check(report: TargetReport, repo: Repository, database_size: int | None) -> None:
    """The repository's free space, against three times the database's size."""
    free = None
    with contextlib.suppress(Exception):
        free = repo.storage.free_bytes()
    if free is None:
        return
    report.metrics["repository_free_bytes"] = float(free)
    if database_size:
        need = 3 * database_size
        from pgbackup.ui import human_bytes

        text = f"{human_bytes(free)} free for a {human_bytes(database_size)} database (want 3x: {human_bytes(need)})"
        status = OK if free >= need else (WARNING if free >= database_size else CRITICAL)
        report.checks.append(Check("repository_space", status, text, float(free)))


def drill_checks(
    report: TargetReport,
    policy: Any,
    repo: Repository,
    target: Any,
    now: datetime,
    complete: list[Any] | None = None,
) -> None:
    """Restore drills (when the policy asks for them): the last good one's age against
    the schedule, the last one's outcome; and the RTO projection at the rates they
    measured (:func:`rto_projection_check`)."""
    add = report.checks.append
    drills = drill_records(repo, target.name)
    good = [d for d in drills if d.get("status") == "ok"]
    last_good = parse_iso(good[-1]["finished_at"]) if good else None
    if policy.drill_checks or policy.schedules.get("drill"):
        if last_good is None:
            add(
                Check(
                    "drill_age", WARNING, "no successful restore drill yet (run `pgbackup drill`)"
                )
            )
        else:
            c = schedule_status("drill", policy.schedules.get("drill"), last_good, now)
            # A late drill is a warning: the data is safe, the proof is old.
            add(
                Check(
                    "drill_age", WARNING if c.status == CRITICAL else c.status, c.summary, c.value
                )
            )
        if drills and drills[-1].get("status") != "ok":
            add(
                Check(
                    "last_drill",
                    CRITICAL,
                    f"the last drill ({drills[-1].get('started_at')}) failed: {drills[-1].get('error') or 'checks failed'}",
                )
            )
    if last_good:
        report.metrics["last_drill_age_seconds"] = (now - last_good).total_seconds()
        report.metrics["last_drill_rto_seconds"] = float(good[-1].get("rto_seconds") or 0)
        rto_projection_check(report, policy, repo, target, drills, complete or [])


def rto_projection_check(
    report: TargetReport,
    policy: Any,
    repo: Repository,
    target: Any,
    drills: list[dict[str, Any]],
    complete: list[Any],
) -> None:
    """The SLA report's RTO projection (sla.rto_projection): restoring the newest backup
    and replaying the WAL archived since it, at the drills' measured rates; a WARNING
    over ``sla.rto``. Nothing when no objective is declared or no rate was measured."""
    from pgbackup.operations.sla import (
        chain_increments,
        fmt_seconds,
        full_backup_bytes,
        rto_projection,
        wal_since_backup,
    )

    if policy.sla.rto is None or not complete:
        return
    newest = complete[-1].metadata
    try:
        from pgbackup.engine.walchain import archived_names

        names = archived_names(repo.storage, target.name)
    except Exception:  # wal_chain says what is wrong with the archive
        return
    wal_bytes, segments = wal_since_backup(
        newest.get("stop_lsn"), names, int(newest.get("wal_segment_size") or 16 * 1024 * 1024)
    )
    p = rto_projection(
        policy.sla.rto,
        drills,
        full_backup_bytes(complete),
        chain_increments(complete),
        wal_bytes,
        segments,
    )
    if p["projected_seconds"] is None:
        return
    text = (
        f"restoring the newest backup and the WAL since it: {fmt_seconds(p['projected_seconds'])} "
        f"projected at the drills' rates, objective {fmt_seconds(policy.sla.rto)}"
    )
    report.checks.append(
        Check("rto_projection", WARNING if p["warning"] else OK, text, p["projected_seconds"])
    )


def run_check(
    policy: Any, repo: Repository, targets: list[Any], *, alert: bool = True
) -> list[TargetReport]:
    """Check every target, record the outcome, alert on state changes."""
    now = datetime.now(UTC)
    reports = []
    for t in targets:
        report = check_target(policy, repo, t, now)
        reports.append(report)
        repo.record_run(
            t.name,
            "check",
            {
                "status": report.status.lower(),
                "checked_at": iso(now),
                "rpo_exposure_seconds": report.metrics.get("rpo_exposure_seconds"),
                "wal_last_archived_age_seconds": report.metrics.get(
                    "wal_last_archived_age_seconds"
                ),
                "archiver_failing": report.metrics.get("archiver_failing"),
                "database_bytes": report.metrics.get("database_bytes"),
                "problems": [f"{c.name}: {c.summary}" for c in report.problems()],
                # per destination: seconds of archived WAL it lacks (None: unreachable)
                "offsite_lag_seconds": {
                    c.name.split(":", 1)[1]: c.value
                    for c in report.checks
                    if c.name.startswith("offsite_wal:")
                },
            },
        )
        if alert:
            _alert(policy, t.name, report)
    return reports


def _alert(policy: Any, target: str, report: TargetReport) -> None:
    from pgbackup.operations.alerts import notify_event

    problems = report.problems()
    message = (
        "\n".join(f"{c.status} {c.name}: {c.summary}" for c in problems)
        if problems
        else "every check is OK again"
    )
    notify_event(policy, "check", target, report.status.lower(), message)
    # Recoveries the failing command itself never reports.
    names = {c.name: c for c in report.checks}
    if "last_backup" in names and names["last_backup"].status == OK:
        notify_event(policy, "backup", target, "ok", "a backup succeeded again")
    if "wal_archiving" in names and names["wal_archiving"].status == OK:
        notify_event(policy, "wal-push", target, "ok", "WAL archiving works again")


# --------------------------------------------------------------------------- output


def nagios(reports: list[TargetReport]) -> tuple[int, str]:
    """(exit code, one status line with perfdata)."""
    status = worst(r.status for r in reports) if reports else UNKNOWN
    parts = []
    for r in reports:
        bad = r.problems()
        parts.append(
            f"{r.target}: " + ("; ".join(f"{c.name} {c.summary}" for c in bad) if bad else "OK")
        )
    perf = []
    for r in reports:
        for key in ("last_backup_age_seconds", "rpo_exposure_seconds", "last_drill_age_seconds"):
            if key in r.metrics:
                perf.append(f"{r.target}_{key.replace('_seconds', '')}={r.metrics[key]:.0f}s")
    line = f"PGBACKUP {status} - " + " | ".join(parts)
    line = line.replace("|", "/") + (" | " + " ".join(perf) if perf else "")
    return LEVEL[status], line


def write_textfile(path: Path, text: str) -> None:
    """node_exporter reads the file at any moment: write a temp file, then rename."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
