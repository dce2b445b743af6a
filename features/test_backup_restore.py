"""Steps for backup_restore.feature."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import PGBACKUP, Harness, wait_streaming
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("backup_restore.feature")


@then(parsers.parse("the backup's metadata says it was compressed with {method}"))
def metadata_compression(h: Harness, method: str) -> None:
    assert h.backups()[-1]["compression"] == method


@given(parsers.parse("the policy compresses on {workers:d} server workers with zstd"))
def policy_zstd_workers(h: Harness, workers: int) -> None:
    h.policy["compression"] = {"method": "zstd", "level": 3, "workers": workers}
    h.write_policy()


@then(
    parsers.parse("the backup's metadata.json records zstd level {level:d} on {workers:d} workers")
)
def metadata_workers(h: Harness, level: int, workers: int) -> None:
    backup_id = h.backups()[-1]["backup_id"]
    meta = json.loads((h.repo / "platform" / "base" / backup_id / "metadata.json").read_text())
    assert meta["compression"] == {"method": "zstd", "level": level, "workers": workers}
    assert meta["objects"]["base.tar.zst"]["codec"]["compression"] == "zstd"


@given(parsers.parse('a directory holding a file "{name}"'))
def directory_with_file(h: Harness, ctx: dict[str, Any], name: str) -> None:
    d = h.root / "occupied"
    d.mkdir()
    (d / name).write_text("keep me")
    ctx["occupied"] = d


@when("I restore the latest backup into that directory")
def restore_into_occupied(h: Harness, ctx: dict[str, Any]) -> None:
    h.run("restore", "--backup", "latest", "--to", str(ctx["occupied"]), expect_ok=False)


@then(parsers.parse('the directory still holds only "{name}" with its content'))
def occupied_untouched(ctx: dict[str, Any], name: str) -> None:
    d: Path = ctx["occupied"]
    assert [p.name for p in d.iterdir()] == [name]
    assert (d / name).read_text() == "keep me"


@when("I restore the latest backup into the sandbox's own data directory with --force-less restore")
def restore_over_running(h: Harness) -> None:
    h.run("restore", "--to", str(h.sandbox().data_dir), expect_ok=False)


@then("the sandbox still answers queries")
def sandbox_answers(h: Harness) -> None:
    assert h.sql(h.sandbox(), "SELECT count(*) FROM tenants")[0][0] > 0


@given("the sandbox server is stopped without pgbackup knowing")
def stop_sandbox(h: Harness) -> None:
    cluster = h.sandbox()
    cluster.stop("fast")
    # Keep it from being started again on first use: the backup must meet a dead server.
    h.policy["targets"]["platform"] = {
        "connection": {
            "host": "127.0.0.1",
            "port": cluster.port,
            "user": "platform_service",
            "dbname": "platform",
        }
    }
    h.write_policy()


@given("the sandbox backup role has no REPLICATION attribute")
def role_without_replication(h: Harness) -> None:
    h.sql(h.sandbox(), "ALTER ROLE platform_service NOREPLICATION")


@given("the sandbox has no pg_hba.conf line for replication")
def hba_rejects_replication(h: Harness) -> None:
    cluster = h.sandbox()
    hba = cluster.data_dir / "pg_hba.conf"
    # First match wins: refuse every physical replication connection, keep the rest.
    hba.write_text("host replication all all reject\n" + hba.read_text())
    h.sql(cluster, "SELECT pg_reload_conf()")


@given("the sandbox runs with wal_level minimal")
def wal_level_minimal(h: Harness) -> None:
    cluster = h.sandbox()
    cluster.stop("fast")
    # minimal WAL allows neither WAL senders nor archiving
    cluster.configure({"wal_level": "minimal", "max_wal_senders": 0, "archive_mode": "off"})
    cluster.start()
    assert h.sql(cluster, "SHOW wal_level") == [("minimal",)]


@then(parsers.parse("the repository lists exactly {n:d} complete backup and no incomplete ones"))
def complete_count(h: Harness, n: int) -> None:
    rows = h.backups()
    assert [r["status"] for r in rows] == ["complete"] * n, rows
    # Nothing of the failed attempt is left under base/.
    base = h.repo / "platform" / "base"
    dirs = sorted(p.name for p in base.iterdir()) if base.exists() else []
    assert dirs == [r["backup_id"] for r in rows]


@then("the earlier backup still verifies")
def earlier_verifies(h: Harness) -> None:
    h.run("verify", "--backup", "all")


@given("another process holds the target's backup lock")
def hold_lock(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.engine.locks import lock_path

    path = lock_path({"path": str(h.repo)}, "platform")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"backup by pid 4242 (test)\n")
    ctx["lock_fd"] = fd


@given("the sandbox has an in-place tablespace with a table in it")
def in_place_tablespace(h: Harness) -> None:
    # A developer setting PostgreSQL's regression suite uses; pg_basebackup 15 skips
    # such a tablespace without an error.
    cluster = h.sandbox()
    cluster.sql("ALTER SYSTEM SET allow_in_place_tablespaces = on")
    cluster.sql("SELECT pg_reload_conf()")
    cluster.sql("CREATE TABLESPACE inplace LOCATION ''")
    cluster.sql("CREATE TABLE near (id int) TABLESPACE inplace", dbname="platform")


# --- a backup's procedure: ask the server, take the lock, run pg_basebackup ------------


@given("the sandbox server is stopped, for pgbackup to start again")
def sandbox_stopped_known(h: Harness) -> None:
    h.sandbox().stop("fast")  # the policy is unchanged: the backup finds it down


def basebackups_of(h: Harness) -> list[str]:
    """pg_basebackup processes writing under this scenario's repository."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pg_basebackup") and str(h.repo).encode() in b" ".join(argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


