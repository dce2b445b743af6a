"""Operations tasks: check, drill, sla-report, exporter and the schedule collection.

``pgbackup.interface.collection`` calls ``register(ns)``. Tasks stay thin: flags in, engine
call, rendering out.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from invoke import Collection
from invoke.exceptions import Exit

from pgbackup.interface.direct import use_as_of
from pgbackup.interface.options import AS_OF_HELP, ExtractOptions
from pgbackup.interface.taskkit import (
    console,
    emit_json,
    load,
    options_task,
    policy_task,
    repository,
    targets,
)


@policy_task(
    help={
        "target": "only this target (default: every target)",
        "json": "machine-readable output",
        "nagios": "one status line, exit 0 OK / 1 WARNING / 2 CRITICAL / 3 UNKNOWN",
        "prometheus": "also write a node_exporter textfile here (atomically)",
        "no_alert": "do not send alerts for state changes",
    }
)
def check(
    c: Any,
    target: str | None = None,
    json_: bool = False,
    nagios: bool = False,
    prometheus: str | None = None,
    no_alert: bool = False,
) -> None:
    """Monitoring: backups, WAL archiving, free space, permissions, drills; alerts on change."""
    from pgbackup.operations import monitor

    try:
        policy = load()
        reports = monitor.run_check(
            policy, repository(policy), targets(policy, target), alert=not no_alert
        )
    except Exit:
        if nagios:
            print("PGBACKUP UNKNOWN - the policy could not be loaded")
            raise Exit(code=3) from None
        raise
    except Exception as exc:
        if nagios:
            print(f"PGBACKUP UNKNOWN - {getattr(exc, 'message', exc)}")
            raise Exit(code=3) from None
        raise
    if prometheus:
        from pgbackup.operations.metrics import check_textfile

        text = check_textfile(policy, targets(policy, target), reports)
        monitor.write_textfile(Path(prometheus), text)
    code, line = monitor.nagios(reports)
    if nagios:
        print(line)
        raise Exit(code=code)
    if json_:
        emit_json({r.target: r.as_dict() for r in reports})
    else:
        out = console()
        colors = {"OK": "green", "WARNING": "yellow", "CRITICAL": "red", "UNKNOWN": "magenta"}
        for r in reports:
            out.print(f"[bold]{r.target}[/]: [{colors[r.status]}]{r.status}[/]")
            for ch in r.checks:
                out.print(f"  [{colors[ch.status]}]{ch.status:<8}[/] {ch.name}: {ch.summary}")
    if code:
        raise Exit(code=code)


@policy_task(
    help={
        "target": "only this target (default: every target)",
        "backup": "backup id or 'latest' (default: the newest, or the newest before --target-time)",
        "target_time": "recover to this time instead of the end of the archive",
        "docker": "run the scratch cluster in a container (Docker engine); WAL is replayed by "
        "the pgbackup inside it",
        "image": "the --docker image (default: drill.image, else pgbackup:<version>)",
        "json": "machine-readable output",
        "as_of": AS_OF_HELP,
    }
)
def drill(
    c: Any,
    target: str | None = None,
    backup: str | None = None,
    target_time: str | None = None,
    docker: bool = False,
    image: str | None = None,
    json_: bool = False,
    as_of: str | None = None,
) -> None:
    """Restore drill: scratch cluster, WAL replay, declared checks, measured RTO."""
    from pgbackup.operations.drill import run_drill

    use_as_of(as_of)
    policy = load()
    results = [
        run_drill(
            policy,
            t,
            backup=backup,
            target_time=target_time,
            provider="docker" if docker or image else "local",
            image=image,
        )
        for t in targets(policy, target)
    ]
    if json_:
        emit_json({r.target: r.as_dict() for r in results})
    else:
        for r in results:
            head = f"drill of {r.target}: {r.status.upper()}"
            if r.backup_id:
                head += f" (backup {r.backup_id})"
            print(head)
            if r.recovered_to:
                rec = r.recovered_to
                print(
                    f"  recovered to {rec.get('last_replay_time') or '?'} "
                    f"(LSN {rec.get('last_replay_lsn')}, timeline {rec.get('timeline')})"
                )
            for ch in r.checks:
                mark = "ok  " if ch["ok"] else "FAIL"
                extra = f" ({ch['error']})" if ch.get("error") else ""
                print(f"  {mark} {ch['name']}: {ch['value']!r} {ch['expect']}{extra}")
            t = r.timings
            if r.rto_seconds is not None:
                print(
                    f"  RTO {r.rto_seconds:.1f}s = fetch {t.get('fetch', 0):.1f}s + restore "
                    f"{t.get('restore', 0):.1f}s + recovery {t.get('recovery', 0):.1f}s + checks "
                    f"{t.get('checks', 0):.1f}s"
                    + (
                        f" (objective {r.rto_objective_seconds}s)"
                        if r.rto_objective_seconds
                        else ""
                    )
                )
            if r.error:
                print(f"  error: {r.error}", file=sys.stderr)
    if any(r.status != "ok" for r in results):
        raise Exit(code=1)


@policy_task(
    name="sla-report",
    help={
        "target": "only this target (default: every target)",
        "since": "period to report on, e.g. 30d, 12h (default 30d)",
        "format": "md (default), json or html",
        "output": "write the report to this file instead of standard output",
    },
)
def sla_report(
    c: Any,
    target: str | None = None,
    since: str = "30d",
    format: str = "md",
    output: str | None = None,
) -> None:
    """SLA compliance per target: RPO, RTO, backup frequency, retention, verification."""
    from pgbackup.errors import UsageError
    from pgbackup.operations.sla_report import build_reports, render
    from pgbackup.policy import parse_duration

    try:
        period = parse_duration(since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    if format not in ("md", "json", "html"):
        raise UsageError(f"--format {format!r}: use md, json or html")
    policy = load()
    reports = build_reports(policy, repository(policy), targets(policy, target), period)
    text = render(reports, format)
    if output:
        Path(output).write_text(text)
        verdicts = ", ".join(f"{n}: {r['verdict']}" for n, r in reports.items())
        print(f"wrote {output} ({verdicts})")
    else:
        sys.stdout.write(text)


# --- extract --------------------------------------------------------------------------


@options_task(ExtractOptions)
def extract(c: Any, o: ExtractOptions) -> None:
    """Tables or a database as they were at a recovery target: into a file or a new database."""
    from pgbackup.engine.restore_command import RECOVERY_KEYWORDS, parse_recovery_flags
    from pgbackup.errors import UsageError
    from pgbackup.operations.extract.command import run_extract
    from pgbackup.operations.extract.request import Request, parse_qualified

    if not o.db:
        raise UsageError("extract needs --db NAME (the database the objects are in)")
    if o.format is not None and o.output is None:
        raise UsageError("--format applies to --output FILE")
    keyword, target = None, o.target
    if target in RECOVERY_KEYWORDS:
        keyword, target = target, None
    if target and o.policy_target and target != o.policy_target:
        raise UsageError(
            f"--target {target!r} and --policy-target {o.policy_target!r} name different targets"
        )
    kind, value = parse_recovery_flags(
        keyword, o.target_time, o.target_lsn, o.target_xid, o.target_name
    )
    req = Request(
        database=o.db,
        tables=list(dict.fromkeys(parse_qualified(t) for t in o.table or [])),
        schemas=list(
            dict.fromkeys(parse_qualified(f"{s}.x", "--schema")[0] for s in o.schema or [])
        ),
        kind=kind,  # type: ignore[arg-type]
        value=value,
        inclusive=not o.exclusive,
        backup=o.backup,
        output=Path(o.output).absolute() if o.output else None,
        fmt=o.format or "custom",
        into_db=o.into_db,
        user=o.user,
        docker=o.docker,
        image=o.image,
    )
    if o.image and not o.docker:
        raise UsageError("--image names the container image of --docker")
    use_as_of(o.as_of)
    policy = load()
    result = run_extract(policy, policy.target(o.policy_target or target), req)
    if o.json_:
        emit_json(result.as_dict())
        return
    rec, dest, r = result.recovered_to, result.destination, result.restored
    where = (
        f"{dest['file']} ({dest['format']} format, {dest['bytes']} bytes)"
        if "file" in dest
        else f"the new database {dest['database']} ({dest['server']})"
    )
    print(
        f"extracted {result.what()} of database {result.database} as of "
        f"{rec.get('last_replay_time') or '?'} (LSN {rec.get('last_replay_lsn')}, backup "
        f"{result.backup_id}) into {where} in {result.seconds:.1f}s"
    )
    from pgbackup.ui import human_bytes

    left_out = (
        "the whole backup"
        if r.get("restored_whole")
        else f"{r.get('left_out_files', 0)} files left out"
        + (
            f", databases {', '.join(r['databases_left_out'])}"
            if r.get("databases_left_out")
            else ""
        )
    )
    print(
        f"  scratch restore wrote {human_bytes(r.get('written_bytes', 0))} of "
        f"{human_bytes(r.get('raw_bytes', 0))} ({left_out})"
    )
    for fk in result.skipped_foreign_keys:
        print(f"  foreign key not created (its table was not extracted): {fk}")


# --- exporter -------------------------------------------------------------------------


@policy_task(
    help={
        "target": "only this target (default: every target)",
        "listen": "ADDR:PORT to serve /metrics on (default 127.0.0.1:9188; :9188 = every interface)",
        "interval": "read each repository at most this often (default 60s)",
        "timeout": "a scrape waits this long at most for a read, then serves the last values (default 5s)",
    }
)
def exporter(
    c: Any,
    target: str | None = None,
    listen: str = "127.0.0.1:9188",
    interval: str = "60s",
    timeout: str = "5s",
) -> None:
    """Prometheus exporter: serve /metrics of every repository until stopped."""
    from pgbackup.errors import UsageError
    from pgbackup.operations.metrics import parse_listen, serve
    from pgbackup.policy import parse_duration

    durations = {}
    for flag, text in (("interval", interval), ("timeout", timeout)):
        try:
            durations[flag] = parse_duration(text)
        except ValueError as exc:
            raise UsageError(f"--{flag}: {exc}") from None
        if durations[flag] <= 0:
            raise UsageError(f"--{flag} {text!r}: must be longer than 0s")
    parse_listen(listen)  # a bad address fails before the policy is read
    policy = load()
    chosen = targets(policy, target)

    def ready(url: str) -> None:
        names = ", ".join(t.name for t in chosen)
        print(f"serving metrics of {names} on {url} (repositories read at most every {interval})")
        sys.stdout.flush()

    serve(
        policy,
        chosen,
        listen,
        interval=durations["interval"],
        timeout=durations["timeout"],
        ready=ready,
    )


# --- schedule -------------------------------------------------------------------------

SCHEDULE_HELP = {
    "user": "OS user whose crontab to change (default: the current user)",
    "json": "machine-readable output",
}


@policy_task(name="install", help=SCHEDULE_HELP)
def schedule_install(c: Any, user: str | None = None, json_: bool = False) -> None:
    """Put one tagged crontab line per schedule of the policy (idempotent)."""
    from pgbackup.operations import schedule

    policy = load()
    result = schedule.install(policy, user)
    if json_:
        emit_json(result)
        return
    for line in result["installed"]:
        print(line)
    print(
        f"{len(result['installed'])} schedule(s) {'installed' if result['changed'] else 'already installed'}"
        f"; output goes to {result['log']}"
    )


@policy_task(name="remove", help=SCHEDULE_HELP)
def schedule_remove(c: Any, user: str | None = None, json_: bool = False) -> None:
    """Remove this policy's crontab lines; every other line stays."""
    from pgbackup.operations import schedule

    policy = load()
    result = schedule.remove(policy, user)
    if json_:
        emit_json(result)
    else:
        print(f"removed {result['removed']} line(s)")


@policy_task(name="status", help=SCHEDULE_HELP)
def schedule_status(c: Any, user: str | None = None, json_: bool = False) -> None:
    """Each schedule: cron line, installed or not, next run, last run and its outcome."""
    from pgbackup.operations import schedule

    policy = load()
    rows = schedule.status(policy, repository(policy), user)
    if json_:
        emit_json(rows)
        return
    from rich.table import Table

    table = Table(title="schedules", title_justify="left")
    for col in ("name", "cron", "installed", "next run", "last run", "outcome"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["expression"],
            "yes" if r["installed"] else "[red]no[/]",
            r["next_run"],
            r["last_run"] or "-",
            r["last_status"] or "-",
        )
    console().print(table)


def register(ns: Collection) -> None:
    ns.add_task(check)
    ns.add_task(drill)
    ns.add_task(extract)
    ns.add_task(sla_report)
    ns.add_task(exporter)
    sched = Collection("schedule")
    sched.add_task(schedule_install)
    sched.add_task(schedule_remove)
    sched.add_task(schedule_status)
    ns.add_collection(sched)
