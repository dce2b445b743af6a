"""Steps for busy_and_standby.feature."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from harness import Harness, restore_and_start
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import Cluster, free_port, hand_over, run_as

scenarios("busy_and_standby.feature")

MARK = "SELECT count(*) FROM tenants WHERE name LIKE 'after-backup-%'"


# --- busy servers -----------------------------------------------------------------------


@given(parsers.parse("the sandbox has max_wal_size 32MB and a pgbench database of scale {scale:d}"))
def pgbench_database(h: Harness, ctx: dict[str, Any], scale: int) -> None:
    cluster = h.sandbox()
    cluster.sql("ALTER SYSTEM SET max_wal_size = '32MB'")
    cluster.sql("ALTER SYSTEM SET min_wal_size = '32MB'")
    cluster.sql("ALTER SYSTEM SET checkpoint_timeout = '30s'")
    cluster.sql("SELECT pg_reload_conf()")
    cluster.sql("CREATE DATABASE bench")
    run_as(
        [
            cluster.program("pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-i",
            "-q",
            "-s",
            str(scale),
            "bench",
        ],
        cluster.os_user,
    )
    ctx["scale"] = scale


def pgbench(cluster: Cluster, seconds: int) -> subprocess.Popen[bytes]:
    argv = [
        cluster.program("pgbench"),
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.port),
        "-c",
        "4",
        "-j",
        "2",
        "-T",
        str(seconds),
        "-n",
        "bench",
    ]
    if cluster.os_user:
        argv = ["runuser", "-u", cluster.os_user, "--", *argv]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@when(parsers.parse("I take {n:d} backups while pgbench writes at full speed"))
def backups_under_load(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    before = int(cluster.sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])
    load = pgbench(cluster, 600)
    try:
        time.sleep(2)
        ctx["runs"] = [h.run("backup", expect_ok=None) for _ in range(n)]
    finally:
        load.terminate()
        load.wait(30)
    after = int(cluster.sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])
    # The load must have written far more WAL than max_wal_size meanwhile, or the
    # scenario proves nothing about recycled WAL.
    assert after - before > 3 * 32 * 1024 * 1024, f"only {after - before} bytes of WAL"


@then(parsers.parse("all {n:d} backups are complete and verify"))
def all_complete(h: Harness, ctx: dict[str, Any], n: int) -> None:
    for proc in ctx["runs"]:
        assert proc.returncode == 0, proc.stderr
    complete = [b for b in h.backups() if b["status"] == "complete"]
    assert len(complete) == n
    h.run("verify", "--backup", "all")


@then("the restored pgbench database is consistent")
def pgbench_consistent(h: Harness, ctx: dict[str, Any]) -> None:
    directory, port = ctx["restored"]
    cluster = Cluster(directory, port)
    accounts = cluster.sql("SELECT count(*), sum(abalance) FROM pgbench_accounts", dbname="bench")
    branches = cluster.sql("SELECT sum(bbalance) FROM pgbench_branches", dbname="bench")
    tellers = cluster.sql("SELECT sum(tbalance) FROM pgbench_tellers", dbname="bench")
    assert accounts[0][0] == ctx["scale"] * 100000
    # pgbench's transaction moves the same delta in all three tables: sums agree.
    assert accounts[0][1] == branches[0][0] == tellers[0][0]


# --- standbys ---------------------------------------------------------------------------


@given(parsers.parse('a hot standby of the sandbox is the policy target "{name}"'))
def hot_standby(h: Harness, ctx: dict[str, Any], name: str) -> None:
    primary = h.sandbox()
    directory = h.root / "standby"
    port = free_port()
    directory.mkdir()
    hand_over(directory, primary.os_user, 0o700)
    run_as(
        [
            primary.program("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "platform_service",
            "-D",
            str(directory),
            "-R",
            "-X",
            "stream",
        ],
        primary.os_user,
    )
    standby = h.track(directory, port)
    standby.configure({"port": port, "archive_mode": "off"})
    standby.start()
    assert standby.sql("SELECT pg_is_in_recovery()")[0][0] is True
    h.policy["targets"][name] = {
        "connection": {
            "host": "127.0.0.1",
            "port": port,
            "user": "platform_service",
            "dbname": "platform",
        }
    }
    h.write_policy()
    ctx["standby"] = standby
    ctx["rows_at_backup"] = int(
        primary.sql("SELECT count(*) FROM tenants", dbname="platform")[0][0]
    )


@when(parsers.parse('I take a backup of "{name}"'))
def backup_of(h: Harness, name: str) -> None:
    h.run("backup", "--target", name)


@then(parsers.parse('the backup of "{name}" is recorded as taken from a standby'))
def from_standby(h: Harness, name: str) -> None:
    backup = h.json("list")[name]["backups"][-1]
    meta = (h.repo / name / "base" / backup["backup_id"] / "metadata.json").read_text()
    assert '"source": "standby"' in meta


@when(parsers.parse("{n:d} rows are added on the primary after the backup"))
def rows_after(h: Harness, ctx: dict[str, Any], n: int) -> None:
    primary = h.sandbox()
    primary.sql(
        f"INSERT INTO tenants SELECT 900000 + g, 'after-backup-' || g FROM generate_series(1, {n}) g",
        dbname="platform",
    )
    ctx["added"] = n


@when(parsers.parse('I restore the latest backup of "{name}" into a new directory and start it'))
def restore_of(h: Harness, ctx: dict[str, Any], name: str) -> None:
    restore_and_start(h, ctx, h.root / "restored", "--db", name, "--backup", "latest")


@then("the restored server is a primary with the backup-time rows and no WAL receiver")
def independent_primary(h: Harness, ctx: dict[str, Any]) -> None:
    directory, port = ctx["restored"]
    cluster = Cluster(directory, port)
    time.sleep(2)  # a replica would have connected to its primary by now
    assert cluster.sql("SELECT pg_is_in_recovery()")[0][0] is False
    assert cluster.sql("SELECT count(*) FROM pg_stat_wal_receiver")[0][0] == 0
    assert not (directory / "standby.signal").exists()
    rows = int(cluster.sql("SELECT count(*) FROM tenants", dbname="platform")[0][0])
    assert rows == ctx["rows_at_backup"]
    assert cluster.sql(MARK, dbname="platform")[0][0] == 0


@when("I restore the latest backup as a standby of the sandbox and start it")
def restore_standby(h: Harness, ctx: dict[str, Any]) -> None:
    primary = h.sandbox()
    conninfo = f"host=127.0.0.1 port={primary.port} user=platform_service"
    restore_and_start(h, ctx, h.root / "replica", "--standby", "--primary-conninfo", conninfo)


@then("the standby replays them from its primary and stays in recovery")
def standby_follows(h: Harness, ctx: dict[str, Any]) -> None:
    directory, port = ctx["restored"]
    cluster = Cluster(directory, port)
    deadline = time.monotonic() + 60
    seen = 0
    while time.monotonic() < deadline:
        seen = int(cluster.sql(MARK, dbname="platform")[0][0])
        if seen == ctx["added"]:
            break
        time.sleep(0.5)
    assert seen == ctx["added"]
    assert cluster.sql("SELECT pg_is_in_recovery()")[0][0] is True
    assert cluster.sql("SELECT status FROM pg_stat_wal_receiver")[0][0] == "streaming"


@given(parsers.parse('the backups of "{name}" are throttled to {rate} per second'))
def throttled(h: Harness, name: str, rate: str) -> None:
    h.policy["targets"][name]["max_rate"] = rate
    h.write_policy()


@when("the standby is promoted while its backup runs")
def promote_during_backup(h: Harness, ctx: dict[str, Any]) -> None:
    from harness import PGBACKUP

    proc = subprocess.Popen(
        [PGBACKUP, "--config", str(h.config), "backup", "--target", "replica"],
        env=h.env,
        cwd=h.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    standby: Cluster = ctx["standby"]
    # Promote once the backup is under way (its directory holds data).
    deadline = time.monotonic() + 60
    base = h.repo / "replica" / "base"
    while time.monotonic() < deadline and proc.poll() is None:
        if base.exists() and any(f.stat().st_size > 0 for f in base.rglob("*.tar*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the backup ended before the standby could be promoted"
    run_as(
        [standby.program("pg_ctl"), "-D", str(standby.data_dir), "promote", "-w"], standby.os_user
    )
    out, err = proc.communicate(timeout=300)
    ctx["backup"] = (proc.returncode, out, err)


@then("the backup fails and says the standby was promoted")
def failed_promoted(ctx: dict[str, Any]) -> None:
    code, out, err = ctx["backup"]
    assert code != 0, out + err
    assert "promoted" in err, err
    assert "Traceback" not in err


@then(parsers.parse('the repository lists no complete backup of "{name}"'))
def none_complete(h: Harness, name: str) -> None:
    backups = h.json("list")[name]["backups"]
    assert [b for b in backups if b["status"] == "complete"] == [], backups
