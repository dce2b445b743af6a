"""Steps for wal_receiver.feature: real pg_receivewal, real crashes, commits counted."""

from __future__ import annotations

import json
import shutil
import signal
import time
from typing import Any

from harness import Harness, batches_in, commit_batches, restore_and_start
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("wal_receiver.feature")


@given(parsers.parse('the target streams WAL to the repository on slot "{slot}"'))
def streams(h: Harness, ctx: dict[str, Any], slot: str) -> None:
    h.policy["targets"]["platform"]["wal_receiver"] = {
        "slot": slot,
        "directory": str(h.root / "spool"),
    }
    h.write_policy()
    ctx["slot"] = slot


@when(parsers.parse("{n:d} batches are committed"))
def batches(h: Harness, ctx: dict[str, Any], n: int) -> None:
    ctx["points"] = commit_batches(h.sandbox(), 1, n)
    time.sleep(1.5)  # the newest commits reach the repository's partial copy


@then(parsers.parse("a restore to the time after batch {k:d} holds batches 1 to {k2:d}"))
def pitr_from_stream(h: Harness, ctx: dict[str, Any], k: int, k2: int) -> None:
    assert not list((h.repo / "platform").glob("wal/*.backup*")), "archive_command ran"
    directory = h.root / "pitr"
    restore_and_start(h, ctx, directory, "--target-time", ctx["points"][k - 1]["time"])
    assert batches_in(h, ctx) == list(range(1, k2 + 1))
    h.track(*ctx["restored"]).stop("immediate")


@when("the primary's data directory is discarded")
def discard(h: Harness) -> None:
    shutil.rmtree(h.sandbox().data_dir)


@when("the receiver is killed with SIGKILL")
def kill_receiver(ctx: dict[str, Any]) -> None:
    ctx["receiver"].send_signal(signal.SIGKILL)
    ctx["receiver"].wait()


