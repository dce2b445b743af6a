"""Schedules from the policy as crontab lines (install/remove/status build on these)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from pgbackup.config import Policy
from pgbackup.sandbox import pgbackup_program

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
        task = "sla-report" if name == "report" else name
        command = (
            f"{shlex.quote(program)} --config {shlex.quote(str(policy.path))} {task}"
            f" >> {shlex.quote(str(log))} 2>&1"
        )
        entries.append(CronEntry(name, expression, command))
    return entries
