"""Fixtures and steps shared by every feature (pytest-bdd)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (  # noqa: F401 (fixture, hook)
    PGBACKUP,
    Harness,
    batches_in,
    check_lost_commits,
    commit_batches,
    do_restore,
    harness_fixture,
    proc_output,
    pytest_runtest_makereport,
    restore_and_start,
    restore_args,
    restore_new,
    restore_to_time,
    rows_in,
    start_with_pg_ctl,
    stop_archiving,
    switch_and_wait_archived,
    wait_until_recovery_ends,
)
from providers import (  # noqa: F401 (option, hook, fixture)
    docker_image,
    provider,
    pytest_addoption,
    pytest_generate_tests,
)
from pytest_bdd import given, parsers, then, when

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from receivers import alert_receivers  # noqa: E402, F401 (fixture: SMTP and webhook receivers)

from pgbackup.postgres.cluster import free_port, server_os_user
from pgbackup.postgres.connection import connect, table_checksums

SAMPLE_TABLES = ["public.tenants", "public.users", "public.sessions"]


def _killed_at_teardown() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def wal_receivers() -> Iterator[list[subprocess.Popen[str]]]:
    """wal-receive processes a scenario started; killed at the end whatever happened."""
    yield from _killed_at_teardown()


@pytest.fixture
def shippers() -> Iterator[list[subprocess.Popen[str]]]:
    """wal-ship processes a scenario started; killed at the end whatever happened."""
    yield from _killed_at_teardown()


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Services a scenario started (moto, emulators, proxies); stopped at its end."""
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture
def undo() -> Iterator[contextlib.ExitStack]:
    """What a scenario damaged or started, put back or stopped at its end, whatever
    happened (recovery_integrity, wal_prefetch)."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def ctx() -> dict[str, Any]:
    """What one step learns and a later step checks (ids, checksums, ports)."""
    return {}


# --- given ------------------------------------------------------------------------------


@given("a sandbox cluster with sample data")
def sandbox_with_data(h: Harness) -> None:
    h.start_source()
    rows = h.sql(h.sandbox(), "SELECT count(*) FROM tenants")
    assert rows[0][0] > 0


@given(parsers.parse("the policy compresses with {method}"))
def policy_compression(h: Harness, method: str) -> None:
    h.policy["compression"] = (
        {"method": method, "level": 1} if method != "none" else {"method": "none"}
    )
    h.write_policy()


@given("the source does not archive WAL")
def no_archiving(h: Harness) -> None:
    stop_archiving(h)


# --- when -------------------------------------------------------------------------------


@when("I take a backup")
@given("a backup was taken")
def take_backup(h: Harness, ctx: dict[str, Any]) -> None:
    h.run("backup")
    ctx.setdefault("backup_ids", []).append(h.backups()[-1]["backup_id"])


@when("I record the table checksums")
def record_checksums(h: Harness, ctx: dict[str, Any]) -> None:
    with connect(h.sandbox().conninfo("platform")) as conn:
        ctx["checksums"] = table_checksums(conn, SAMPLE_TABLES)


@when("I change data in the source")
def change_data(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    h.sql(
        cluster, "INSERT INTO tenants SELECT 900000 + g, 'late-' || g FROM generate_series(1, 50) g"
    )
    h.sql(cluster, "UPDATE users SET email = 'changed@example.com' WHERE id % 3 = 0")
    h.sql(cluster, "DELETE FROM sessions WHERE id % 5 = 0")
    with connect(cluster.conninfo("platform")) as conn:
        assert table_checksums(conn, SAMPLE_TABLES) != ctx["checksums"]


@when("I restore the latest backup into a new directory and start it")
def restore_latest(h: Harness, ctx: dict[str, Any]) -> None:
    restore_and_start(h, ctx, h.root / "restored", "--backup", "latest")


@when("I take a backup expecting failure")
def backup_fails(h: Harness) -> None:
    h.run("backup", expect_ok=False)


@when("I verify the latest backup expecting failure")
def verify_fails(h: Harness) -> None:
    h.run("verify", "--backup", "latest", expect_ok=False)


@when("I run cleanup")
def run_cleanup(h: Harness) -> None:
    h.run("cleanup")


@when(parsers.re(r'I run "(?P<command>[^"]+)"( again)?$'))
def run_command(h: Harness, command: str) -> None:
    h.run(*command.split())


@when(parsers.re(r'I run "(?P<command>[^"]+)" expecting failure$'))
def run_failing(h: Harness, command: str) -> None:
    h.run(*command.split(), expect_ok=False)


@given("a drill ran")
@when("I run a drill that passes")
def drill_ran(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["drill"] = h.json("drill")["platform"]
    assert ctx["drill"]["status"] == "ok", ctx["drill"]


@when("the local repository is lost")
def lose_local(h: Harness) -> None:
    os.rename(h.repo / "platform", h.root / "lost-repository")
    assert not (h.repo / "platform" / "base").exists()


@when("I restore the latest point from the repository and start it")
def restore_latest_point(h: Harness, ctx: dict[str, Any]) -> None:
    restore_and_start(h, ctx, h.root / "restored", "--target", "latest")


# --- then -------------------------------------------------------------------------------


@then("the restored tables have the recorded checksums")
def restored_checksums(h: Harness, ctx: dict[str, Any]) -> None:
    target_dir, port = ctx["restored"]
    cluster = h.track(target_dir, port)
    with connect(cluster.conninfo("platform")) as conn:
        assert table_checksums(conn, SAMPLE_TABLES) == ctx["checksums"]


@then("the restored data directory has mode 0700 and belongs to the server user")
def restored_mode(h: Harness, ctx: dict[str, Any]) -> None:
    import pwd

    target_dir: Path = ctx["restored"][0]
    st = target_dir.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    user = server_os_user()
    expected_uid = pwd.getpwnam(user).pw_uid if user else st.st_uid
    assert st.st_uid == expected_uid
    for path in (target_dir / "base", target_dir / "global" / "pg_control"):
        assert path.stat().st_uid == expected_uid


@then(parsers.parse('the command fails with exit status {code:d} and says "{text}"'))
def fails_with(h: Harness, code: int, text: str) -> None:
    assert h.last is not None
    assert h.last.returncode == code, (h.last.returncode, h.last.stdout, h.last.stderr)
    output = h.last.stdout + h.last.stderr
    assert text in output, output
    assert "Traceback" not in output


@then(parsers.parse('the command fails and says "{text}"'))
def fails_saying(h: Harness, text: str) -> None:
    assert h.last is not None
    output = h.last.stdout + h.last.stderr
    assert h.last.returncode != 0, output
    assert text in output, output
    assert "Traceback" not in output


@then("the push succeeds")
def push_ok(h: Harness) -> None:
    assert h.last is not None and h.last.returncode == 0, h.last.stderr if h.last else None


@then(parsers.parse("the restored server holds batches 1 to {n:d}"))
def holds(h: Harness, ctx: dict[str, Any], n: int) -> None:
    # container_image.feature: batches 3 and 4 are only in the .partial the container
    # stored (archiving is off)
    assert batches_in(h, ctx) == list(range(1, n + 1))


# --- point-in-time recovery (pitr, timelines, incremental, wal_prefetch features) --------


@given(
    parsers.parse("{count:d} batches were committed and archived, each with its recovery points")
)
def batches(h: Harness, ctx: dict[str, Any], count: int) -> None:
    cluster = h.sandbox()
    ctx["points"] = commit_batches(cluster, 1, count)
    switch_and_wait_archived(cluster)


@then(parsers.parse("the restored cluster holds batches {present} and no others"))
def holds_batches(h: Harness, ctx: dict[str, Any], present: str) -> None:
    expected = [] if present == "none" else [int(x) for x in present.split(",")]
    assert batches_in(h, ctx) == expected


@then("verify --wal reports continuous WAL")
def wal_continuous(h: Harness) -> None:
    out = h.json("verify", "--wal")
    assert out["platform"]["wal"]["gaps"] == []
    assert out["platform"]["wal"]["segments"] >= 2


@when(parsers.parse("I restore to the {kind} target recorded after batch {n:d}"))
def restore_to(h: Harness, ctx: dict[str, Any], kind: str, n: int) -> None:
    point = ctx["points"][n - 1] if n else None
    do_restore(h, ctx, restore_args(kind, point))


@when(parsers.parse("I restore to the time after batch {n:d} and promote it with archiving on"))
def restore_promote(h: Harness, ctx: dict[str, Any], n: int) -> None:
    port = free_port()
    directory = h.root / "timeline2"
    h.track(directory, port)
    h.run(
        "restore",
        "--to",
        str(directory),
        "--start",
        "--port",
        str(port),
        "--target-time",
        ctx["points"][n - 1]["time"],
    )
    ctx["tl2"] = (directory, port)


@when(parsers.parse('I restore the latest point following timeline "{tli}"'))
def restore_latest_tl(h: Harness, ctx: dict[str, Any], tli: str) -> None:
    do_restore(h, ctx, ["--target", "latest", "--target-timeline", tli])


@when("I restore to the recorded time into a new directory and start it")
def restore_pitr(h: Harness, ctx: dict[str, Any]) -> None:
    restore_to_time(h, ctx)


@then(parsers.parse("it runs on timeline {tli:d}"))
def runs_on(h: Harness, ctx: dict[str, Any], tli: int) -> None:
    directory, port = ctx["restored"]
    cluster = h.track(directory, port)
    assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] == tli
    assert batches_in(h, ctx)  # whole batches only


# --- restores that may fail (recovery_integrity, wal_prefetch features) -----------------
# ctx["h"] is the harness of the scenario's archive; ctx["segment_of"] {batch: segment}.


@when("I restore to the latest point")
def restore_latest_may_fail(ctx: dict[str, Any]) -> None:
    restore_new(ctx, "--target", "latest")


@when("I restore to the latest point without starting the server")
def restore_latest_no_start(ctx: dict[str, Any]) -> None:
    restore_new(ctx, "--target", "latest", start=False)


@when("I start the restored server with pg_ctl")
def start_pg_ctl(ctx: dict[str, Any]) -> None:
    assert ctx["proc"].returncode == 0, proc_output(ctx)  # the restore without --start
    wait_until_recovery_ends(start_with_pg_ctl(ctx))


@then(parsers.parse("the restore succeeded with all {n:d} rows"))
@then(parsers.parse("the restore succeeded with the first {n:d} rows"))
def restored_rows(ctx: dict[str, Any], n: int) -> None:
    assert ctx["proc"].returncode == 0, proc_output(ctx)
    directory, port = ctx["restored"]
    assert rows_in(directory, port) == n
    if "proxy" in ctx and ctx.get("damaged"):  # recovery_integrity's S3 fault did happen
        assert ctx["proxy"].counts["503"] == 1, ctx["proxy"].counts


@then(parsers.parse("it fails and names the segment holding batch {batch:d}"))
def fails_naming_segment(ctx: dict[str, Any], batch: int) -> None:
    proc = ctx["proc"]
    text = proc_output(ctx)
    assert proc.returncode != 0, f"exited 0 with a damaged archive:\n{text}"
    assert "Traceback" not in text, text
    segment = ctx["segment_of"][batch]
    if "drill" in ctx:
        assert ctx["drill"]["status"] == "failed", ctx["drill"]
        assert segment in (ctx["drill"]["error"] or ""), ctx["drill"]
    else:
        assert segment in proc.stderr, text


@then(parsers.parse("no restored server holds fewer than the {n:d} rows"))
def no_short_server(ctx: dict[str, Any], n: int) -> None:
    if "drill" in ctx:
        assert not ctx["drill"]["checks"], ctx["drill"]  # stopped before any check ran
        return
    directory, port = ctx["restored"]
    rows = rows_in(directory, port)
    assert rows is None or rows == n, f"a restored server serves {rows} rows"
    assert not directory.exists() or not any(directory.iterdir()), (
        f"a failed restore left files in {directory}: {sorted(os.listdir(directory))}\n"
        f"{proc_output(ctx)}"
    )


# --- wal-receive (wal_receiver.feature, wal_ship.feature) -------------------------------


@when("the receiver is started")
def start_receiver(h: Harness, ctx: dict[str, Any], wal_receivers: list[Any]) -> None:
    proc = subprocess.Popen(
        [PGBACKUP, "--config", str(h.config), "wal-receive", "--target", "platform"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.env,
        cwd=h.root,
    )
    wal_receivers.append(proc)
    ctx["receiver"] = proc
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("streaming platform on slot"), (
        line,
        proc.stderr.read() if proc.poll() is not None else "",
    )
    cluster = h.sandbox()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cluster.sql(
            f"SELECT active FROM pg_replication_slots WHERE slot_name = '{ctx['slot']}'"
        ) == [(True,)]:
            return
        time.sleep(0.2)
    raise AssertionError("the receiver never became active on its slot")


def _commit_stream(h: Harness, acked: list[tuple[int, float]], stop: threading.Event) -> None:
    cluster = h.sandbox()
    cluster.sql("CREATE TABLE stream_log (n int PRIMARY KEY)", dbname="platform")
    try:
        with cluster.connect("platform") as conn:
            conn.autocommit = True
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO stream_log VALUES (%s)", (n,))
                acked.append((n, time.monotonic()))
    except Exception:  # the server was killed under it: the point of the scenario
        pass


@when(
    parsers.parse(
        "single-row commits stream for {seconds:d} seconds, then the primary and the receiver are killed"
    )
)
def crash(h: Harness, ctx: dict[str, Any], seconds: int) -> None:
    crash_primary(h, ctx, seconds, kill_receiver=True)


@when(
    parsers.parse("single-row commits stream for {seconds:d} seconds, then the primary is killed")
)
def crash_primary(
    h: Harness, ctx: dict[str, Any], seconds: int, kill_receiver: bool = False
) -> None:
    acked: list[tuple[int, float]] = []
    stop = threading.Event()
    writer = threading.Thread(target=_commit_stream, args=(h, acked, stop))
    writer.start()
    time.sleep(seconds)
    h.sandbox().stop("immediate")  # pg_ctl stop -m immediate: no shutdown checkpoint
    if kill_receiver:
        ctx["receiver"].kill()  # and nothing is flushed after the crash either
        ctx["receiver"].wait()
    stop.set()
    writer.join(30)
    assert len(acked) > 100, f"only {len(acked)} commits in {seconds}s"
    ctx["acked"] = acked


@then(
    parsers.parse(
        "every recovered commit was acknowledged and at most {bound:d} seconds of commits are lost"
    )
)
def lost_commits(h: Harness, ctx: dict[str, Any], bound: int) -> None:
    check_lost_commits(h, ctx, bound)


# --- Docker (drill.feature, container_image.feature) -----------------------------------


@given("a Docker engine answers")
def docker_answers() -> None:
    """The engine answers and pgbackup's image is built (skips, saying why, when no engine
    can be had)."""
    docker_image()


@when("rows are added after the backup and their WAL is archived")
def add_rows(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    h.sql(
        cluster, "INSERT INTO tenants SELECT 700000 + g, 'late-' || g FROM generate_series(1, 5) g"
    )
    closed = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        last = cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= closed:
            break
        time.sleep(0.3)
    ctx["source_lsn"] = cluster.sql("SELECT pg_current_wal_lsn()::text")[0][0]


# --- the PostgreSQL version axis (features/versions.py) ---------------------------------


def pytest_addhooks(pluginmanager: Any) -> None:
    """--pg-version/--all-versions, the version parametrization and the per-version record
    are a plugin of their own (providers' hooks already hold this module's hook names)."""
    import versions

    versions.register(pluginmanager)
