"""Steps for pitr.feature (and helpers reused by timelines.feature)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from harness import Harness, do_restore, restore_args, switch_and_wait_archived
from pytest_bdd import parsers, scenarios, then, when

scenarios("pitr.feature")


@when("I restore to the latest archived point")
def restore_latest(h: Harness, ctx: dict[str, Any]) -> None:
    do_restore(h, ctx, restore_args("latest", None))


@then("the restore reports the point it reached")
def reports_point(ctx: dict[str, Any]) -> None:
    rec = ctx["restore_result"]["recovery"]
    assert rec["state"] == "promoted", rec
    assert rec["last_replay_lsn"]


@when("I restore to a time one hour from now")
def restore_future(h: Harness, ctx: dict[str, Any]) -> None:
    when_ = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ctx["future_dir"] = h.root / "future"
    h.run("restore", "--to", str(ctx["future_dir"]), "--target-time", when_, expect_ok=False)


@then("the restore directory was not created")
def not_created(ctx: dict[str, Any]) -> None:
    assert not ctx["future_dir"].exists()


@when(parsers.parse('I restore with --target-lsn "{value}"'))
def restore_bad_lsn(h: Harness, value: str) -> None:
    h.run("restore", "--to", str(h.root / "bad"), "--target-lsn", value, expect_ok=False)


@then("list shows a recoverable window reaching past batch 5")
def window(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.formats.lsn import parse_lsn

    w = h.json("list")["platform"]["window"]
    assert parse_lsn(w["latest_lsn"]) >= parse_lsn(ctx["points"][-1]["lsn"])
    # The window ends at the last archived commit: batch 5's, which came after the point
    # recorded once batch 4 had committed.
    latest = datetime.fromisoformat(w["latest_time"].replace("Z", "+00:00"))
    assert latest > datetime.fromisoformat(ctx["points"][-2]["time"])
    assert w["earliest_lsn"] == h.backups()[0]["stop_lsn"]


@when("I delete an archived WAL segment after the backup")
def delete_segment(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.formats.lsn import parse_lsn, segment_name

    # Two more archived segments, so the one deleted is in the middle of the chain.
    cluster = h.sandbox()
    for _ in range(2):
        cluster.sql(
            "INSERT INTO tenants SELECT 800000 + g, 'x' FROM generate_series(1, 10) g ON CONFLICT DO NOTHING",
            dbname="platform",
        )
        switch_and_wait_archived(cluster)
    backup = h.backups()[-1]
    stop = parse_lsn(backup["stop_lsn"])
    name = segment_name(1, stop + 16 * 1024 * 1024)  # the segment after the backup's last
    path = h.repo / "platform" / "wal" / f"{name}.zst"
    assert path.exists(), sorted(p.name for p in path.parent.iterdir())
    path.unlink()
    ctx["deleted"] = name


@then("verify --wal fails naming that segment")
def wal_gap(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("verify", "--wal", expect_ok=False)
    assert ctx["deleted"] in proc.stdout
    w = h.json("list")["platform"]["window"]
    from pgbackup.formats.lsn import parse_lsn

    assert parse_lsn(w["latest_lsn"]) <= parse_lsn(ctx["points"][-1]["lsn"])