@then("no pg_basebackup of this scenario is still running")
def no_basebackup_left(h: Harness) -> None:
    deadline = time.monotonic() + 5  # a stopped one's WAL child may take a moment
    while (left := basebackups_of(h)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left


def backup_once_basebackup_runs(h: Harness) -> subprocess.Popen[str]:
    """``pgbackup backup`` started, returned as soon as its pg_basebackup runs (polled
    every millisecond), or when it ends or 30 s pass."""
    proc = subprocess.Popen(
        [PGBACKUP, "--config", str(h.config), "backup"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.env,
        cwd=h.root,
    )
    deadline = time.monotonic() + 30
    while not basebackups_of(h) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return proc


@given(parsers.parse("the backups of the sandbox are throttled to {rate} per second"))
def sandbox_throttled(h: Harness, rate: str) -> None:
    h.policy["targets"]["platform"]["max_rate"] = rate  # pg_basebackup --max-rate
    h.write_policy()


@when("the sandbox server stops while pg_basebackup streams")
def server_stops_while_streaming(h: Harness) -> None:
    """A server that goes away in the middle of a backup fails that backup: it is never
    started again to take a second one, which would hide the failure. pgbackup is held
    (SIGSTOP) as soon as its pg_basebackup runs and let go once the server has stopped and
    pg_basebackup has failed, so the engine sees exactly that."""
    proc = backup_once_basebackup_runs(h)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        assert basebackups_of(h), "no pg_basebackup ran"
        cluster = h.sandbox()
        # proc is stopped, not ended: this waits for the server alone.
        assert wait_streaming(cluster, proc, 30), "pg_basebackup never streamed"
        cluster.stop("immediate")
        deadline = time.monotonic() + 30
        while basebackups_of(h) and time.monotonic() < deadline:  # failed: a zombie now
            time.sleep(0.01)
        assert not basebackups_of(h), "pg_basebackup outlived its server"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    h.last = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@then(parsers.parse('the backup fails and says either "{one}" or "{other}"'))
def fails_saying_either(h: Harness, one: str, other: str) -> None:
    """Which words depend on what noticed first: pg_basebackup, cut off, or the engine's
    own question to the server, which is no longer there."""
    assert h.last is not None
    output = h.last.stdout + h.last.stderr
    assert h.last.returncode != 0, output
    assert one in output or other in output, output
    assert "Traceback" not in output


@then("the sandbox server is still down")
def sandbox_down(h: Harness) -> None:
    assert not h.sandbox().is_running()  # the backup did not start it to try again


@then(parsers.parse('it says "{text}" once'))
def says_once(h: Harness, text: str) -> None:
    assert h.last is not None
    assert (h.last.stdout + h.last.stderr).count(text) == 1, h.last.stderr


@when("a backup is sent SIGTERM as soon as its pg_basebackup runs")
def backup_sigterm(h: Harness) -> None:
    """pg_basebackup runs: the backup's directory and the process must both go."""
    proc = backup_once_basebackup_runs(h)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    h.last = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
