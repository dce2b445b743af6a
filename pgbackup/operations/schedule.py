"""Schedules from the policy as crontab lines (install/remove/status build on these)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgbackup.policy import Policy
from pgbackup.postgres.sandbox import pgbackup_program

# Order in which a day's jobs naturally run; unknown names keep policy order after these.
TASKS = ("backup", "verify", "cleanup", "check", "drill")


@dataclass(frozen=True)
class CronEntry:
    name: str
    expression: str
    command: str

    def line(self, tag: str) -> str:
        return f"{self.expression} {self.command} # {tag}"


def schedule_log(policy: Policy) -> Path:
    if policy.log_file:
        return Path(policy.log_file).with_name("schedule.log")
    if policy.repository.get("kind", "posix") == "posix":
        return Path(policy.repository["path"]) / "schedule.log"
    return policy.path.parent / "var" / "schedule.log"


def cron_entries(policy: Policy, program: str | None = None) -> list[CronEntry]:
    """One entry per schedule: ``pgbackup --config <abs path> <task>``, appending to a log."""
    program = program or pgbackup_program()
    log = schedule_log(policy)
    entries = []
    for name, expression in policy.schedules.items():
        task = {"report": "sla-report", "incremental": "backup --type incremental"}.get(name, name)
        # umask 027: a log file cron creates is 0640 like the one install prepares.
        command = (
            f"umask 027; {shlex.quote(program)} --config {shlex.quote(str(policy.path))} {task}"
            f" >> {shlex.quote(str(log))} 2>&1"
        )
        entries.append(CronEntry(name, expression, command))
    return entries


# --------------------------------------------------------------------------- crontab

TAG_PREFIX = "pgbackup:"


def policy_tag(policy: Policy) -> str:
    """``pgbackup:<hash of the absolute policy path>``: which lines belong to this policy."""
    import hashlib

    digest = hashlib.sha256(str(Path(policy.path).absolute()).encode()).hexdigest()[:12]
    return f"{TAG_PREFIX}{digest}"


def entry_tag(policy: Policy, name: str) -> str:
    return f"{policy_tag(policy)}:{name}"


def _crontab_argv(user: str | None) -> list[str]:
    import shutil

    from pgbackup.errors import PgBackupError

    program = shutil.which("crontab")
    if program is None:
        raise PgBackupError(
            "the crontab command is not installed",
            hint="install cron (Debian/Ubuntu: apt-get install -y cron)",
        )
    return [program, "-u", user] if user else [program]


def read_crontab(user: str | None = None) -> str:
    """The user's crontab ('' when there is none)."""
    import subprocess

    from pgbackup.errors import PgBackupError

    proc = subprocess.run([*_crontab_argv(user), "-l"], capture_output=True, text=True, timeout=30)
    if proc.returncode == 0:
        return proc.stdout
    if "no crontab" in proc.stderr.lower():
        return ""
    raise PgBackupError(
        f"crontab -l{' -u ' + user if user else ''} failed: {proc.stderr.strip()}",
        hint="pass --user NAME of an existing OS user (changing another user's crontab needs root)",
    )


def write_crontab(text: str, user: str | None = None) -> None:
    import subprocess

    from pgbackup.errors import PgBackupError

    proc = subprocess.run(
        [*_crontab_argv(user), "-"], input=text, capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise PgBackupError(f"crontab refused the new table: {proc.stderr.strip()}")


def _is_ours(line: str, tag: str) -> bool:
    return line.rstrip().endswith(f"# {tag}") or f"# {tag}:" in line


def without_policy(text: str, policy: Policy) -> list[str]:
    tag = policy_tag(policy)
    return [line for line in text.splitlines() if not _is_ours(line, tag)]


def desired_lines(policy: Policy, program: str | None = None) -> list[str]:
    return [e.line(entry_tag(policy, e.name)) for e in cron_entries(policy, program)]


def prepare_log(policy: Policy, user: str | None) -> Path:
    """Create the schedule log with mode 0640, owned by the crontab's user."""
    import os
    import pwd

    log = schedule_log(policy)
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.close(fd)
    os.chmod(log, 0o640)
    if user and os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        os.chown(log, pw.pw_uid, pw.pw_gid)
    return log


def install(policy: Policy, user: str | None = None, program: str | None = None) -> dict[str, Any]:
    """Put this policy's lines into the crontab (replacing its old ones); others untouched."""
    current = read_crontab(user)
    kept = without_policy(current, policy)
    lines = desired_lines(policy, program)
    new_text = "\n".join([*kept, *lines]) + "\n"
    changed = new_text != (current if current.endswith("\n") or not current else current + "\n")
    if changed:
        write_crontab(new_text, user)
    log = prepare_log(policy, user)
    return {"user": user, "installed": lines, "changed": changed, "log": str(log)}


def remove(policy: Policy, user: str | None = None) -> dict[str, Any]:
    current = read_crontab(user)
    kept = without_policy(current, policy)
    removed = len(current.splitlines()) - len(kept)
    if removed:
        write_crontab("\n".join(kept) + ("\n" if kept else ""), user)
    return {"user": user, "removed": removed}


RUN_KINDS = {"backup": "backup", "verify": "verify", "cleanup": "cleanup", "check": "check"}


def last_runs(policy: Policy, repo: Any) -> dict[str, dict[str, Any]]:
    """The newest recorded run of each kind over every target: time and outcome."""
    from pgbackup.operations.monitor import drill_records

    out: dict[str, dict[str, Any]] = {}
    for t in policy.targets:
        for kind in RUN_KINDS.values():
            runs = list(repo.runs(t, kind))
            if runs:
                rec = runs[-1]
                when = rec.get("recorded_at") or rec.get("started_at")
                if kind not in out or str(when) > str(out[kind]["time"]):
                    out[kind] = {"time": when, "status": rec.get("status"), "target": t}
        drills = drill_records(repo, t)
        if drills:
            d = drills[-1]
            if "drill" not in out or str(d.get("started_at")) > str(out["drill"]["time"]):
                out["drill"] = {"time": d.get("started_at"), "status": d.get("status"), "target": t}
    return out


def status(
    policy: Policy, repo: Any, user: str | None = None, now: Any = None
) -> list[dict[str, Any]]:
    """Each schedule: its cron line, installed or not, next run, last run and outcome."""
    from datetime import UTC, datetime

    from croniter import croniter

    now = now or datetime.now(UTC).astimezone()
    installed = set(read_crontab(user).splitlines())
    runs = last_runs(policy, repo)
    rows = []
    for entry in cron_entries(policy):
        line = entry.line(entry_tag(policy, entry.name))
        task = "sla-report" if entry.name == "report" else entry.name
        last = runs.get(task)
        rows.append(
            {
                "name": entry.name,
                "expression": entry.expression,
                "line": line,
                "installed": line in installed,
                "next_run": croniter(entry.expression, now).get_next(datetime).isoformat(),
                "last_run": last["time"] if last else None,
                "last_status": last["status"] if last else None,
            }
        )
    return rows
