"""Pure argv/settings builders: the exact commands and settings pgbackup hands to PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgbackup.engine.backup import basebackup_argv, compress_option
from pgbackup.engine.restore_command import parse_time, recovery_settings
from pgbackup.errors import UsageError
from pgbackup.formats.codecs import CodecSpec
from pgbackup.formats.manifest import wal_range
from pgbackup.postgres.connection import to_dsn


def test_basebackup_argv_server_compressed_tar_with_wal_and_no_password() -> None:
    argv = basebackup_argv(
        "/usr/lib/postgresql/15/bin/pg_basebackup",
        {
            "host": "db1",
            "port": 5432,
            "user": "platform_service",
            "dbname": "platform",
            "password": "x",
        },
        "pgbackup 20261123T020000Z",
        Path("/repo/platform/base/20261123T020000Z"),
        CodecSpec("zstd", 3),
    )
    assert argv[0] == "/usr/lib/postgresql/15/bin/pg_basebackup"
    assert "--pgdata=/repo/platform/base/20261123T020000Z" in argv
    assert "--format=tar" in argv and "--wal-method=stream" in argv
    assert "--checkpoint=fast" in argv and "--manifest-checksums=CRC32C" in argv
    assert "--no-password" in argv
    assert "--compress=server-zstd:3" in argv
    dsn = argv[argv.index("--dbname") + 1]
    assert dsn == "host='db1' port='5432' user='platform_service' dbname='platform'"
    assert "x" not in dsn.split("'")  # never a password on the command line


@pytest.mark.parametrize(
    "method,level,option",
    [
        ("zstd", 19, "--compress=server-zstd:19"),
        ("gzip", 6, "--compress=server-gzip:6"),
        ("lz4", 0, "--compress=server-lz4:1"),  # pg_basebackup's lz4 levels start at 1
        ("lz4", 16, "--compress=server-lz4:12"),
        ("none", 0, None),
    ],
)
def test_compress_option(method: str, level: int, option: str | None) -> None:
    assert compress_option(CodecSpec(method, level)) == option


def test_compress_option_with_server_workers() -> None:
    assert (
        compress_option(CodecSpec("zstd", 3), workers=2)
        == "--compress=server-zstd:level=3,workers=2"
    )
    # PostgreSQL compresses gzip and lz4 on one thread: no workers option for them
    assert compress_option(CodecSpec("gzip", 6), workers=2) == "--compress=server-gzip:6"


def test_to_dsn_quotes_values() -> None:
    assert to_dsn({"host": "h", "dbname": "it's"}) == "host='h' dbname='it\\'s'"


def test_wal_range_from_manifest() -> None:
    manifest = (
        b'{"WAL-Ranges": [{"Timeline": 2, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}'
    )
    assert wal_range(manifest) == (2, 0x2000028, 0x2000100)


POLICY = SimpleNamespace(path=Path("/etc/pgbackup/backup.yaml"), repository={"kind": "s3"})


def test_restore_command_reads_the_same_past_as_the_restore() -> None:
    as_of = SimpleNamespace(
        path=POLICY.path, repository={"kind": "s3", "as_of": "2026-11-23 15:30:00+01"}
    )

    def latest(**upload: str) -> str:
        settings = recovery_settings(
            as_of,
            "platform",
            kind="latest",
            value=None,
            action="promote",
            timeline=None,
            inclusive=True,
            **upload,
        )
        return str(settings["restore_command"])

    assert "wal-fetch --target platform --as-of 2026-11-23T14:30:00.000000Z %f %p" in latest()
    assert "--as-of" not in latest(from_upload="offsite")  # --from reads the copy live


@pytest.mark.parametrize(
    "kind,value,expected",
    [
        (
            "time",
            datetime(2026, 11, 23, 14, 30, tzinfo=UTC),
            {"recovery_target_time": "2026-11-23 14:30:00+00:00"},
        ),
        ("lsn", 0x3000060, {"recovery_target_lsn": "0/3000060"}),
        ("xid", 1234, {"recovery_target_xid": "1234"}),
        ("name", "before-migration", {"recovery_target_name": "before-migration"}),
        ("immediate", None, {"recovery_target": "immediate"}),
    ],
)
def test_recovery_settings(kind: str, value: object, expected: dict[str, str]) -> None:
    settings = recovery_settings(
        POLICY, "platform", kind=kind, value=value, action="promote", timeline=None, inclusive=True
    )
    for key, val in expected.items():
        assert settings[key] == val
    assert settings["recovery_target_action"] == "promote"
    assert "wal-fetch --target platform %f %p" in settings["restore_command"]
    assert "--config '/etc/pgbackup/backup.yaml'" in settings["restore_command"]


def test_recovery_settings_latest_replays_everything() -> None:
    settings = recovery_settings(
        POLICY,
        "platform",
        kind="latest",
        value=None,
        action="promote",
        timeline="latest",
        inclusive=True,
    )
    assert not any(
        k.startswith("recovery_target_") and k != "recovery_target_timeline" for k in settings
    )
    assert settings["recovery_target_timeline"] == "latest"


def test_exclusive_target() -> None:
    settings = recovery_settings(
        POLICY, "p", kind="lsn", value=1, action="pause", timeline="2", inclusive=False
    )
    assert settings["recovery_target_inclusive"] == "off"
    assert settings["recovery_target_action"] == "pause"
    assert settings["recovery_target_timeline"] == "2"


def test_parse_time() -> None:
    assert parse_time("2026-11-23 14:30:00", "UTC") == datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    assert parse_time("2026-11-23T14:30:00Z") == datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    with pytest.raises(UsageError, match="not a timestamp"):
        parse_time("yesterday")


def test_parse_time_reads_a_zoneless_time_in_the_servers_zone() -> None:
    """As PostgreSQL reads a zone-less recovery_target_time: in the server's timezone."""
    kolkata = parse_time("2025-01-09 14:30:00", "Asia/Kolkata")
    assert kolkata.astimezone(UTC) == datetime(2025, 1, 9, 9, 0, tzinfo=UTC)
    # Summer and winter offsets of one zone (DST) both come out right.
    assert parse_time("2025-07-01 12:00:00", "Europe/Berlin").utcoffset() == timedelta(hours=2)
    assert parse_time("2025-01-01 12:00:00", "Europe/Berlin").utcoffset() == timedelta(hours=1)
    # An explicit offset wins over the server's zone.
    assert parse_time("2025-01-09 14:30:00+00:00", "Asia/Kolkata").hour == 14
    with pytest.raises(UsageError, match="has no time zone"):
        parse_time("2025-01-09 14:30:00", None)
    with pytest.raises(UsageError, match="not one this machine knows"):
        parse_time("2025-01-09 14:30:00", "Mars/Olympus_Mons")


def test_basebackup_argv_throttles_only_when_asked() -> None:
    from pgbackup.engine.backup import basebackup_argv
    from pgbackup.formats.codecs import CodecSpec

    plain = basebackup_argv("pg_basebackup", {"host": "h"}, "l", Path("/x"), CodecSpec("zstd", 3))
    assert not [a for a in plain if a.startswith("--max-rate")]
    slow = basebackup_argv(
        "pg_basebackup", {"host": "h"}, "l", Path("/x"), CodecSpec("zstd", 3), 0, "4M"
    )
    assert "--max-rate=4M" in slow
