"""Fixtures and steps shared by every feature (pytest-bdd)."""

from __future__ import annotations

import contextlib
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (  # noqa: F401 (fixture, hook)
    Harness,
    batches_in,
    commit_batches,
    harness_fixture,
    pytest_runtest_makereport,
    restore_and_start,
    restore_to_time,
    switch_and_wait_archived,
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

from pgbackup.postgres.cluster import server_os_user
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


# --- point-in-time recovery steps (pitr.feature, timelines.feature) -------------------


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


@when("I restore to the recorded time into a new directory and start it")
def restore_pitr(h: Harness, ctx: dict[str, Any]) -> None:
    restore_to_time(h, ctx)


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
