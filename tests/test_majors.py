"""A PostgreSQL major outside the tested table is refused before anything is written, with
one message (issue #29 point 5): a backup's preflight, and wal-push by the WAL page's
magic or the data directory's PG_VERSION. No server of 14 or 19 can be installed here, so
the refusals are driven by the facts they read: a server's version number, a page magic,
a PG_VERSION file."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_chains import facts

from pgbackup.engine.backup_preflight import preflight
from pgbackup.errors import PgBackupError
from pgbackup.formats.walpage import SUPPORTED_MAJORS, WAL_PAGE_MAGIC
from pgbackup.policy import validate_file
from pgbackup.postgres.majors import unsupported

SEG = 16 * 1024 * 1024
NAME = "000000010000000000000003"
SYSID = 7000000000000000009


def segment(magic: int) -> bytes:
    head = struct.pack("<HHIQI4xQII", magic, 0x0002, 1, 0, 0, SYSID, SEG, 8192)
    return head + bytes(SEG - len(head))


def test_the_table_is_the_one_the_suite_proves() -> None:
    assert SUPPORTED_MAJORS == (15, 16, 17, 18)
    for major in SUPPORTED_MAJORS:
        assert unsupported(major, "x") is None
        assert major in WAL_PAGE_MAGIC  # a page of each is recognised
    assert unsupported(None, "x") is None  # unknown: judged where it is known


@pytest.mark.parametrize("version_num", [140011, 190001])
def test_a_backup_of_an_unsupported_server_is_refused_in_its_preflight(version_num: int) -> None:
    with pytest.raises(PgBackupError) as caught:
        preflight(facts(version_num, None), {"host": "127.0.0.1", "port": 5432, "user": "u"})
    major = version_num // 10000
    assert f"is PostgreSQL {major}, which this pgbackup does not support" in caught.value.message
    assert (
        "(it is proven on PostgreSQL 15, 16, 17 and 18); nothing was written"
        in caught.value.message
    )
    assert "docs/testing.md" in (caught.value.hint or "")


def test_supported_servers_pass_the_major_check() -> None:
    for major in SUPPORTED_MAJORS:
        preflight(facts(major * 10000 + 1, None), {"host": "h", "user": "u"})


@pytest.fixture
def pushed(tmp_path: Path) -> dict[str, Path]:
    policy = tmp_path / "backup.yaml"
    policy.write_text(
        "version: 1\n"
        "repository: {path: repo}\n"
        "compression: {method: zstd, level: 3}\n"
        "targets:\n"
        "  main:\n"
        "    connection: {host: 127.0.0.1, port: 5432, user: postgres, dbname: postgres}\n"
    )
    assert validate_file(policy) == []
    data_dir = tmp_path / "data"
    (data_dir / "pg_wal").mkdir(parents=True)
    return {"policy": policy, "data": data_dir, "repo": tmp_path / "repo"}


def wal_push(s: dict[str, Path], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(s["data"].parent / "cache"), **env_extra}
    env.pop("PGBACKUP_CONFIG", None)
    argv = [sys.executable, "-m", "pgbackup.interface.console", "--config", str(s["policy"])]
    return subprocess.run(
        [*argv, "wal-push", f"pg_wal/{NAME}"], cwd=s["data"], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("magic", "pg_version", "major"),
    [(WAL_PAGE_MAGIC[14], None, 14), (0xD11A, "19\n", 19)],
    ids=["14 by its page magic", "19 by PG_VERSION (a magic pgbackup does not know)"],
)
def test_walpush_refuses_the_wal_of_an_unsupported_major_and_stores_nothing(
    pushed: dict[str, Path], magic: int, pg_version: str | None, major: int
) -> None:
    (pushed["data"] / "pg_wal" / NAME).write_bytes(segment(magic))
    if pg_version:
        (pushed["data"] / "PG_VERSION").write_text(pg_version)
    proc = wal_push(pushed, {})
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"WAL file {NAME} is PostgreSQL {major}, which this pgbackup does not support" in out
    assert "Traceback" not in out
    stored = (
        [p for p in pushed["repo"].rglob("*") if p.is_file()] if pushed["repo"].exists() else []
    )
    assert stored == []  # nothing written: no archive.json binding, no segment


def test_walpush_of_a_supported_major_stores_the_segment(pushed: dict[str, Path]) -> None:
    (pushed["data"] / "pg_wal" / NAME).write_bytes(segment(WAL_PAGE_MAGIC[15]))
    (pushed["data"] / "PG_VERSION").write_text("15\n")
    proc = wal_push(pushed, {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (pushed["repo"] / "main" / "wal" / f"{NAME}.zst").is_file()
