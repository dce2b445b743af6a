"""What a check says: its status (Nagios' OK, WARNING, CRITICAL, UNKNOWN), its record, a
target's report, and the words for an age.

``check`` (:mod:`pgbackup.operations.monitor`) runs the checks; the modules that compute
some of them (:mod:`~pgbackup.operations.slots`, :mod:`~pgbackup.operations.offsite_checks`)
return them in these words, so they import this module and never ``monitor``, which
imports them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = "OK", "WARNING", "CRITICAL", "UNKNOWN"
LEVEL = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
# Severity order for "worst": UNKNOWN sits between WARNING and CRITICAL.
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}


@dataclass
class Check:
    name: str
    status: str
    summary: str
    value: float | None = None  # the measured number behind the status (seconds, bytes, ...)


@dataclass
class TargetReport:
    target: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return worst(c.status for c in self.checks)

    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status != OK]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "checks": [asdict(c) for c in self.checks],
            "metrics": self.metrics,
        }


def worst(statuses: Any) -> str:
    result = OK
    for s in statuses:
        if SEVERITY[s] > SEVERITY[result]:
            result = s
    return result


def human_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"
