"""Object lock dates and the version an --as-of read sees (policy/immutability.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgbackup.policy.immutability import (
    LockRule,
    Version,
    lock_rule,
    parse_as_of,
    promised_until,
    retain_until,
    rewritten_in_place,
    version_as_of,
)

T0 = datetime(2026, 11, 18, 2, 0, tzinfo=UTC)  # a Wednesday
RULE = LockRule(mode="governance", margin=3600, days=7, weekly=4, monthly=6)


def test_a_backup_object_is_locked_for_days_plus_margin() -> None:
    until = retain_until("db/base/20261118T020000Z/base.tar.zst", T0, RULE)
    assert until == T0 + timedelta(days=7, hours=1)


def test_a_later_generations_backup_is_a_backup_and_its_wal_wal() -> None:
    """After `pgbackup upgrade` (docs/upgrades.md) generation n keeps its objects under
    <target>/gen/<n>/: the same horizons as generation 1's."""
    until = retain_until("db/gen/2/base/20261118T020000Z/base.tar.zst", T0, RULE)
    assert until == T0 + timedelta(days=7, hours=1)
    until = retain_until("db/gen/2/wal/000000010000000000000003.zst", T0, RULE)
    assert until == T0 + timedelta(days=186, hours=1)


def test_wal_is_locked_for_the_longest_horizon_a_backup_may_need() -> None:
    # max(7 days, 4 weeks = 28 days, 6 months x 31 = 186 days) + 1 h
    until = retain_until("db/wal/000000010000000000000003.zst", T0, RULE)
    assert until == T0 + timedelta(days=186, hours=1)
    weekly_only = RULE._replace(monthly=0)
    assert retain_until("db/wal/x.zst", T0, weekly_only) == T0 + timedelta(days=28, hours=1)
    days_only = RULE._replace(weekly=0, monthly=0)
    assert retain_until("db/wal/x.zst", T0, days_only) == T0 + timedelta(days=7, hours=1)


def test_objects_written_again_in_place_are_never_locked() -> None:
    assert retain_until("db/wal/000000010000000000000003.partial.zst", T0, RULE) is None
    assert retain_until("db/wal-ship.json", T0, RULE) is None
    assert rewritten_in_place("db/wal/000000010000000000000003.partial")
    assert not rewritten_in_place("db/base/X/metadata.json")
    assert not rewritten_in_place("db/wal/000000010000000000000003.zst")


def test_promised_until_by_class() -> None:
    plain = promised_until(T0, ["within 7 days"], RULE)
    assert plain == T0 + timedelta(days=7, hours=1)
    # Weekly: week of Mon 2026-11-16; kept while among the last 4 weeks: until Mon 12-14.
    weekly = promised_until(T0, ["weekly 2026-W47"], RULE)
    assert weekly == datetime(2026, 12, 14, 1, 0, tzinfo=UTC)
    # Monthly: November 2026, kept 6 months: until 2027-05-01.
    monthly = promised_until(T0, ["weekly 2026-W47", "monthly 2026-11"], RULE)
    assert monthly == datetime(2027, 5, 1, 1, 0, tzinfo=UTC)
    assert monthly > weekly > plain
    # A class the rule does not keep promises nothing more.
    assert promised_until(T0, ["monthly 2026-11"], RULE._replace(monthly=0)) == plain


def test_promised_until_month_arithmetic_crosses_the_year() -> None:
    dec = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert promised_until(dec, ["monthly 2026-12"], RULE._replace(margin=0)) == datetime(
        2027, 6, 1, tzinfo=UTC
    )


def _v(vid: str, minute: int, deleted: bool = False) -> Version:
    return Version("k", vid, T0 + timedelta(minutes=minute), deleted, 1)


def test_as_of_takes_the_newest_version_at_or_before_the_time() -> None:
    versions = [_v("v3", 30), _v("v2", 20), _v("v1", 10)]  # newest first, as S3 lists
    assert version_as_of(versions, T0 + timedelta(minutes=25)).version_id == "v2"  # type: ignore[union-attr]
    assert version_as_of(versions, T0 + timedelta(minutes=20)).version_id == "v2"  # type: ignore[union-attr]
    assert version_as_of(versions, T0 + timedelta(minutes=99)).version_id == "v3"  # type: ignore[union-attr]
    assert version_as_of(versions, T0 + timedelta(minutes=5)) is None  # not written yet


def test_as_of_ignores_later_delete_markers_and_honours_earlier_ones() -> None:
    attacked = [_v("dm", 40, deleted=True), _v("evil", 35), _v("v1", 10)]
    assert version_as_of(attacked, T0 + timedelta(minutes=30)).version_id == "v1"  # type: ignore[union-attr]
    assert version_as_of(attacked, T0 + timedelta(minutes=50)) is None  # deleted by then
    assert version_as_of(attacked, T0 + timedelta(minutes=36)).version_id == "evil"  # type: ignore[union-attr]


def test_parse_as_of() -> None:
    assert parse_as_of("2026-11-18 02:00:00+00") == T0
    assert parse_as_of("2026-11-18T02:00:00Z") == T0
    assert parse_as_of("2026-11-18T03:00:00+01:00") == T0
    assert parse_as_of("2026-11-18 02:00") == T0  # naive: UTC
    with pytest.raises(ValueError):
        parse_as_of("yesterday")


def test_lock_rule_from_the_built_spec() -> None:
    assert lock_rule(None) is None
    rule = lock_rule({"mode": "compliance", "margin": 60, "days": 3, "weekly": 1, "monthly": 0})
    assert rule == LockRule("compliance", 60, 3, 1, 0)
    assert rule.s3_mode == "COMPLIANCE"


# --- the policy's object_lock -------------------------------------------------------------

S3_POLICY = """\
version: 1
repository:
  kind: s3
  bucket: backups
  object_lock: {LOCK}
retention:
  days: 3
  weekly: 2
  monthly: 1
targets:
  main:
    connection:
      host: db.internal
"""


def test_object_lock_is_built_with_its_retention(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pgbackup.policy import load_policy

    path = tmp_path / "backup.yaml"
    path.write_text(S3_POLICY.replace("{LOCK}", "{mode: compliance, margin: 2h}"))
    policy = load_policy(path)
    assert policy.repository["object_lock"] == {
        "mode": "compliance",
        "margin": 7200,
        "days": 3,
        "weekly": 2,
        "monthly": 1,
    }
    path.write_text(S3_POLICY.replace("{LOCK}", "{mode: governance}"))
    assert load_policy(path).repository["object_lock"]["margin"] == 86400


def test_object_lock_bad_input_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pgbackup.policy import validate_file

    path = tmp_path / "backup.yaml"
    path.write_text(S3_POLICY.replace("{LOCK}", "{mode: forever}"))
    problems = validate_file(path)
    assert [p for p, _ in problems] == ["repository.object_lock.mode"]
    assert "governance" in problems[0][1] and "compliance" in problems[0][1]
    gcs = S3_POLICY.replace("kind: s3", "kind: gcs").replace("{LOCK}", "{mode: governance}")
    path.write_text(gcs)
    problems = validate_file(path)
    assert [p for p, _ in problems] == ["repository.object_lock"]
    assert "not used with kind gcs" in problems[0][1]
