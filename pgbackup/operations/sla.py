"""SLA arithmetic: the policy's objectives against measured evidence, as pure functions.

Plain numbers, datetimes and dicts in, a section out (``rpo_section`` ... ``overall``),
tested without a server (tests/test_sla.py). Each section gets a verdict: COMPLIANT,
AT RISK or BREACHED, with reasons; each area's title and the line that says what was
measured (``AREA_TITLES``, ``measure``) are shared by every rendering. Gathering the
evidence from a repository and rendering the report is :mod:`pgbackup.operations.sla_report`
(Markdown, JSON) and :mod:`pgbackup.operations.report` (HTML).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

COMPLIANT, AT_RISK, BREACHED = "COMPLIANT", "AT RISK", "BREACHED"
_RANK = {COMPLIANT: 0, AT_RISK: 1, BREACHED: 2}
GRACE = timedelta(minutes=30)
NEAR = 0.8  # measured above 80 % of an objective is AT RISK


def worst(verdicts: Iterable[str]) -> str:
    out = COMPLIANT
    for v in verdicts:
        if _RANK[v] > _RANK[out]:
            out = v
    return out


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def parse_timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _text(t: datetime) -> str:
    """A point in time as a reader wants it in a reason: UTC, seconds, no microseconds."""
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- pure sections


def rpo_section(
    rpo: int | None, checks: list[dict[str, Any]], wal_times: list[datetime]
) -> dict[str, Any]:
    """Objective vs measured exposure at each check, and the largest archive gap.

    ``checks``: check records (``checked_at``, ``rpo_exposure_seconds``,
    ``wal_last_archived_age_seconds``). ``wal_times``: when each archived segment arrived.
    A check that saw more exposure than the objective is a breach; an archive gap longer
    than the objective is a risk (it may be an idle period, or unnoticed loss).
    """
    exposures = [
        (float(c["rpo_exposure_seconds"]), c.get("checked_at") or c.get("recorded_at"))
        for c in checks
        if c.get("rpo_exposure_seconds") is not None
    ]
    ages = [
        float(c["wal_last_archived_age_seconds"])
        for c in checks
        if c.get("wal_last_archived_age_seconds") is not None
    ]
    times = sorted(wal_times)
    gap, gap_at = 0.0, None
    for a, b in zip(times, times[1:], strict=False):
        d = (b - a).total_seconds()
        if d > gap:
            gap, gap_at = d, a
    worst_exposure = max(exposures, default=(None, None), key=lambda e: e[0] or 0)
    out: dict[str, Any] = {
        "objective_seconds": rpo,
        "checks": len(checks),
        "worst_exposure_seconds": worst_exposure[0],
        "worst_exposure_at": worst_exposure[1],
        "worst_archived_wal_age_seconds": max(ages) if ages else None,
        "largest_archive_gap_seconds": gap if len(times) > 1 else None,
        "largest_archive_gap_after": _text(gap_at) if gap_at else None,
        "segments_archived": len(times),
        "reasons": [],
    }
    reasons: list[str] = out["reasons"]
    if rpo is None:
        out["verdict"] = COMPLIANT
        reasons.append("no RPO declared")
        return out
    verdict = COMPLIANT
    breaches = [e for e in exposures if e[0] > rpo]
    if breaches:
        verdict = BREACHED
        reasons.append(
            f"RPO breached at {len(breaches)} check(s): worst exposure {fmt_seconds(worst_exposure[0])} "
            f"at {worst_exposure[1]} against an objective of {fmt_seconds(rpo)}"
        )
    elif exposures and worst_exposure[0] is not None and worst_exposure[0] > NEAR * rpo:
        verdict = AT_RISK
        reasons.append(
            f"worst exposure {fmt_seconds(worst_exposure[0])} is close to the objective {fmt_seconds(rpo)}"
        )
    if not exposures:
        verdict = worst([verdict, AT_RISK])
        reasons.append("no check measured the RPO in the period (schedule `pgbackup check`)")
    if gap > rpo and len(times) > 1:
        # Idle servers archive nothing, so a gap alone proves no loss: it counts only
        # when no check measured the exposure; otherwise it is a note.
        if not exposures:
            verdict = worst([verdict, AT_RISK])
        reasons.append(
            f"largest gap between archived segments {fmt_seconds(gap)} exceeds {fmt_seconds(rpo)} "
            "(an idle server, or WAL that was not archived in time)"
        )
    verdict = worst([verdict, _host_loss(rpo, checks, out)])
    if verdict == COMPLIANT:
        reasons.insert(
            0,
            f"worst exposure {fmt_seconds(worst_exposure[0] or 0)} within {fmt_seconds(rpo)} over {len(checks)} check(s)",
        )
    out["verdict"] = verdict
    return out


def _host_loss(rpo: int, checks: list[dict[str, Any]], out: dict[str, Any]) -> str:
    """The RPO when the host is lost with its local repository: restoring from the upload
    destination that was least behind (``offsite_lag_seconds`` of each check record, from
    pgbackup/engine/shipper.py). No uploads recorded: nothing to judge here (COMPLIANT)."""
    measured: list[tuple[float, Any]] = []
    blind = 0
    for c in checks:
        lags = c.get("offsite_lag_seconds")
        if not lags:
            continue
        known = [float(v) for v in lags.values() if v is not None]
        at = c.get("checked_at") or c.get("recorded_at")
        if known:
            local = float(c.get("rpo_exposure_seconds") or 0)
            measured.append((max(local, min(known)), at))
        else:
            blind += 1
    if not measured and not blind:
        return COMPLIANT
    worst_off = max(measured, default=(None, None), key=lambda e: e[0] or 0)
    out["host_loss_worst_exposure_seconds"] = worst_off[0]
    out["host_loss_worst_exposure_at"] = worst_off[1]
    reasons: list[str] = out["reasons"]
    verdict = COMPLIANT
    if worst_off[0] is not None and worst_off[0] > rpo:
        verdict = BREACHED
        reasons.append(
            f"host loss (restoring from an upload destination): worst exposure "
            f"{fmt_seconds(worst_off[0])} at {worst_off[1]} against {fmt_seconds(rpo)} "
            "(archived WAL had not reached any destination; run `pgbackup wal-ship`)"
        )
    elif worst_off[0] is not None and worst_off[0] > NEAR * rpo:
        verdict = AT_RISK
        reasons.append(
            f"host loss: worst exposure {fmt_seconds(worst_off[0])} restoring from an upload "
            f"destination is close to {fmt_seconds(rpo)}"
        )
    if blind:
        verdict = worst([verdict, AT_RISK])  # unknown, not measured as lost
        reasons.append(f"host loss: no upload destination was reachable at {blind} check(s)")
    return verdict


def good_drills(drills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drills that passed and measured their restore time, oldest first."""
    return [d for d in drills if d.get("status") == "ok" and d.get("rto_seconds") is not None]


