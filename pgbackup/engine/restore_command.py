"""The restore command: choose target and backup, check the recovery target, restore.

Recovery targets follow PostgreSQL's own settings (recovery_target_time/lsn/xid/name,
recovery_target = 'immediate', recovery_target_action, recovery_target_timeline). With
no recovery target the backup is restored as taken (consistent at its end, from the WAL
it carries); ``--target latest`` replays every archived WAL file.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgbackup.engine.repository import BackupInfo, Repository, parse_iso
from pgbackup.engine.restore import RestoreResult, recovery_failure, run_restore
from pgbackup.errors import RestoreError, UsageError
from pgbackup.formats.lsn import format_lsn, parse_lsn, segment_name, segment_start_lsn
from pgbackup.postgres.sandbox import pgbackup_program
from pgbackup.storage import open_storage
from pgbackup.ui import LOG

RECOVERY_KEYWORDS = ("immediate", "latest")
ACTIONS = ("promote", "pause", "shutdown")


def parse_recovery_flags(
    keyword: str | None,
    target_time: str | None,
    target_lsn: str | None,
    target_xid: str | None,
    target_name: str | None,
) -> tuple[str | None, Any]:
    """The one recovery target the flags give (restore's and extract's): (kind, value),
    ``keyword`` (``--target immediate|latest``) with no value when no flag is given. A
    time stays text until it is resolved in the zone the server reads it in."""
    given = [
        (k, v)
        for k, v in (
            ("time", target_time),
            ("lsn", target_lsn),
            ("xid", target_xid),
            ("name", target_name),
        )
        if v is not None
    ]
    if len(given) + (1 if keyword else 0) > 1:
        raise UsageError(
            "give at most one recovery target (--target-time, --target-lsn, --target-xid, --target-name, --target immediate|latest)"
        )
    if not given:
        return keyword, None
    kind, raw = given[0][0], str(given[0][1])
    if not raw.strip():
        raise UsageError(f"--target-{kind} is empty", hint="give a value, or leave the flag out")
    if kind == "lsn":
        try:
            return kind, parse_lsn(raw)
        except ValueError:
            raise UsageError(
                f"--target-lsn {raw!r} is not an LSN",
                hint="write it as PostgreSQL does, e.g. 0/3000060",
            ) from None
    if kind == "xid":
        if not raw.isdigit():
            raise UsageError(f"--target-xid {raw!r} is not a transaction id (a positive integer)")
        return kind, int(raw)
    return kind, raw  # a time (resolved later) or a restore point's name


def parse_time(text: str, zone: str | None = None) -> datetime:
    """ISO 8601 (``2026-11-23 14:30:00``, ``...+01:00``, ``...Z``) as an aware instant.

    A time without a zone is read in ``zone``, the server's TimeZone, because that is
    how PostgreSQL reads a zone-less recovery_target_time (the restored cluster's
    ``timezone`` setting, the one ``SELECT now()`` shows); with no known zone it is
    refused rather than guessed.
    """
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--target-time {text!r} is not a timestamp",
            hint="use ISO 8601 with an offset, e.g. '2026-11-23 14:30:00+01:00'",
        ) from None
    if value.tzinfo:
        return value
    if zone is None:
        raise UsageError(
            f"--target-time {text!r} has no time zone, and the backups do not record the "
            "server's timezone (they were taken by an older pgbackup)",
            hint="add the offset the server's clock uses, e.g. "
            f"'{value.isoformat(sep=' ')}+01:00', or Z for UTC",
        )
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return value.replace(tzinfo=ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"--target-time {text!r} has no time zone, and the server's timezone {zone!r} "
            "is not one this machine knows",
            hint="add the offset explicitly, e.g. '2026-11-23 14:30:00+01:00'",
        ) from None


def server_timezone(repo: Repository, target: str) -> str | None:
    """The TimeZone the newest complete backup recorded (the server's, as of then)."""
    backups = repo.complete_backups(target)
    return backups[-1].metadata.get("timezone") if backups else None


def resolve_target_time(repo: Repository, target: str, text: str) -> datetime:
    """``--target-time`` as PostgreSQL will read it, said before anything is written."""
    zone = server_timezone(repo, target)
    value = parse_time(text, zone)
    utc = value.astimezone(UTC)
    if datetime.fromisoformat(text.strip().replace("Z", "+00:00")).tzinfo is None:
        LOG.warning(
            "recovery target time %s has no zone: read in the server's timezone %s, it is %s (%s UTC)",
            text.strip(),
            zone,
            value.isoformat(sep=" "),
            utc.strftime("%Y-%m-%d %H:%M:%S"),
        )
    else:
        LOG.info("recovery target time %s (%s UTC)", value.isoformat(sep=" "), utc)
    return value


def _as_of_word(as_of: Any) -> str:
    """The as-of time as one shell word without quotes (it sits in restore_command)."""
    from pgbackup.policy.immutability import parse_as_of

    when = parse_as_of(as_of) if isinstance(as_of, str) else as_of
    return str(when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _fetch_as_of(policy: Any, from_upload: str | None) -> Any:
    """The time wal-fetch reads the repository as of: a restore --as-of fetches its WAL
    from the same past (docs/security.md); an upload copy is read as it is."""
    return None if from_upload else policy.repository.get("as_of")


def recovery_settings(
    policy: Any,
    target_name: str,
    *,
    kind: str | None,
    value: Any,
    action: str,
    timeline: str | None,
    inclusive: bool,
    until: str | None = None,
    from_upload: str | None = None,
) -> dict[str, Any]:
    """The recovery settings of a restore to the target: ``restore_command`` fetches
    from the repository (or the upload destination ``from_upload``), no further than
    ``until``."""
    source = f"--from {from_upload} " if from_upload else ""
    bound = f"--until {until} " if until else ""
    as_of = _fetch_as_of(policy, from_upload)
    if as_of:
        bound += f"--as-of {_as_of_word(as_of)} "
    settings: dict[str, Any] = {
        "restore_command": f"'{pgbackup_program()}' --config '{policy.path}' wal-fetch {source}--target {target_name} {bound}%f %p",
        "recovery_target_action": action,
    }
    if timeline:
        settings["recovery_target_timeline"] = timeline
    if kind == "time":
        settings["recovery_target_time"] = value.isoformat(sep=" ")
    elif kind == "lsn":
        settings["recovery_target_lsn"] = format_lsn(value)
    elif kind == "xid":
        settings["recovery_target_xid"] = str(value)
    elif kind == "name":
        settings["recovery_target_name"] = value
    elif kind == "immediate":
        settings["recovery_target"] = "immediate"
    if kind in ("time", "lsn", "xid"):
        settings["recovery_target_inclusive"] = "on" if inclusive else "off"
    if kind == "latest":
        settings.pop("recovery_target_action")
    return settings


def choose_backup(
    repo: Repository, target: str, backup: str | None, kind: str | None, value: Any
) -> BackupInfo:
    """``--backup`` as given, or the newest complete backup that ends before the target."""
    if backup not in (None, "", "latest") or kind not in ("time", "lsn"):
        return repo.find_backup(target, backup)
    from pgbackup.policy.chains import broken_chains

    backups = repo.backups(target)
    broken = broken_chains(backups)  # an incremental whose chain is broken cannot restore
    complete = [b for b in backups if b.complete and b.backup_id not in broken]
    if kind == "time":
        fitting = [b for b in complete if b.stop_time and b.stop_time <= value]
    else:
        fitting = [b for b in complete if parse_lsn(b.metadata["stop_lsn"]) <= value]
    if not fitting:
        if not complete:
            return repo.find_backup(target, None)  # raises: no complete backup
        first = complete[0].metadata
        shown = value.isoformat() if kind == "time" else format_lsn(value)
        raise RestoreError(
            f"recovery target {shown} is before the recoverable window of {target!r}, which starts at "
            f"{first['stop_time']} (LSN {first['stop_lsn']}), the end of the oldest backup",
            hint="pick a later target; nothing was written",
        )
    return fitting[-1]


def _refuse_unread_window(policy: Any, repo: Repository, target: str, value: Any) -> None:
    """The window's end by time is the last commit pg_waldump finds in the archive: when
    pg_waldump cannot be found, say that, not "after the end of the archive"."""
    from pgbackup.engine.walchain import waldump_missing

    backups = repo.complete_backups(target)
    why = waldump_missing(policy, target, backups[-1].metadata) if backups else None
    if why:
        raise RestoreError(
            f"recovery target {value.isoformat()}: the end of the recoverable window of "
            f"{target!r} by time was not checked: {why}",
            hint="set pg_bin_dir for the target in backup.yaml to the server's programs",
        )


def check_window(
    policy: Any,
    repo: Repository,
    target: str,
    kind: str | None,
    value: Any,
    timeline: int | None = None,
) -> dict[str, Any]:
    """Refuse a time/LSN target past the end of the archive, before anything is written."""
    from pgbackup.engine.inventory import recoverable_window

    window = recoverable_window(repo, policy, target, timeline)
    if kind not in ("time", "lsn") or not window["latest_lsn"]:
        return window
    text = (
        f"{window['earliest_time']} (LSN {window['earliest_lsn']}) .. "
        f"{window['latest_time']} (LSN {window['latest_lsn']})"
    )
    if kind == "time" and window["latest_time"] and value > parse_iso(window["latest_time"]):
        _refuse_unread_window(policy, repo, target, value)
        raise RestoreError(
            f"recovery target {value.isoformat()} is after the end of the archive; "
            f"recoverable window of {target!r}: {text}",
            hint="pick a target inside the window (is archiving running? see `pgbackup check`)",
        )
    if kind == "lsn" and value > parse_lsn(window["latest_lsn"]):
        raise RestoreError(
            f"recovery target LSN {format_lsn(value)} is after the end of the archive; "
            f"recoverable window of {target!r}: {text}",
            hint="pick a target inside the window",
        )
    return window


def check_chain(
    policy: Any,
    repo: Repository,
    target: str,
    info: BackupInfo,
    kind: str | None,
    value: Any,
    timeline: int | None = None,
    inclusive: bool = True,
) -> dict[str, Any]:
    """Refuse, before anything is written, a recovery the archive cannot carry to its
    target because a segment is missing in the middle of the chain; return the point
    recovery must reach at least (``min_lsn`` and ``why``), checked once it has ended.

    PostgreSQL cannot see a hole: at the missing file restore_command says "not there",
    and recovery ends and promotes with everything after the hole silently dropped.
    """
    if kind is None:
        return {}
    from pgbackup.engine.walchain import reachable

    meta = info.metadata
    seg_size = int(meta.get("wal_segment_size", 16 * 1024 * 1024))
    reach = reachable(policy, repo.storage, target, meta, timeline)
    expected = point_to_reach(info, kind, value, inclusive, reach.get("newest_segment"), seg_size)
    gap = reach.get("gap")
    if gap is None:
        return expected
    if kind == "immediate":  # the backup's own WAL; read-ahead must not trip on the hole
        expected["until"] = segment_name(
            int(meta["timeline"]), parse_lsn(meta["stop_lsn"]), seg_size
        )
        return expected
    wanted, until = reach_before_gap(policy, repo, target, meta, kind, value, reach, seg_size)
    if wanted is not None:
        raise gap_error(target, info, reach, gap, wanted, seg_size)
    expected["until"] = until
    LOG.warning(
        "the WAL archive of %r has a gap at %s; the recovery target lies before it "
        "(in %s or earlier), so the restore goes on",
        target,
        gap,
        until,
    )
    return expected


def point_to_reach(
    info: BackupInfo,
    kind: str,
    value: Any,
    inclusive: bool,
    newest: str | None,
    seg_size: int,
) -> dict[str, Any]:
    """The point recovery must reach at least (``min_lsn``, and ``why`` in words), checked
    once it has ended: the newest archived segment (latest), the backup's end
    (immediate), the LSN asked for (inclusive); nothing for the others."""
    meta = info.metadata
    if kind == "latest" and newest:
        start = max(segment_start_lsn(newest, seg_size), parse_lsn(meta["stop_lsn"]))
        return {"min_lsn": format_lsn(start), "why": f"the newest archived segment {newest}"}
    if kind == "immediate":
        return {"min_lsn": meta["stop_lsn"], "why": f"the end of backup {info.backup_id}"}
    if kind == "lsn" and inclusive:
        return {"min_lsn": format_lsn(value), "why": "the recovery target"}
    return {}


def reach_before_gap(
    policy: Any,
    repo: Repository,
    target: str,
    meta: dict[str, Any],
    kind: str,
    value: Any,
    reach: dict[str, Any],
    seg_size: int,
) -> tuple[str | None, str]:
    """With a hole in the chain: (what of the target lies beyond it, in words; None when
    it all lies before), and ``until``, the last segment the target needs.

    wal-fetch must know how far the target needs WAL: PostgreSQL reads ahead
    (recovery_prefetch) and asks for the missing file even when it stops before it."""
    last_lsn = reach.get("last_lsn") or meta["stop_lsn"]
    last_time = reach.get("last_commit_time")
    last_segment = reach.get("last_segment") or segment_name(
        int(meta["timeline"]), parse_lsn(meta["stop_lsn"]), seg_size
    )
    if kind == "latest":
        return f"the end of the archive ({reach.get('newest_segment')})", last_segment
    if kind == "lsn":
        if value > parse_lsn(last_lsn):
            return f"LSN {format_lsn(value)}", last_segment
        return None, segment_name(int(reach["timeline"]), value, seg_size)
    if kind == "time":
        # Recovery to a time stops at the first commit AFTER it; that commit must be
        # readable, so the last commit before the hole is itself out of reach.
        reachable_time = parse_iso(last_time) if last_time else None
        if reachable_time is None or value >= reachable_time:
            return value.isoformat(sep=" "), last_segment
        return None, last_segment
    # xid, name: find the record in the WAL before the hole
    from pgbackup.engine.walchain import locate_record

    found = locate_record(policy, repo.storage, target, meta, last_segment, kind, value)
    if found is None:
        return f"{'transaction' if kind == 'xid' else 'restore point'} {value!r}", last_segment
    return None, found


def gap_error(
    target: str, info: BackupInfo, reach: dict[str, Any], gap: str, wanted: str, seg_size: int
) -> RestoreError:
    """The refusal of a recovery whose target lies beyond a hole in the WAL chain: the
    last point that can be reached, and how to restore up to it or mend the hole."""
    last_lsn = reach.get("last_lsn") or info.metadata["stop_lsn"]
    last_time = reach.get("last_commit_time")
    reach_text = f"LSN {last_lsn} on timeline {reach['timeline']}"
    if last_time:
        reach_text += f" (last commit before it: {last_time})"
    return RestoreError(
        f"the WAL archive of {target!r} has a gap: {gap} is missing while later WAL is archived "
        f"(up to {reach.get('newest_segment')}); recovery from backup {info.backup_id} cannot "
        f"get past it, so {wanted} cannot be reached. The last point that can be reached is "
        f"{reach_text}. The segment at the gap starts at LSN "
        f"{format_lsn(segment_start_lsn(gap, seg_size))}",
        hint=f"to restore up to the gap explicitly: pgbackup restore --backup {info.backup_id} "
        f"--target-lsn {last_lsn} --to DIR; or put {gap} back into the archive (from an upload "
        "copy: --from NAME) and retry. Nothing was written",
    )


class _RecoveryNap:
    """The pause between two questions to a recovering server (a connection each): 0.3 s,
    cut short when the server removes its ``recovery.signal`` / ``standby.signal``, which
    it does as archive recovery ends (``StartupXLOG`` in xlog.c, PostgreSQL 15 to 18: right
    after ``XLogInitNewTimeline``, before it writes the new timeline's history file and
    leaves recovery; a server paused at its target keeps them), so that a restore that
    waits for the end sees it within ~20 ms rather than up to 0.3 s later. Once the files
    are gone (and only if they were seen: a data directory this process cannot read, a
    container's, keeps the plain pause) it asks again every 20 ms until the server says it
    has left recovery."""

    SECONDS = 0.3
    STEP = 0.02

    def __init__(self, data_dir: str | Path) -> None:
        self.signals = [Path(data_dir) / n for n in ("recovery.signal", "standby.signal")]
        self.seen = False

    def _signalled(self) -> bool:
        try:
            return any(p.exists() for p in self.signals)
        except OSError:
            return False

    def __call__(self) -> None:
        if not self._signalled():
            time.sleep(self.STEP if self.seen else self.SECONDS)
            return
        self.seen = True
        end = time.monotonic() + self.SECONDS
        while time.monotonic() < end:
            time.sleep(self.STEP)
            if not self._signalled():
                return


def wait_for_recovery_end(
    timeout: float = 600, action: str = "promote", expected: dict[str, Any] | None = None
) -> Any:
    """A callback for run_restore: wait until recovery ends, report the point reached.

    A server that stops is a failure (with PostgreSQL's reason, e.g. "recovery ended
    before configured recovery target was reached"), unless the action was ``shutdown``
    and it stopped at the target. A recovery that ends short of ``expected["min_lsn"]``
    (the newest archived segment for ``latest``) is a failure too, with both points.
    Either way wal-fetch's read-ahead is stopped and its spool removed
    (engine/walprefetch), before a failed restore empties the directory.
    """

    def waiter(cluster: Any) -> dict[str, Any]:
        from pgbackup.engine.walprefetch import end_read_ahead

        try:
            info = wait(cluster)
        finally:  # recovery ended, paused or failed: no read-ahead left running or spooled
            end_read_ahead(cluster.data_dir)
        reached = info.get("last_replay_lsn")
        minimum = (expected or {}).get("min_lsn")
        if expected and minimum and reached and parse_lsn(reached) < parse_lsn(minimum):
            raise RestoreError(
                f"recovery ended at LSN {reached}, short of {expected['why']} at LSN "
                f"{minimum}: WAL the archive holds was not replayed",
                hint=f"see {cluster.log_file}; run `pgbackup verify --wal`",
            )
        if expected:
            info["expected_min_lsn"] = expected.get("min_lsn")
        return info

    def wait(cluster: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        nap = _RecoveryNap(cluster.data_dir)
        while time.monotonic() < deadline:
            try:
                row = cluster.sql(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
                    "pg_last_xact_replay_timestamp(), "
                    "CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not paused' END, "
                    "(SELECT timeline_id FROM pg_control_checkpoint())"
                )[0]
            except Exception:
                if not cluster.is_running():
                    reason = recovery_failure(cluster)
                    if action == "shutdown" and reason is None:
                        return {"state": "shut down at target", "last_replay_lsn": None}
                    raise RestoreError(
                        f"recovery stopped before reaching its target: {reason or 'the server exited'}",
                        hint=f"the archive may end earlier or miss a file (pgbackup verify --wal); see {cluster.log_file}",
                    ) from None
                nap()
                continue
            in_recovery, lsn, ts, pause, tli = row
            info = {
                "last_replay_lsn": lsn,
                "last_replay_time": ts.astimezone(UTC).isoformat() if ts else None,
                "timeline": tli,
            }
            if not in_recovery:
                info["state"] = "promoted"
                # After promotion replay functions return NULL: report the insert position.
                if lsn is None:
                    info["last_replay_lsn"] = cluster.sql("SELECT pg_current_wal_lsn()::text")[0][0]
                return info
            if pause == "paused":
                info["state"] = "paused at target"
                return info
            nap()
        raise RestoreError(
            f"recovery did not finish within {timeout:.0f}s", hint=f"see {cluster.log_file}"
        )

    return waiter


def restore_command(
    policy: Any,
    *,
    to: Path,
    backup: str | None = None,
    force: bool = False,
    start: bool = False,
    port: int | None = None,
    target: str | None = None,
    target_time: str | None = None,
    db: str | None = None,
    target_lsn: str | None = None,
    target_xid: str | None = None,
    target_name: str | None = None,
    target_action: str | None = None,
    target_timeline: str | None = None,
    exclusive: bool = False,
    archive: bool = True,
    from_upload: str | None = None,
    tablespace_map: list[str] | None = None,
    tablespace_map_all: str | None = None,
    standby: bool = False,
    primary_conninfo: str | None = None,
    delta: bool = False,
) -> RestoreResult:
    """``pgbackup restore``: the flags checked, the backup chosen for the recovery target,
    the WAL chain checked to reach it (before anything is written), then the restore: a
    standby that follows the archive, or a server recovering to the target."""
    from pgbackup.engine.restore import parse_tablespace_map

    mapping = parse_tablespace_map(tablespace_map)
    policy_target, recovery_kind, value = recovery_target(
        policy, target, db, target_time, target_lsn, target_xid, target_name
    )
    action = target_action or "promote"
    refuse_flag_combinations(
        recovery_kind,
        action,
        target_action=target_action,
        target_timeline=target_timeline,
        exclusive=exclusive,
        standby=standby,
        primary_conninfo=primary_conninfo,
        from_upload=from_upload,
        delta=delta,
        force=force,
    )
    from pgbackup.engine.generations import restore_storage

    storage = source_storage(policy, from_upload)
    repo = Repository(storage)
    if recovery_kind == "time":
        value = resolve_target_time(repo, policy_target.name, value)
    storage = restore_storage(storage, policy_target.name, backup, recovery_kind, value)
    repo = Repository(storage)
    wanted_tli = int(target_timeline) if target_timeline and target_timeline.isdigit() else None
    info = choose_backup(repo, policy_target.name, backup, recovery_kind, value)
    if standby:
        return restore_standby(
            policy,
            policy_target,
            info,
            to,
            storage=storage,
            force=force,
            start=start,
            port=port,
            primary_conninfo=primary_conninfo,
            tablespace_map=mapping,
            tablespace_map_all=tablespace_map_all,
        )
    expected = check_reach(
        policy, repo, policy_target.name, info, recovery_kind, value, wanted_tli, exclusive
    )
    settings = None
    if recovery_kind is not None:
        settings = recovery_settings(
            policy,
            policy_target.name,
            kind=recovery_kind,
            value=value,
            action=action,
            timeline=target_timeline,
            inclusive=not exclusive,
            until=expected.get("until"),
            from_upload=from_upload,
        )
    return run_restore(
        policy,
        policy_target,
        info.backup_id,
        to,
        force=force,
        start=start,
        port=port,
        archive=archive,
        recovery_settings=settings,
        storage=storage,
        wait_for_recovery=wait_for_recovery_end(action=action, expected=expected)
        if (start and recovery_kind)
        else None,
        tablespace_map=mapping,
        tablespace_map_all=tablespace_map_all,
        delta=delta,
        read_ahead=read_ahead_before_server(policy, policy_target, from_upload, expected)
        if (start and settings)
        else None,
    )


def read_ahead_before_server(
    policy: Any, target: Any, from_upload: str | None, expected: dict[str, Any]
) -> Any:
    """For a restore that starts its server: the read-ahead to start first, with the
    flags :func:`recovery_settings` gives wal-fetch (None when the target reads no
    segments ahead, or the restore reads the repository ``--as-of`` a time: that fetch
    has no read-ahead)."""
    from pgbackup.engine.walprefetch import BeforeServer

    if target.wal_fetch.read_ahead <= 0 or _fetch_as_of(policy, from_upload):
        return None
    return BeforeServer(str(policy.path), target.name, from_upload, expected.get("until"))


def recovery_target(
    policy: Any,
    target: str | None,
    db: str | None,
    target_time: str | None,
    target_lsn: str | None,
    target_xid: str | None,
    target_name: str | None,
) -> tuple[Any, str | None, Any]:
    """(the policy target, the recovery target's kind, its value) the flags name:
    ``--target`` is a policy target, or a keyword (latest, immediate)."""
    recovery_kind: str | None = None
    if target in RECOVERY_KEYWORDS:
        recovery_kind, target = target, None
    if db and target and db != target:
        raise UsageError(f"--db {db!r} and --target {target!r} name different policy targets")
    policy_target = policy.target(db or target)
    recovery_kind, value = parse_recovery_flags(
        recovery_kind, target_time, target_lsn, target_xid, target_name
    )
    return policy_target, recovery_kind, value


def refuse_flag_combinations(
    recovery_kind: str | None,
    action: str,
    *,
    target_action: str | None,
    target_timeline: str | None,
    exclusive: bool,
    standby: bool,
    primary_conninfo: str | None,
    from_upload: str | None,
    delta: bool,
    force: bool,
) -> None:
    """Restore's flags that make no sense, or none together: refused before anything is
    read."""
    if action not in ACTIONS:
        raise UsageError(f"--target-action {action!r}: must be one of {', '.join(ACTIONS)}")
    if target_timeline and not (
        target_timeline in ("latest", "current") or target_timeline.isdigit()
    ):
        raise UsageError(f"--target-timeline {target_timeline!r}: 'latest', 'current' or a number")
    if recovery_kind is None and (target_action or target_timeline or exclusive):
        raise UsageError("--target-action/--target-timeline/--exclusive need a recovery target")
    if standby and recovery_kind not in (None, "latest"):
        raise UsageError(
            "--standby follows the archive (and the primary) without end; it takes no "
            "recovery target",
            hint="leave out --target-time/--target-lsn/--target-xid/--target-name",
        )
    if primary_conninfo and not standby:
        raise UsageError("--primary-conninfo makes sense only with --standby")
    if standby and from_upload:
        raise UsageError("--standby reads WAL from the repository; leave out --from")
    if delta and (force or standby):
        raise UsageError(
            "--delta restores over an existing stopped copy; it takes neither --force nor --standby"
        )


def source_storage(policy: Any, from_upload: str | None) -> Any:
    """Where the backup is read: the repository, or the upload destination ``--from``
    names."""
    if from_upload:
        from pgbackup.engine.uploads import upload_storage

        return upload_storage(policy, from_upload)
    return open_storage(policy.repository)


def check_reach(
    policy: Any,
    repo: Repository,
    target: str,
    info: BackupInfo,
    kind: str | None,
    value: Any,
    timeline: int | None,
    exclusive: bool,
) -> dict[str, Any]:
    """Before anything is written: the WAL chain carries recovery from ``info`` to the
    target, which lies inside the recoverable window; the point recovery must reach."""
    from pgbackup.engine.walchain import one_listing

    with one_listing():  # both checks read one listing of the archive
        expected = check_chain(
            policy, repo, target, info, kind, value, timeline, inclusive=not exclusive
        )
        if kind in ("time", "lsn"):
            check_window(policy, repo, target, kind, value, timeline)
    return expected


def restore_standby(
    policy: Any,
    target: Any,
    info: BackupInfo,
    to: Path,
    *,
    storage: Any,
    force: bool,
    start: bool,
    port: int | None,
    primary_conninfo: str | None,
    tablespace_map: dict[str, str],
    tablespace_map_all: str | None,
) -> RestoreResult:
    """A standby built from the repository (pgBackRest's ``--type=standby``): the backup,
    ``standby.signal``, restore_command through wal-fetch and, when given, a primary to
    stream from; it replays the archive and follows the newest timeline without end."""
    from pgbackup.engine.walchain import reachable

    reach = reachable(policy, storage, target.name, info.metadata)
    if reach.get("gap"):
        LOG.warning(
            "the WAL archive of %r has a gap at %s: the standby will wait there until the "
            "file appears or its primary streams past it",
            target.name,
            reach["gap"],
        )
    settings = recovery_settings(
        policy,
        target.name,
        kind="latest",
        value=None,
        action="promote",
        timeline="latest",
        inclusive=True,
    )

    def standby_ready(cluster: Any) -> dict[str, Any]:
        row = cluster.sql(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
            "(SELECT count(*) FROM pg_stat_wal_receiver)"
        )[0]
        if not row[0]:
            raise RestoreError("the restored standby is not in recovery")
        return {"state": "standby", "last_replay_lsn": row[1], "wal_receivers": row[2]}

    return run_restore(
        policy,
        target,
        info.backup_id,
        to,
        force=force,
        start=start,
        port=port,
        archive=True,
        recovery_settings=settings,
        storage=storage,
        wait_for_recovery=standby_ready if start else None,
        tablespace_map=tablespace_map,
        tablespace_map_all=tablespace_map_all,
        standby=True,
        primary_conninfo=primary_conninfo,
    )
