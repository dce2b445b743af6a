"""``check``'s immutability checks (docs/security.md): has anything pgbackup wrote once
been deleted, overwritten, or unlocked?

Run for the repository, and each upload destination, that declares ``object_lock`` (an
S3 bucket with versioning). From one versioned listing of the target's keys:

* ``tampering``: CRITICAL when a key pgbackup writes once (every key but wal-receive's
  ``.partial`` and wal-ship's status, policy/immutability.rewritten_in_place) has a
  delete marker or a second version. The message names the keys and the newest
  ``--as-of`` time that predates every change: a restore as of then reads the repository
  as pgbackup left it;
* ``object_lock``: CRITICAL when an object's lock is missing or ends before the date its
  write time promises (policy/immutability.retain_until): a lock shortened (governance
  bypass) or never set. One HEAD per object checked: every object of a backup and the
  newest ``WAL_LOCKS_CHECKED`` WAL files (older WAL was checked by earlier runs).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pgbackup.operations.checks import CRITICAL, OK, UNKNOWN, Check
from pgbackup.policy.immutability import (
    Version,
    is_backup_object,
    lock_rule,
    retain_until,
    rewritten_in_place,
)

WAL_LOCKS_CHECKED = 200
SHOWN = 5  # keys named in a message


def tamper_checks(policy: Any, repo: Any, target: Any) -> list[Check]:
    """The repository's checks, then each upload destination's that declares
    ``object_lock`` (named ``tampering:<destination>``, ``object_lock:<destination>``)."""
    checks = storage_checks(policy.repository, repo.storage, target.name, "")
    for spec in policy.uploads or []:
        if not spec.get("object_lock"):
            continue
        name = str(spec.get("name"))
        try:
            from pgbackup.engine.uploads import upload_storage

            storage = upload_storage(policy, name)
        except Exception as exc:
            text = f"not checked: cannot open {name}: {getattr(exc, 'message', exc)}"
            checks.append(Check(f"tampering:{name}", UNKNOWN, text))
            continue
        checks += storage_checks(spec, storage, target.name, f":{name}")
    return checks


def storage_checks(spec: dict[str, Any], storage: Any, target: str, suffix: str) -> list[Check]:
    rule = lock_rule(spec.get("object_lock"))
    if rule is None:
        return []
    try:
        versions = list(storage.versions(f"{target}/"))
    except Exception as exc:
        text = f"not checked: cannot list the versions of {storage.describe()}: {getattr(exc, 'message', exc)}"
        return [Check(f"tampering{suffix}", UNKNOWN, text)]
    by_key: dict[str, list[Version]] = {}
    for v in versions:
        if not rewritten_in_place(v.key):
            by_key.setdefault(v.key, []).append(v)
    changes, locks = _changes(by_key), _locks(storage, by_key, rule)
    changes.name += suffix
    locks.name += suffix
    return [changes, locks]


def _changes(by_key: dict[str, list[Version]]) -> Check:
    changed: list[tuple[datetime, str, str]] = []  # (first change, key, what)
    for key, found in by_key.items():
        found = sorted(found, key=lambda v: _utc(v.written))
        events = found if found[0].deleted else found[1:]  # what came after the write
        if not events:
            continue
        deleted = any(v.deleted for v in events)
        overwritten = any(not v.deleted for v in events)
        what = " and ".join(
            word for word, did in (("overwritten", overwritten), ("deleted", deleted)) if did
        )
        changed.append((_utc(events[0].written), key, what))
    if not changed:
        return Check("tampering", OK, f"{len(by_key)} objects, each as it was written", 0)
    changed.sort()
    earliest = changed[0][0]
    as_of = (earliest - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    named = "; ".join(f"{key} {what} at {_when(t)}" for t, key, what in changed[:SHOWN])
    more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
    return Check(
        "tampering",
        CRITICAL,
        f"{len(changed)} object(s) pgbackup wrote once were changed: {named}{more}; "
        f"the repository as pgbackup left it: --as-of {as_of}",
        len(changed),
    )


def _locks(storage: Any, by_key: dict[str, list[Version]], rule: Any) -> Check:
    originals = []
    for found in by_key.values():
        kept = sorted((v for v in found if not v.deleted), key=lambda v: _utc(v.written))
        if kept:
            originals.append(kept[0])
    backups = [v for v in originals if is_backup_object(v.key)]
    others = sorted(
        (v for v in originals if not is_backup_object(v.key)), key=lambda v: _utc(v.written)
    )
    short: list[str] = []
    now = datetime.now(UTC)
    for v in backups + others[-WAL_LOCKS_CHECKED:]:
        promised = retain_until(v.key, _utc(v.written), rule)
        if promised is None or promised <= now:
            continue  # its promise is over: cleanup may remove it
        lock = storage.retention_of(v.key, v.version_id)
        # Whole seconds: S3 keeps the date to the second or the millisecond.
        if lock is None or _utc(lock[1]) < promised - timedelta(seconds=1):
            held = "no lock" if lock is None else f"locked until {_when(_utc(lock[1]))}"
            short.append(f"{v.key} ({held}, promised until {_when(promised)})")
    if short:
        more = f" and {len(short) - SHOWN} more" if len(short) > SHOWN else ""
        return Check(
            "object_lock",
            CRITICAL,
            f"{len(short)} object(s) hold a lock shorter than the policy promises: "
            + "; ".join(short[:SHOWN])
            + more,
            len(short),
        )
    return Check("object_lock", OK, f"every object checked is locked as promised ({rule.mode})", 0)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
