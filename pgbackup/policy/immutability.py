"""Object lock and "as of" reads: pure rules, no I/O (docs/security.md says why).

**Retain-until.** A repository that declares ``object_lock`` locks every object it writes
until a date derived from the retention policy, plus a margin (``object_lock.margin``,
one day by default: cleanup's schedule, clock skew between the host and the store):

* an object of a backup (``<target>/base/<id>/...``) is locked until the backup's write
  time + ``retention.days`` + margin: what retention promises every new backup. A backup
  that becomes the kept weekly or monthly of its period is promised longer
  (:func:`promised_until`), and ``cleanup`` extends its locks to that (never shortens);
* WAL, timeline history and every other object (``<target>/wal/...``, drills, runs) is
  locked for the longest horizon any backup it may belong to can need:
  ``max(days, 7 x weekly, 31 x monthly)`` days + margin from its write time. WAL written
  now is needed as long as the oldest kept backup that precedes it; that backup is kept
  at most until its month is ``monthly`` months old, its week ``weekly`` weeks old, or
  ``days`` days, whichever is longest: a bound reached from the WAL's own write time;
* two kinds of objects are written again in place by design and are never locked:
  wal-receive's open segment (``<segment>.partial``, replaced every half second) and
  wal-ship's status (``wal-ship.json``). :func:`rewritten_in_place` names them; check
  ignores their versions.

Count-based keeps (the newest backup, ``min_backups``) have no date: retention keeps them,
a lock cannot promise them.

**As of.** :func:`version_as_of` picks, among the versions of one key, the newest written
at or before the time; a delete marker there means the key did not exist then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

MODES = ("governance", "compliance")
DEFAULT_MARGIN = 86400  # seconds: one day


class LockRule(NamedTuple):
    """A repository's ``object_lock`` with the retention it derives from."""

    mode: str  # governance | compliance
    margin: int  # seconds
    days: int
    weekly: int
    monthly: int

    @property
    def s3_mode(self) -> str:
        return self.mode.upper()

    def backup_horizon(self) -> timedelta:
        return timedelta(days=self.days, seconds=self.margin)

    def wal_horizon(self) -> timedelta:
        longest = max(self.days, 7 * self.weekly, 31 * self.monthly)
        return timedelta(days=longest, seconds=self.margin)


def lock_rule(spec: dict[str, Any] | None) -> LockRule | None:
    """The rule a storage spec's ``object_lock`` carries (policy/build.py fills it)."""
    if not spec:
        return None
    return LockRule(
        mode=str(spec.get("mode", "governance")),
        margin=int(spec.get("margin", DEFAULT_MARGIN)),
        days=int(spec.get("days", 0)),
        weekly=int(spec.get("weekly", 0)),
        monthly=int(spec.get("monthly", 0)),
    )


def rewritten_in_place(key: str) -> bool:
    """Whether pgbackup itself writes ``key`` again (never locked, versions expected)."""
    return key.endswith("/wal-ship.json") or ("/wal/" in key and ".partial" in key)


def is_backup_object(key: str) -> bool:
    """A backup's object: ``<target>/base/<id>/...``, or a later generation's
    ``<target>/gen/<n>/base/<id>/...`` (engine/generations, docs/upgrades.md)."""
    parts = key.split("/")
    if len(parts) >= 6 and parts[1] == "gen" and parts[2].isdigit():
        parts = [parts[0], *parts[3:]]
    return len(parts) >= 4 and parts[1] == "base"


def retain_until(key: str, written: datetime, rule: LockRule) -> datetime | None:
    """The date ``key``, written at ``written``, is locked until; None: not locked."""
    if rewritten_in_place(key):
        return None
    written = _utc(written)
    horizon = rule.backup_horizon() if is_backup_object(key) else rule.wal_horizon()
    return written + horizon


def _next_monday(when: datetime) -> datetime:
    start = datetime(when.year, when.month, when.day, tzinfo=UTC) - timedelta(days=when.weekday())
    return start + timedelta(weeks=1)


def _add_months(year: int, month: int, count: int) -> datetime:
    index = year * 12 + (month - 1) + count
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def promised_until(stop_time: datetime, reasons: Iterable[str], rule: LockRule) -> datetime:
    """How long retention promises to keep a backup that stopped at ``stop_time``, given
    the reasons it is kept (policy/retention.plan_retention's words), plus the margin:

    * every backup: ``stop_time + days``;
    * the kept weekly of its ISO week: until that week is ``weekly`` weeks old (the Monday
      ``weekly`` weeks after its week began);
    * the kept monthly of its month: until the first day ``monthly`` months after its
      month began.
    """
    stop = _utc(stop_time)
    until = stop + timedelta(days=rule.days)
    for reason in reasons:
        if reason.startswith("weekly") and rule.weekly:
            until = max(until, _next_monday(stop) + timedelta(weeks=rule.weekly - 1))
        elif reason.startswith("monthly") and rule.monthly:
            until = max(until, _add_months(stop.year, stop.month, rule.monthly))
    return until + timedelta(seconds=rule.margin)


class Version(NamedTuple):
    """One version of a key, as a versioned listing tells it."""

    key: str
    version_id: str
    written: datetime
    deleted: bool  # a delete marker
    size: int = 0


def version_as_of(versions: Sequence[Version], as_of: datetime) -> Version | None:
    """The version of one key a reader "as of" ``as_of`` sees: the newest written at or
    before it, unless that is a delete marker; None when the key did not exist then.
    Versions written in the same instant keep the listing's order (newest first)."""
    as_of = _utc(as_of)
    best: Version | None = None
    for version in versions:  # a listing gives the newest first
        if _utc(version.written) <= as_of and (
            best is None or _utc(version.written) > _utc(best.written)
        ):
            best = version
    if best is None or best.deleted:
        return None
    return best


def parse_as_of(text: str) -> datetime:
    """``--as-of`` as an aware UTC datetime (ISO 8601; a naive time is UTC); ValueError."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return _utc(value if value.tzinfo else value.replace(tzinfo=UTC))


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
