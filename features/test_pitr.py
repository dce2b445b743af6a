"""Steps for pitr.feature (and helpers reused by timelines.feature)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from harness import Harness
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import Cluster, free_port

scenarios("pitr.feature")


def switch_and_wait_archived(cluster: Cluster, timeout: float = 60) -> str:
    closed = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= closed:
            return str(closed)
        time.sleep(0.2)
    raise AssertionError(f"{closed} not archived within {timeout}s")


def commit_batches(
    cluster: Cluster, first: int, last: int, label: str = ""
) -> list[dict[str, Any]]:
    """Commit one transaction per batch; after each, record time, LSN, xid and a restore point."""
    cluster.sql(
        "CREATE TABLE IF NOT EXISTS pitr_batches (batch int, label text, n int)", dbname="platform"
    )
    points = []
    for batch in range(first, last + 1):
        with cluster.connect("platform") as conn:
            conn.autocommit = False
            with conn.transaction():
                conn.execute(
                    "INSERT INTO pitr_batches SELECT %s, %s, g FROM generate_series(1, 100) g",
                    (batch, label),
                )
                xid = conn.execute("SELECT txid_current()").fetchone()[0]
        time.sleep(0.05)
        point_name = f"after-batch-{label}{batch}"
        cluster.sql(f"SELECT pg_create_restore_point('{point_name}')")
        row = cluster.sql("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text")[0]
        points.append(
            {
                "batch": batch,
                "time": row[0].astimezone(UTC).isoformat(),
                "lsn": row[1],
                "xid": xid,
                "name": point_name,
            }
        )
        time.sleep(0.05)
    return points


@given(
    parsers.parse("{count:d} batches were committed and archived, each with its recovery points")
)
def batches(h: Harness, ctx: dict[str, Any], count: int) -> None:
    cluster = h.sandbox()
    ctx["points"] = commit_batches(cluster, 1, count)
    switch_and_wait_archived(cluster)


def restore_args(kind: str, point: dict[str, Any] | None) -> list[str]:
    if kind == "immediate":
        return ["--target", "immediate"]
    if kind == "latest":
        return ["--target", "latest"]
    assert point is not None
    return [f"--target-{kind}", str(point[kind])]


def do_restore(
    h: Harness, ctx: dict[str, Any], args: list[str], expect_ok: bool | None = True
) -> None:
    port = free_port()
    directory = h.root / f"pitr-{len(ctx.get('restores', []))}"
    ctx.setdefault("restores", []).append(directory)
    h.track(directory, port)
    ctx["restored"] = (directory, port)
    h.run(
        "restore",
        "--to",
        str(directory),
        "--start",
        "--port",
        str(port),
        "--no-archive",
        "--json",
        *args,
        expect_ok=expect_ok,
    )
    if h.last is not None and h.last.returncode == 0:
        ctx["restore_result"] = json.loads(h.last.stdout)


@when(parsers.parse("I restore to the {kind} target recorded after batch {n:d}"))
def restore_to(h: Harness, ctx: dict[str, Any], kind: str, n: int) -> None:
    point = ctx["points"][n - 1] if n else None
    do_restore(h, ctx, restore_args(kind, point))


@when("I restore to the latest archived point")
def restore_latest(h: Harness, ctx: dict[str, Any]) -> None:
    do_restore(h, ctx, restore_args("latest", None))


def batches_in(h: Harness, ctx: dict[str, Any]) -> list[int]:
    directory, port = ctx["restored"]
    cluster = h.track(directory, port)
    exists = cluster.sql("SELECT to_regclass('pitr_batches') IS NOT NULL", dbname="platform")[0][0]
    if not exists:
        return []
    rows = cluster.sql(
        "SELECT batch, count(*) FROM pitr_batches GROUP BY batch ORDER BY batch", dbname="platform"
    )
    assert all(n == 100 for _b, n in rows), rows  # whole transactions only
    return [b for b, _n in rows]


@then(parsers.parse("the restored cluster holds batches {present} and no others"))
def holds_batches(h: Harness, ctx: dict[str, Any], present: str) -> None:
    expected = [] if present == "none" else [int(x) for x in present.split(",")]
    assert batches_in(h, ctx) == expected


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
    from pgbackup.lsn import parse_lsn

    w = h.json("list")["platform"]["window"]
    assert parse_lsn(w["latest_lsn"]) >= parse_lsn(ctx["points"][-1]["lsn"])
    assert w["latest_time"] >= ctx["points"][-1]["time"][:19]
    assert w["earliest_lsn"] == h.backups()[0]["stop_lsn"]


@then("verify --wal reports continuous WAL")
def wal_continuous(h: Harness) -> None:
    out = h.json("verify", "--wal")
    assert out["platform"]["wal"]["gaps"] == []
    assert out["platform"]["wal"]["segments"] >= 2


@when("I delete an archived WAL segment after the backup")
def delete_segment(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.lsn import parse_lsn, segment_name

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
    from pgbackup.lsn import parse_lsn

    assert parse_lsn(w["latest_lsn"]) <= parse_lsn(ctx["points"][-1]["lsn"])
