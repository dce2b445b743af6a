"""Steps for wal_prefetch.feature: recovery through wal-fetch's read-ahead (engine/walprefetch).

One archive per storage kind is built once for the module (a backup, then eight batches of
100 rows, each in its own WAL segment), with ``wal_fetch: {read_ahead: 4, streams: 2}``
on its target; a scenario that damages it puts it back afterwards. What the read-ahead
did is read from the restored server's log, where the prefetcher writes (its standard
error is the server's): one line when it starts, one per segment it refuses, one when it
stops with the count of segments served from the spool.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
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
    rows_in,
    start_with_pg_ctl,
    switch_and_wait_archived,
    wait_until_recovery_ends,
)
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import services  # noqa: E402

scenarios("wal_prefetch.feature")

BATCHES = range(1, 9)
READ_AHEAD = {"read_ahead": 4, "streams": 2}
STOPPED = re.compile(
    r"pgbackup wal-prefetch: .* stopped \((?P<why>[^)]*)\): (?P<spooled>\d+) segments spooled, "
    r"(?P<served>\d+) served from the spool"
)


def use_s3(h: Harness, stack: contextlib.ExitStack) -> dict[str, Any]:
    spec, aws = stack.enter_context(services.moto_s3())
    h.env.update(aws)
    h.policy["repository"] = dict(spec)
    h.write_policy()
    return {"spec": spec, "aws": aws}


def read_ahead_policy(h: Harness) -> None:
    h.policy["targets"]["platform"]["wal_fetch"] = dict(READ_AHEAD)
    h.write_policy()


def build_archive(h: Harness) -> dict[str, Any]:
    read_ahead_policy(h)
    h.run("sandbox.up")
    cluster = h.sandbox()
    cluster.sql(
        "CREATE TABLE IF NOT EXISTS pitr_batches (batch int, label text, n int)", dbname="platform"
    )
    switch_and_wait_archived(cluster)
    h.run("backup")
    segment_of: dict[int, str] = {}
    for b in BATCHES:
        point = commit_batches(cluster, b, b)[0]
        segment_of[b] = cluster.sql(f"SELECT pg_walfile_name('{point['lsn']}')")[0][0]
        switch_and_wait_archived(cluster)
    assert len(set(segment_of.values())) == len(BATCHES), segment_of
    return {"h": h, "segment_of": segment_of}


@pytest.fixture(scope="module")
def archives() -> Iterator[dict[str, Any]]:
    """storage kind -> its archive (built on first use)."""
    with contextlib.ExitStack() as stack:
        built: dict[str, Any] = {}

        def get(kind: str) -> dict[str, Any]:
            if kind not in built:
                h = stack.enter_context(module_harness())
                env = use_s3(h, stack) if kind == "s3" else {}
                env.update(build_archive(h))
                built[kind] = env
            return built[kind]

        yield {"get": get}


@given(parsers.parse("an archive on {kind} with eight batches after the backup"))
def archive_on(archives: dict[str, Any], ctx: dict[str, Any], kind: str) -> None:
    ctx.update(archives["get"](kind))
    ctx["kind"] = kind


# --- the stored segment ---------------------------------------------------------------------


class Stored:
    """The stored object of one archived segment, on posix or S3."""

    def __init__(self, ctx: dict[str, Any], segment: str) -> None:
        self.ctx, self.segment = ctx, segment
        h: Harness = ctx["h"]
        if ctx["kind"] == "posix":
            self.path = h.repo / "platform" / "wal" / f"{segment}.zst"
            return
        import boto3

        spec, aws = ctx["spec"], ctx["aws"]
        self.s3 = boto3.client(
            "s3",
            endpoint_url=spec["endpoint_url"],
            region_name=spec["region"],
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        )
        self.bucket = spec["bucket"]
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=spec["prefix"])
        keys = [o["Key"] for o in listed.get("Contents", []) if f"/wal/{segment}." in o["Key"]]
        assert len(keys) == 1, keys
        self.key = keys[0]

    def read(self) -> bytes:
        if self.ctx["kind"] == "posix":
            return self.path.read_bytes()
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read())

    def write(self, data: bytes) -> None:
        if self.ctx["kind"] == "posix":
            st = self.path.stat()
            self.path.write_bytes(data)
            os.chown(self.path, st.st_uid, st.st_gid)
        else:
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=data)

    def delete(self) -> None:
        if self.ctx["kind"] == "posix":
            self.path.unlink()
        else:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)


def damage(ctx: dict[str, Any], undo: contextlib.ExitStack, batch: int, how: str) -> None:
    segment = ctx["segment_of"][batch]
    stored = Stored(ctx, segment)
    original = stored.read()
    if how == "posix":
        st = stored.path.stat()
        undo.callback(os.chmod, stored.path, st.st_mode)
    undo.callback(stored.write, original)
    ctx["damaged"] = segment
    if how == "corrupt":
        data = bytearray(original)
        data[len(data) // 3] ^= 0x5A
        stored.write(bytes(data))
    else:
        stored.delete()


@given(parsers.parse("the segment holding batch {batch:d} is corrupt in the archive"))
def corrupt(ctx: dict[str, Any], undo: contextlib.ExitStack, batch: int) -> None:
    damage(ctx, undo, batch, "corrupt")


@when(parsers.parse("the segment holding batch {batch:d} is deleted from the archive"))
def delete(ctx: dict[str, Any], undo: contextlib.ExitStack, batch: int) -> None:
    damage(ctx, undo, batch, "delete")


# --- actions ----------------------------------------------------------------------------


def prefetchers(directory: Path) -> list[int]:
    """The pids of the read-ahead processes of data directory ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pgbackup.engine.walprefetch" in argv and str(directory).encode() in argv:
            found.append(int(entry))
    return found


