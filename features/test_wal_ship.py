"""Steps for wal_ship.feature: real PostgreSQL archiving, a real wal-ship process, local
and moto-S3 destinations, a lost host restored from its off-site copy."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

from harness import (
    PGBACKUP,
    Harness,
    check_lost_commits,
    commit_batches,
    restore_and_start,
    stop_archiving,
    switch_and_wait,
)
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.storage import open_storage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import services  # noqa: E402

scenarios("wal_ship.feature")


@given(parsers.parse('a {kind} upload destination "{name}"'))
def destination(
    h: Harness, ctx: dict[str, Any], stack: contextlib.ExitStack, kind: str, name: str
) -> None:
    if kind == "local":
        spec: dict[str, Any] = {"name": name, "path": str(h.root / name)}
        # As an administrator prepares a NAS mount: owned by the server's OS user, whose
        # restored server reads WAL from it (wal-fetch --from).
        path = h.root / name
        path.mkdir(mode=0o750)
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)
        ctx["dest_env"] = {}
    else:
        assert kind == "s3", kind
        service, env = stack.enter_context(services.moto_s3())
        h.env.update(env)
        spec = {"name": name, **service}
        ctx["dest_env"] = env
    ctx["dest"] = spec
    h.policy["uploads"] = [spec]
    h.write_policy()


@given(parsers.parse("the RPO objective is {rpo}"))
def rpo_objective(h: Harness, rpo: str) -> None:
    h.policy["sla"]["rpo"] = rpo
    h.write_policy()


def dest_storage(ctx: dict[str, Any]) -> Any:
    with mock.patch.dict(os.environ, ctx["dest_env"]):
        return open_storage({k: v for k, v in ctx["dest"].items() if k != "name"})


def names_at(ctx: dict[str, Any], storage: Any | None = None) -> dict[str, str]:
    """WAL file name -> stored key at the destination."""
    storage = storage or dest_storage(ctx)
    with mock.patch.dict(os.environ, ctx["dest_env"]):
        keys = [i.key for i in storage.list("platform/wal/")]
    return {k.rsplit("/", 1)[-1].split(".zst")[0]: k for k in keys}


def archived_names(h: Harness, ctx: dict[str, Any]) -> set[str]:
    """What the repository archived from the first segment the destination's backup copy
    needs (older WAL is of no use there; uploads never copy it)."""
    names = {p.name.split(".zst")[0] for p in (h.repo / "platform" / "wal").iterdir()}
    first = ctx.get("first_needed", "")
    return {n for n in names if n[:24] >= first or not n[:1].isdigit() or n.endswith(".history")}


@when("wal-ship is started")
def start_shipper(h: Harness, ctx: dict[str, Any], shippers: list[Any]) -> None:
    from pgbackup.formats.lsn import parse_lsn, segment_name

    ctx["after_backup"] = names_at(ctx)
    [backup] = h.backups()
    ctx["first_needed"] = segment_name(
        int(backup["timeline"]), parse_lsn(backup["start_lsn"]), 16 * 1024 * 1024
    )
    proc = subprocess.Popen(
        [PGBACKUP, "--config", str(h.config), "wal-ship", "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.env,
        cwd=h.root,
    )
    shippers.append(proc)
    ctx["shipper"] = proc
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("shipping WAL of platform to"), (
        line,
        proc.stderr.read() if proc.poll() is not None else "",
    )


@when(
    parsers.parse("{n:d} batches are committed, each closing a WAL segment whose shipping is timed")
)
def batches_switched(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    ctx["failed_before"] = cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    ctx["archived_at"] = {}
    storage = dest_storage(ctx)
    ctx["delays"] = []
    for i in range(1, n + 1):
        commit_batches(cluster, i, i)
        segment = switch_and_wait(h)
        archived = time.monotonic()
        ctx["archived_at"][segment] = archived
        if ctx.get("down") or "shipper" not in ctx:
            continue
        while segment not in names_at(ctx, storage):
            assert time.monotonic() - archived < 30, f"{segment} never reached the destination"
            time.sleep(0.1)
        ctx["delays"].append(time.monotonic() - archived)


@then(
    parsers.parse(
        'every archived WAL file was at "{name}" within {seconds:d} seconds of its archiving'
    )
)
def within_bound(h: Harness, ctx: dict[str, Any], name: str, seconds: int) -> None:
    assert len(ctx["delays"]) == len(ctx["archived_at"])
    assert max(ctx["delays"]) <= seconds, ctx["delays"]
    there = names_at(ctx)
    assert archived_names(h, ctx) <= set(there), sorted(archived_names(h, ctx) - set(there))


@then(parsers.parse('check reports "{check}" {status} with "{text}"'))
def check_reports(h: Harness, check: str, status: str, text: str) -> None:
    import json

    proc = h.run("check", "--no-alert", "--json", expect_ok=None)
    report = json.loads(proc.stdout)["platform"]
    found = [c for c in report["checks"] if c["name"] == check]
    assert found, [c["name"] for c in report["checks"]]
    assert found[0]["status"] == status, found
    assert text in found[0]["summary"], found


@then(
    parsers.parse(
        'list shows at "{name}" the repository\'s recoverable window, {lag:d} seconds behind'
    )
)
def list_window(h: Harness, name: str, lag: int) -> None:
    info = h.json("list")["platform"]
    there = info["uploads"][name]
    assert there["latest_lsn"] == info["window"]["latest_lsn"], (there, info["window"])
    assert there["earliest_time"] == info["window"]["earliest_time"]
    assert there["lag_seconds"] == lag
    text = h.run("list").stdout
    assert f"at {name}: {there['earliest_time']} .. {there['latest_time']}" in text, text
    assert text.count(f"  at {name}: ") == 1, text


@then(parsers.parse('the SLA report\'s RPO verdict is {verdict}, saying "{text}"'))
def sla_rpo(h: Harness, verdict: str, text: str) -> None:
    import json

    report = json.loads(h.run("sla-report", "--format", "json").stdout)["platform"]
    rpo = report["sections"]["rpo"]
    assert rpo["verdict"] == verdict, rpo
    assert any(text in r for r in rpo["reasons"]), rpo["reasons"]
    assert rpo["host_loss_worst_exposure_seconds"] > 4


@then("wal-ship stops on SIGTERM with exit status 0")
def stops(ctx: dict[str, Any]) -> None:
    proc = ctx["shipper"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


@when(parsers.parse('I restore from "{name}" the latest point and start it'))
def restore_latest_from(h: Harness, ctx: dict[str, Any], name: str) -> None:
    restore_and_start(h, ctx, h.root / "restored", "--from", name, "--target", "latest")


@when(parsers.parse('the destination "{name}" goes down'))
def goes_down(h: Harness, ctx: dict[str, Any], name: str) -> None:
    # An unmounted NAS: the directory is gone and something else sits at its path.
    path = h.root / name
    os.rename(path, h.root / f"{name}.away")
    path.write_text("not mounted\n")
    ctx["down"] = True


@when(parsers.parse('the destination "{name}" comes back'))
def comes_back(h: Harness, ctx: dict[str, Any], name: str) -> None:
    path = h.root / name
    path.unlink()
    os.rename(h.root / f"{name}.away", path)
    ctx["down"] = False
    ctx["back_at"] = time.monotonic()


@then("PostgreSQL archived every segment into the repository without a failure")
def archived_fine(h: Harness, ctx: dict[str, Any]) -> None:
    failed = h.sandbox().sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    assert failed == ctx["failed_before"]
    assert set(ctx["archived_at"]) <= archived_names(h, ctx)


@then(parsers.parse('every archived WAL file is at "{name}" within {seconds:d} seconds'))
def caught_up(h: Harness, ctx: dict[str, Any], name: str, seconds: int) -> None:
    deadline = time.monotonic() + seconds
    while not archived_names(h, ctx) <= set(names_at(ctx)):
        assert time.monotonic() < deadline, sorted(archived_names(h, ctx) - set(names_at(ctx)))
        time.sleep(0.2)


@then(parsers.parse('"{name}" received the segments in order, each once'))
def in_order(h: Harness, ctx: dict[str, Any], name: str) -> None:
    wal = h.root / name / "platform" / "wal"
    files = list(wal.iterdir())
    segments = [
        p
        for p in files
        if len(p.name.split(".")[0]) == 24 and p.name.split(".")[0] not in ctx["after_backup"]
    ]
    assert len(segments) >= 3
    by_arrival = sorted(segments, key=lambda p: (p.stat().st_mtime_ns, p.name))
    assert [p.name for p in by_arrival] == sorted(p.name for p in segments)
    proc = ctx["shipper"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # Each once: the files wal-ship says it copied are exactly the ones the backup's
    # upload had not brought, however many rounds failed in between.
    log = (h.repo / "backup.log").read_text()
    assert f"{name} reachable again" in log, log[-2000:]
    shipped = sum(
        int(line.split(": ", 1)[1].split()[0])
        for line in log.splitlines()
        if f"WAL files to {name}" in line and "wal-ship platform:" in line
    )
    assert shipped == len(files) - len(ctx["after_backup"]), (shipped, len(files))


@when(parsers.parse("{seconds:d} seconds pass"))
def wait(seconds: int) -> None:
    time.sleep(seconds)


@when("I run wal-ship --once")
def ship_once(h: Harness) -> None:
    h.run("wal-ship", "--once")


@when(parsers.parse("I run wal-ship with {args} expecting failure"))
def ship_bad(h: Harness, args: str) -> None:
    if args == "no uploads":
        h.policy.pop("uploads")
        h.write_policy()
        h.run("wal-ship", "--once", expect_ok=False)
    else:
        h.run("wal-ship", "--once", *args.split(), expect_ok=False)
    assert h.last is not None and "Traceback" not in h.last.stderr


@then(
    parsers.parse(
        'plan says to run wal-ship as a service: WAL at "{name}" about {seconds:g} second after it is archived'
    )
)
def plan_wal_ship(h: Harness, name: str, seconds: float) -> None:
    ship = h.json("plan")["targets"][0]["wal_shipping"]
    assert ship["by"] == "wal-ship" and ship["destinations"] == [name], ship
    assert "wal-ship --target platform" in ship["command"], ship
    assert ship["interval_seconds"] == seconds, ship
    assert ship["unit"] == "examples/pgbackup-wal-ship@.service"
    assert (Path(__file__).resolve().parent.parent / ship["unit"]).is_file()
    # archive_timeout: half the 5-minute RPO; the off-site RPO is that plus a round
    assert ship["archive_timeout_seconds"] == 150, ship
    text = " ".join(h.run("plan").stdout.split())  # rich wraps long lines
    assert (
        f"WAL to upload destinations: run `pgbackup --config {h.config} wal-ship --target "
        f"platform` as a service" in text
    ), text
    assert f"at {name} about {seconds:g}s plus the copy time after it is archived" in text, text
    assert "off-site RPO is about 151s" in text, text


@when(parsers.parse('the target streams WAL on slot "{slot}"'))
def streams_policy_only(h: Harness, slot: str) -> None:
    h.policy["targets"]["platform"]["wal_receiver"] = {"slot": slot}
    h.write_policy()


@then(
    parsers.parse(
        'plan says wal-receive ships what it streams to "{name}", a round every {seconds:g} seconds'
    )
)
def plan_receiver_ships(h: Harness, name: str, seconds: float) -> None:
    ship = h.json("plan")["targets"][0]["wal_shipping"]
    assert ship["by"] == "wal-receive" and ship["destinations"] == [name], ship
    assert "wal-receive --target platform" in ship["command"], ship
    assert ship["interval_seconds"] == seconds, ship
    text = " ".join(h.run("plan").stdout.split())
    assert (
        f"wal-receive ships what it streams (its .partial included) to {name} itself, "
        f"a round every {seconds:g}s" in text
    ), text
    assert "no wal-ship needed for this target" in text and "wal-ship --target" not in text, text


# --- wal-receive ships too (the receiver's steps are in conftest.py) ----------------------


@given(parsers.parse('the target only streams WAL, on slot "{slot}"'))
def streams_only(h: Harness, ctx: dict[str, Any], slot: str) -> None:
    import test_wal_receiver as receiver

    stop_archiving(h)
    receiver.streams(h, ctx, slot)


@then(
    parsers.parse(
        "with the local repository still gone, every recovered commit was acknowledged"
        " and at most {bound:d} seconds of commits are lost"
    )
)
def lost_commits_offsite(h: Harness, ctx: dict[str, Any], bound: int) -> None:
    assert not (h.repo / "platform").exists()  # restored from the destination alone
    check_lost_commits(h, ctx, bound)
