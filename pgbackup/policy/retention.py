"""Which backups and WAL to keep: pure functions over metadata (no I/O, no server).

Grandfather-father-son retention: a complete backup is kept when it is recent (``days``),
the newest of one of the last ``weekly`` ISO weeks or ``monthly`` calendar months (the
period containing ``now`` counts as the first), or among the ``min_backups`` newest. The
newest complete backup is never expired. Incomplete backups older than the newest complete
one are expired; newer ones may be in progress and are kept (the caller checks locks).

Incremental backups (PostgreSQL 17+) are restorable points like full ones: ``days``,
``weekly``, ``monthly`` and ``min_backups`` count them the same way (the newest backup of a
week may be an incremental). A chain is never broken: a kept incremental keeps every
backup it is built on, down to its full backup; so a full backup (or an incremental in the
middle of a chain) expires only together with every backup that depends on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "BackupRecord",
    "Decision",
    "RetentionRule",
    "chain_ancestors",
    "spare_chains",
    "expire_after_days",
    "keep_generation_ends",
    "oldest_kept",
    "plan_retention",
    "wal_cleanup_candidates",
]


@dataclass(frozen=True)
class BackupRecord:
    backup_id: str
    stop_time: datetime  # tz-aware, UTC
    complete: bool
    start_lsn: int = 0
    timeline: int = 1
    parent: str | None = None  # the backup an incremental is built on


@dataclass(frozen=True)
class RetentionRule:
    days: int
    weekly: int
    monthly: int
    min_backups: int = 1

    def __post_init__(self) -> None:
        for name in ("days", "weekly", "monthly", "min_backups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"retention {name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class Decision:
    backup_id: str
    keep: bool
    reasons: tuple[str, ...]


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _order(backups: Iterable[BackupRecord]) -> list[BackupRecord]:
    """Newest first; ties broken by backup id (ids are time-ordered)."""
    return sorted(
        backups, key=lambda b: (_utc(b.stop_time, b.backup_id), b.backup_id), reverse=True
    )


def _week_key(when: datetime) -> tuple[int, int]:
    iso = when.isocalendar()
    return iso[0], iso[1]


def _last_weeks(now: datetime, count: int) -> list[tuple[int, int]]:
    return [_week_key(now - timedelta(weeks=k)) for k in range(count)]


def _last_months(now: datetime, count: int) -> list[tuple[int, int]]:
    months = []
    year, month = now.year, now.month
    for _ in range(count):
        months.append((year, month))
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return months


def plan_retention(
    backups: Sequence[BackupRecord], rule: RetentionRule, now: datetime
) -> list[Decision]:
    """One decision per backup, newest first, each with the reasons for it."""
    now = _utc(now, "now")
    ordered = _order(backups)
    complete = [b for b in ordered if b.complete]
    reasons: dict[str, list[str]] = {b.backup_id: [] for b in complete}

    if complete:
        reasons[complete[0].backup_id].append("newest complete backup")
    for backup in complete[1 : rule.min_backups]:
        reasons[backup.backup_id].append(f"among the {rule.min_backups} newest complete backups")

    cutoff = now - timedelta(days=rule.days)
    for backup in complete:
        if _utc(backup.stop_time, backup.backup_id) >= cutoff:
            reasons[backup.backup_id].append(f"within {rule.days} days")

    weeks = set(_last_weeks(now, rule.weekly))
    months = set(_last_months(now, rule.monthly))
    seen_weeks: set[tuple[int, int]] = set()
    seen_months: set[tuple[int, int]] = set()
    for backup in complete:  # newest first: the first seen in a period is its newest
        stop = _utc(backup.stop_time, backup.backup_id)
        week = _week_key(stop)
        if week in weeks and week not in seen_weeks:
            seen_weeks.add(week)
            reasons[backup.backup_id].append(f"weekly {week[0]}-W{week[1]:02d}")
        month = (stop.year, stop.month)
        if month in months and month not in seen_months:
            seen_months.add(month)
            reasons[backup.backup_id].append(f"monthly {month[0]}-{month[1]:02d}")

    # A kept incremental keeps its whole chain (newest first, so reasons read down it).
    by_id = {b.backup_id: b for b in complete}
    for backup in complete:
        if not reasons[backup.backup_id]:
            continue
        for ancestor in chain_ancestors(backup.backup_id, by_id):
            if ancestor in reasons and not any(
                r.startswith("in the chain of") for r in reasons[ancestor]
            ):
                reasons[ancestor].append(f"in the chain of kept incremental {backup.backup_id}")

    newest_complete = _utc(complete[0].stop_time, "") if complete else None
    decisions = []
    for backup in ordered:
        if backup.complete:
            why = reasons[backup.backup_id]
            if why:
                decisions.append(Decision(backup.backup_id, True, tuple(why)))
            else:
                decisions.append(
                    Decision(
                        backup.backup_id,
                        False,
                        (
                            f"older than {rule.days} days and not kept by the weekly, "
                            "monthly or min_backups rules",
                        ),
                    )
                )
        elif newest_complete is None:
            decisions.append(
                Decision(backup.backup_id, True, ("no complete backup yet (may be in progress)",))
            )
        elif _utc(backup.stop_time, backup.backup_id) > newest_complete:
            decisions.append(
                Decision(
                    backup.backup_id,
                    True,
                    ("newer than the newest complete backup (may be in progress)",),
                )
            )
        else:
            decisions.append(Decision(backup.backup_id, False, ("incomplete backup",)))
    return decisions


def chain_ancestors(backup_id: str, backups: dict[str, BackupRecord]) -> list[str]:
    """The backups ``backup_id`` is built on, parent first, down to its full backup
    (as far as ``backups`` holds them; a cycle ends the walk)."""
    out: list[str] = []
    current = backups.get(backup_id)
    while current is not None and current.parent and current.parent not in out:
        out.append(current.parent)
        current = backups.get(current.parent)
    return out


def spare_chains(expired: set[str], parents: dict[str, str | None]) -> set[str]:
    """``expired`` without the backups a kept incremental is built on (``parents``: every
    backup id -> its parent, None for a full backup): a chain expires whole or not at all."""
    needed: set[str] = set()
    for backup_id in parents:
        if backup_id in expired:
            continue
        parent = parents.get(backup_id)
        while parent and parent not in needed:
            needed.add(parent)
            parent = parents.get(parent)
    return expired - needed


def expire_after_days(
    items: Sequence[tuple[str, datetime]], days: int, now: datetime, keep_newest: bool = True
) -> list[str]:
    """Ids whose time is older than ``now - days`` (oldest first); never the newest item
    when ``keep_newest``. Used for upload copies' ``retention_days``."""
    if days < 0:
        raise ValueError(f"retention days must be non-negative, got {days}")
    now = _utc(now, "now")
    ordered = sorted(items, key=lambda item: (_utc(item[1], item[0]), item[0]))
    if keep_newest and ordered:
        ordered = ordered[:-1]
    cutoff = now - timedelta(days=days)
    return [item_id for item_id, when in ordered if _utc(when, item_id) < cutoff]


