"""Steps for s3_faults.feature: moto behind tests/faultproxy.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from harness import PGBACKUP, Harness, switch_and_wait
from pytest_bdd import given, parsers, scenarios, then, when

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import services  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402

scenarios("s3_faults.feature")

SEED = 20261124


@given("an S3 server behind a fault-injecting proxy")
def s3_behind_proxy(h: Harness, ctx: dict[str, Any], stack: contextlib.ExitStack) -> None:
    spec, env = stack.enter_context(services.moto_s3())
    upstream = int(spec["endpoint_url"].rsplit(":", 1)[1])
    proxy = stack.enter_context(FaultProxy(upstream, seed=SEED, rate=0.0, max_faults=60))
    proxy.enabled = False
    ctx.update(spec=dict(spec, endpoint_url=proxy.url, retries=2), env=env, proxy=proxy)
    ctx["upstream_url"] = spec["endpoint_url"]
    ctx["runs"] = []
    h.env.update(env)


@given("the repository is on it through the proxy")
def repository_via_proxy(h: Harness, ctx: dict[str, Any]) -> None:
    h.policy["repository"] = dict(ctx["spec"])
    h.write_policy()


@contextlib.contextmanager
def faults(ctx: dict[str, Any], percent: int) -> Iterator[FaultProxy]:
    proxy: FaultProxy = ctx["proxy"]
    proxy.rate = percent / 100
    proxy.enabled = True
    try:
        yield proxy
    finally:
        proxy.enabled = False


def keep(ctx: dict[str, Any], proc: subprocess.CompletedProcess[str]) -> None:
    ctx["runs"].append(proc)


@when(parsers.parse("I take {n:d} backups while the proxy fails {percent:d}% of requests"))
def backups_under_faults(h: Harness, ctx: dict[str, Any], n: int, percent: int) -> None:
    with faults(ctx, percent):
        for _ in range(n):
            keep(ctx, h.run("backup", expect_ok=None))
            time.sleep(1)  # distinct backup ids


@then("faults were injected")
def faults_injected(ctx: dict[str, Any]) -> None:
    proxy: FaultProxy = ctx["proxy"]
    failed = sum(1 for p in ctx["runs"] if p.returncode != 0)
    print(f"\nfaults injected: {proxy.counts}; {failed} of {len(ctx['runs'])} runs failed")
    assert proxy.injected >= 3, proxy.counts


@then("every failed run said one clear error and nothing else")
def clean_failures(ctx: dict[str, Any]) -> None:
    for proc in ctx["runs"]:
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out and "internal error" not in out, out
        if proc.returncode != 0:
            assert proc.returncode not in (70,), out
            assert "error:" in proc.stderr, out


@then("at least one backup succeeded")
def one_succeeded(h: Harness, ctx: dict[str, Any]) -> None:
    ok = [p for p in ctx["runs"] if p.returncode == 0]
    assert ok, [p.stderr for p in ctx["runs"]]
    complete = [b for b in h.backups() if b["status"] == "complete"]
    assert len(complete) == len(ok), (h.backups(), [p.returncode for p in ctx["runs"]])


@then("every backup listed as complete verifies")
def complete_verify(h: Harness) -> None:
    for b in h.backups():
        if b["status"] == "complete":
            h.run("verify", "--backup", b["backup_id"])


@then("nothing without metadata.json is listed as complete")
def nothing_partial(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.storage import open_storage

    with mock.patch.dict(os.environ, ctx["env"]):
        storage = open_storage(dict(ctx["spec"], retries=3))
        keys = {i.key for i in storage.list("platform/base/")}
    with_meta = {k.split("/")[2] for k in keys if k.endswith("/metadata.json")}
    for b in h.backups():
        if b["status"] == "complete":
            assert b["backup_id"] in with_meta
        else:
            assert b["backup_id"] not in with_meta or b["status"] == "damaged"


# --- WAL ------------------------------------------------------------------------------


@given(parsers.parse("{n:d} WAL segments were archived and fetched back as originals"))
def originals(h: Harness, ctx: dict[str, Any], n: int) -> None:
    folder = h.root / "originals"
    folder.mkdir()
    names = []
    for i in range(n):
        h.sql(
            h.sandbox(),
            f"INSERT INTO tenants SELECT {70_000_000 + 100 * i} + g, md5(g::text) "
            "FROM generate_series(1, 50) g",
        )
        names.append(switch_and_wait(h))
    for name in names:
        h.run("wal-fetch", "--target", "platform", name, str(folder / name))
    ctx["originals"] = [folder / name for name in names]
    fresh = dict(h.policy, repository=dict(ctx["spec"], prefix="fresh-archive/", retries=0))
    ctx["fresh_config"] = h.root / "fresh.yaml"
    ctx["fresh_config"].write_text(yaml.safe_dump(fresh, sort_keys=False))


def fresh(h: Harness, ctx: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGBACKUP, "--config", str(ctx["fresh_config"]), *args],
        capture_output=True,
        text=True,
        env=h.env,
        cwd=h.root,
        timeout=300,
    )


@when(
    parsers.parse(
        "I push each original into a fresh archive (no SDK retries) while the proxy fails "
        "{percent:d}% of "
        "requests, retrying a failed push up to {tries:d} times"
    )
)
def push_under_faults(h: Harness, ctx: dict[str, Any], percent: int, tries: int) -> None:
    pushed = []
    with faults(ctx, percent):
        for path in ctx["originals"]:
            for _ in range(1 + tries):  # as PostgreSQL does: retry a failed archive_command
                proc = fresh(h, ctx, "wal-push", "--target", "platform", str(path))
                keep(ctx, proc)
                if proc.returncode == 0:
                    pushed.append(path)
                    break
    ctx["pushed"] = pushed


@then(
    "with the proxy healthy, wal-fetch from the fresh archive returns each pushed segment "
    "byte for byte"
)
def fetch_equal(h: Harness, ctx: dict[str, Any]) -> None:
    assert ctx["pushed"], [p.stderr for p in ctx["runs"]]
    out = h.root / "fetched"
    out.mkdir()
    for path in ctx["originals"]:
        proc = fresh(h, ctx, "wal-fetch", "--target", "platform", path.name, str(out / path.name))
        if path in ctx["pushed"]:
            assert proc.returncode == 0, proc.stderr
            assert (out / path.name).read_bytes() == path.read_bytes()
        else:  # never pushed successfully: absent, or (pushed by a lost answer) whole
            assert proc.returncode in (0, 1), proc.stderr
            if proc.returncode == 0:
                assert (out / path.name).read_bytes() == path.read_bytes()


@then("every object in the fresh archive's wal/ decodes completely")
def wal_whole(ctx: dict[str, Any]) -> None:
    from pgbackup.formats.codecs import decode_bytes, parse_suffix
    from pgbackup.storage import open_storage

    with mock.patch.dict(os.environ, ctx["env"]):
        storage = open_storage(dict(ctx["spec"], prefix="fresh-archive/", retries=3))
        keys = [i.key for i in storage.list("platform/wal/")]
        assert keys
        for key in keys:
            base, spec = parse_suffix(key.rsplit("/", 1)[-1])
            data = decode_bytes(spec, storage.read_bytes(key), what=key)
            assert len(data) == 16 * 1024 * 1024, (key, len(data))


# --- a backup cut off mid-way -----------------------------------------------------------


def bucket_keys(ctx: dict[str, Any]) -> set[str]:
    from pgbackup.storage import open_storage

    with mock.patch.dict(os.environ, ctx["env"]):
        storage = open_storage(dict(ctx["spec"], endpoint_url=ctx["upstream_url"]))
        return {i.key for i in storage.list("platform/base/")}


@when("the network fails every write of backup_manifest and every delete")
def cut_manifest(ctx: dict[str, Any]) -> None:
    proxy: FaultProxy = ctx["proxy"]
    proxy.only = lambda method, path: (
        method == "DELETE" or (method in ("PUT", "POST") and "backup_manifest" in path)
    )
    proxy.faults = ("drop", "503")
    proxy.rate = 1.0
    proxy.max_faults = 1000
    proxy.enabled = True


@when("the network is healthy again")
def healthy(ctx: dict[str, Any]) -> None:
    ctx["proxy"].enabled = False


@then("the failed backup's base.tar is left in the bucket without metadata.json")
def leftover(ctx: dict[str, Any]) -> None:
    keys = bucket_keys(ctx)
    ids = {k.split("/")[2] for k in keys}
    assert len(ids) == 1, keys
    (ctx["leftover"],) = ids
    assert any("/base.tar" in k for k in keys), keys
    assert not any(k.endswith("metadata.json") for k in keys), keys


@then("the repository lists no complete backup")
def none_complete(h: Harness) -> None:
    assert [b for b in h.backups() if b["status"] == "complete"] == []


@then("the leftover of the failed backup is gone from the bucket")
def leftover_gone(ctx: dict[str, Any]) -> None:
    assert not any(k.split("/")[2] == ctx["leftover"] for k in bucket_keys(ctx))


@then("the repository lists exactly the one complete backup")
def one_complete(h: Harness) -> None:
    rows = h.backups()
    assert [r["status"] for r in rows] == ["complete"], rows


# --- an upload cut off ------------------------------------------------------------------


@given(parsers.parse('an upload destination "{name}" under prefix "{prefix}" behind the proxy'))
def upload_behind_proxy(h: Harness, ctx: dict[str, Any], name: str, prefix: str) -> None:
    ctx["upload"] = {"name": name, **ctx["spec"], "prefix": prefix}
    h.policy["uploads"] = [ctx["upload"]]
    h.write_policy()


@when(parsers.parse('the network fails every write of metadata.json under "{prefix}"'))
def cut_upload_metadata(ctx: dict[str, Any], prefix: str) -> None:
    proxy: FaultProxy = ctx["proxy"]
    proxy.only = lambda method, path: (
        method == "PUT" and f"/{prefix}" in path and "metadata.json" in path
    )
    proxy.faults = ("drop", "503")
    proxy.rate = 1.0
    proxy.max_faults = 1000
    proxy.enabled = True


def upload_keys(ctx: dict[str, Any]) -> set[str]:
    from pgbackup.storage import open_storage

    spec = {k: v for k, v in ctx["upload"].items() if k != "name"}
    with mock.patch.dict(os.environ, ctx["env"]):
        storage = open_storage(dict(spec, endpoint_url=ctx["upstream_url"]))
        return {i.key for i in storage.list("platform/base/")}


@then(parsers.parse('at "{name}" the copy has its data but no metadata.json'))
def copy_without_metadata(h: Harness, ctx: dict[str, Any], name: str) -> None:
    keys = upload_keys(ctx)
    (backup_id,) = [b["backup_id"] for b in h.backups()]
    ctx["first"] = backup_id
    assert any(k.startswith(f"platform/base/{backup_id}/base.tar") for k in keys), keys
    assert not any(k.endswith("metadata.json") for k in keys), keys


@then(parsers.parse('restoring from "{name}" fails saying "{text}"'))
def restore_from_fails(h: Harness, name: str, text: str) -> None:
    proc = h.run("restore", "--from", name, "--to", str(h.root / "nothing"), expect_ok=False)
    out = proc.stdout + proc.stderr
    assert text in out and "Traceback" not in out, out
    assert not (h.root / "nothing").exists() or not list((h.root / "nothing").iterdir())


@then(parsers.parse('at "{name}" both backups are complete copies'))
def both_complete(h: Harness, ctx: dict[str, Any], name: str) -> None:
    ids = [b["backup_id"] for b in h.backups()]
    assert len(ids) == 2 and ids[0] == ctx["first"]
    keys = upload_keys(ctx)
    for backup_id in ids:
        assert f"platform/base/{backup_id}/metadata.json" in keys, keys


@then(parsers.parse('the first backup restores from "{name}"'))
def first_restores(h: Harness, ctx: dict[str, Any], name: str) -> None:
    target = h.root / "from-offsite"
    h.run("restore", "--from", name, "--backup", ctx["first"], "--to", str(target))
    assert (target / "PG_VERSION").is_file() and (target / "global" / "pg_control").is_file()


# --- parallel ranged reads (issue #26 point 2) --------------------------------------------

SAMPLE_TABLES = ["public.tenants", "public.users", "public.sessions"]


@given(parsers.parse("the repository uses {part:d}MiB parts and {streams:d} streams"))
def parallel_repository(h: Harness, ctx: dict[str, Any], part: int, streams: int) -> None:
    ctx["part"] = part * 1024 * 1024
    ctx["spec"] = dict(ctx["spec"], part_size=f"{part}MiB", streams=streams)
    h.policy["repository"] = dict(ctx["spec"])
    h.write_policy()


@given(parsers.parse('a table "{table}" of {rows:d} rows that compress poorly'))
def poorly_compressible_table(h: Harness, table: str, rows: int) -> None:
    # 8 md5 digests a row: hex text, about half its size after zstd.
    digests = " || ".join(f"md5(random()::text || g || '{i}')" for i in range(8))
    h.sql(h.sandbox(), f"CREATE TABLE {table} (id int PRIMARY KEY, payload text)")
    h.sql(h.sandbox(), f"INSERT INTO {table} SELECT g, {digests} FROM generate_series(1, {rows}) g")
    assert h.sql(h.sandbox(), f"SELECT count(*) FROM {table}")[0][0] == rows


@when(parsers.parse('I record the checksums of the sample tables and "{table}"'))
def record_with_table(h: Harness, ctx: dict[str, Any], table: str) -> None:
    from pgbackup.postgres.connection import connect, table_checksums

    ctx["tables"] = [*SAMPLE_TABLES, f"public.{table}"]
    with connect(h.sandbox().conninfo("platform")) as conn:
        ctx["checksums"] = table_checksums(conn, ctx["tables"])


@then(parsers.parse("the latest backup's base archive in the bucket spans at least {n:d} parts"))
def base_spans_parts(h: Harness, ctx: dict[str, Any], n: int) -> None:
    from pgbackup.storage import open_storage

    backup_id = h.backups()[-1]["backup_id"]
    with mock.patch.dict(os.environ, ctx["env"]):
        storage = open_storage(dict(ctx["spec"], endpoint_url=ctx["upstream_url"]))
        infos = [i for i in storage.list(f"platform/base/{backup_id}/") if "/base.tar" in i.key]
    assert len(infos) == 1, infos
    print(f"\nbase archive {infos[0].key}: {infos[0].size} bytes")
    assert infos[0].size > (n - 1) * ctx["part"], (infos[0].size, ctx["part"])


def _range_start(headers: dict[str, str]) -> int | None:
    value = headers.get("range", "")
    return int(value[6:].split("-", 1)[0]) if value.startswith("bytes=") else None


def _base_gets(proxy: FaultProxy) -> list[int]:
    """Start of each GET of a base archive the proxy saw (0: the GET that opened it)."""
    return [
        _range_start(h) or 0
        for m, p, h in proxy.seen
        if m == "GET" and "/base/" in p and "/base.tar" in p
    ]


@when("the proxy cuts the ranged GET of the base archive at the third part twice")
def cut_third_range(ctx: dict[str, Any]) -> None:
    proxy: FaultProxy = ctx["proxy"]
    target = 2 * ctx["part"]
    cut: list[str] = []

    def rule(method: str, path: str, headers: dict[str, str]) -> str | None:
        hit = method == "GET" and "/base.tar" in path and _range_start(headers) == target
        if hit and len(cut) < 2:
            cut.append(path)
            return "truncate"  # the answer's headers and half its body, then close
        return None

    proxy.seen.clear()
    proxy.peak_in_flight = 0
    proxy.rule = rule
    proxy.max_faults = 1000
    proxy.enabled = True
    ctx["cut"] = cut


@then("that range was cut twice and fetched a third time, and no other range twice")
def range_cut_twice(ctx: dict[str, Any]) -> None:
    proxy: FaultProxy = ctx["proxy"]
    starts = _base_gets(proxy)
    counts = {s: starts.count(s) for s in set(starts)}
    print(f"\nGETs of the base archive by start: {sorted(counts.items())}; {proxy.counts}")
    assert len(ctx["cut"]) == 2 and proxy.counts["truncate"] == 2, proxy.counts
    target = 2 * ctx["part"]
    assert counts.pop(target) == 3, counts
    assert set(counts.values()) == {1}, counts
    assert len(counts) >= 3, counts  # the opening GET and at least two more ranges


@then("ranged GETs of the base archive were in flight at once")
def ranges_in_flight(ctx: dict[str, Any]) -> None:
    proxy: FaultProxy = ctx["proxy"]
    assert proxy.peak_in_flight >= 2, proxy.peak_in_flight


@then(
    parsers.parse('the restored sample tables and "{table}" have the recorded rows and checksums')
)
def restored_with_table(h: Harness, ctx: dict[str, Any], table: str) -> None:
    from pgbackup.postgres.connection import connect, table_checksums

    target_dir, port = ctx["restored"]
    cluster = h.track(target_dir, port)
    with connect(cluster.conninfo("platform")) as conn:
        got = table_checksums(conn, ctx["tables"])
    assert got == ctx["checksums"]
    assert got[f"public.{table}"].split(":", 1)[0] == str(
        h.sql(h.sandbox(), f"SELECT count(*) FROM {table}")[0][0]
    )
