"""Steps for incremental.feature (PostgreSQL 17+: runs on 18, skips saying why on 15/16)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from harness import (
    Harness,
    commit_batches,
    do_restore,
    restore_and_start,
    switch_and_wait_archived,
)
from pytest_bdd import given, parsers, scenarios, then, when
from tablespace_helpers import add_rows, assert_linked_to, make_tablespace, restored, table_sum

from pgbackup.postgres.cluster import Cluster

scenarios("incremental.feature")


def incremental(h: Harness, ctx: dict[str, Any]) -> None:
    h.run("backup", "--type", "incremental")
    ctx["backup_ids"].append(h.backups()[-1]["backup_id"])


@when("I take an incremental backup of a server without summarize_wal")
def incremental_refused(h: Harness) -> None:
    h.run("backup", "--type", "incremental", expect_ok=False)


@then("the repository holds only the full backup")
def only_the_full(h: Harness, ctx: dict[str, Any]) -> None:
    assert sorted(p.name for p in (h.repo / "platform" / "base").iterdir()) == ctx["backup_ids"]
    assert [b["backup_type"] for b in h.backups()] == ["full"]


def source_for_incrementals(h: Harness, pg_major: int) -> Cluster:
    """The sandbox with summarize_wal on; a skip below PostgreSQL 17."""
    if pg_major < 17:
        pytest.skip(f"incremental backups need PostgreSQL 17 or later (this run: {pg_major})")
    h.start_source()
    cluster = h.sandbox()
    cluster.sql("ALTER SYSTEM SET summarize_wal = on")
    cluster.sql("SELECT pg_reload_conf()")
    return cluster


def build_chain(
    h: Harness, ctx: dict[str, Any], cluster: Cluster, change: Callable[[int], None] | None = None
) -> None:
    """A full backup, batch 1, an incremental, batch 2, an incremental, batch 3; ``change``
    (given the batch number) runs beside each batch's commit."""
    h.run("backup")
    ctx["backup_ids"] = [h.backups()[-1]["backup_id"]]
    points = []
    for batch in (1, 2, 3):
        points += commit_batches(cluster, batch, batch)
        if change is not None:
            change(batch)
        switch_and_wait_archived(cluster)
        if batch < 3:
            incremental(h, ctx)
    ctx["points"] = points


@given("a chain of a full backup and two incremental backups on PostgreSQL 17 or later")
def chain(h: Harness, ctx: dict[str, Any], pg_major: int) -> None:
    build_chain(h, ctx, source_for_incrementals(h, pg_major))


@given(
    parsers.parse(
        "a chain of a full backup and two incremental backups of a cluster with a tablespace "
        '"{name}" on PostgreSQL 17 or later'
    )
)
def chain_with_tablespace(h: Harness, ctx: dict[str, Any], pg_major: int, name: str) -> None:
    """Each batch adds 500 rows to the table in the tablespace and rewrites a tenth of the
    older ones, so every incremental carries changed blocks of the tablespace's files."""
    cluster = source_for_incrementals(h, pg_major)
    ctx["locations"] = {name: make_tablespace(h, cluster, name, 1000)}
    ctx["ts_oid"] = cluster.sql(f"SELECT oid FROM pg_tablespace WHERE spcname = '{name}'")[0][0]
    sums: dict[int, tuple[int, str]] = {}

    def change(batch: int) -> None:
        add_rows(cluster, name, 1000 + 500 * (batch - 1) + 1, 1000 + 500 * batch)
        cluster.sql(
            f"UPDATE in_{name} SET payload = md5(payload) WHERE id % 10 = {batch}",
            dbname="platform",
        )
        sums[batch] = table_sum(cluster, name)

    build_chain(h, ctx, cluster, change)
    ctx["ts_sums"] = sums
    assert len(set(sums.values())) == 3  # each batch changed the table


@then("list shows the chain of the newest incremental")
def list_chain(h: Harness, ctx: dict[str, Any]) -> None:
    full, middle, newest = ctx["backup_ids"]
    rows = {b["backup_id"]: b for b in h.backups()}
    assert rows[full]["backup_type"] == "full" and rows[full]["chain"] == []
    assert rows[middle]["parent"] == full and rows[middle]["chain"] == [full]
    assert rows[newest]["backup_type"] == "incremental"
    assert rows[newest]["parent"] == middle and rows[newest]["chain"] == [full, middle]
    # Only what changed is stored: each incremental is a small part of the full backup.
    assert rows[newest]["stored_bytes"] < rows[full]["stored_bytes"] / 4
    assert f"incr. on {middle}" in h.run("list").stdout