def project_restore_seconds(
    good: list[dict[str, Any]], database_bytes: float, increments: list[float]
) -> tuple[float | None, str | None]:
    """How long restoring the newest backup would take now, from the latest good drill
    (``good``: :func:`good_drills`).

    A full backup writes the data directory once: ``database_bytes`` at the drill's restore
    throughput. A chain of incrementals (PostgreSQL 17+) writes more: every member is
    staged (the full backup at today's size, each incremental at its own raw size), then
    pg_combinebackup writes the whole data directory again. The combine rate comes from
    the latest drill that combined a chain; until one has, it is taken to equal the restore
    rate (a second full write) and the note says so. The drill's fixed costs (fetching,
    recovery, checks) are added unchanged. Returns (seconds, note), or (None, None)
    without a good drill that measured its throughput.
    """
    measured = [d for d in good if d.get("restore_throughput_bytes_per_second")]
    if not measured:
        return None, None
    last = measured[-1]
    rate = float(last["restore_throughput_bytes_per_second"])
    t = last.get("timings") or {}
    fixed = float(t.get("fetch", 0)) + float(t.get("recovery", 0)) + float(t.get("checks", 0))
    seconds = (database_bytes + sum(increments)) / rate + fixed
    note = None
    if increments:
        combined = [d for d in good if d.get("combine_throughput_bytes_per_second")]
        combine_rate = (
            float(combined[-1]["combine_throughput_bytes_per_second"]) if combined else rate
        )
        seconds += database_bytes / combine_rate
        note = (
            f"the newest backup is a chain of {len(increments) + 1} (full + "
            f"{len(increments)} incremental): staged, then combined"
            + ("" if combined else "; combine speed not yet measured by a drill")
        )
    return round(seconds, 1), note


