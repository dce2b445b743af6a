"""engine/known_server: the facts a backup starts on before the server has answered."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbackup.engine import known_server
from pgbackup.postgres.connection import ServerFacts

FACTS = ServerFacts(
    version_num=150018,
    version="15.18",
    system_identifier="7714338978492832873",
    timeline=1,
    wal_level="replica",
    archive_mode="on",
    archive_command="pgbackup --config /etc/pgbackup/backup.yaml wal-push %p",
    archive_timeout=60,
    wal_segment_size=16 << 20,
    data_directory="/var/lib/postgresql/15/main",
    in_recovery=False,
    can_replicate=True,
    max_wal_senders=10,
    database_size=123,
    timezone="Etc/UTC",
    tablespaces=({"oid": 16390, "name": "fast", "location": "/srv/fast"},),
    wal_compression_methods=("pglz", "lz4", "zstd", "on", "off"),
)
CONNINFO = {"host": "127.0.0.1", "port": 5432, "user": "backup", "password": "s3cret"}


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "pgbackup" / known_server.FILE_NAME


def test_remembered_facts_come_back_for_the_same_target_and_connection(cache_home: Path) -> None:
    assert known_server.recall("main", CONNINFO, None) is None
    known_server.remember("main", CONNINFO, None, FACTS)
    assert known_server.recall("main", CONNINFO, None) == FACTS._replace(archive_command="")
    # the password is not part of the key: a rotated one still finds them
    assert known_server.recall("main", {**CONNINFO, "password": "new"}, None) is not None
    for other in (
        ("other", CONNINFO, None),
        ("main", {**CONNINFO, "port": 5433}, None),
        ("main", CONNINFO, "/usr/lib/postgresql/16/bin"),
    ):
        assert known_server.recall(*other) is None, other


def test_the_file_holds_no_password_nor_archive_command_and_is_private(cache_home: Path) -> None:
    known_server.remember("main", CONNINFO, None, FACTS)
    text = cache_home.read_text()
    assert "s3cret" not in text and "wal-push" not in text
    assert cache_home.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[]", b'{"main": 1}', b'{"x": {"version_num": 1}}']
)
def test_an_unreadable_or_foreign_file_is_no_memory(cache_home: Path, content: bytes) -> None:
    cache_home.parent.mkdir(parents=True)
    cache_home.write_bytes(content)
    assert known_server.recall("main", CONNINFO, None) is None
    known_server.remember("main", CONNINFO, None, FACTS)  # and is replaced, not an error
    assert known_server.recall("main", CONNINFO, None) is not None


def test_an_unwritable_cache_never_fails_a_backup(cache_home: Path) -> None:
    cache_home.parent.write_text("a file where the cache directory should be")  # even for root
    known_server.remember("main", CONNINFO, None, FACTS)  # no exception
    assert known_server.recall("main", CONNINFO, None) is None