@when("I start the restored server with pg_ctl, killing its prefetcher twice with SIGKILL")
def start_and_kill(ctx: dict[str, Any]) -> None:
    assert ctx["proc"].returncode == 0, proc_output(ctx)  # the restore without --start
    directory, _port = ctx["restored"]
    killed: list[int] = []
    done = threading.Event()

    def working() -> bool:
        """The spool holds a segment or a temporary file: a prefetcher is at work."""
        with contextlib.suppress(OSError):
            return any(len(e) == 33 or e.startswith(".tmp.") for e in os.listdir(spool))
        return False

    spool = directory / "pgbackup_spool"

    def killer() -> None:
        while not done.is_set() and len(killed) < 2:
            log = ""  # started: it has read the archive's identity and said so
            with contextlib.suppress(OSError):  # the server's log is not there yet
                log = server_log(ctx)
            pids = [
                p for p in prefetchers(directory) if p not in killed and f"[{p}] reading" in log
            ]
            if pids and working():
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        cluster = start_with_pg_ctl(ctx)
        wait_until_recovery_ends(cluster)
    finally:
        done.set()
        thread.join()
    ctx["killed"] = killed


# --- outcomes ---------------------------------------------------------------------------


def server_log(ctx: dict[str, Any]) -> str:
    directory, port = ctx["restored"]
    return Cluster(directory, port).log_file.read_text(errors="replace")


@then(parsers.parse("the server promoted with all {n:d} rows"))
def promoted_rows(ctx: dict[str, Any], n: int) -> None:
    cluster: Cluster = ctx["cluster"]
    assert cluster.is_running(), cluster.log_tail(40)
    assert cluster.sql("SELECT pg_is_in_recovery()")[0][0] is False
    directory, port = ctx["restored"]
    assert rows_in(directory, port) == n


def served(log: str) -> int:
    return sum(int(m["served"]) for m in STOPPED.finditer(log))


def wait_for_stop_lines(ctx: dict[str, Any], timeout: float = 30) -> str:
    """The server's log once every prefetcher has said it stopped."""
    deadline = time.monotonic() + timeout
    log = server_log(ctx)
    while time.monotonic() < deadline:
        log = server_log(ctx)
        started = len(re.findall(r"\] reading ahead ", log))
        if started and len(list(STOPPED.finditer(log))) >= started - len(ctx.get("killed", [])):
            return log
        time.sleep(0.2)
    return log


@then("segments were served from the read-ahead spool")
def served_from_spool(ctx: dict[str, Any]) -> None:
    log = wait_for_stop_lines(ctx)
    assert served(log) >= 2, log


