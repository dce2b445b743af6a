"""Steps for wal_retention.feature."""

from __future__ import annotations

from typing import Any

from harness import Harness, commit_batches, do_restore, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then

from pgbackup.formats.lsn import parse_lsn, parse_segment_name, segment_name

scenarios("wal_retention.feature")


def segments(h: Harness) -> list[str]:
    names = [p.name.split(".")[0] for p in (h.repo / "platform" / "wal").iterdir()]
    return sorted(n for n in names if len(n) == 24 and parse_segment_name(n))


@given(parsers.parse("{n:d} more batches were committed and archived"))
def more_batches(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    first = len(ctx["points"]) + 1
    ctx["points"] += commit_batches(cluster, first, first + n - 1)
    switch_and_wait_archived(cluster)


@given("the retention keeps only the newest backup")
def keep_newest(h: Harness, ctx: dict[str, Any]) -> None:
    h.policy["retention"] = {"days": 0, "weekly": 0, "monthly": 0, "min_backups": 1}
    h.write_policy()
    ctx["before_segments"] = segments(h)
    ctx["kept"] = h.backups()[-1]


@then("the older backup is gone")
def older_gone(h: Harness, ctx: dict[str, Any]) -> None:
    assert [b["backup_id"] for b in h.backups()] == [ctx["kept"]["backup_id"]]


@then("no archived segment older than the kept backup's start remains")
def old_wal_gone(h: Harness, ctx: dict[str, Any]) -> None:
    first_needed = segment_name(1, parse_lsn(ctx["kept"]["start_lsn"]))
    assert any(s < first_needed for s in ctx["before_segments"])  # there was something to expire
    assert all(s >= first_needed for s in segments(h)), segments(h)


@then("every segment from the kept backup's start onwards remains")
def needed_wal_kept(h: Harness, ctx: dict[str, Any]) -> None:
    first_needed = segment_name(1, parse_lsn(ctx["kept"]["start_lsn"]))
    assert [s for s in ctx["before_segments"] if s >= first_needed] == segments(h)


@then(parsers.parse("a restore of the latest point still holds all {n:d} batches"))
def restore_all(h: Harness, ctx: dict[str, Any], n: int) -> None:
    from harness import batches_in

    do_restore(h, ctx, ["--target", "latest"])
    assert batches_in(h, ctx) == list(range(1, n + 1))
