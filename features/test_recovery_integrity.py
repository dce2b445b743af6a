"""Steps for recovery_integrity.feature: damaged archives never restore with rows missing.

One archive per storage kind is built once for the module (a backup, then three batches
of 100 rows, each in its own WAL segment); each scenario damages the segment holding
batch 2 and puts it back afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Harness,
    commit_batches,
    module_harness,
    proc_output,
    restore_new,
    switch_and_wait_archived,
)
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import services  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402

scenarios("recovery_integrity.feature")

BATCHES = (1, 2, 3)
TABLE = "CREATE TABLE IF NOT EXISTS pitr_batches (batch int, label text, n int)"


# --- the archives, built once per module ------------------------------------------------


def build_archive(h: Harness) -> dict[str, Any]:
    h.run("sandbox.up")
    cluster = h.sandbox()
    cluster.sql(TABLE, dbname="platform")
    switch_and_wait_archived(cluster)
    h.run("backup")
    points: dict[int, dict[str, Any]] = {}
    segment_of: dict[int, str] = {}
    for b in BATCHES:
        points[b] = commit_batches(cluster, b, b)[0]
        segment_of[b] = cluster.sql(f"SELECT pg_walfile_name('{points[b]['lsn']}')")[0][0]
        switch_and_wait_archived(cluster)
    assert len(set(segment_of.values())) == 3, segment_of
    return {"h": h, "points": points, "segment_of": segment_of}


@pytest.fixture(scope="module")
def archives() -> Iterator[dict[str, Any]]:
    """storage kind -> its archive (built on first use)."""
    with contextlib.ExitStack() as stack:
        built: dict[str, Any] = {}

        def get(kind: str) -> dict[str, Any]:
            if kind in built:
                return built[kind]
            h = stack.enter_context(module_harness())
            env: dict[str, Any] = {}
            if kind == "s3":
                spec, aws = stack.enter_context(services.moto_s3())
                upstream = int(spec["endpoint_url"].rsplit(":", 1)[1])
                proxy = stack.enter_context(FaultProxy(upstream, seed=10, rate=0.0))
                proxy.enabled = False
                h.env.update(aws)
                h.policy["repository"] = dict(spec, endpoint_url=proxy.url, retries=1)
                h.write_policy()
                env["proxy"] = proxy
            env.update(build_archive(h))
            built[kind] = env
            return env

        yield {"get": get}


@given(parsers.parse("an archive on {kind} with three batches after the backup"))
def archive_on(archives: dict[str, Any], ctx: dict[str, Any], kind: str) -> None:
    ctx.update(archives["get"](kind))
    ctx["kind"] = kind


def segment_file(ctx: dict[str, Any]) -> Path:
    h: Harness = ctx["h"]
    return h.repo / "platform" / "wal" / f"{ctx['segment_of'][2]}.zst"


@given(parsers.parse("the segment holding batch 2 is {damage}"))
def damage_segment(ctx: dict[str, Any], undo: contextlib.ExitStack, damage: str) -> None:
    segment = ctx["segment_of"][2]
    ctx["damaged"] = segment
    ctx["damage"] = damage
    if ctx["kind"] == "s3":
        proxy: FaultProxy = ctx["proxy"]
        proxy.only = lambda method, path: method == "GET" and segment in path
        proxy.faults = ("503",)
        proxy.rate = 1.0
        proxy.max_faults = 1 if damage == "failing on the first GET only" else 10**6
        proxy.counts = dict.fromkeys(proxy.counts, 0)
        proxy.enabled = True

        def heal() -> None:
            proxy.enabled = False
            proxy.only = None

        undo.callback(heal)
        return
    path = segment_file(ctx)
    saved = path.with_name(path.name + ".saved-by-test")
    shutil.copy2(path, saved)
    st = path.stat()

    def put_back() -> None:
        shutil.copy2(saved, path)
        os.chown(path, st.st_uid, st.st_gid)  # wal-fetch runs as the server's OS user
        os.chmod(path, st.st_mode)
        saved.unlink()

    undo.callback(put_back)
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x5A
        path.write_bytes(bytes(data))
    elif damage == "missing":
        path.unlink()
    elif damage == "unreadable":
        os.chmod(path, 0)
    else:
        raise AssertionError(f"unknown damage {damage!r}")


# --- actions ----------------------------------------------------------------------------


@when("I restore to a time after the damage")
def restore_after_damage(ctx: dict[str, Any]) -> None:
    # After batch 2's commit and before batch 3's: an intact archive restores 200 rows.
    restore_new(ctx, "--target-time", ctx["points"][2]["time"])


@when("I run a drill")
def drill(ctx: dict[str, Any]) -> None:
    h: Harness = ctx["h"]
    ctx["proc"] = h.run("drill", "--json", expect_ok=None)
    ctx["drill"] = json.loads(ctx["proc"].stdout)["platform"]


@when("I run the command the message suggests")
def run_suggestion(ctx: dict[str, Any]) -> None:
    text = ctx["proc"].stderr
    match = re.search(r"pgbackup (restore --backup \S+ --target-lsn \S+) --to DIR", text)
    assert match, text
    restore_new(ctx, *shlex.split(match.group(1))[1:])


@when("I start the restored server as a standby")
def start_as_standby(ctx: dict[str, Any]) -> None:
    assert ctx["proc"].returncode == 0, ctx["proc"].stderr
    directory, port = ctx["restored"]
    (directory / "standby.signal").write_text("")
    shutil.chown(directory / "standby.signal", *owner(directory))
    cluster = ctx["h"].track(directory, port)
    ctx["cluster"] = cluster
    cluster.start(timeout=60)


def owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


# --- outcomes ---------------------------------------------------------------------------


@then("the message names the last point that can be reached and the command that reaches it")
def names_reachable_point(ctx: dict[str, Any]) -> None:
    text = ctx["proc"].stderr
    assert "The last point that can be reached is LSN" in text, text
    assert "--target-lsn" in text, text
    assert "Nothing was written" in text, text


@then("the restore directory was not written")
def nothing_written(ctx: dict[str, Any]) -> None:
    directory, _port = ctx["restored"]
    assert not directory.exists() or not any(directory.iterdir())


@then(
    "the server did not promote: its log has PostgreSQL's FATAL for the segment and pgbackup's reason"
)
def aborted_in_log(ctx: dict[str, Any]) -> None:
    cluster: Cluster = ctx["cluster"]
    log = cluster.log_file.read_text()
    assert not cluster.is_running(), f"the server still runs on a damaged archive:\n{log}"
    segment = ctx["segment_of"][2]
    assert re.search(
        rf'FATAL:  could not restore file "{segment}" from archive: '
        r"child process exited with exit code 255",
        log,
    ), log
    assert re.search(rf"pgbackup wal-fetch: error: .*{segment}", log), log
    assert "selected new timeline ID" not in log, log
    assert "archive recovery complete" not in log, log
    assert not cluster.is_running()


@then("the standby is still in recovery after the failed fetches, and its log says why")
def standby_waits(ctx: dict[str, Any]) -> None:
    cluster: Cluster = ctx["cluster"]
    segment = ctx["segment_of"][2]
    said = re.compile(rf"pgbackup wal-fetch: error: .*{segment}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not said.search(cluster.log_file.read_text()):
        time.sleep(0.5)
    time.sleep(6)  # one wal_retrieve_retry_interval: it asks again and stays up
    log = cluster.log_file.read_text()
    assert len(said.findall(log)) >= 2, log
    assert cluster.is_running(), log
    assert cluster.sql("SELECT pg_is_in_recovery()")[0][0] is True
    # Replay waits before the damaged segment: batch 1 only, nothing skipped.
    batches = cluster.sql("SELECT DISTINCT batch FROM pitr_batches ORDER BY 1", dbname="platform")
    assert [b for (b,) in batches] == [1]
    cluster.stop("immediate")


# --- time zones -------------------------------------------------------------------------


@given("a sandbox cluster whose timezone is Asia/Kolkata, with a backup")
def kolkata_sandbox(h: Harness, ctx: dict[str, Any]) -> None:
    h.run("sandbox.up")
    cluster = h.sandbox()
    cluster.sql("ALTER SYSTEM SET timezone = 'Asia/Kolkata'")
    cluster.sql("SELECT pg_reload_conf()")
    cluster.sql(TABLE, dbname="platform")
    h.run("backup")
    ctx.update(h=h, kind="posix", cluster=cluster)


@when("batch 1 is committed, then batch 2 a few seconds later, and their WAL is archived")
def two_batches_apart(ctx: dict[str, Any]) -> None:
    cluster: Cluster = ctx["cluster"]
    commit_batches(cluster, 1, 1)
    time.sleep(1.2)
    ctx["local_between"] = cluster.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'Asia/Kolkata', 'YYYY-MM-DD HH24:MI:SS.US')"
    )[0][0]
    time.sleep(1.2)
    commit_batches(cluster, 2, 2)
    switch_and_wait_archived(cluster)


@when("I restore to the server's local wall-clock time between the two batches, without a zone")
def restore_local_time(ctx: dict[str, Any]) -> None:
    restore_new(ctx, "--target-time", ctx["local_between"])


@then("the restored server holds batch 1 only")
def batch_one_only(ctx: dict[str, Any]) -> None:
    assert ctx["proc"].returncode == 0, proc_output(ctx)
    directory, port = ctx["restored"]
    cluster = Cluster(directory, port)
    rows = cluster.sql("SELECT DISTINCT batch FROM pitr_batches ORDER BY 1", dbname="platform")
    assert [b for (b,) in rows] == [1]


@then("the restore said the resolved instant with its UTC form")
def said_instant(ctx: dict[str, Any]) -> None:
    text = ctx["proc"].stderr
    assert "Asia/Kolkata" in text and "+05:30" in text and "UTC" in text, text


# --- check and the SLA report -----------------------------------------------------------


@when("I run check twice with a webhook alert channel")
def check_twice(ctx: dict[str, Any], undo: contextlib.ExitStack) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    posts: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    Thread(target=server.serve_forever, daemon=True).start()
    undo.callback(server.server_close)
    undo.callback(server.shutdown)
    h: Harness = ctx["h"]
    saved_policy = json.loads(json.dumps(h.policy))
    undo.callback(h.write_policy, saved_policy)
    h.policy["alerts"] = {
        "on": ["check"],
        "webhooks": [
            {
                "name": "ops",
                "url": f"http://127.0.0.1:{server.server_address[1]}/hook",
                "format": "json",
            }
        ],
    }
    h.write_policy()
    state = h.root / f"state-{len(list(h.root.glob('state-*')))}"
    h.env["XDG_STATE_HOME"] = str(state)
    ctx["checks"] = [h.run("check", expect_ok=None) for _ in range(2)]
    ctx["posts"] = posts
    ctx["sla"] = json.loads(h.run("sla-report", "--format", "json", expect_ok=None).stdout)


@then("check is CRITICAL about the WAL chain, naming the segment holding batch 2")
def check_critical(ctx: dict[str, Any]) -> None:
    segment = ctx["segment_of"][2]
    for proc in ctx["checks"]:
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0, text
        line = next((ln for ln in text.splitlines() if "wal_chain" in ln), "")
        assert "CRITICAL" in line and segment in line, text


@then("the webhook was alerted once about it")
def alerted_once(ctx: dict[str, Any]) -> None:
    segment = ctx["segment_of"][2]
    about = [p for p in ctx["posts"] if segment in json.dumps(p)]
    assert len(about) == 1, ctx["posts"]


@then("the SLA report breaches the archive continuity and says why")
def sla_breached(ctx: dict[str, Any]) -> None:
    report = ctx["sla"]["platform"]
    section = report["sections"]["archive"]
    segment = ctx["segment_of"][2]
    assert section["verdict"] == "BREACHED", section
    assert any(segment in r for r in section["reasons"]), section
    assert report["verdict"] == "BREACHED"
    if ctx["damage"] == "missing":  # the window itself ends at the hole, and says so
        assert segment in report["window"]["cut_reason"], report["window"]