@when("I restore the newest incremental and start it")
def restore_newest(h: Harness, ctx: dict[str, Any]) -> None:
    do_restore(h, ctx, ["--backup", ctx["backup_ids"][2], "--target", "immediate"])


@when("I restore the middle incremental and start it")
def restore_middle(h: Harness, ctx: dict[str, Any]) -> None:
    do_restore(h, ctx, ["--backup", ctx["backup_ids"][1], "--target", "immediate"])


@then("pg_combinebackup rebuilt it from 3 backups")
def combined(ctx: dict[str, Any], pg_major: int) -> None:
    combine = ctx["restore_result"]["combine"]
    assert combine["members"] == ctx["backup_ids"]
    # PostgreSQL 18 links the staged files (staging and restore share this test's
    # filesystem); 17 has no --link and copies.
    if pg_major >= 18:
        assert combine["method"] == "link"
    else:
        assert combine["method"] in ("clone", "copy-file-range", "copy")
    # The staging directories are gone: no restored file shares its inode with another.
    directory = ctx["restores"][-1]
    shared = [
        os.path.join(d, n)
        for d, _sub, names in os.walk(directory)
        for n in names
        if os.lstat(os.path.join(d, n)).st_nlink > 1
    ]
    assert shared == []
    assert not list(directory.parent.glob(".pgbackup-combine-*"))


@then("the restore started from the middle incremental")
def started_from_middle(ctx: dict[str, Any]) -> None:
    assert ctx["restore_result"]["backup_id"] == ctx["backup_ids"][1]
    assert ctx["restore_result"]["combine"]["members"] == ctx["backup_ids"][:2]


@then("the restore started from the full backup")
def started_from_full(ctx: dict[str, Any]) -> None:
    assert ctx["restore_result"]["backup_id"] == ctx["backup_ids"][0]
    assert ctx["restore_result"]["combine"] is None


@when("I flip a byte in the middle incremental's base archive")
def flip(h: Harness, ctx: dict[str, Any]) -> None:
    path = h.repo / "platform" / "base" / ctx["backup_ids"][1] / "base.tar.zst"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@then("verify of the newest incremental fails naming the middle incremental's base archive")
def verify_flip(h: Harness, ctx: dict[str, Any]) -> None:
    full, middle, newest = ctx["backup_ids"]
    proc = h.run("verify", "--backup", newest, "--json", expect_ok=False)
    reports = {r["backup_id"]: r for r in json.loads(proc.stdout)["platform"]["backups"]}
    assert sorted(reports) == [full, middle, newest]
    assert not reports[middle]["ok"]
    assert any("base.tar.zst" in p for p in reports[middle]["problems"]), reports[middle]
    assert reports[full]["ok"] and reports[newest]["ok"]


@when("I delete the middle incremental")
def delete_middle(h: Harness, ctx: dict[str, Any]) -> None:
    import shutil

    shutil.rmtree(h.repo / "platform" / "base" / ctx["backup_ids"][1])


