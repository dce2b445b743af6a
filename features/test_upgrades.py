"""Steps for upgrades.feature: real pg_upgrade (--link and --copy) between majors of this
machine, and the generations pgbackup keeps of one target (engine/generations)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import Harness, commit_batches, do_restore, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then, when
from receivers import AlertReceivers

from pgbackup.postgres.cluster import Cluster, free_port, hand_over, server_os_user

scenarios("upgrades.feature")


def major_bin(major: int) -> Path:
    from versions import bin_dir

    path, why = bin_dir(major)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return path


def use_bins(h: Harness, monkeypatch: pytest.MonkeyPatch, *majors: int) -> None:
    """Both majors' programs found by pgbackup (its lookup is per major) and by the test;
    the sandbox's initdb is the first's."""
    dirs = os.pathsep.join(str(major_bin(m)) for m in majors)
    monkeypatch.setenv("PGBACKUP_PG_BIN_DIRS", dirs)
    h.env["PGBACKUP_PG_BIN_DIRS"] = dirs


def server_major(cluster: Cluster) -> int:
    return int(cluster.sql("SHOW server_version_num")[0][0]) // 10000


@given(
    parsers.parse(
        "a PostgreSQL {old:d} cluster archived by pgbackup with batches 1 to 3 in a backup "
        "and batches 4 to 6 archived"
    )
)
def old_cluster(
    h: Harness,
    ctx: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    alert_receivers: AlertReceivers,
    old: int,
) -> None:
    ctx["alerts"] = alert_receivers
    h.policy["sla"]["rpo"] = "20s"
    hook = f"http://127.0.0.1:{alert_receivers.http_port}/hook"
    h.env["PGBACKUP_TEST_WEBHOOK"] = hook
    monkeypatch.setenv("PGBACKUP_TEST_WEBHOOK", hook)  # the servers this test starts
    h.policy["alerts"] = {
        "webhooks": [{"name": "ops", "url": "${PGBACKUP_TEST_WEBHOOK}", "format": "json"}]
    }
    start_archived_cluster(h, ctx, monkeypatch, old)


def start_archived_cluster(
    h: Harness, ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch, old: int
) -> None:
    """A PostgreSQL ``old`` sandbox archived by pgbackup into the policy's repository
    (whatever ``h.policy`` holds): batches 1 to 3 in a backup, 4 to 6 archived after it;
    ``ctx``: cluster, points, old_major, old_sysid."""
    ctx["old_major"] = old
    use_bins(h, monkeypatch, old)
    h.env["XDG_STATE_HOME"] = str(h.root / "state")
    h.write_policy()
    h.start_source()
    cluster = Cluster(h.sandbox().data_dir, h.sandbox_port(), bin_dir=major_bin(old))
    h.data_dirs.append(cluster.data_dir)
    assert server_major(cluster) == old
    ctx["cluster"] = cluster
    ctx["points"] = commit_batches(cluster, 1, 3)
    switch_and_wait_archived(cluster)
    h.run("backup")
    ctx["points"] += commit_batches(cluster, 4, 6)
    switch_and_wait_archived(cluster)
    ctx["old_sysid"] = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]


@when("I run the upgrade step expecting failure")
def upgrade_fails(h: Harness) -> None:
    h.run("upgrade", "--target", "platform", expect_ok=False)


@when("I run the upgrade step")
def upgrade_ok(h: Harness, ctx: dict[str, Any]) -> None:
    record_upgrade(h, ctx)


def record_upgrade(h: Harness, ctx: dict[str, Any]) -> None:
    """``pgbackup upgrade --target platform``: generation 2 is the new cluster."""
    ctx["upgrade"] = h.json("upgrade", "--target", "platform")
    assert ctx["upgrade"]["generation"] == 2
    assert ctx["upgrade"]["previous_system_identifier"] == ctx["old_sysid"]
    assert ctx["upgrade"]["system_identifier"] == ctx["new_sysid"]


@when(
    parsers.parse(
        "the cluster is upgraded to PostgreSQL {new:d} with pg_upgrade --{mode} "
        "and batches 7 to 8 are committed"
    )
)
def pg_upgrade(
    h: Harness, ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch, new: int, mode: str
) -> None:
    old_cluster: Cluster = ctx["cluster"]
    old, old_bin, new_bin = ctx["old_major"], major_bin(ctx["old_major"]), major_bin(new)
    use_bins(h, monkeypatch, old, new)
    settings = {
        name: old_cluster.sql(f"SHOW {name}")[0][0]
        for name in ("archive_mode", "archive_command", "archive_timeout")
    }
    old_cluster.stop("fast")
    # The procedure of docs/upgrades.md: stop, pg_upgrade into a new data directory where
    # the old one was (the target's connection reaches it unchanged), start.
    data = old_cluster.data_dir
    old_data = data.with_name("data-old")
    os.rename(data, old_data)
    new_cluster = Cluster(data, old_cluster.port, bin_dir=new_bin)
    new_cluster.initdb(settings)
    work = h.root / "pg_upgrade"
    work.mkdir()
    hand_over(work, new_cluster.os_user, 0o700)
    argv = [
        str(new_bin / "pg_upgrade"),
        "-b",
        str(old_bin),
        "-B",
        str(new_bin),
        "-d",
        str(old_data),
        "-D",
        str(data),
        "-p",
        str(free_port()),
        "-P",
        str(free_port()),
        "-s",
        str(work),
        f"--{mode}",
    ]
    proc = subprocess.run(
        argv,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        user=new_cluster.os_user,
        env={**os.environ, "HOME": str(work)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new_cluster.start()
    assert server_major(new_cluster) == new
    ctx["cluster"] = new_cluster
    ctx["new_major"] = new
    ctx["new_sysid"] = new_cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[
        0
    ][0]
    assert ctx["new_sysid"] != ctx["old_sysid"]
    ctx["points"] += commit_batches(new_cluster, 7, 8)
    new_cluster.sql("SELECT pg_logical_emit_message(false, 'pgbackup-test', 'switch')")
    new_cluster.sql("SELECT pg_switch_wal()")


@then(parsers.parse('its WAL is refused and the server log names "{text}"'))
def refused(h: Harness, ctx: dict[str, Any], text: str) -> None:
    wait_refused(ctx, text)
    # Nothing of the new cluster was stored.
    assert not (h.repo / "platform" / "gen").exists()


def wait_refused(ctx: dict[str, Any], text: str) -> None:
    """Until the new cluster's archiver has failed; its log says why, naming ``text``."""
    import time

    cluster: Cluster = ctx["cluster"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        failed, last_ok = cluster.sql(
            "SELECT failed_count, last_archived_wal FROM pg_stat_archiver"
        )[0]
        if failed:
            break
        time.sleep(0.3)
    assert failed and last_ok is None, (failed, last_ok)
    log = cluster.log_tail(400)
    assert f"refused: the archive of target 'platform' belongs to cluster {ctx['old_sysid']}" in log
    assert text in log, log


@then(parsers.parse('check is CRITICAL naming "{text}"'))
def check_critical(h: Harness, ctx: dict[str, Any], text: str) -> None:
    proc = h.run("check", "--json", expect_ok=False)
    report = json.loads(proc.stdout)
    target = report["platform"]
    assert target["status"] == "CRITICAL", target
    identity = [c for c in target["checks"] if c["name"] == "cluster_identity"]
    assert identity and identity[0]["status"] == "CRITICAL", target["checks"]
    assert text in identity[0]["summary"], identity
    # The change of state alerted, with the command to run.
    checks = [p["body"] for p in ctx["alerts"].posts if p["body"]["event"] == "check"]
    assert len(checks) == 1, ctx["alerts"].posts
    assert checks[0]["status"] == "critical" and text in checks[0]["message"], checks


@then("the SLA report shows the RPO breached")
def rpo_breached(h: Harness) -> None:
    import time

    time.sleep(21)  # past the 20 s objective since the newest archived WAL
    h.run("check", "--json", expect_ok=False)
    report = json.loads(h.run("sla-report", "--format", "json", expect_ok=None).stdout)
    rpo = report["platform"]["sections"]["rpo"]
    assert rpo["verdict"] == "BREACHED", rpo


@then("the new cluster's WAL is archived under the generation 2 namespace")
def archived_gen2(h: Harness, ctx: dict[str, Any]) -> None:
    closed = switch_and_wait_archived(ctx["cluster"])
    gen2 = h.repo / "platform" / "gen" / "2"
    assert (gen2 / "wal" / f"{closed}.zst").is_file()
    bound = json.loads((gen2 / "archive.json").read_text())
    assert bound["system_identifier"] == ctx["new_sysid"]
    history = h.repo / "platform" / "history"
    assert sorted(p.name for p in history.iterdir()) == ["1.json", "2.json"]
    first = json.loads((history / "1.json").read_text())
    assert (first["system_identifier"], first["major"]) == (ctx["old_sysid"], ctx["old_major"])


@when("a backup of the new cluster is taken and batches 9 to 10 are committed and archived")
def backup_new(h: Harness, ctx: dict[str, Any]) -> None:
    h.run("backup")
    ctx["points"] += commit_batches(ctx["cluster"], 9, 10)
    switch_and_wait_archived(ctx["cluster"])


@then(
    parsers.parse(
        "list shows generation 1 on PostgreSQL {old:d} and generation 2 on PostgreSQL "
        "{new:d}, and the gap between them"
    )
)
def list_generations(h: Harness, ctx: dict[str, Any], old: int, new: int) -> None:
    data = h.json("list")["platform"]
    rows = [(b["generation"], b["major"], b["system_identifier"]) for b in data["backups"]]
    assert rows == [(1, old, ctx["old_sysid"]), (2, new, ctx["new_sysid"])], rows
    gens = data["generations"]
    assert [(g["generation"], g["major"]) for g in gens] == [(1, old), (2, new)]
    assert gens[1]["gap_before"]["from_time"] == gens[0]["window"]["latest_time"]
    assert gens[1]["gap_before"]["to_time"] == gens[1]["window"]["earliest_time"]
    assert gens[0]["window"]["latest_time"] < gens[1]["window"]["earliest_time"]
    text = h.run("list").stdout
    assert "generation 1" in text and "generation 2" in text and "gap" in text, text


def _offsite_check(h: Harness, name: str) -> dict[str, Any]:
    report = json.loads(h.run("check", "--json", expect_ok=None).stdout)
    found = [c for c in report["platform"]["checks"] if c["name"] == f"offsite_wal:{name}"]
    assert found, report["platform"]["checks"]
    return dict(found[0])


@then("check is OK about the cluster's identity")
def check_identity_ok(h: Harness) -> None:
    report = json.loads(h.run("check", "--json", expect_ok=None).stdout)
    target = report["platform"]
    identity = [c for c in target["checks"] if c["name"] == "cluster_identity"]
    assert identity and identity[0]["status"] == "OK", target["checks"]


@when(parsers.parse("I restore to the time after batch {n:d}"))
def restore_time(h: Harness, ctx: dict[str, Any], n: int) -> None:
    do_restore(h, ctx, ["--target-time", ctx["points"][n - 1]["time"]])


@when(parsers.parse('I restore from "{name}" to the time after batch {n:d}'))
def restore_time_from(h: Harness, ctx: dict[str, Any], name: str, n: int) -> None:
    """The upload destination alone: its history, each generation's backups and WAL."""
    do_restore(h, ctx, ["--from", name, "--target-time", ctx["points"][n - 1]["time"]])


@then(
    parsers.parse(
        "the restored server runs PostgreSQL {major:d} and holds batches 1 to {n:d} and no others"
    )
)
def restored_batches(h: Harness, ctx: dict[str, Any], major: int, n: int) -> None:
    directory, port = ctx["restored"]
    cluster = h.track(directory, port)
    assert server_major(cluster) == major
    rows = cluster.sql(
        "SELECT batch, count(*) FROM pitr_batches GROUP BY batch ORDER BY batch",
        dbname="platform",
    )
    assert rows == [(b, 100) for b in range(1, n + 1)], rows


@when("I run a drill of the old generation's newest backup")
def drill_old(h: Harness, ctx: dict[str, Any]) -> None:
    old_backup = next(b for b in h.backups() if b["generation"] == 1)
    h.policy["drill"]["checks"] = [
        {
            "name": "major",
            "sql": "SELECT current_setting('server_version_num')::int / 10000",
            "expect": f"== {ctx['old_major']}",
        },
        {"name": "batches", "sql": "SELECT count(*) FROM pitr_batches", "expect": "== 600"},
    ]
    h.write_policy()
    ctx["drill"] = h.json("drill", "--backup", old_backup["backup_id"])["platform"]
    ctx["old_backup"] = old_backup["backup_id"]


@then(parsers.parse("the drill passes on PostgreSQL {major:d} with batches 1 to {n:d}"))
def drill_passed(ctx: dict[str, Any], major: int, n: int) -> None:
    drill = ctx["drill"]
    assert drill["status"] == "ok", drill
    assert drill["backup_id"] == ctx["old_backup"]
    assert {c["name"]: c["ok"] for c in drill["checks"]} == {"major": True, "batches": True}, drill[
        "checks"
    ]
    assert major == ctx["old_major"] and n * 100 == 600


def cleanup_with(h: Harness, days: int, weekly: int, monthly: int) -> dict[str, Any]:
    h.policy["retention"] = {"days": days, "weekly": weekly, "monthly": monthly}
    h.write_policy()
    (plan,) = h.json("cleanup")
    return dict(plan)


@when("cleanup runs with retention of this week only")
def cleanup_week(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["cleanup"] = cleanup_with(h, 0, 1, 0)


@then("the old generation's newest backup is kept as the newest of generation 1")
def old_kept(h: Harness, ctx: dict[str, Any]) -> None:
    decisions = {b["backup_id"]: b for b in ctx["cleanup"]["backups"]}
    old = decisions[ctx["old_backup"]]
    assert old["keep"], old
    assert "newest of generation 1, within the policy's periods" in old["reasons"], old
    assert ctx["cleanup"]["expire_backups"] == []
    assert [b["generation"] for b in h.backups()] == [1, 2]


@when("cleanup runs with retention of the newest backup only")
def cleanup_newest(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["wal_before"] = sorted(p.name for p in (h.repo / "platform" / "wal").iterdir())
    ctx["cleanup"] = cleanup_with(h, 0, 0, 0)


@then("only the new generation's backup is left and the old generation's WAL is still there")
def only_new_left(h: Harness, ctx: dict[str, Any]) -> None:
    assert ctx["cleanup"]["expire_backups"] == [ctx["old_backup"]], ctx["cleanup"]
    assert [b["generation"] for b in h.backups()] == [2]
    assert not (h.repo / "platform" / "base" / ctx["old_backup"]).exists()
    assert sorted(p.name for p in (h.repo / "platform" / "wal").iterdir()) == ctx["wal_before"]
    assert any((h.repo / "platform" / "gen" / "2" / "base").iterdir())


@when(
    "the cluster is replaced by a fresh initdb with its data restored by pg_dumpall "
    "and batches 7 to 8 are committed"
)
def fresh_initdb(h: Harness, ctx: dict[str, Any]) -> None:
    replace_by_fresh_initdb(h, ctx)


def replace_by_fresh_initdb(h: Harness, ctx: dict[str, Any]) -> None:
    """The fast path of an upgrade: a new initdb of the same major where the old data
    directory was (same port), its data restored by pg_dumpall, then batches 7 and 8
    committed and a segment switch (its archiving is refused until the upgrade step)."""
    from pgbackup.postgres.cluster import run_as

    old_cluster: Cluster = ctx["cluster"]
    bin_dir = major_bin(ctx["old_major"])
    settings = {
        name: old_cluster.sql(f"SHOW {name}")[0][0]
        for name in ("archive_mode", "archive_command", "archive_timeout")
    }
    data = old_cluster.data_dir
    fresh = Cluster(data.with_name("data-new"), free_port(), bin_dir=bin_dir)
    h.data_dirs.append(fresh.data_dir)
    fresh.initdb(settings)
    fresh.start()
    dump = h.root / "dumpall"
    dump.mkdir()
    hand_over(dump, fresh.os_user, 0o700)
    run_as(
        [
            str(bin_dir / "pg_dumpall"),
            "-h",
            "127.0.0.1",
            "-p",
            str(old_cluster.port),
            "-f",
            str(dump / "all.sql"),
        ],
        fresh.os_user,
        timeout=300,
    )
    run_as(
        [str(bin_dir / "psql"), "-q", "-h", "127.0.0.1", "-p", str(fresh.port)]
        + ["-d", "postgres", "-f", str(dump / "all.sql")],
        fresh.os_user,
        timeout=300,
    )
    fresh.stop("fast")
    old_cluster.stop("fast")
    os.rename(data, data.with_name("data-old"))
    os.rename(fresh.data_dir, data)
    new_cluster = Cluster(data, old_cluster.port, bin_dir=bin_dir)
    new_cluster.configure({"port": old_cluster.port})
    new_cluster.start()
    ctx["cluster"] = new_cluster
    ctx["new_major"] = ctx["old_major"]
    ctx["new_sysid"] = new_cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[
        0
    ][0]
    assert ctx["new_sysid"] != ctx["old_sysid"]
    rows = new_cluster.sql("SELECT count(*) FROM pitr_batches", dbname="platform")[0][0]
    assert rows == 600
    ctx["points"] += commit_batches(new_cluster, 7, 8)
    new_cluster.sql("SELECT pg_logical_emit_message(false, 'pgbackup-test', 'switch')")
    new_cluster.sql("SELECT pg_switch_wal()")


@then(parsers.parse('the history records generation 2 as "{reason}"'))
def history_reason(h: Harness, ctx: dict[str, Any], reason: str) -> None:
    rec = json.loads((h.repo / "platform" / "history" / "2.json").read_text())
    assert rec["reason"] == reason, rec
    assert rec["major"] == ctx["old_major"]
    assert ctx["upgrade"]["reason"] == reason


@then("the SLA report and the exporter show both generations and the gap between them")
def sla_and_exporter(h: Harness, ctx: dict[str, Any]) -> None:
    report = json.loads(h.run("sla-report", "--format", "json", expect_ok=None).stdout)["platform"]
    gens = report["generations"]
    assert [(g["generation"], g["system_identifier"]) for g in gens] == [
        (1, ctx["old_sysid"]),
        (2, ctx["new_sysid"]),
    ]
    lanes = [lane["name"] for lane in report["timeline"]["lanes"]]
    assert lanes == [
        f"generation 1 (PostgreSQL {ctx['old_major']})",
        f"generation 2 (PostgreSQL {ctx['new_major']})",
    ], lanes
    markdown = h.run("sla-report", expect_ok=None).stdout
    assert "Gap before generation 2: nothing restorable from" in markdown, markdown
    # The exporter's reading of the repository (what /metrics serves), in this process.
    from pgbackup.operations.metrics import read_primary
    from pgbackup.policy import load_policy_fast

    policy = load_policy_fast(str(h.config))
    samples = read_primary(policy, list(policy.targets.values()))
    ends = {
        labels["generation"]: value
        for name, labels, value in samples
        if name == "pgbackup_generation_window_end_timestamp_seconds"
    }
    starts = {
        labels["generation"]: value
        for name, labels, value in samples
        if name == "pgbackup_generation_window_start_timestamp_seconds"
    }
    assert set(ends) == {"1", "2"} and ends["1"] < starts["2"], samples
    assert ("pgbackup_generations", {"target": "platform"}, 2.0) in samples


@then("verify of every backup with --wal passes in both generations")
def verify_all(h: Harness, ctx: dict[str, Any]) -> None:
    out = h.json("verify", "--backup", "all", "--wal")["platform"]
    assert [b["ok"] for b in out["backups"]] == [True, True], out["backups"]
    wal = out["wal"]
    assert wal["gaps"] == [] and wal["not_checked"] == [], wal
    assert [g["generation"] for g in wal["generations"]] == [1, 2]
    assert all(g["content_checked"] == g["archived"] > 0 for g in wal["generations"]), wal


@then("plan describes the upgrade procedure and both generations")
def plan_procedure(h: Harness, ctx: dict[str, Any]) -> None:
    text = h.run("plan").stdout
    assert "a major upgrade (or a new initdb) of this server, in order:" in text, text
    assert f"pgbackup --config {h.config} upgrade --target platform" in text, text
    assert "pg_upgrade --link or --copy" in text and "a new full backup" in text, text
    assert f"1: cluster {ctx['old_sysid']}" in text and f"2: cluster {ctx['new_sysid']}" in text
    steps = h.json("plan")["targets"][0]["upgrade"]["steps"]
    assert len(steps) == 5 and steps[0].startswith("stop the server"), steps


@given(parsers.parse('backups and WAL are also copied to the local directory "{name}"'))
def offsite_dir(h: Harness, ctx: dict[str, Any], name: str) -> None:
    """Created beforehand for the server's OS user, as an operator would: a restore
    ``--from`` it reads WAL there through restore_command, which runs as that user."""
    (h.root / name).mkdir(mode=0o750)
    hand_over(h.root / name, server_os_user())
    h.policy["uploads"] = [{"name": name, "path": str(h.root / name)}]
    h.write_policy()
    ctx["offsite"] = h.root / name


@then(
    parsers.parse(
        "\"{name}\" holds each generation's backup and, after wal-ship, the new generation's "
        "WAL in its namespace"
    )
)
def offsite_generations(h: Harness, ctx: dict[str, Any], name: str) -> None:
    dest = ctx["offsite"] / "platform"
    local = h.repo / "platform"
    ids = {b["generation"]: b["backup_id"] for b in h.backups()}
    assert (dest / "base" / ids[1] / "metadata.json").is_file()
    assert (dest / "gen" / "2" / "base" / ids[2] / "metadata.json").is_file()
    assert not (dest / "base" / ids[2]).exists()
    assert sorted(p.name for p in (dest / "history").iterdir()) == ["1.json", "2.json"]
    # check measures the new generation's WAL off-site: behind before wal-ship, then not
    assert "lacks" in _offsite_check(h, name)["summary"]
    h.run("wal-ship", "--once")
    assert "holds every archived WAL file" in _offsite_check(h, name)["summary"]
    # What the copies need: from the new generation's backup on, byte for byte.
    shipped = sorted((dest / "gen" / "2" / "wal").iterdir())
    newest = max(p.name for p in (local / "gen" / "2" / "wal").iterdir() if len(p.name) == 28)
    assert newest in {p.name for p in shipped}, shipped
    for wal in shipped:
        assert wal.read_bytes() == (local / "gen" / "2" / "wal" / wal.name).read_bytes()
    gen1 = {p.name for p in (dest / "wal").iterdir()}
    assert not gen1 & {p.name for p in (local / "gen" / "2" / "wal").iterdir()} - {
        p.name for p in (local / "wal").iterdir()
    }