@then("one prefetcher served the whole recovery, started before the server")
def started_before_server(ctx: dict[str, Any]) -> None:
    """`restore --start` starts the read-ahead before the server: it has opened the
    archive when PostgreSQL's first history probe asks it, and that request (with the
    same flags) keeps it; no wal-fetch starts another."""
    log = wait_for_stop_lines(ctx)
    assert len(re.findall(r"\] reading ahead ", log)) == 1, log
    assert "started by the restore, before the server" in log, log
    assert log.index("] reading ahead ") < log.index("starting archive recovery"), log
    assert "another archive" not in log and "no server started" not in log, log


@then("the spool and its prefetcher are gone")
def spool_gone(ctx: dict[str, Any]) -> None:
    directory, _port = ctx["restored"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        (directory / "pgbackup_spool").exists() or prefetchers(directory)
    ):
        time.sleep(0.2)
    assert not (directory / "pgbackup_spool").exists(), server_log(ctx)
    assert prefetchers(directory) == []


@then(parsers.parse("the prefetcher refused the segment holding batch {batch:d}"))
def prefetcher_refused(ctx: dict[str, Any], batch: int) -> None:
    segment = ctx["segment_of"][batch]
    log = server_log(ctx)
    assert re.search(rf"pgbackup wal-prefetch: .*{segment} not spooled: refused: ", log), log
    assert re.search(rf"pgbackup wal-fetch: error: .*{segment}", log), log


@then(
    parsers.parse(
        "the server did not promote: its log has PostgreSQL's FATAL for the segment holding "
        "batch {batch:d}"
    )
)
def aborted(ctx: dict[str, Any], batch: int) -> None:
    cluster: Cluster = ctx["cluster"]
    log = cluster.log_file.read_text()
    segment = ctx["segment_of"][batch]
    assert not cluster.is_running(), f"the server runs on an archive with a hole:\n{log}"
    assert re.search(
        rf'FATAL:  could not restore file "{segment}" from archive: '
        r"child process exited with exit code 255",
        log,
    ), log
    assert re.search(rf"pgbackup wal-fetch: error: {segment} is missing from the archive", log), log
    assert "archive recovery complete" not in log, log


@then("nothing after the hole was served from the spool")
def nothing_after_hole(ctx: dict[str, Any]) -> None:
    log = ctx["cluster"].log_file.read_text()
    hole = ctx["damaged"]
    restored = re.findall(r'restored log file "([0-9A-F]{24})" from archive', log)
    assert restored and all(name < hole for name in restored), (restored, hole)
    assert served(wait_for_stop_lines(ctx)) >= 1, log  # the read-ahead did run before it


@then("the prefetcher was killed while recovery went on")
def was_killed(ctx: dict[str, Any]) -> None:
    log = server_log(ctx)
    assert len(ctx["killed"]) >= 1, log
    for pid in ctx["killed"]:  # each had started reading ahead, and never said it stopped
        assert f"[{pid}] reading ahead" in log, log
        assert not re.search(rf"\[{pid}\] stopped", log), log
    assert "archive recovery complete" in log or "selected new timeline ID" in log, log


# --- a timeline switch ----------------------------------------------------------------------


@given("a sandbox cluster archiving to s3 with a backup and 4 batches")
def s3_sandbox(h: Harness, ctx: dict[str, Any], undo: contextlib.ExitStack) -> None:
    use_s3(h, undo)
    read_ahead_policy(h)
    h.run("sandbox.up")
    cluster = h.sandbox()
    h.run("backup")
    ctx["points"] = commit_batches(cluster, 1, 4)
    switch_and_wait_archived(cluster)
    ctx["h"] = h


@when(
    parsers.parse(
        "I commit batches {first:d} to {last:d} on the new timeline, each in its own segment"
    )
)
def commit_on_tl2(h: Harness, ctx: dict[str, Any], first: int, last: int) -> None:
    directory, port = ctx["tl2"]
    cluster = h.track(directory, port)
    assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] == 2
    for batch in range(first, last + 1):
        commit_batches(cluster, batch, batch)
        switch_and_wait_archived(cluster)
    cluster.stop()
