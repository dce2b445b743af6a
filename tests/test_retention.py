"""Retention decisions: grandfather-father-son over backup metadata."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgbackup.policy.retention import (
    BackupRecord,
    Decision,
    RetentionRule,
    expire_after_days,
    oldest_kept,
    plan_retention,
    wal_cleanup_candidates,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # a Monday, ISO week 2026-W49


def daily(start: datetime, end: datetime, hour: int = 1) -> list[BackupRecord]:
    out = []
    day = start.replace(hour=hour)
    lsn = 0x1000000
    while day.date() <= end.date():
        out.append(BackupRecord(day.strftime("%Y%m%dT%H%M%SZ"), day, True, start_lsn=lsn))
        day += timedelta(days=1)
        lsn += 0x5000000
    return out


def kept(decisions: list[Decision]) -> set[str]:
    return {d.backup_id for d in decisions if d.keep}


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.backup_id: d for d in decisions}


def test_gfs_three_months_of_daily_backups() -> None:
    backups = daily(datetime(2026, 9, 1, tzinfo=UTC), NOW)
    assert len(backups) == 91
    decisions = plan_retention(backups, RetentionRule(days=7, weekly=4, monthly=3), NOW)

    assert [d.backup_id for d in decisions] == sorted((b.backup_id for b in backups), reverse=True)
    assert kept(decisions) == {
        # within 7 days: stop_time >= 2026-11-23T12:00
        "20261124T010000Z",
        "20261125T010000Z",
        "20261126T010000Z",
        "20261127T010000Z",
        "20261128T010000Z",
        "20261129T010000Z",  # also newest of W48
        "20261130T010000Z",  # newest: also W49 and 2026-11
        "20261122T010000Z",  # newest of W47
        "20261115T010000Z",  # newest of W46
        "20261031T010000Z",  # newest of October
        "20260930T010000Z",  # newest of September
    }
    d = by_id(decisions)
    assert d["20261130T010000Z"].reasons == (
        "newest complete backup",
        "within 7 days",
        "weekly 2026-W49",
        "monthly 2026-11",
    )
    assert d["20261129T010000Z"].reasons == ("within 7 days", "weekly 2026-W48")
    assert d["20261122T010000Z"].reasons == ("weekly 2026-W47",)
    assert d["20261115T010000Z"].reasons == ("weekly 2026-W46",)
    assert d["20261031T010000Z"].reasons == ("monthly 2026-10",)
    assert d["20260930T010000Z"].reasons == ("monthly 2026-09",)
    assert not d["20261123T010000Z"].keep
    assert not d["20261108T010000Z"].keep  # W45 is the fifth week back
    assert not d["20260901T010000Z"].keep
    assert all(dec.reasons for dec in decisions)


def test_month_buckets_cross_year_boundary() -> None:
    now = datetime(2027, 1, 10, tzinfo=UTC)
    backups = daily(datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 9, tzinfo=UTC))
    decisions = plan_retention(backups, RetentionRule(days=0, weekly=0, monthly=3), now)
    assert kept(decisions) == {"20270109T010000Z", "20261231T010000Z", "20261130T010000Z"}


def test_weekly_uses_iso_year() -> None:
    # 2027-01-01 is a Friday in ISO week 2026-W53
    now = datetime(2027, 1, 2, 12, tzinfo=UTC)
    backups = daily(datetime(2026, 12, 20, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    d = by_id(plan_retention(backups, RetentionRule(days=0, weekly=2, monthly=0), now))
    assert "weekly 2026-W53" in d["20270101T010000Z"].reasons
    assert d["20261227T010000Z"].reasons == ("weekly 2026-W52",)
    assert not d["20261226T010000Z"].keep


@pytest.mark.parametrize("min_backups", [0, 1])
def test_newest_complete_is_never_expired(min_backups: int) -> None:
    old = datetime(2020, 1, 1, tzinfo=UTC)
    backups = [
        BackupRecord("b1", old, True),
        BackupRecord("b3", old + timedelta(hours=1), False),
        BackupRecord("b2", old + timedelta(days=1), True),
    ]
    decisions = plan_retention(
        backups, RetentionRule(days=0, weekly=0, monthly=0, min_backups=min_backups), NOW
    )
    assert by_id(decisions)["b2"] == Decision("b2", True, ("newest complete backup",))
    assert not by_id(decisions)["b1"].keep
    assert by_id(decisions)["b3"] == Decision("b3", False, ("incomplete backup",))
    assert [d.backup_id for d in decisions] == ["b2", "b3", "b1"]


def test_min_backups_keeps_the_newest_n() -> None:
    backups = daily(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 10, tzinfo=UTC))
    decisions = plan_retention(
        backups, RetentionRule(days=1, weekly=0, monthly=0, min_backups=3), NOW
    )
    assert kept(decisions) == {"20260110T010000Z", "20260109T010000Z", "20260108T010000Z"}
    assert by_id(decisions)["20260109T010000Z"].reasons == ("among the 3 newest complete backups",)


def test_incomplete_backups() -> None:
    backups = [
        BackupRecord("old-failed", NOW - timedelta(days=3), False),
        BackupRecord("good", NOW - timedelta(days=2), True),
        BackupRecord("recent-failed", NOW - timedelta(days=1), False),
        BackupRecord("running", NOW - timedelta(minutes=5), False),
    ]
    d = by_id(plan_retention(backups, RetentionRule(days=30, weekly=4, monthly=12), NOW))
    assert d["old-failed"] == Decision("old-failed", False, ("incomplete backup",))
    may_run = ("newer than the newest complete backup (may be in progress)",)
    assert d["recent-failed"] == Decision("recent-failed", True, may_run)
    assert d["running"] == Decision("running", True, may_run)
    assert d["good"].keep


def test_only_incomplete_backups_are_kept() -> None:
    decisions = plan_retention([BackupRecord("x", NOW, False)], RetentionRule(0, 0, 0), NOW)
    assert decisions[0].keep
    assert "may be in progress" in decisions[0].reasons[0]
    assert plan_retention([], RetentionRule(7, 4, 3), NOW) == []


def test_future_stop_time_counts_as_within_days() -> None:
    backups = [
        BackupRecord("future", NOW + timedelta(hours=3), True),
        BackupRecord("present", NOW - timedelta(hours=1), True),
        BackupRecord("past", NOW - timedelta(days=1), True),
    ]
    d = by_id(plan_retention(backups, RetentionRule(days=0, weekly=0, monthly=0), NOW))
    assert d["future"].keep and "within 0 days" in d["future"].reasons
    assert not d["present"].keep
    assert not d["past"].keep


def test_timezones_are_normalised_and_naive_refused() -> None:
    from datetime import timezone

    plus2 = timezone(timedelta(hours=2))
    # 2026-12-01 01:00+02:00 is 2026-11-30 23:00 UTC: November, week 49
    b = BackupRecord("tz", datetime(2026, 12, 1, 1, 0, tzinfo=plus2), True)
    old = BackupRecord("old", datetime(2026, 11, 29, tzinfo=UTC), True)
    d = by_id(plan_retention([b, old], RetentionRule(days=0, weekly=0, monthly=1), NOW))
    assert "monthly 2026-11" in d["tz"].reasons
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_retention([b], RetentionRule(1, 1, 1), datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        RetentionRule(days=-1, weekly=0, monthly=0)


def test_expire_after_days() -> None:
    items = [
        ("a", NOW - timedelta(days=40)),
        ("b", NOW - timedelta(days=31)),
        ("c", NOW - timedelta(days=29)),
    ]
    assert expire_after_days(items, 30, NOW) == ["a", "b"]
    assert expire_after_days(items, 1, NOW) == ["a", "b"]  # never the newest
    assert expire_after_days(items, 1, NOW, keep_newest=False) == ["a", "b", "c"]
    assert expire_after_days([], 1, NOW) == []
    assert expire_after_days(items[:1], 0, NOW) == []


def test_oldest_kept_and_wal_cleanup() -> None:
    backups = daily(datetime(2026, 11, 20, tzinfo=UTC), NOW)
    decisions = plan_retention(backups, RetentionRule(days=3, weekly=0, monthly=0), NOW)
    first = oldest_kept(backups, decisions)
    assert first is not None and first.backup_id == "20261128T010000Z"
    names = [
        "000000010000000000000001",
        "000000010000000000000002.00000028.backup",
        "00000002.history",
        "000000010000000000000003.partial",
        "000000020000000000000003",
        "000000020000000000000004",
        "000000020000000100000000",
    ]
    assert wal_cleanup_candidates(names, "000000020000000000000004") == [
        "000000010000000000000001",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000003.partial",
        "000000020000000000000003",
    ]
    with pytest.raises(ValueError):
        wal_cleanup_candidates(names, "00000002.history")


# --- across generations (a new cluster after pg_upgrade: engine/generations) -------------


def _gen_backup(backup_id: str, stop: datetime) -> BackupRecord:
    return BackupRecord(backup_id=backup_id, stop_time=stop, complete=True)


def test_the_old_generations_newest_backup_is_kept_while_the_policy_says() -> None:
    from pgbackup.policy.retention import keep_generation_ends

    now = datetime(2026, 12, 20, 12, tzinfo=UTC)
    rule = RetentionRule(days=1, weekly=4, monthly=0)
    old = [
        _gen_backup("g1-a", now - timedelta(days=9)),
        _gen_backup("g1-b", now - timedelta(days=8)),
    ]
    new = [
        _gen_backup("g2-a", now - timedelta(days=7)),
        _gen_backup("g2-b", now - timedelta(hours=1)),
    ]
    records = old + new
    generation = {"g1-a": 1, "g1-b": 1, "g2-a": 2, "g2-b": 2}
    # g1-b and g2-a share an ISO week: alone, GFS keeps only g2-a for that week.
    plain = {d.backup_id: d.keep for d in plan_retention(records, rule, now)}
    assert plain["g1-b"] is False
    decisions = keep_generation_ends(
        plan_retention(records, rule, now), records, generation, rule, now
    )
    kept = {d.backup_id: d for d in decisions}
    assert kept["g1-b"].keep
    assert "newest of generation 1, within the policy's periods" in kept["g1-b"].reasons
    assert not kept["g1-a"].keep  # only the generation's newest
    # Past every period of the policy, it goes like any other.
    later = now + timedelta(weeks=5)
    decisions = keep_generation_ends(
        plan_retention(records, rule, later), records, generation, rule, later
    )
    assert not {d.backup_id: d for d in decisions}["g1-b"].keep


def test_one_generation_is_plain_retention() -> None:
    from pgbackup.policy.retention import keep_generation_ends

    now = datetime(2026, 12, 20, 12, tzinfo=UTC)
    rule = RetentionRule(days=1, weekly=0, monthly=0)
    records = [_gen_backup("a", now - timedelta(days=9)), _gen_backup("b", now)]
    plain = plan_retention(records, rule, now)
    assert keep_generation_ends(plain, records, {"a": 1, "b": 1}, rule, now) == plain
