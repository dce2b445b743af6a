"""Steps for delta_restore.feature."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness import Harness
from pytest_bdd import given, scenarios, then, when

from pgbackup.postgres.cluster import Cluster, free_port, run_as
from pgbackup.postgres.connection import connect, table_checksums

scenarios("delta_restore.feature")

TABLES = ["public.tenants", "public.users", "public.sessions"]


@given("that backup was restored into a copy that was started, then stopped")
def stale_copy(h: Harness, ctx: dict[str, Any]) -> None:
    copy = h.root / "copy"
    port = free_port()
    h.run("restore", "--to", str(copy), "--start", "--port", str(port), "--no-archive")
    cluster = h.track(copy, port)
    cluster.stop("fast")
    ctx["copy"], ctx["port"] = copy, port


@when("1% of the users' rows change and another backup is taken")
def change_and_backup(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    h.sql(cluster, "UPDATE users SET email = 'moved-' || id || '@example.com' WHERE id % 100 = 0")
    h.run("backup")
    ctx["backup_id"] = h.backups()[-1]["backup_id"]
    with connect(cluster.conninfo("platform")) as conn:
        ctx["checksums"] = table_checksums(conn, TABLES)


def relation_file(copy: Path, cluster_port: int, h: Harness, table: str) -> Path:
    rel = h.sandbox().sql(f"SELECT pg_relation_filepath('{table}')", dbname="platform")[0][0]
    return copy / rel


@when(
    "the stale copy has a truncated file, an extra relation segment and a file with the right size and wrong content"
)
def damage_copy(h: Harness, ctx: dict[str, Any]) -> None:
    copy: Path = ctx["copy"]
    truncated = relation_file(copy, ctx["port"], h, "sessions")
    wrong = relation_file(copy, ctx["port"], h, "tenants")
    with open(truncated, "r+b") as f:
        f.truncate(max(0, truncated.stat().st_size - 8192))
    data = bytearray(wrong.read_bytes())
    data[100] ^= 0xFF
    wrong.write_bytes(bytes(data))
    extra = truncated.with_name(truncated.name + ".7")  # a relation segment the backup lacks
    extra.write_bytes(b"\0" * 8192)
    stale_wal = copy / "pg_wal" / "0000000A0000000000000099"
    stale_wal.write_bytes(b"\0" * 1024)
    ctx["damaged"] = {"truncated": truncated, "wrong": wrong, "extra": extra, "wal": stale_wal}


@when("I restore the latest backup with --delta into the stale copy")
def delta_restore(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run(
        "restore",
        "--to",
        str(ctx["copy"]),
        "--delta",
        "--port",
        str(ctx["port"]),
        "--no-archive",
        "--json",
    )
    ctx["result"] = json.loads(proc.stdout)


@then("pg_verifybackup finds the copy equal to the backup's manifest")
def verifybackup(h: Harness, ctx: dict[str, Any]) -> None:
    manifest = h.repo / "platform" / "base" / ctx["backup_id"] / "backup_manifest"
    cluster = Cluster(ctx["copy"], ctx["port"])
    local = h.root / "manifest-copy"
    local.write_bytes(manifest.read_bytes())
    os.chmod(local, 0o644)
    proc = run_as(
        [
            cluster.program("pg_verifybackup"),
            "--no-parse-wal",
            "--manifest-path",
            str(local),
            # Written by restore itself, not by the backup:
            "--ignore",
            "postgresql.auto.conf",
            str(ctx["copy"]),
        ],
        cluster.os_user,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    for name in ("extra", "wal"):
        assert not ctx["damaged"][name].exists(), name


@then("the delta report says most bytes were reused and the damaged files were rewritten")
def delta_report(ctx: dict[str, Any]) -> None:
    delta = ctx["result"]["delta"]
    assert delta["reused_bytes"] > 0.8 * (delta["reused_bytes"] + delta["written_bytes"]), delta
    # At least the two damaged relations and the changed users relation were rewritten.
    assert delta["written_bytes"] >= 3 * 8192, delta
    assert delta["removed_files"] >= 2, delta


@when("I start the copy")
def start_copy(h: Harness, ctx: dict[str, Any]) -> None:
    h.track(ctx["copy"], ctx["port"]).start()


@then("the copy's tables equal the source's")
def copy_equal(ctx: dict[str, Any]) -> None:
    cluster = Cluster(ctx["copy"], ctx["port"])
    with connect(cluster.conninfo("platform")) as conn:
        assert table_checksums(conn, TABLES) == ctx["checksums"]


@when("I restore the latest backup with --delta into the running sandbox's data directory")
def delta_running(h: Harness) -> None:
    h.run("restore", "--to", str(h.sandbox().data_dir), "--delta", expect_ok=False)


@when("I restore the latest backup with --delta into an empty directory")
def delta_empty(h: Harness) -> None:
    empty = h.root / "empty"
    empty.mkdir()
    h.run("restore", "--to", str(empty), "--delta", expect_ok=False)
    assert not any(empty.iterdir())
