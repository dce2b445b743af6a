"""Steps for offsite.feature: repositories and upload copies on S3 (moto), GCS, Azure."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from harness import Harness, restore_to_time, switch_and_wait
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import free_port
from pgbackup.postgres.connection import connect, table_checksums
from pgbackup.storage import Storage, open_storage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import services  # noqa: E402

scenarios("offsite.feature")

SAMPLE_TABLES = ["public.tenants", "public.users", "public.sessions"]


# --- services -------------------------------------------------------------------------


def start_service(stack: contextlib.ExitStack, kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    if kind == "s3":
        return stack.enter_context(services.moto_s3())
    if kind == "gcs":
        return stack.enter_context(services.gcs_emulator())
    if kind == "azure":
        if services.azurite_binary() is None:
            pytest.skip(services.AZURITE_MISSING)
        return stack.enter_context(services.azurite())
    raise AssertionError(f"unknown kind {kind}")


def service_storage(ctx: dict[str, Any], spec: dict[str, Any] | None = None) -> Storage:
    """The service's storage, opened in the test process with the service's credentials."""
    spec = spec or ctx["spec"]
    with mock.patch.dict(os.environ, ctx["env"]):
        return open_storage({k: v for k, v in spec.items() if k not in ("name", "retention_days")})


@contextlib.contextmanager
def service_env(ctx: dict[str, Any]) -> Iterator[None]:
    with mock.patch.dict(os.environ, ctx["env"]):
        yield


@given(parsers.parse("a {kind} storage service"))
@given(parsers.parse("an {kind} storage service"))
def storage_service(
    h: Harness, ctx: dict[str, Any], stack: contextlib.ExitStack, kind: str
) -> None:
    spec, env = start_service(stack, kind)
    ctx["spec"], ctx["env"] = spec, env
    h.env.update(env)  # the CLI and, through it, the sandbox's archive_command


@given("the repository is on it")
def repository_on_service(h: Harness, ctx: dict[str, Any]) -> None:
    h.policy["repository"] = dict(ctx["spec"])
    h.write_policy()


@given(parsers.parse('an upload destination "{name}" on it keeping copies {days:d} days'))
@given(parsers.parse('an upload destination "{name}" on it'))
def upload_on_service(h: Harness, ctx: dict[str, Any], name: str, days: int = 30) -> None:
    ctx["upload"] = {"name": name, **ctx["spec"], "retention_days": days}
    h.policy["uploads"] = [ctx["upload"]]
    h.write_policy()


@given(parsers.parse('an upload destination "{name}" on an S3 endpoint where nothing listens'))
def upload_dead(h: Harness, name: str) -> None:
    h.env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    h.policy["uploads"] = [
        {
            "name": name,
            "kind": "s3",
            "bucket": "nowhere",
            "region": "us-east-1",
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "retries": 0,
        }
    ]
    h.write_policy()


@given(parsers.parse('an upload destination "{name}" in a local directory'))
def upload_local(h: Harness, name: str) -> None:
    h.policy["uploads"] = [{"name": name, "path": str(h.root / name)}]
    h.write_policy()


# --- WAL and recovery points ----------------------------------------------------------


@when("I change data, record the checksums and a recovery time, then change more data")
def recovery_point(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    h.sql(
        cluster,
        "INSERT INTO tenants SELECT 52000000 + g, 'after-' || g FROM generate_series(1, 40) g",
    )
    h.sql(cluster, "UPDATE users SET email = 'pitr@example.com' WHERE id % 4 = 0")
    with connect(cluster.conninfo("platform")) as conn:
        ctx["checksums"] = table_checksums(conn, SAMPLE_TABLES)
    time.sleep(1.2)
    ctx["recovery_time"] = cluster.sql("SELECT clock_timestamp()")[0][0].astimezone(UTC)
    time.sleep(1.2)
    h.sql(cluster, "DELETE FROM sessions WHERE id % 2 = 0")
    h.sql(
        cluster,
        "INSERT INTO tenants SELECT 53000000 + g, 'too-late-' || g FROM generate_series(1, 40) g",
    )
    with connect(cluster.conninfo("platform")) as conn:
        assert table_checksums(conn, SAMPLE_TABLES) != ctx["checksums"]
    switch_and_wait(h)


@when(
    parsers.parse('I restore from "{name}" to the recorded time into a new directory and start it')
)
def restore_pitr_from(h: Harness, ctx: dict[str, Any], name: str) -> None:
    restore_to_time(h, ctx, "--from", name)


@when(parsers.parse('I restore from "{name}" expecting failure'))
def restore_from_fails(h: Harness, name: str) -> None:
    h.run("restore", "--from", name, "--to", str(h.root / "restored"), expect_ok=False)


@then("the repository on the service holds the backup with metadata.json and the archived WAL")
def service_holds(h: Harness, ctx: dict[str, Any]) -> None:
    backup_id = ctx["backup_ids"][-1]
    with service_env(ctx):
        keys = {i.key for i in service_storage(ctx).list("platform/")}
    assert f"platform/base/{backup_id}/metadata.json" in keys, sorted(keys)
    assert any(k.startswith(f"platform/base/{backup_id}/base.tar") for k in keys)
    assert any(k.startswith("platform/wal/0000000") for k in keys), sorted(keys)


def secrets(ctx: dict[str, Any]) -> list[bytes]:
    found = []
    for name, value in ctx["env"].items():
        if name == "AWS_SECRET_ACCESS_KEY":
            found.append(value.encode())
        if name == "AZURE_STORAGE_CONNECTION_STRING":
            key = value.split("AccountKey=", 1)[1].split(";", 1)[0]
            found.append(key.encode())
    return found


@then("no stored object, policy file or log holds the service's credentials")
def no_credentials(h: Harness, ctx: dict[str, Any]) -> None:
    wanted = secrets(ctx)
    if not wanted:  # the GCS emulator takes no credentials
        return
    with service_env(ctx):
        storage = service_storage(ctx)
        blobs = {i.key: storage.read_bytes(i.key) for i in storage.list("")}
    blobs["backup.yaml"] = h.config.read_bytes()
    for log in list(h.root.rglob("*.log")) + list(h.root.rglob("*.json")):
        blobs[str(log)] = log.read_bytes()
    assert h.last is not None
    blobs["last output"] = (h.last.stdout + h.last.stderr).encode()
    assert any("metadata.json" in k for k in blobs)
    for where, data in blobs.items():
        for secret in wanted:
            assert secret not in data, f"{where} holds a credential"


@then(parsers.parse("the local repository lists {n:d} complete backup"))
@then(parsers.parse("the local repository lists {n:d} complete backups"))
def local_lists(h: Harness, n: int) -> None:
    rows = h.backups()
    assert [r["status"] for r in rows] == ["complete"] * n, rows


@then(parsers.parse('a failed upload to "{name}" is recorded'))
def failed_upload_recorded(h: Harness, name: str) -> None:
    records = [
        json.loads(p.read_text()) for p in (h.repo / "platform" / "runs").glob("*-upload.json")
    ]
    failed = [r for r in records if r["destination"] == name and r["status"] == "failed"]
    assert failed and failed[0]["error"], records
    assert failed[0]["backup_id"] == h.backups()[-1]["backup_id"]


# --- retention at a destination -------------------------------------------------------


def parse_numbers(text: str) -> list[int]:
    return [int(x) for x in text.replace(" and ", ",").split(",") if x.strip()]


@given(parsers.parse("{n:d} backups were taken"))
def n_backups(h: Harness, ctx: dict[str, Any], n: int) -> None:
    for i in range(n):
        h.run("backup")
        # Some WAL between backups, so that each copy needs its own segments.
        h.sql(
            h.sandbox(),
            f"INSERT INTO tenants SELECT {50_000_000 + 10 * i} + g, 'x' FROM generate_series(1, 5) g",
        )
        switch_and_wait(h)
    ctx["backup_ids"] = [b["backup_id"] for b in h.backups()]
    assert len(ctx["backup_ids"]) == n


def copies(ctx: dict[str, Any]) -> list[str]:
    with service_env(ctx):
        keys = [i.key for i in service_storage(ctx, ctx["upload"]).list("platform/base/")]
    return sorted({k.split("/")[2] for k in keys if k.endswith("/metadata.json")})


@given(parsers.parse('at "{name}" the copies are aged {ages} days'))
def age_copies(ctx: dict[str, Any], name: str, ages: str) -> None:
    wanted = parse_numbers(ages)
    ids = copies(ctx)
    assert ids == ctx["backup_ids"], (ids, ctx["backup_ids"])
    now = datetime.now(UTC)
    ctx["ages"] = dict(zip(ids, wanted, strict=True))
    with service_env(ctx):
        storage = service_storage(ctx, ctx["upload"])
        for backup_id, age in ctx["ages"].items():
            if age == 0:
                continue
            key = f"platform/base/{backup_id}/metadata.json"
            meta = json.loads(storage.read_bytes(key))
            stamp = (now - timedelta(days=age)).isoformat().replace("+00:00", "Z")
            meta["stop_time"] = stamp
            meta["start_time"] = stamp
            storage.write_bytes(key, json.dumps(meta).encode())


@when("I run cleanup with --dry-run --json")
def run_cleanup_dry_json(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["cleanup_json"] = json.loads(h.run("cleanup", "--dry-run", "--json").stdout)


@then(
    parsers.parse(
        'its JSON names at "{name}" the copies aged {ages} days, and they are still there'
    )
)
def cleanup_json_names(ctx: dict[str, Any], name: str, ages: str) -> None:
    wanted = parse_numbers(ages)
    expected = sorted(i for i, age in ctx["ages"].items() if age in wanted)
    [plan] = ctx["cleanup_json"]
    assert plan["target"] == "platform"
    assert sorted(plan["uploads"][name]) == expected, plan["uploads"]
    assert copies(ctx) == list(ctx["ages"])  # a dry run removed nothing


@then(parsers.parse('at "{name}" exactly the copies aged {ages} days remain'))
def copies_remain(ctx: dict[str, Any], name: str, ages: str) -> None:
    wanted = parse_numbers(ages)
    expected = [i for i, age in ctx["ages"].items() if age in wanted]
    assert copies(ctx) == expected
    # Nothing of the removed copies is left behind either.
    with service_env(ctx):
        keys = [i.key for i in service_storage(ctx, ctx["upload"]).list("platform/base/")]
    assert sorted({k.split("/")[2] for k in keys}) == expected


@then(parsers.parse('at "{name}" no WAL older than the oldest remaining copy is left'))
def wal_trimmed(ctx: dict[str, Any], name: str) -> None:
    from pgbackup.formats.lsn import parse_lsn, segment_name

    with service_env(ctx):
        storage = service_storage(ctx, ctx["upload"])
        oldest = copies(ctx)[0]
        meta = json.loads(storage.read_bytes(f"platform/base/{oldest}/metadata.json"))
        first = segment_name(
            int(meta["timeline"]), parse_lsn(meta["start_lsn"]), meta["wal_segment_size"]
        )
        names = [i.key.rsplit("/", 1)[-1] for i in storage.list("platform/wal/")]
    segments = [n for n in names if len(n) >= 24 and not n.endswith(".history")]
    assert segments, names
    assert all(n[8:24] >= first[8:24] for n in segments), (first, sorted(segments))
    assert first in {n[:24] for n in segments}  # what the oldest copy needs is still there


# --- wal-push no-overwrite on S3 ------------------------------------------------------


@given("a WAL segment has been archived")
def segment_archived(h: Harness, ctx: dict[str, Any]) -> None:
    h.sql(h.sandbox(), "INSERT INTO tenants SELECT 51000000 + g, 'w' FROM generate_series(1, 5) g")
    segment = switch_and_wait(h)
    original = h.root / "original" / segment
    original.parent.mkdir()
    h.run("wal-fetch", "--target", "platform", segment, str(original))
    ctx["segment"], ctx["original"] = segment, original
    assert len(original.read_bytes()) == 16 * 1024 * 1024


@when("I push a segment of that name with one byte changed")
def push_tampered(h: Harness, ctx: dict[str, Any]) -> None:
    data = bytearray(ctx["original"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered = h.root / "tampered" / ctx["segment"]
    tampered.parent.mkdir()
    tampered.write_bytes(bytes(data))
    h.run("wal-push", "--target", "platform", str(tampered), expect_ok=False)


@then("the archived segment still has its original content")
def archived_unchanged(h: Harness, ctx: dict[str, Any]) -> None:
    again = h.root / "again"
    h.run("wal-fetch", "--target", "platform", ctx["segment"], str(again))
    assert again.read_bytes() == ctx["original"].read_bytes()


@when("I push the original segment again")
def push_original(h: Harness, ctx: dict[str, Any]) -> None:
    h.run("wal-push", "--target", "platform", str(ctx["original"]), expect_ok=None)
