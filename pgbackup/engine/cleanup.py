"""Retention, carried out: expire base backups (and, with them, WAL nobody needs).

Decisions come from the pure functions in :mod:`pgbackup.policy.retention`; this module only
reads the repository and deletes. ``metadata.json`` goes first in every removal, so an
interrupted cleanup never leaves something that looks complete with parts missing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pgbackup.engine.locks import target_lock
from pgbackup.engine.repository import BackupInfo, Repository
from pgbackup.errors import LockError
from pgbackup.formats.lsn import parse_lsn
from pgbackup.policy import Policy, Target
from pgbackup.policy.retention import (
    BackupRecord,
    Decision,
    RetentionRule,
    keep_generation_ends,
    plan_retention,
)
from pgbackup.ui import LOG


@dataclass
class CleanupPlan:
    target: str
    decisions: list[Decision] = field(default_factory=list)
    expire_backups: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # incomplete backups safe to remove
    expire_wal: list[str] = field(default_factory=list)  # storage keys
    notes: list[str] = field(default_factory=list)
    #: Object lock (docs/security.md): expired but still locked (id or key -> until),
    #: and how many locks of kept backups were extended to what retention now promises.
    held: dict[str, str] = field(default_factory=dict)
    locks_extended: int = 0
    #: backup id -> its generation (engine/generations); absent: generation 1
    generation: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "backups": [
                {"backup_id": d.backup_id, "keep": d.keep, "reasons": list(d.reasons)}
                for d in self.decisions
            ],
            "expire_backups": self.expire_backups,
            "remove_incomplete": self.leftovers,
            "expire_wal": self.expire_wal,
            "notes": self.notes,
            "held_by_lock": self.held,
            "locks_extended": self.locks_extended,
            **(
                {"generations": dict(sorted(self.generation.items()))}
                if len(set(self.generation.values())) > 1
                else {}
            ),
        }


def id_time(backup_id: str) -> datetime:
    """The time encoded in a backup id (for incomplete backups without metadata)."""
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


def to_record(info: BackupInfo) -> BackupRecord:
    meta = info.metadata
    return BackupRecord(
        backup_id=info.backup_id,
        stop_time=info.stop_time or id_time(info.backup_id),
        complete=info.complete,
        start_lsn=parse_lsn(meta["start_lsn"]) if meta.get("start_lsn") else 0,
        timeline=int(meta.get("timeline", 1)),
        parent=meta.get("parent"),
    )


def plan_cleanup(
    policy: Policy, repo: Repository, target: Target, now: datetime, backup_running: bool
) -> CleanupPlan:
    """What retention expires, over every generation of the target at once
    (engine/generations; ``policy/retention.keep_generation_ends``); WAL per generation,
    as its kept backups need it. Keys are the stored ones (a later generation's under
    ``<target>/gen/<n>/``)."""
    from pgbackup.engine.generations import generation_views, mapped

    views = [
        (int(g["generation"]), Repository(st))
        for g, st in generation_views(repo.storage, target.name)
    ]
    by_gen = {n: r.backups(target.name) for n, r in views}
    backups = [b for n, _r in views for b in by_gen[n]]
    rule = RetentionRule(
        days=policy.retention.days,
        weekly=policy.retention.weekly,
        monthly=policy.retention.monthly,
        min_backups=policy.retention.min_backups,
    )
    plan = CleanupPlan(target.name)
    plan.generation = {b.backup_id: n for n, _r in views for b in by_gen[n]}
    records = [to_record(b) for b in backups]
    plan.decisions = keep_generation_ends(
        plan_retention(records, rule, now), records, plan.generation, rule, now
    )
    complete_ids = {b.backup_id for b in backups if b.complete}
    for d in plan.decisions:
        if d.keep:
            continue
        if d.backup_id in complete_ids:
            plan.expire_backups.append(d.backup_id)
        elif backup_running:
            plan.notes.append(f"{d.backup_id}: incomplete, left alone while a backup is running")
        else:
            plan.leftovers.append(d.backup_id)
    if backup_running:
        # The newest incomplete one may be the running backup: never touch it.
        plan.decisions = [
            Decision(d.backup_id, True, ("a backup is running",))
            if d.backup_id not in complete_ids and d.backup_id not in plan.leftovers and not d.keep
            else d
            for d in plan.decisions
        ]
    from pgbackup.engine.walchain import plan_wal_expiry

    for n, gen_repo in views:
        kept = [b for b in by_gen[n] if b.complete and b.backup_id not in plan.expire_backups]
        plan.expire_wal += [
            mapped(k, target.name, n) for k in plan_wal_expiry(gen_repo, target.name, kept)
        ]
    return plan


def extend_locks(policy: Policy, repo: Repository, target: Target, plan: CleanupPlan) -> int:
    """Extend the locks of every kept backup's objects to what retention now promises it
    (a backup that became a weekly or a monthly is promised longer than its write-time
    lock: policy/immutability.promised_until), and of the WAL to the horizon the policy
    now gives it. Extending only; returns how many (one HEAD per object)."""
    from pgbackup.engine.generations import generation_views, mapped
    from pgbackup.policy.immutability import (
        is_backup_object,
        lock_rule,
        promised_until,
        retain_until,
    )

    rule = lock_rule(policy.repository.get("object_lock"))
    assert rule is not None
    stops = {
        b.backup_id: b.stop_time
        for _g, view in generation_views(repo.storage, target.name)
        for b in Repository(view).backups(target.name)
        if b.complete
    }
    extended = 0
    for d in plan.decisions:
        stop = stops.get(d.backup_id)
        if not d.keep or stop is None:
            continue
        until = promised_until(stop, d.reasons, rule)
        prefix = repo.base_prefix(target.name, d.backup_id)
        generation = plan.generation.get(d.backup_id, 1)
        for v in repo.storage.versions(mapped(prefix, target.name, generation)):
            if v.deleted:
                continue
            lock = repo.storage.retention_of(v.key, v.version_id)
            if lock is None or lock[1] < until:
                repo.storage.extend_retention(v.key, v.version_id, until)
                extended += 1
    # WAL and the rest: locked for the longest horizon the policy now promises (a policy
    # that came to keep more, more monthly backups for instance, promises more).
    now = datetime.now(UTC)
    for v in repo.storage.versions(f"{target.name}/"):
        if v.deleted or is_backup_object(v.key):
            continue
        promised = retain_until(v.key, v.written, rule)
        if promised is None or promised <= now:
            continue
        lock = repo.storage.retention_of(v.key, v.version_id)
        if lock is None or lock[1] < promised - timedelta(seconds=1):
            repo.storage.extend_retention(v.key, v.version_id, promised)
            extended += 1
    if extended:
        LOG.info("cleanup %s: %d locks extended to what retention promises", target.name, extended)
    return extended


def run_cleanup(
    policy: Policy, repo: Repository, target: Target, *, dry_run: bool, now: datetime
) -> CleanupPlan:
    lock = target_lock(policy.repository, target.name, "cleanup")
    backup_running = False
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock)
        except LockError:
            backup_running = True
        plan = plan_cleanup(policy, repo, target, now, backup_running)
        if dry_run:
            return plan
        if policy.repository.get("object_lock"):
            plan.locks_extended = extend_locks(policy, repo, target, plan)
        from pgbackup.engine.generations import mapped

        for backup_id in plan.expire_backups + plan.leftovers:
            prefix = repo.base_prefix(target.name, backup_id)
            gen = plan.generation.get(backup_id, 1)
            n, held = repo.storage.expire_prefix(mapped(prefix, target.name, gen))
            if held is not None:
                plan.held[backup_id] = held.isoformat()
                continue
            LOG.info("cleanup %s: removed backup %s (%d objects)", target.name, backup_id, n)
        for key in plan.expire_wal:
            held = repo.storage.expire(key)
            if held is not None:
                plan.held[key] = held.isoformat()
        removed_wal = len([k for k in plan.expire_wal if k not in plan.held])
        if removed_wal:
            LOG.info("cleanup %s: removed %d archived WAL files", target.name, removed_wal)
        if plan.held:
            ends = min(plan.held.values())
            plan.notes.append(
                f"{len(plan.held)} expired object(s) or backup(s) kept: their object lock "
                f"has not ended (the first ends {ends}); the next cleanup after it removes them"
            )
        remover = getattr(repo.storage, "remove_leftover_temp_files", None)
        if remover is not None and not backup_running:
            removed = remover(target.name)
            if removed:
                LOG.info(
                    "cleanup %s: removed %d temporary files of interrupted writes",
                    target.name,
                    removed,
                )
    repo.record_run(
        target.name,
        "cleanup",
        {
            "status": "ok",
            "expired_backups": [b for b in plan.expire_backups if b not in plan.held],
            "removed_incomplete": [b for b in plan.leftovers if b not in plan.held],
            "expired_wal": len([k for k in plan.expire_wal if k not in plan.held]),
            "held_by_lock": len(plan.held),
        },
    )
    return plan