@when(parsers.parse("the server writes {n:d} WAL segments while no receiver runs"))
def write_while_down(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    time.sleep(1)  # pg_receivewal ends with its parent (PR_SET_PDEATHSIG)
    assert cluster.sql(
        f"SELECT active FROM pg_replication_slots WHERE slot_name = '{ctx['slot']}'"
    ) == [(False,)]
    ctx["lsn_before"] = cluster.sql("SELECT pg_current_wal_lsn()::text")[0][0]
    cluster.sql("CREATE TABLE down_rows (n int)", dbname="platform")
    for i in range(n):
        cluster.sql(
            f"INSERT INTO down_rows SELECT g FROM generate_series({i * 1000 + 1}, {(i + 1) * 1000}) g",
            dbname="platform",
        )
        cluster.sql("SELECT pg_switch_wal()")
    cluster.sql("INSERT INTO down_rows VALUES (0)", dbname="platform")
    ctx["down_rows"] = n * 1000 + 1


@then("the slot holds that WAL for the receiver")
def slot_holds(h: Harness, ctx: dict[str, Any]) -> None:
    status, behind = h.sandbox().sql(
        "SELECT wal_status, restart_lsn <= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s".replace(
            "%s::pg_lsn", f"'{ctx['lsn_before']}'::pg_lsn"
        ).replace("%s", f"'{ctx['slot']}'")
    )[0]
    assert status in ("reserved", "extended") and behind


@then("every segment up to the server's current one is archived, without a gap")
def no_gap(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.formats.lsn import parse_lsn, parse_segment_name, segment_name

    current = h.sandbox().sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    backup = h.backups()[-1]
    tli, last = parse_segment_name(current) or (0, 0)
    first = parse_lsn(backup["start_lsn"]) // (16 * 1024 * 1024)
    wanted = [segment_name(tli, s * 16 * 1024 * 1024) for s in range(first, last + 1)]
    wal = h.repo / "platform" / "wal"
    missing: list[str] = wanted
    deadline = time.monotonic() + 60
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        stored = {p.name for p in wal.iterdir()}
        # the current segment may still be in progress: its .partial copy counts
        missing = [
            w
            for w in wanted
            if f"{w}.zst" not in stored and not (w == current and f"{w}.partial.zst" in stored)
        ]
    assert not missing, f"not archived: {missing}"
    # the SIGKILLed receiver's stored segments are no more than once, and none is partial
    assert all(not (wal / f"{w}.partial.zst").exists() for w in wanted[:-1])


@then("the receiver stops on SIGTERM with exit status 0")
def stop_receiver(ctx: dict[str, Any]) -> None:
    proc = ctx["receiver"]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, out, err)
    assert "stopped:" in out


@then("restoring the latest point holds every row written while the receiver was down")
def restore_down_rows(h: Harness, ctx: dict[str, Any]) -> None:
    restore_and_start(h, ctx, h.root / "restored", "--target", "latest")
    cluster = h.track(*ctx["restored"])
    assert (
        cluster.sql("SELECT count(*) FROM down_rows", dbname="platform")[0][0] == ctx["down_rows"]
    )


@when("the receiver's role loses the REPLICATION attribute")
def no_replication(h: Harness) -> None:
    h.sandbox().sql("ALTER ROLE platform_service NOREPLICATION")


@then(parsers.parse('wal-receive fails with exit status {code:d} and says "{text}"'))
def receive_fails(h: Harness, code: int, text: str) -> None:
    proc = h.run("wal-receive", "--target", "platform", expect_ok=False, timeout=60)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert text in proc.stderr and "Traceback" not in proc.stderr


@given(parsers.parse("the server keeps at most {size} of WAL for slots"))
def keep_size(h: Harness, size: str) -> None:
    cluster = h.sandbox()
    cluster.sql(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{size}'")
    cluster.sql("ALTER SYSTEM SET max_wal_size = '32MB'")
    cluster.sql("ALTER SYSTEM SET wal_keep_size = 0")
    cluster.sql("SELECT pg_reload_conf()")


def _check(h: Harness, name: str) -> dict[str, Any]:
    proc = h.run("check", "--json", "--target", "platform", expect_ok=None)
    report = json.loads(proc.stdout)["platform"]
    found = [c for c in report["checks"] if c["name"] == name]
    assert found, (name, report["checks"])
    return dict(found[0])


SEVERITY = {"OK": 0, "WARNING": 1, "CRITICAL": 2}


@then(parsers.parse('check reports "{name}" {status} with "{text}" within 20 seconds'))
def check_reports(h: Harness, name: str, status: str, text: str) -> None:
    deadline = time.monotonic() + 20  # the slot turns inactive once pg_receivewal has gone
    while True:
        found = _check(h, name)
        if status.startswith("at least "):
            ok = SEVERITY.get(found["status"], 3) >= SEVERITY[status.removeprefix("at least ")]
        else:
            ok = found["status"] == status
        if (ok and text in found["summary"]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ok and text in found["summary"], found


@when(parsers.parse('a slot "{slot}" is left behind'))
def stray_slot(h: Harness, slot: str) -> None:
    h.sandbox().sql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")


@when(parsers.parse('the slot "{slot}" is dropped'))
def drop_slot(h: Harness, slot: str) -> None:
    h.sandbox().sql(f"SELECT pg_drop_replication_slot('{slot}')")


@then("plan shows the receiver's command and recommends max_slot_wal_keep_size")
def plan_shows(h: Harness, ctx: dict[str, Any]) -> None:
    rx = h.json("plan")["targets"][0]["wal_receiver"]
    assert rx["slot"] == ctx["slot"] and "wal-receive --target platform" in rx["command"]
    assert "max_slot_wal_keep_size" in rx["postgresql_conf"]
    assert "synchronous_standby_names" not in rx["postgresql_conf"]
    text = h.run("plan").stdout
    assert "WAL receiver (asynchronous" in text and "max_slot_wal_keep_size" in text


@given(parsers.parse('the target streams WAL synchronously on slot "{slot}"'))
def streams_sync(h: Harness, ctx: dict[str, Any], slot: str) -> None:
    streams(h, ctx, slot)
    h.policy["targets"]["platform"]["wal_receiver"]["synchronous"] = True
    h.write_policy()


@when("the server waits for the receiver as plan says")
def sync_standby(h: Harness, ctx: dict[str, Any]) -> None:
    conf = h.json("plan")["targets"][0]["wal_receiver"]["postgresql_conf"]
    names = conf["synchronous_standby_names"]
    assert names == f"'{ctx['slot']}'"
    cluster = h.sandbox()
    cluster.sql(f"ALTER SYSTEM SET synchronous_standby_names = {names}")
    cluster.sql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while cluster.sql("SELECT sync_state FROM pg_stat_replication") != [("sync",)]:
        assert time.monotonic() < deadline, cluster.sql("SELECT * FROM pg_stat_replication")
        time.sleep(0.2)


@then("no acknowledged commit is lost")
def none_lost(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.track(*ctx["restored"])
    count, highest = cluster.sql("SELECT count(*), max(n) FROM stream_log", dbname="platform")[0]
    last_acked = max(n for n, _t in ctx["acked"])
    print(f"synchronous: commits acknowledged {last_acked}, recovered {highest}")
    assert count == highest and last_acked <= highest <= last_acked + 1
