"""Steps for verify.feature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import Harness
from pytest_bdd import parsers, scenarios, then, when

scenarios("verify.feature")


def backup_dir(h: Harness) -> Path:
    backup_id = h.backups()[-1]["backup_id"]
    return h.repo / "platform" / "base" / backup_id


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@when("I verify the latest backup")
def verify_latest(h: Harness) -> None:
    h.run("verify", "--backup", "latest")


@then(parsers.parse("verify succeeds and checked more than {n:d} files"))
def verify_ok(h: Harness, n: int) -> None:
    assert h.last is not None and "OK (" in h.last.stdout
    checked = int(h.last.stdout.split("OK (", 1)[1].split(" files", 1)[0])
    assert checked > n


@when(parsers.parse('I flip one byte in the middle of "{name}"'))
def flip_middle(h: Harness, name: str) -> None:
    path = backup_dir(h) / name
    flip_byte(path, path.stat().st_size // 2)


@when(parsers.parse('I flip one byte inside the stored file of table "{table}"'))
def flip_table_file(h: Harness, ctx: dict[str, Any], table: str) -> None:
    cluster = h.sandbox()
    relpath = h.sql(cluster, f"SELECT pg_relation_filepath('{table}')")[0][0]
    ctx["relpath"] = relpath
    tar = backup_dir(h) / "base.tar"
    data = tar.read_bytes()
    # Find the member header by name (ustar: name in the first 100 bytes of a 512-byte block).
    needle = relpath.encode() + b"\0"
    idx = 0
    while True:
        idx = data.index(needle, idx)
        if idx % 512 == 0:
            break
        idx += 1
    flip_byte(tar, idx + 512 + 100)  # 100 bytes into the file's content


@then(parsers.parse('the failure names the data file of table "{table}"'))
def failure_names_file(h: Harness, ctx: dict[str, Any], table: str) -> None:
    assert h.last is not None
    said = h.last.stdout + h.last.stderr
    assert ctx["relpath"] in said
    # Once, in the report: the log line of the same problem goes to the log file only.
    assert said.count(ctx["relpath"]) == 1, said
    assert ctx["relpath"] in (h.repo / "backup.log").read_text()


@when(parsers.parse('I restore the latest backup into "{name}" expecting failure'))
def restore_fails(h: Harness, name: str) -> None:
    h.run("restore", "--to", str(h.root / name), expect_ok=False)


@then(parsers.parse('the directory "{name}" is empty'))
def dir_empty(h: Harness, name: str) -> None:
    assert list((h.root / name).iterdir()) == []


@when("I truncate the backup's metadata.json")
def truncate_metadata(h: Harness) -> None:
    path = backup_dir(h) / "metadata.json"
    path.write_bytes(path.read_bytes()[:100])


@then("the backup is listed as damaged")
def listed_damaged(h: Harness) -> None:
    rows = h.backups()
    assert rows[-1]["status"] == "damaged", rows


@then(parsers.parse('verify --backup all fails naming "{name}"'))
def verify_all_fails(h: Harness, name: str) -> None:
    proc = h.run("verify", "--backup", "all", expect_ok=False)
    assert name in proc.stdout + proc.stderr
