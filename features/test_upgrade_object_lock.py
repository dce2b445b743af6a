"""Steps for upgrade_object_lock.feature: the generations of #30 (a fresh initdb recorded by
``pgbackup upgrade``) in the locked S3 repository of #28 (moto, versioning, object lock).
The helpers are those of test_upgrades (the clusters) and test_object_lock (the bucket)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from harness import Harness, commit_batches, do_restore, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then, when
from test_object_lock import (
    PREFIX,
    assert_held_by_lock,
    assert_locked_as_promised,
    client,
    lock_of,
    locked_bucket,
    policy_lock,
    versions,
    wait_lock_ended,
)
from test_upgrades import (
    record_upgrade,
    replace_by_fresh_initdb,
    start_archived_cluster,
    wait_refused,
)

scenarios("upgrade_object_lock.feature")

GEN2 = f"{PREFIX}platform/gen/2/"
HISTORY = f"{PREFIX}platform/history/"


def current(ctx: dict[str, Any], prefix: str = PREFIX) -> list[dict[str, Any]]:
    """The current (newest, not deleted) version of every key under ``prefix``."""
    return [v for v in versions(ctx, prefix) if v["IsLatest"] and not v["Deleted"]]


def backup_prefix(ctx: dict[str, Any], generation: int) -> str:
    backup_id = ctx["backup_ids"][generation - 1]
    gen = "" if generation == 1 else f"gen/{generation}/"
    return f"{PREFIX}platform/{gen}base/{backup_id}/"


def backups_by_generation(h: Harness, *args: str) -> list[tuple[int, str, str]]:
    listed = h.json("list", *args)["platform"]["backups"]
    return [(b["generation"], b["backup_id"], b["status"]) for b in listed]


# --- given ------------------------------------------------------------------------------


@given(
    parsers.parse(
        "a PostgreSQL {major:d} cluster archived into a locked bucket whose locks have a "
        "margin of {margin:d}s, retention keeping the newest backup only, with batches 1 to 3 "
        "in a backup and batches 4 to 6 archived"
    )
)
def locked_cluster(
    h: Harness,
    ctx: dict[str, Any],
    stack: contextlib.ExitStack,
    monkeypatch: pytest.MonkeyPatch,
    major: int,
    margin: int,
) -> None:
    locked_bucket(h, ctx, stack)
    # Retention 0 days, 0 weekly, 0 monthly: every object locked for the margin alone,
    # and generation 1's backup expired once generation 2 has one.
    h.policy["retention"] = {"days": 0, "weekly": 0, "monthly": 0}
    policy_lock(h, ctx, f"{margin}s")
    ctx["margin_seconds"] = margin
    # The servers this test starts itself (the fresh initdb's) push WAL with the host's
    # credentials, as the sandbox, started by pgbackup with h.env, does.
    for name, value in h.env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    start_archived_cluster(h, ctx, monkeypatch, major)
    ctx["backup_ids"] = [b for _g, b, _s in backups_by_generation(h)]
    assert len(ctx["backup_ids"]) == 1
    assert any(v["Key"].startswith(backup_prefix(ctx, 1)) for v in current(ctx))


# --- the upgrade ------------------------------------------------------------------------


@when(
    "the cluster is replaced by a fresh initdb of the same major, restored by pg_dumpall, "
    "and batches 7 to 8 are committed"
)
def replaced(h: Harness, ctx: dict[str, Any]) -> None:
    replace_by_fresh_initdb(h, ctx)


@then("its WAL is refused until the upgrade step, and the bucket holds nothing of the new cluster")
def refused_in_bucket(ctx: dict[str, Any]) -> None:
    wait_refused(ctx, "pgbackup upgrade --target platform")
    assert versions(ctx, f"{PREFIX}platform/gen/") == []
    assert versions(ctx, HISTORY) == []


@when("the upgrade step records the new cluster as generation 2 in the locked bucket")
def upgraded(h: Harness, ctx: dict[str, Any]) -> None:
    record_upgrade(h, ctx)
    assert ctx["upgrade"]["reason"] == "new cluster (initdb)", ctx["upgrade"]
    # The refused WAL (batches 7 and 8) goes into generation 2's namespace on the next try.
    closed = switch_and_wait_archived(ctx["cluster"])
    names = {v["Key"].rsplit("/", 1)[1][:24] for v in current(ctx, f"{GEN2}wal/")}
    assert closed in names, (closed, sorted(names))


@when(
    "a backup of the new cluster is taken into the locked bucket and batches 9 to 10 are "
    "committed and archived"
)
def backup_gen2(h: Harness, ctx: dict[str, Any]) -> None:
    h.run("backup")
    ctx["points"] += commit_batches(ctx["cluster"], 9, 10)
    switch_and_wait_archived(ctx["cluster"])
    listed = backups_by_generation(h)
    assert [(g, s) for g, _b, s in listed] == [(1, "complete"), (2, "complete")], listed
    ctx["backup_ids"] = [b for _g, b, _s in listed]


# --- locks and check --------------------------------------------------------------------


@then(
    "every object of generation 2 and both history records are locked as promised, "
    "until a time still to come"
)
def gen2_locked(h: Harness, ctx: dict[str, Any]) -> None:
    gen2 = current(ctx, GEN2)
    backup = [v for v in gen2 if v["Key"].startswith(backup_prefix(ctx, 2))]
    wal = [v for v in gen2 if "/wal/" in v["Key"] and ".partial" not in v["Key"]]
    history = current(ctx, HISTORY)
    assert any(v["Key"].endswith("/metadata.json") for v in backup), backup
    assert any(v["Key"].endswith("/backup_manifest") for v in backup), backup
    assert len(wal) >= 3, wal  # batches 7-8, the backup's, batches 9-10
    assert sorted(v["Key"].removeprefix(HISTORY) for v in history) == ["1.json", "2.json"]
    # generation 2's own binding (archive.json) too: everything under gen/2/ but .partial
    others = [v for v in gen2 if v not in backup and v not in wal and ".partial" not in v["Key"]]
    everything = backup + wal + others + history
    assert_locked_as_promised(h, ctx, everything)
    now = datetime.now(UTC)
    for v in everything:
        until = lock_of(ctx, v["Key"], v["VersionId"])
        assert until is not None and until > now, (v["Key"], until, now)


@then("check of the locked bucket finds no tampering and is OK about the cluster's identity")
def check_clean(h: Harness) -> None:
    report = json.loads(h.run("check", "--json", "--no-alert", expect_ok=None).stdout)["platform"]
    by_name = {c["name"]: c for c in report["checks"]}
    for name in ("tampering", "object_lock", "cluster_identity"):
        assert by_name[name]["status"] == "OK", by_name[name]


# --- cleanup while locked ---------------------------------------------------------------


@when(
    "cleanup runs with the maintenance credentials, its retention expiring the old "
    "generation's backup"
)
def cleanup_locked(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["before_cleanup"] = {(v["Key"], v["VersionId"]) for v in versions(ctx)}
    proc = h.run("cleanup")
    assert "Traceback" not in proc.stdout + proc.stderr
    ctx["cleanup_out"] = proc.stdout
    (plan,) = h.json("cleanup", "--dry-run")
    assert plan["expire_backups"] == [ctx["backup_ids"][0]], plan


@then(
    "nothing is removed: the old generation's backup is held by its lock, which cleanup says once"
)
def held(h: Harness, ctx: dict[str, Any]) -> None:
    out = ctx["cleanup_out"]
    assert_held_by_lock(out, ctx["backup_ids"][0])
    after = {(v["Key"], v["VersionId"]) for v in versions(ctx)}
    lost = ctx["before_cleanup"] - after
    assert not lost, sorted(lost)
    listed = backups_by_generation(h)
    assert [(g, s) for g, _b, s in listed] == [(1, "complete"), (2, "complete")], listed


# --- restores ---------------------------------------------------------------------------


@when(parsers.parse("I restore from the locked bucket to the time after batch {n:d}"))
def restore_time(h: Harness, ctx: dict[str, Any], n: int) -> None:
    do_restore(h, ctx, ["--target-time", ctx["points"][n - 1]["time"]])


# --- the attack -------------------------------------------------------------------------


@when("an attacker with the host's credentials deletes every current object of both generations")
def attack(ctx: dict[str, Any]) -> None:
    time.sleep(1.2)  # S3 keeps LastModified to the second: the attack is a later second
    ctx["attack_start"] = datetime.now(UTC).replace(microsecond=0)
    s3 = client(ctx)  # the host's own credentials
    found = current(ctx)
    keys = {v["Key"] for v in found}
    assert any(k.startswith(backup_prefix(ctx, 1)) for k in keys), keys
    assert any(k.startswith(backup_prefix(ctx, 2)) for k in keys), keys
    assert any(k.startswith(HISTORY) for k in keys), keys
    for v in found:
        s3.delete_object(Bucket=ctx["bucket"], Key=v["Key"])  # a delete marker
    ctx["deleted"] = sorted(keys)


@when("the new cluster closes a WAL segment while the delete markers are there")
def push_after_attack(ctx: dict[str, Any]) -> None:
    cluster = ctx["cluster"]
    cluster.sql("SELECT pg_logical_emit_message(false, 'pgbackup-test', 'switch')")
    ctx["refused_segment"] = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]


@then(
    "its WAL is refused, naming the deleted archive.json, and nothing of it is written to "
    "the bucket"
)
def refused_after_attack(ctx: dict[str, Any]) -> None:
    cluster = ctx["cluster"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        failed, last_failed = cluster.sql(
            "SELECT failed_count, last_failed_wal FROM pg_stat_archiver"
        )[0]
        if last_failed == ctx["refused_segment"]:
            break
        time.sleep(0.3)
    assert last_failed == ctx["refused_segment"], (failed, last_failed)
    log = cluster.log_tail(200)
    assert "platform/archive.json of target 'platform' was deleted at" in log, log
    # Not bound again to this cluster, nor its WAL in generation 1's (or 2's) namespace:
    # nothing but the runs' records (check's, the restores') was written since the attack.
    written = [
        v["Key"]
        for v in versions(ctx, f"{PREFIX}platform/")
        if not v["Deleted"] and v["LastModified"] >= ctx["attack_start"]
    ]
    assert all(k.startswith(f"{PREFIX}platform/runs/") for k in written), written


@then(
    'the live bucket lists no backup, and "list --as-of" a time before the attack lists both '
    "generations' backups complete"
)
def as_of_lists_both(h: Harness, ctx: dict[str, Any]) -> None:
    assert h.backups() == []
    proc = h.run("check", "--json", "--no-alert", expect_ok=False)
    by_name = {c["name"]: c for c in json.loads(proc.stdout)["platform"]["checks"]}
    tamper = by_name["tampering"]
    assert tamper["status"] == "CRITICAL", tamper
    # every key of the target pgbackup wrote once, of both generations and the history
    target_keys = [k for k in ctx["deleted"] if k.startswith(f"{PREFIX}platform/")]
    assert tamper["value"] == len(target_keys), (tamper, target_keys)
    found = re.search(r"--as-of (\S+)", tamper["summary"])
    assert found, tamper
    as_of = datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
    assert as_of < ctx["attack_start"], (as_of, ctx["attack_start"])
    ctx["as_of"] = found.group(1)
    listed = backups_by_generation(h, "--as-of", ctx["as_of"])
    expected = [(1, ctx["backup_ids"][0], "complete"), (2, ctx["backup_ids"][1], "complete")]
    assert listed == expected, listed


@then('"verify --as-of" that time passes for the backup of each generation and their WAL')
def verify_as_of(h: Harness, ctx: dict[str, Any]) -> None:
    out = h.json("verify", "--as-of", ctx["as_of"], "--backup", "all", "--wal")["platform"]
    assert [(b["backup_id"], b["ok"]) for b in out["backups"]] == [
        (ctx["backup_ids"][0], True),
        (ctx["backup_ids"][1], True),
    ], out["backups"]
    wal = out["wal"]
    assert wal["gaps"] == [] and wal["not_checked"] == [], wal
    assert [g["generation"] for g in wal["generations"]] == [1, 2], wal
    assert all(g["content_checked"] == g["archived"] > 0 for g in wal["generations"]), wal


@when(parsers.parse("I restore as of that time to the time after batch {n:d}"))
def restore_as_of(h: Harness, ctx: dict[str, Any], n: int) -> None:
    do_restore(h, ctx, ["--as-of", ctx["as_of"], "--target-time", ctx["points"][n - 1]["time"]])
    directory, _port = ctx["restored"]
    conf = (directory / "postgresql.auto.conf").read_text()
    assert "--as-of" in conf, conf  # wal-fetch reads the same past


# --- after the attack: undone, then cleanup once the locks have ended ---------------------


@when("the administrator removes the attacker's delete markers with the maintenance credentials")
def undo_attack(h: Harness, ctx: dict[str, Any]) -> None:
    s3 = client(ctx, key="maintenance-key", secret="maintenance-secret")
    markers = [v for v in versions(ctx) if v["Deleted"]]
    assert {v["Key"] for v in markers} >= set(ctx["deleted"]), markers
    for v in markers:
        s3.delete_object(Bucket=ctx["bucket"], Key=v["Key"], VersionId=v["VersionId"])
    assert [b for _g, b, _s in backups_by_generation(h)] == ctx["backup_ids"]


@then("the refused segment and the next are archived under the generation 2 namespace")
def archiving_resumed(ctx: dict[str, Any]) -> None:
    closed = switch_and_wait_archived(ctx["cluster"])  # wakes the archiver: it retries
    names = {v["Key"].rsplit("/", 1)[1][:24] for v in current(ctx, f"{GEN2}wal/")}
    assert {ctx["refused_segment"], closed} <= names, (ctx["refused_segment"], closed, names)
    assert not {v["Key"] for v in current(ctx, f"{PREFIX}platform/wal/")} & {
        f"{PREFIX}platform/wal/{n}.zst" for n in (ctx["refused_segment"], closed)
    }


@when("the locks of the old generation's backup have ended")
def old_unlocked(ctx: dict[str, Any]) -> None:
    wait_lock_ended(ctx, backup_prefix(ctx, 1) + "metadata.json")
    now = datetime.now(UTC)
    for v in versions(ctx, backup_prefix(ctx, 1)):
        until = None if v["Deleted"] else lock_of(ctx, v["Key"], v["VersionId"])
        assert until is None or until <= now, (v["Key"], until)


@when("cleanup runs with the maintenance credentials again")
def cleanup_unlocked(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["gen1_wal"] = {v["Key"] for v in current(ctx, f"{PREFIX}platform/wal/")}
    proc = h.run("cleanup")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "removed 1 backup(s)" in proc.stdout, proc.stdout
    ctx["cleanup_out"] = proc.stdout


@then(
    "no version of any object of the old generation's backup is left, and the old "
    "generation's WAL is kept"
)
def old_gone(ctx: dict[str, Any]) -> None:
    assert versions(ctx, backup_prefix(ctx, 1)) == []
    assert ctx["gen1_wal"], "generation 1 had no WAL"
    assert {v["Key"] for v in current(ctx, f"{PREFIX}platform/wal/")} == ctx["gen1_wal"]


@then("generation 2's backup is the only one, complete, and verifies with its WAL")
def gen2_only(h: Harness, ctx: dict[str, Any]) -> None:
    assert backups_by_generation(h) == [(2, ctx["backup_ids"][1], "complete")]
    assert any(v["Key"].endswith("/metadata.json") for v in current(ctx, backup_prefix(ctx, 2)))
    out = h.json("verify", "--backup", ctx["backup_ids"][1], "--wal")["platform"]
    assert [b["ok"] for b in out["backups"]] == [True], out["backups"]
    assert out["wal"]["gaps"] == [], out["wal"]