@then("verify of the newest incremental fails saying its chain is broken")
def verify_missing(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("verify", "--backup", ctx["backup_ids"][2], "--json", expect_ok=False)
    reports = {r["backup_id"]: r for r in json.loads(proc.stdout)["platform"]["backups"]}
    problems = reports[ctx["backup_ids"][2]]["problems"]
    assert f"incremental chain broken: chain member {ctx['backup_ids'][1]} is missing" in " ".join(
        problems
    ), problems


@then("check reports the broken chain as critical")
def check_broken(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("check", "--json", expect_ok=False)
    out = proc.stdout
    assert "backup_chains" in out and ctx["backup_ids"][1] in out, out


@then("restoring the newest incremental fails saying the chain member is missing")
def restore_missing(h: Harness, ctx: dict[str, Any]) -> None:
    directory = h.root / "broken"
    restore_and_start(h, ctx, directory, "--backup", ctx["backup_ids"][2], expect_ok=False)
    output = h.last.stdout + h.last.stderr if h.last else ""
    assert f"chain member {ctx['backup_ids'][1]} cannot be used" in output, output
    assert "Traceback" not in output
    assert not directory.exists() or not any(directory.iterdir())


@given(
    parsers.parse(
        "the repository holds dated copies of it from {first} to {last}: a full backup on "
        "Sundays, an incremental on the day before on other days"
    )
)
def dated_chains(h: Harness, ctx: dict[str, Any], first: str, last: str) -> None:
    """Copies of one real backup under dated ids (cleanup reads metadata only): weekly
    chains from a Sunday full backup to the Saturday after it."""
    base = h.repo / "platform" / "base"
    real = base / h.backups()[-1]["backup_id"]
    meta = json.loads((real / "metadata.json").read_text())
    day = date.fromisoformat(first)
    chain: list[str] = []
    while day <= date.fromisoformat(last):
        stamp = datetime(day.year, day.month, day.day, 2, 0, tzinfo=UTC)
        backup_id = stamp.strftime("%Y%m%dT%H%M%SZ")
        if day.isoweekday() == 7 or not chain:
            chain = []
        d = base / backup_id
        d.mkdir()
        for f in real.iterdir():
            if f.name != "metadata.json":
                os.link(f, d / f.name)
        m = dict(
            meta,
            backup_id=backup_id,
            start_time=stamp.isoformat().replace("+00:00", "Z"),
            stop_time=(stamp + timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
            backup_type="incremental" if chain else "full",
            parent=chain[-1] if chain else None,
            chain=list(chain),
        )
        (d / "metadata.json").write_text(json.dumps(m))
        chain.append(backup_id)
        day += timedelta(days=1)
    shutil.rmtree(real)


@when(parsers.parse("I run cleanup with {days:d} days and {weekly:d} weekly kept on {now}"))
def cleanup_at(h: Harness, days: int, weekly: int, now: str) -> None:
    h.policy["retention"] = {"days": days, "weekly": weekly, "monthly": 0}
    h.write_policy()
    h.env["PGBACKUP_NOW"] = now
    h.run("cleanup")


@then(parsers.parse("exactly the copies of {first} to {last} remain"))
def copies_remain(h: Harness, first: str, last: str) -> None:
    day, expected = date.fromisoformat(first), []
    while day <= date.fromisoformat(last):
        expected.append(day.strftime("%Y%m%d") + "T020000Z")
        day += timedelta(days=1)
    assert sorted(p.name for p in (h.repo / "platform" / "base").iterdir()) == expected


@then("every remaining incremental has its whole chain")
def chains_whole(h: Harness) -> None:
    rows = h.backups()
    present = {r["backup_id"] for r in rows}
    incrementals = [r for r in rows if r["backup_type"] == "incremental"]
    assert incrementals
    for r in incrementals:
        assert set(r["chain"]) <= present, r


@when("I run a drill of the newest backup")
def drill_newest(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["drill"] = h.json("drill")["platform"]
    assert ctx["drill"]["status"] == "ok", ctx["drill"]


@then("the drill restored the chain of 3 and timed its staging and its combine inside the RTO")
def drill_timed_combine(ctx: dict[str, Any]) -> None:
    drill = ctx["drill"]
    assert drill["chain"] == ctx["backup_ids"], (drill["chain"], ctx["backup_ids"])
    t = drill["timings"]
    assert t["stage"] > 0 and t["combine"] > 0, t
    # Both stages are inside the restore step, which is inside the measured RTO.
    assert t["stage"] + t["combine"] <= t["restore"] <= drill["rto_seconds"], t
    assert drill["combine_throughput_bytes_per_second"] > 0
    assert drill["restore_throughput_bytes_per_second"] > 0


@then("the SLA report projects a restore of a chain of 3 with the drill's combine rate")
def sla_projects_chain(h: Harness, ctx: dict[str, Any]) -> None:
    rto = json.loads(h.run("sla-report", "--format", "json").stdout)["platform"]["sections"]["rto"]
    assert rto["projected_chain_length"] == 3, rto
    drill = ctx["drill"]
    size = float(rto["database_bytes"])
    t = drill["timings"]
    fixed = t["fetch"] + t["recovery"] + t["checks"]
    full_only = size / drill["restore_throughput_bytes_per_second"] + fixed
    combine = size / drill["combine_throughput_bytes_per_second"]
    # The chain costs more than a full backup would: at least the combine's second write.
    assert rto["projected_seconds"] >= round(full_only + combine, 1) - 0.1, (rto, drill)


@given("the policy encrypts with a new age key")
def encrypted_policy(h: Harness, ctx: dict[str, Any]) -> None:
    from test_encryption import new_identity, write_key

    identity = new_identity()
    keys = h.root / "keys"
    keys.mkdir(mode=0o755)
    write_key(keys / "age-identity.txt", f"{identity}\n")
    (keys / "recipients.txt").write_text(f"{identity.to_public()}\n")
    h.policy["encryption"] = {
        "method": "age",
        "recipients_file": str(keys / "recipients.txt"),
        "identity_file": str(keys / "age-identity.txt"),
    }
    h.write_policy()


@then("every stored file of the chain is age-encrypted, manifests included")
def chain_encrypted(h: Harness, ctx: dict[str, Any]) -> None:
    from test_encryption import AGE_MAGIC

    for backup_id in ctx["backup_ids"]:
        stored = sorted((h.repo / "platform" / "base" / backup_id).iterdir())
        data = [p for p in stored if p.name != "metadata.json"]
        assert any(p.name.startswith("backup_manifest") for p in data), stored
        for path in data:
            with path.open("rb") as f:
                assert f.read(len(AGE_MAGIC)) == AGE_MAGIC, path


@when("I restore the newest incremental with --tablespace-map-all <a new directory> and start it")
def restore_newest_mapped_all(h: Harness, ctx: dict[str, Any]) -> None:
    everything = h.root / "all-tablespaces"
    ctx["mapped"] = everything / "extra"  # --tablespace-map-all DIR puts each in DIR/<name>
    args = ["--backup", ctx["backup_ids"][2], "--target", "immediate"]
    do_restore(h, ctx, [*args, "--tablespace-map-all", str(everything)])


@when(
    'I restore the middle incremental with --tablespace-map <the OID of "extra">=<a new '
    "directory> and start it"
)
def restore_middle_mapped_oid(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["mapped"] = h.root / "extra-by-oid"
    args = ["--backup", ctx["backup_ids"][1], "--target", "immediate"]
    do_restore(h, ctx, [*args, "--tablespace-map", f"{ctx['ts_oid']}={ctx['mapped']}"])


@then(parsers.parse('the table in "{name}" holds exactly its rows of batch {batch:d}'))
def tablespace_rows(ctx: dict[str, Any], name: str, batch: int) -> None:
    got = table_sum(restored(ctx), name)
    assert got == ctx["ts_sums"][batch], (got, ctx["ts_sums"])
    assert got[0] == 1000 + 500 * batch


@then("the tablespace's files are in the mapped directory, linked from pg_tblspc")
def tablespace_mapped(h: Harness, ctx: dict[str, Any]) -> None:
    directory, _port = ctx["restored"]
    assert_linked_to(directory, ctx["mapped"])
    assert (directory / "pg_tblspc" / str(ctx["ts_oid"])).is_symlink()
    # The table's relation file is under the mapped directory (PG_<major>_<catversion>/
    # <database oid>/<relfilenode>), not in the data directory or the original location.
    path = restored(ctx).sql("SELECT pg_relation_filepath('in_extra')", dbname="platform")[0][0]
    relation = (directory / path).resolve()
    assert relation.is_file() and ctx["mapped"].resolve() in relation.parents, relation
    staging = [p for p in h.root.iterdir() if p.name.startswith(".pgbackup-combine-")]
    assert not staging, staging  # the staged members are gone


@when(parsers.parse('I run a drill of the newest backup, checking the rows of batch 3 in "{name}"'))
def drill_with_tablespace(h: Harness, ctx: dict[str, Any], name: str) -> None:
    # A drill recovers to the newest archived WAL: batch 3's rows, replayed into the
    # tablespace the chain restored.
    h.policy["drill"] = {
        "checks": [
            {
                "name": f"rows in {name}",
                "sql": f"SELECT count(*) FROM in_{name}",
                "expect": f"== {ctx['ts_sums'][3][0]}",
            }
        ]
    }
    h.write_policy()
    drill_newest(h, ctx)
