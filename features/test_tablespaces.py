"""Steps for tablespaces.feature."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from harness import Harness, restore_and_start, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then, when
from tablespace_helpers import assert_linked_to, make_tablespace, restored, table_sum

from pgbackup.postgres.cluster import hand_over

scenarios("tablespaces.feature")


@given(parsers.parse('the sandbox has a tablespace "{name}" with {rows:d} rows in a table in it'))
def sandbox_tablespace(h: Harness, ctx: dict[str, Any], name: str, rows: int) -> None:
    cluster = h.sandbox()
    ctx.setdefault("locations", {})[name] = make_tablespace(h, cluster, name, rows)
    ctx.setdefault("sums", {})[name] = table_sum(cluster, name)


@given("the source server is gone and its tablespace directory with it")
@given("the source server is gone and both tablespace directories with it")
def host_lost(h: Harness, ctx: dict[str, Any]) -> None:
    h.sandbox().stop("fast")
    for location in ctx["locations"].values():
        shutil.move(location, str(location) + ".lost")


@given("a byte of the tablespace's stored archive is flipped")
def flip_tablespace_archive(h: Harness, ctx: dict[str, Any]) -> None:
    backup = h.backups()[-1]["backup_id"]
    meta = json.loads((h.repo / "platform" / "base" / backup / "metadata.json").read_text())
    name = next(n for n, o in meta["objects"].items() if o["kind"] == "tablespace")
    path = h.repo / "platform" / "base" / backup / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    ctx["flipped"] = name


@given(
    parsers.parse('a tablespace "{name}" created after the backup holds {rows:d} rows, archived')
)
def later_tablespace(h: Harness, ctx: dict[str, Any], name: str, rows: int) -> None:
    cluster = h.sandbox()
    ctx["locations"][name] = make_tablespace(h, cluster, name, rows)
    ctx["sums"][name] = table_sum(cluster, name)
    switch_and_wait_archived(cluster)


@when("I restore with --tablespace-map extra=<a new directory> and start it")
def restore_mapped(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["mapped"] = h.root / "mapped-extra"
    restore_and_start(h, ctx, h.root / "restored", "--tablespace-map", f"extra={ctx['mapped']}")


@when("I restore with --tablespace-map extra=<a new directory> expecting failure")
def restore_mapped_fails(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["mapped"] = h.root / "mapped-extra"
    restore_and_start(
        h,
        ctx,
        h.root / "restored",
        "--tablespace-map",
        f"extra={ctx['mapped']}",
        expect_ok=False,
    )


@when("I restore the latest backup into a new directory expecting failure")
def restore_fails(h: Harness, ctx: dict[str, Any]) -> None:
    restore_and_start(h, ctx, h.root / "restored", expect_ok=False)


@when("I restore to the latest point with --tablespace-map-all <a new directory> and start it")
def restore_latest_all(h: Harness, ctx: dict[str, Any]) -> None:
    restore_latest_all_maybe(h, ctx, True)


@when("I restore to the latest point with --tablespace-map-all <a new directory> expecting failure")
def restore_latest_all_fails(h: Harness, ctx: dict[str, Any]) -> None:
    restore_latest_all_maybe(h, ctx, False)


def restore_latest_all_maybe(h: Harness, ctx: dict[str, Any], ok: bool) -> None:
    ctx["mapped"] = h.root / "all-ts"
    restore_and_start(
        h,
        ctx,
        h.root / "restored",
        "--target",
        "latest",
        "--tablespace-map-all",
        str(ctx["mapped"]),
        expect_ok=ok,
    )


@then(parsers.parse('the message names the original location of "{name}" and says to create it'))
def names_location(h: Harness, ctx: dict[str, Any], name: str) -> None:
    assert h.last is not None and h.last.returncode != 0
    text = h.last.stderr
    assert str(ctx["locations"][name]) in text and "create" in text, text
    assert "Traceback" not in text


@when(parsers.parse('the original directory of "{name}" is created empty for the server'))
def create_original(h: Harness, ctx: dict[str, Any], name: str) -> None:
    location = ctx["locations"][name]
    location.mkdir()
    hand_over(location, h.sandbox().os_user, 0o700)


@then(parsers.parse('the restored table in "{name}" has the same {rows:d} rows'))
def same_rows(ctx: dict[str, Any], name: str, rows: int) -> None:
    got = table_sum(restored(ctx), name)
    assert got == ctx["sums"][name] and got[0] == rows, (got, ctx["sums"][name])


@then('the backup\'s metadata lists tablespace "extra" with its location')
def metadata_lists(h: Harness, ctx: dict[str, Any]) -> None:
    backup = h.backups()[-1]["backup_id"]
    meta = json.loads((h.repo / "platform" / "base" / backup / "metadata.json").read_text())
    assert [(t["name"], t["location"]) for t in meta["tablespaces"]] == [
        ("extra", str(ctx["locations"]["extra"]))
    ]
    kinds = sorted(o["kind"] for o in meta["objects"].values())
    assert kinds == ["base", "manifest", "tablespace", "wal"], kinds
    ctx["meta"] = meta


@then("verify checks the tablespace's files against the manifest")
def verify_tablespace(h: Harness, ctx: dict[str, Any]) -> None:
    report = h.json("verify")["platform"]["backups"][0]
    assert report["ok"] is True, report
    manifest = json.loads(
        (h.repo / "platform" / "base" / ctx["meta"]["backup_id"] / "backup_manifest").read_text()
    )
    in_tablespace = [f for f in manifest["Files"] if f["Path"].startswith("pg_tblspc/")]
    assert in_tablespace, "the manifest lists no tablespace files"
    assert report["files_checked"] == len(manifest["Files"]), report


@then("pg_tblspc links to the new directory and no tablespace_map is left")
def links_mapped(ctx: dict[str, Any]) -> None:
    directory, _port = ctx["restored"]
    assert_linked_to(directory, ctx["mapped"])


@then("pg_tblspc links to the original location")
def links_original(ctx: dict[str, Any]) -> None:
    directory, _port = ctx["restored"]
    links = list((directory / "pg_tblspc").iterdir())
    assert [os.readlink(link) for link in links] == [str(ctx["locations"]["extra"])]


@then("nothing was restored into the new directory")
def nothing_restored(ctx: dict[str, Any]) -> None:
    directory, _port = ctx["restored"]
    assert not directory.exists() or not any(directory.iterdir())


@then("verify names the tablespace's archive")
def verify_names(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("verify", expect_ok=False)
    assert ctx["flipped"] in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@then("nothing was restored into the new directory or the mapped one")
def nothing_anywhere(ctx: dict[str, Any]) -> None:
    directory, _port = ctx["restored"]
    for d in (directory, ctx["mapped"]):
        assert not d.exists() or not any(d.iterdir()), d


@then(
    parsers.parse(
        'the table in "{name}" has {rows:d} rows, replayed into the original location of "{name2}"'
    )
)
def replayed_original(ctx: dict[str, Any], name: str, rows: int, name2: str) -> None:
    assert table_sum(restored(ctx), name) == ctx["sums"][name]
    directory, _port = ctx["restored"]
    cluster = restored(ctx)
    oid = cluster.sql(f"SELECT oid FROM pg_tablespace WHERE spcname = '{name}'")[0][0]
    link = directory / "pg_tblspc" / str(oid)
    # PostgreSQL's CREATE TABLESPACE redo uses the path in the WAL record: the original.
    assert os.readlink(link) == str(ctx["locations"][name2]), os.readlink(link)
    assert any(ctx["locations"][name2].iterdir())


@when("I run a drill that counts the rows in the tablespace")
def drill(h: Harness, ctx: dict[str, Any]) -> None:
    location: Path = ctx["locations"]["extra"]
    ctx["before"] = sorted(str(p.relative_to(location)) for p in location.rglob("*"))
    h.policy["drill"] = {
        "checks": [
            {"name": "extra rows", "sql": "SELECT count(*) FROM in_extra", "expect": "== 1000"}
        ]
    }
    h.write_policy()
    ctx["drill"] = h.json("drill")["platform"]


@then("the drill passed and the tablespace's original directory is untouched")
def drill_passed(ctx: dict[str, Any]) -> None:
    assert ctx["drill"]["status"] == "ok", ctx["drill"]
    location: Path = ctx["locations"]["extra"]
    after = sorted(str(p.relative_to(location)) for p in location.rglob("*"))
    assert after == ctx["before"]


@given(
    parsers.parse(
        'the policy encrypts with a new age key and uploads to a local directory "{name}"'
    )
)
def encrypted_and_uploaded(h: Harness, ctx: dict[str, Any], name: str) -> None:
    from pyrage import x25519

    from pgbackup.postgres.cluster import server_os_user

    identity = x25519.Identity.generate()
    keys = h.root / "keys"
    keys.mkdir(mode=0o755)
    ident, recip = keys / "age-identity.txt", keys / "recipients.txt"
    ident.write_text(f"{identity}\n")
    os.chmod(ident, 0o600)
    user = server_os_user()
    if user:  # wal-fetch in the restored server reads it
        shutil.chown(ident, user, user)
    recip.write_text(f"{identity.to_public()}\n")
    h.policy["encryption"] = {
        "method": "age",
        "recipients_file": str(recip),
        "identity_file": str(ident),
    }
    h.policy["uploads"] = [{"name": name, "path": str(h.root / name)}]
    h.write_policy()
    ctx["upload"] = h.root / name


@when("another backup is taken")
def another_backup(h: Harness) -> None:
    h.run("backup")


@then(parsers.parse('the upload "{name}" holds the tablespace\'s archive, encrypted'))
def uploaded_encrypted(h: Harness, ctx: dict[str, Any], name: str) -> None:
    backup = h.backups()[-1]["backup_id"]
    oid = json.loads((h.repo / "platform" / "base" / backup / "metadata.json").read_text())[
        "tablespaces"
    ][0]["oid"]
    copy = ctx["upload"] / "platform" / "base" / backup / f"{oid}.tar.zst.age"
    assert copy.is_file(), sorted(p.name for p in copy.parent.iterdir())
    assert copy.read_bytes().startswith(b"age-encryption.org/v1")


@when(
    parsers.parse(
        'I restore from "{name}" with --tablespace-map extra=<a new directory> and start it'
    )
)
def restore_from_upload(h: Harness, ctx: dict[str, Any], name: str) -> None:
    ctx["mapped"] = h.root / "mapped-offsite"
    restore_and_start(
        h,
        ctx,
        h.root / "restored-offsite",
        "--from",
        name,
        "--backup",
        "latest",
        "--tablespace-map",
        f"extra={ctx['mapped']}",
    )


@then(parsers.parse("the metrics say the newest backup holds {n:d} tablespace"))
def metrics_tablespaces(h: Harness, n: int) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    prom = h.root / "metrics.prom"
    h.run("check", "--prometheus", str(prom), expect_ok=None)
    values = {
        (s.name, s.labels.get("repository")): s.value
        for f in text_string_to_metric_families(prom.read_text())
        for s in f.samples
        if s.labels.get("target") == "platform"
    }
    assert values[("pgbackup_backup_last_tablespaces", "primary")] == n, values
    assert values[("pgbackup_backup_last_from_standby", "primary")] == 0