def full_backup_bytes(complete: list[Any]) -> float | None:
    """The database size the newest backup stands for when no check has measured it: its
    raw size, or for an incremental (which holds only what changed) its full backup's."""
    if not complete:
        return None
    newest = complete[-1]
    chain = list(newest.metadata.get("chain") or [])
    if chain:
        full = next((b for b in complete if b.backup_id == chain[0]), None)
        if full is not None:
            return float(full.metadata.get("raw_bytes") or 0)
    return float(newest.metadata.get("raw_bytes") or 0)


def chain_increments(complete: list[Any]) -> list[float]:
    """Raw bytes of each incremental a restore of the newest complete backup stages on top
    of its full backup (empty when the newest is a full backup)."""
    if not complete:
        return []
    newest = complete[-1]
    if not newest.metadata.get("parent"):
        return []
    raw = {b.backup_id: float(b.metadata.get("raw_bytes") or 0) for b in complete}
    chain = list(newest.metadata.get("chain") or [])[1:]  # the full backup is chain[0]
    return [raw.get(member, 0.0) for member in chain] + [raw[newest.backup_id]]


def wal_since_backup(stop_lsn: str | None, names: Iterable[str], seg_size: int) -> tuple[int, int]:
    """(bytes, segments) of the archived WAL after a backup's ``stop_lsn``: the segments
    (``names``: archived WAL file names; a segment position counted once, whatever its
    timeline) that end after it, and the LSN distance from it to the end of the newest:
    what a recovery to the latest point replays beyond the backup."""
    from pgbackup.formats.lsn import parse_lsn, parse_segment_name, segment_start_lsn

    if not stop_lsn:
        return 0, 0
    stop = parse_lsn(stop_lsn)
    starts = {
        segment_start_lsn(n[:24], seg_size)
        for n in names
        if parse_segment_name(n[:24], seg_size) is not None
    }
    after = [start for start in starts if start + seg_size > stop]
    if not after:
        return 0, 0
    return max(after) + seg_size - stop, len(after)