def oldest_kept(
    backups: Sequence[BackupRecord], decisions: Sequence[Decision]
) -> BackupRecord | None:
    """The oldest complete backup that is kept: WAL from its start LSN on must stay."""
    kept = {d.backup_id for d in decisions if d.keep}
    candidates = [b for b in backups if b.complete and b.backup_id in kept]
    if not candidates:
        return None
    return min(candidates, key=lambda b: (b.start_lsn, _utc(b.stop_time, b.backup_id)))


def wal_cleanup_candidates(names: Iterable[str], first_needed_segment: str) -> list[str]:
    """WAL files older than ``first_needed_segment``, as pg_archivecleanup decides.

    Segments, ``.partial`` and ``.backup`` files are compared on their log/segment part
    (characters 8-24, timeline ignored); timeline ``.history`` files are always kept.
    ``names`` are plain WAL names (codec suffixes already stripped).
    """
    from pgbackup.formats.lsn import is_backup_label_file, is_partial, is_segment

    if not is_segment(first_needed_segment):
        raise ValueError(f"{first_needed_segment!r} is not a WAL segment name")
    cutoff = first_needed_segment[8:24]
    return sorted(
        name
        for name in names
        if (is_segment(name) or is_partial(name) or is_backup_label_file(name))
        and name[8:24] < cutoff
    )


def keep_generation_ends(
    decisions: Sequence[Decision],
    backups: Sequence[BackupRecord],
    generation: dict[str, int],
    rule: RetentionRule,
    now: datetime,
) -> list[Decision]:
    """Retention across a target's generations (a new cluster after pg_upgrade or a new
    initdb: engine/generations): :func:`plan_retention` runs over every generation's
    backups at once, and then the newest complete backup of each older generation, the
    only way back into that generation's history, is kept as the newest of a period would
    be: while it lies within ``days``, or in one of the last ``weekly`` weeks or
    ``monthly`` months. A kept incremental keeps its chain (chains never cross a
    generation). ``generation``: backup id -> its generation number."""
    now = _utc(now, "now")
    if len(set(generation.values())) < 2:
        return list(decisions)
    newest_gen = max(generation.values())
    complete = [b for b in _order(backups) if b.complete]
    by_id = {b.backup_id: b for b in complete}
    keep: dict[str, str] = {}
    seen: set[int] = set()
    weeks = set(_last_weeks(now, rule.weekly))
    months = set(_last_months(now, rule.monthly))
    for backup in complete:  # newest first: the first of a generation is its newest
        gen = generation.get(backup.backup_id, 1)
        if gen in seen or gen == newest_gen:
            continue
        seen.add(gen)
        stop = _utc(backup.stop_time, backup.backup_id)
        inside = (
            stop >= now - timedelta(days=rule.days)
            or _week_key(stop) in weeks
            or (stop.year, stop.month) in months
        )
        if inside:
            reason = f"newest of generation {gen}, within the policy's periods"
            keep[backup.backup_id] = reason
            for ancestor in chain_ancestors(backup.backup_id, by_id):
                keep.setdefault(ancestor, f"in the chain of {backup.backup_id}")
    out = []
    for d in decisions:
        if d.backup_id in keep and keep[d.backup_id] not in d.reasons:
            out.append(Decision(d.backup_id, True, (*d.reasons, keep[d.backup_id])))
        else:
            out.append(d)
    return out
