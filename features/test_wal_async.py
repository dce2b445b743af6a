"""Steps for wal_async.feature."""

from __future__ import annotations

import os
import time
from typing import Any

from harness import PGBACKUP, Harness, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("wal_async.feature")


@given(parsers.parse('the server archives with "{command}"'))
def async_archiving(h: Harness, command: str) -> None:
    cluster = h.sandbox()
    archive_command = f"'{PGBACKUP}' --config '{h.config}' {command} --target platform %p"
    cluster.sql(
        f"ALTER SYSTEM SET archive_command = '{archive_command.replace(chr(39), chr(39) * 2)}'"
    )
    cluster.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    assert "--async" in cluster.sql("SHOW archive_command")[0][0]


@when(parsers.parse("the server fills and switches {n:d} WAL segments"))
def fill_segments(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    names = []
    for _ in range(n):
        cluster.sql(
            "INSERT INTO sessions SELECT 5000000 + g, 1, md5(random()::text) FROM generate_series(1, 2000) g ON CONFLICT DO NOTHING",
            dbname="platform",
        )
        name = switch_and_wait_archived(cluster)
        names.append(name)
        # Keep the server's own copy before it is recycled.
        src = cluster.data_dir / "pg_wal" / name
        if src.exists():
            (h.root / name).write_bytes(src.read_bytes())
    ctx["names"] = names


@then(parsers.parse("all {n:d} segments are archived with the server's exact bytes"))
def archived_exact(h: Harness, ctx: dict[str, Any], n: int) -> None:
    compared = 0
    for name in ctx["names"]:
        dest = h.root / f"fetched-{name}"
        h.run("wal-fetch", "--target", "platform", name, str(dest))
        original = h.root / name
        if original.exists():
            assert dest.read_bytes() == original.read_bytes()
            compared += 1
    assert len(ctx["names"]) == n and compared >= 1


def wal_dir(h: Harness) -> str:
    return str(h.repo / "platform" / "wal")


@when("the archive directory becomes unwritable for the server")
def unwritable(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["mode"] = os.stat(wal_dir(h)).st_mode
    os.chmod(wal_dir(h), 0o500)


@when("the server switches another WAL segment")
def switch_one(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    cluster.sql(
        "INSERT INTO tenants SELECT 7000000 + g, 'x' FROM generate_series(1, 10) g ON CONFLICT DO NOTHING",
        dbname="platform",
    )
    ctx["failed_name"] = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]


@then("the archiver reports a failure")
def archiver_fails(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        failed, last_failed = cluster.sql(
            "SELECT failed_count, last_failed_wal FROM pg_stat_archiver"
        )[0]
        if failed and last_failed == ctx["failed_name"]:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the archiver never reported the failure")
    assert "permission denied" in cluster.log_tail(50)
    assert not os.path.exists(os.path.join(wal_dir(h), ctx["failed_name"] + ".zst"))


@when("the archive directory is writable again")
def writable(h: Harness, ctx: dict[str, Any]) -> None:
    os.chmod(wal_dir(h), ctx["mode"])


@then("the segment is archived and the archiver catches up")
def catches_up(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        last = cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= ctx["failed_name"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the archiver did not catch up")
    assert os.path.exists(os.path.join(wal_dir(h), ctx["failed_name"] + ".zst"))