def measured_rates(drills: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest measured rates a projection uses, from the good drills (oldest first):
    the restore rate (the drill's raw bytes over its restore's wall time: phases overlap,
    so their seconds do not add up to it), pg_combinebackup's rate, and WAL replay's (the
    ``wal_replay`` phase: WAL bytes replayed over the time from the scratch server's start
    to the end of recovery). A rate no drill measured is None."""
    from pgbackup.engine.phases import rate

    good = good_drills(drills)
    restore = [d for d in good if d.get("restore_throughput_bytes_per_second")]
    combine = [d for d in good if d.get("combine_throughput_bytes_per_second")]
    replay = [d for d in good if rate((d.get("phases") or {}).get("wal_replay"))]
    out: dict[str, Any] = {
        "restore_bytes_per_second": None,
        "restore_measured_by": None,
        "combine_bytes_per_second": None,
        "replay_bytes_per_second": None,
        "replay_measured_by": None,
    }
    if restore:
        out["restore_bytes_per_second"] = float(restore[-1]["restore_throughput_bytes_per_second"])
        out["restore_measured_by"] = restore[-1].get("drill_id") or restore[-1].get("started_at")
    if combine:
        out["combine_bytes_per_second"] = float(combine[-1]["combine_throughput_bytes_per_second"])
    if replay:
        out["replay_bytes_per_second"] = rate(replay[-1]["phases"]["wal_replay"])
        out["replay_measured_by"] = replay[-1].get("drill_id") or replay[-1].get("started_at")
    return out


def rto_projection(
    rto: int | None,
    drills: list[dict[str, Any]],
    backup_bytes: float | None,
    increments: list[float],
    wal_bytes: float,
    wal_segments: int,
) -> dict[str, Any]:
    """How long restoring the newest backup and replaying the WAL archived since it would
    take now, at the latest measured rates (:func:`measured_rates`)::

        restore = (backup_bytes + sum(increments)) / restore rate
                  [+ backup_bytes / combine rate, for a chain]
        replay  = wal_bytes / replay rate
        projected = restore + replay

    ``backup_bytes``: the newest full backup's raw size (an incremental's full backup);
    ``increments``: each incremental of the chain on top of it. Without a measured rate
    the projection is None and ``note`` says "no measurement yet"; ``warning`` is set when
    the projection exceeds the objective."""
    rates = measured_rates(drills)
    out: dict[str, Any] = {
        "objective_seconds": rto,
        "backup_bytes": backup_bytes,
        "chain_increments_bytes": list(increments),
        "wal_bytes": wal_bytes,
        "wal_segments": wal_segments,
        **rates,
        "restore_seconds": None,
        "replay_seconds": None,
        "projected_seconds": None,
        "note": None,
        "warning": None,
    }
    restore_rate, replay_rate = rates["restore_bytes_per_second"], rates["replay_bytes_per_second"]
    missing = []
    if backup_bytes is None:
        missing.append("no complete backup")
    if restore_rate is None:
        missing.append("no drill measured the restore rate")
    if wal_bytes and replay_rate is None:
        missing.append("no drill measured the WAL replay rate")
    if restore_rate is not None and backup_bytes is not None:
        seconds = (backup_bytes + sum(increments)) / restore_rate
        if increments:
            seconds += backup_bytes / (rates["combine_bytes_per_second"] or restore_rate)
        out["restore_seconds"] = round(seconds, 1)
    if replay_rate is not None:
        out["replay_seconds"] = round(wal_bytes / replay_rate, 1)
    elif not wal_bytes:
        out["replay_seconds"] = 0.0
    if missing:
        out["note"] = "no measurement yet: " + "; ".join(missing) + " (run `pgbackup drill`)"
        return out
    out["projected_seconds"] = round(out["restore_seconds"] + out["replay_seconds"], 1)
    if rto is not None and out["projected_seconds"] > rto:
        out["warning"] = (
            f"WARNING: the projected restore time {fmt_seconds(out['projected_seconds'])} "
            f"exceeds the RTO objective {fmt_seconds(rto)}"
        )
    return out


def projection_lines(p: dict[str, Any]) -> list[str]:
    """The projection in words, its inputs said (every rendering's)."""
    from pgbackup.ui import human_bytes

    def per_second(r: float | None) -> str:
        return f"{human_bytes(r)}/s" if r else "-"

    if p["projected_seconds"] is None:
        return [f"RTO projection: {p['note']}"]
    chain = len(p["chain_increments_bytes"])
    restored = (p["backup_bytes"] or 0) + sum(p["chain_increments_bytes"])
    lines = [
        f"RTO projection (the newest backup restored now, the WAL since it replayed): "
        f"{fmt_seconds(p['projected_seconds'])} against an objective of "
        f"{fmt_seconds(p['objective_seconds'])}",
        f"restore {fmt_seconds(p['restore_seconds'])}: {human_bytes(restored)}"
        + (f" (a chain of {chain + 1}, combined)" if chain else "")
        + f" at {per_second(p['restore_bytes_per_second'])} (drill {p['restore_measured_by']})",
        f"WAL replay {fmt_seconds(p['replay_seconds'])}: {human_bytes(p['wal_bytes'])} in "
        f"{p['wal_segments']} segment(s) since the backup at "
        f"{per_second(p['replay_bytes_per_second'])} (drill {p['replay_measured_by'] or '-'})",
    ]
    if p["warning"]:
        lines.append(p["warning"])
    return lines


def rto_section(
    rto: int | None,
    drills: list[dict[str, Any]],
    database_bytes: float | None,
    increments: list[float] | None = None,
    projection_now: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Objective vs measured drill times, and a projection for the current database size
    and the newest backup's chain (``increments``: raw bytes of each incremental on top of
    its full backup; empty or None for a full backup). ``projection_now``
    (:func:`rto_projection`) is kept in the section as ``projection``; its warning makes
    it AT RISK."""
    good = good_drills(drills)
    failed = [d for d in drills if d.get("status") != "ok"]
    measured = [float(d["rto_seconds"]) for d in good]
    projection, chain_note = (
        project_restore_seconds(good, database_bytes, list(increments or []))
        if database_bytes
        else (None, None)
    )
    out: dict[str, Any] = {
        "objective_seconds": rto,
        "drills": len(drills),
        "drills_ok": len(good),
        "drills_failed": len(failed),
        "measured_seconds": measured,
        "worst_seconds": max(measured) if measured else None,
        "latest_seconds": measured[-1] if measured else None,
        "projected_seconds": projection,
        "projected_chain_length": len(increments or []) + 1,
        "database_bytes": database_bytes,
        "projection": projection_now,
        "reasons": [],
    }
    reasons: list[str] = out["reasons"]
    verdict = COMPLIANT
    if drills and drills[-1].get("status") != "ok":
        verdict = BREACHED
        reasons.append(
            f"the latest drill ({drills[-1].get('started_at')}) failed: {drills[-1].get('error')}"
        )
    elif failed:
        verdict = AT_RISK
        reasons.append(f"{len(failed)} drill(s) failed in the period")
    if rto is not None:
        over = [m for m in measured if m > rto]
        if over:
            verdict = BREACHED
            reasons.append(
                f"{len(over)} drill(s) took longer than the objective {fmt_seconds(rto)} (worst {fmt_seconds(max(over))})"
            )
        elif measured and max(measured) > NEAR * rto:
            verdict = worst([verdict, AT_RISK])
            reasons.append(
                f"worst drill {fmt_seconds(max(measured))} is close to the objective {fmt_seconds(rto)}"
            )
        if projection is not None and projection > rto:
            verdict = worst([verdict, AT_RISK])
            reasons.append(
                f"projected restore time for the current size {fmt_seconds(projection)} exceeds {fmt_seconds(rto)}"
                + (f" ({chain_note})" if chain_note else "")
            )
    if projection_now and projection_now.get("warning"):
        verdict = worst([verdict, AT_RISK])
        reasons.append(projection_now["warning"])
    if not good:
        verdict = worst([verdict, AT_RISK])
        reasons.append("no successful drill measured the RTO in the period (run `pgbackup drill`)")
    if verdict == COMPLIANT:
        reasons.append(
            f"worst drill {fmt_seconds(out['worst_seconds'])} within {fmt_seconds(rto)}"
            if rto is not None
            else "no RTO declared"
        )
    out["verdict"] = verdict
    return out


def scheduled_times(expression: str, start: datetime, end: datetime) -> list[datetime]:
    from croniter import croniter

    it = croniter(expression, start)
    out: list[datetime] = []
    while len(out) < 10000:
        t = it.get_next(datetime)
        if t > end:
            break
        out.append(t)
    return out


def frequency_section(
    expression: str | None,
    backup_times: list[datetime],
    period_start: datetime,
    now: datetime,
) -> dict[str, Any]:
    """Gaps between successful backups vs the schedule; scheduled runs with no backup."""
    times = sorted(t for t in backup_times if t >= period_start)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    missed: list[str] = []
    interval = None
    if expression:
        due = scheduled_times(expression, period_start, now - GRACE)
        bounds = [*due, now]
        for t, nxt in zip(due, bounds[1:], strict=False):
            if not any(t <= b < nxt for b in times):
                missed.append(t.isoformat())
        probe = scheduled_times(expression, now, now + timedelta(days=400))[:2]
        if len(probe) == 2:
            interval = (probe[1] - probe[0]).total_seconds()
    out: dict[str, Any] = {
        "schedule": expression,
        "successful_backups": len(times),
        "largest_gap_seconds": max(gaps) if gaps else None,
        "interval_seconds": interval,
        "missed_runs": missed,
        "reasons": [],
    }
    reasons: list[str] = out["reasons"]
    if not backup_times:
        out["verdict"] = BREACHED
        reasons.append("no successful backup at all")
        return out
    verdict = COMPLIANT
    if missed:
        verdict = AT_RISK
        reasons.append(f"{len(missed)} scheduled backup run(s) produced no backup")
    if verdict == COMPLIANT:
        reasons.append(f"{len(times)} successful backup(s), no scheduled run missed")
    out["verdict"] = verdict
    return out


def retention_section(
    days: int,
    earliest_restorable: datetime | None,
    first_seen: datetime | None,
    backups_held: int,
    now: datetime,
) -> dict[str, Any]:
    """The policy promises `days` of history; does the repository hold that far back?"""
    promised_from = now - timedelta(days=days)
    out: dict[str, Any] = {
        "promised_days": days,
        "promised_from": _text(promised_from),
        "oldest_restorable": _text(earliest_restorable) if earliest_restorable else None,
        "backups_held": backups_held,
        "reasons": [],
    }
    reasons: list[str] = out["reasons"]
    if earliest_restorable is None:
        out["verdict"] = BREACHED
        reasons.append("nothing is restorable")
        return out
    if earliest_restorable <= promised_from:
        out["verdict"] = COMPLIANT
        reasons.append(f"restorable back to {_text(earliest_restorable)} ({days}d promised)")
    elif first_seen is not None and first_seen > promised_from - GRACE:
        out["verdict"] = COMPLIANT
        reasons.append(
            f"the repository is younger than the {days}-day retention; everything since {_text(earliest_restorable)} is kept"
        )
    else:
        out["verdict"] = AT_RISK
        reasons.append(
            f"the oldest restorable point {_text(earliest_restorable)} is newer than the promised {_text(promised_from)}"
        )
    return out


def outcomes_section(
    verify_runs: list[dict[str, Any]], drills: list[dict[str, Any]]
) -> dict[str, Any]:
    ok = sum(1 for r in verify_runs if r.get("status") == "ok")
    bad = [r for r in verify_runs if r.get("status") != "ok"]
    out: dict[str, Any] = {
        "verify_ok": ok,
        "verify_failed": len(bad),
        "drills_ok": sum(1 for d in drills if d.get("status") == "ok"),
        "drills_failed": sum(1 for d in drills if d.get("status") != "ok"),
        "drills": [
            {
                "started_at": d.get("started_at"),
                "status": d.get("status"),
                "backup_id": d.get("backup_id"),
                "rto_seconds": d.get("rto_seconds"),
                "error": d.get("error"),
            }
            for d in drills
        ],
        "reasons": [],
    }
    verdict = COMPLIANT
    if verify_runs and verify_runs[-1].get("status") != "ok":
        verdict = AT_RISK
        out["reasons"].append("the latest verification found problems")
    elif bad:
        out["reasons"].append(f"{len(bad)} verification(s) failed earlier in the period")
    if not verify_runs:
        out["reasons"].append("no verification in the period")
    out["verdict"] = verdict
    return out


def archive_section(window: dict[str, Any], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Is the WAL archive whole inside the recoverable window?

    A hole cuts the window (its end is the last point before the hole, whatever was
    archived after it); a segment that is there but unreadable or damaged is found by
    ``check`` (which decodes every archived file) and counts while the newest check in
    the period still sees it.
    """
    reasons: list[str] = []
    if window.get("wal_gaps"):
        reasons.append(window.get("cut_reason") or f"WAL gap at {window['wal_gaps'][0]}")
    newest = checks[-1] if checks else None
    damaged = [p for p in (newest or {}).get("problems", []) if p.startswith("wal_chain:")]
    for problem in damaged:
        text = f"the newest check ({newest.get('checked_at') if newest else '-'}) found {problem}"
        if not any(g in problem for g in window.get("wal_gaps", [])) or not reasons:
            reasons.append(text)
    # Objects pgbackup wrote once, changed since (docs/security.md): the repository as it
    # stands is not what was written; a restore --as-of the time check names is.
    for problem in (newest or {}).get("problems", []):
        if problem.startswith("tampering:"):
            when = newest.get("checked_at") if newest else "-"
            reasons.append(f"the newest check ({when}) found {problem}")
    if reasons:
        return {"verdict": BREACHED, "reasons": reasons, "wal_gaps": window.get("wal_gaps", [])}
    unlocked = [p for p in (newest or {}).get("problems", []) if p.startswith("object_lock:")]
    if unlocked:  # what was written is there, but less protected than promised
        when = newest.get("checked_at") if newest else "-"
        return {
            "verdict": AT_RISK,
            "reasons": [f"the newest check ({when}) found {unlocked[0]}"],
            "wal_gaps": [],
        }
    unchecked = [p for p in (newest or {}).get("problems", []) if p.startswith("wal_content:")]
    if unchecked:  # a check that could not run is not a pass (issue #29)
        when = newest.get("checked_at") if newest else "-"
        return {
            "verdict": AT_RISK,
            "reasons": [f"the newest check ({when}) could not read all of it: {unchecked[0]}"],
            "wal_gaps": [],
        }
    return {
        "verdict": COMPLIANT,
        "reasons": ["the archive is continuous across the recoverable window"],
        "wal_gaps": [],
    }


def overall(sections: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    verdict = worst(s["verdict"] for s in sections.values())
    reasons = [
        f"{name.upper()}: {r}"
        for name, s in sections.items()
        if s["verdict"] != COMPLIANT
        for r in s["reasons"]
    ]
    return verdict, reasons


# --------------------------------------------------------------------------- words

AREA_TITLES = {  # one title per SLA area, for every rendering
    "rpo": "RPO (recovery point)",
    "rto": "RTO (recovery time)",
    "backups": "Backup frequency",
    "retention": "Retention",
    "verification": "Verification and drills",
    "archive": "WAL archive continuity",
}


def projected_now(p: dict[str, Any] | None) -> str:
    """The RTO projection's part of the RTO section's "measured" line."""
    if not p:
        return ""
    if p["projected_seconds"] is None:
        return "; restore with the WAL since the backup: no measurement yet"
    return f"; restore with the WAL since the backup {fmt_seconds(p['projected_seconds'])}"


def measure(name: str, s: dict[str, Any]) -> str:
    """What was measured in section ``name``, in one line (every rendering's "measured")."""
    if name == "rpo":
        return (
            f"objective {fmt_seconds(s['objective_seconds'])}; worst exposure {fmt_seconds(s['worst_exposure_seconds'])} "
            f"over {s['checks']} check(s); largest archive gap {fmt_seconds(s['largest_archive_gap_seconds'])}"
        )
    if name == "rto":
        return (
            f"objective {fmt_seconds(s['objective_seconds'])}; drills {s['drills_ok']} ok / {s['drills_failed']} failed; "
            f"worst {fmt_seconds(s['worst_seconds'])}, latest {fmt_seconds(s['latest_seconds'])}; "
            f"projected for the current size {fmt_seconds(s['projected_seconds'])}"
            + projected_now(s.get("projection"))
        )
    if name == "backups":
        return (
            f"schedule {s['schedule'] or '-'}; {s['successful_backups']} successful; largest gap "
            f"{fmt_seconds(s['largest_gap_seconds'])}; missed runs: {len(s['missed_runs'])}"
        )
    if name == "archive":
        gaps = s.get("wal_gaps") or []
        return f"{len(gaps)} hole(s) in the window" + (f", first {gaps[0]}" if gaps else "")
    if name == "retention":
        return f"{s['promised_days']} days promised; oldest restorable {s['oldest_restorable'] or '-'}; {s['backups_held']} backup(s) held"
    return f"verify {s['verify_ok']} ok / {s['verify_failed']} failed; drills {s['drills_ok']} ok / {s['drills_failed']} failed"
