"""The pure parts of "a restore never reports success with committed data missing":
which exit status wal-fetch gives PostgreSQL, what counts as a hole in the archive, and
how the SLA report judges the archive's continuity. (The whole story, with real servers,
is features/recovery_integrity.feature.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbackup.engine.wal import beyond_the_archived, find_archived
from pgbackup.formats.codecs import CodecSpec
from pgbackup.interface.wal_commands import (
    EXIT_ABORT_RECOVERY,
    EXIT_FETCH_FAILED,
    fetch_failure_status,
)
from pgbackup.operations.sla import BREACHED, COMPLIANT, archive_section
from pgbackup.storage.posix import PosixStorage


def test_a_failed_fetch_aborts_archive_recovery_only(tmp_path: Path) -> None:
    # Outside recovery (a person at a shell): an ordinary failure.
    assert fetch_failure_status(tmp_path) == EXIT_FETCH_FAILED
    # Archive recovery: above 125, so PostgreSQL's startup process FATALs.
    (tmp_path / "recovery.signal").write_text("")
    assert fetch_failure_status(tmp_path) == EXIT_ABORT_RECOVERY > 125
    # 128 + SIGTERM would be read as a fast shutdown request and exit quietly.
    assert EXIT_ABORT_RECOVERY != 128 + 15
    # A standby retries and streams: it must not die of a passing error.
    (tmp_path / "standby.signal").write_text("")
    assert fetch_failure_status(tmp_path) == EXIT_FETCH_FAILED


ZSTD = CodecSpec(compression="zstd", level=1, encrypted=False)


def test_a_hole_is_a_missing_segment_with_later_wal_of_its_timeline(tmp_path: Path) -> None:
    storage = PosixStorage(tmp_path)
    for name in (
        "000000010000000000000003",
        "000000010000000000000005",
        "000000010000000000000006.partial",
        "000000020000000000000009",
        "00000002.history",
    ):
        storage.write_bytes(f"t/wal/{name}.zst", b"x")
    # 4 is missing and 5 (and 6.partial) of timeline 1 are archived: a hole.
    assert beyond_the_archived(storage, "t", "000000010000000000000004", ZSTD) == (
        None,
        "000000010000000000000006",
    )
    # The end of timeline 1's archive, and a timeline 2 file older than its switch.
    assert beyond_the_archived(storage, "t", "000000010000000000000007", ZSTD) == (None, None)
    assert beyond_the_archived(storage, "t", "000000020000000000000004", ZSTD) == (
        None,
        "000000020000000000000009",
    )
    # At the end of the archive, the segment wal-receive is streaming: its .partial copy.
    assert beyond_the_archived(storage, "t", "000000010000000000000006", ZSTD) == (
        "t/wal/000000010000000000000006.partial.zst",
        None,
    )
    # Archived meanwhile (under any codec): the segment itself, never its .partial.
    storage.write_bytes("t/wal/000000010000000000000006.gz", b"x")
    assert beyond_the_archived(storage, "t", "000000010000000000000006", ZSTD) == (
        "t/wal/000000010000000000000006.gz",
        None,
    )
    storage.write_bytes("t/wal/000000010000000000000006.zst", b"x")  # the policy's codec first
    assert beyond_the_archived(storage, "t", "000000010000000000000006", ZSTD)[0] == (
        "t/wal/000000010000000000000006.zst"
    )


def test_the_listing_after_a_missing_segment_starts_at_its_name(tmp_path: Path) -> None:
    """The end of recovery (and a standby's poll for the next segment) lists the timeline
    from the missing name on, not the whole timeline: what the store is asked for."""
    asked: list[tuple[str, str | None]] = []

    class Recording(PosixStorage):
        def list(self, prefix: str = "", *, start_after: str | None = None):  # type: ignore[no-untyped-def]
            asked.append((prefix, start_after))
            return super().list(prefix, start_after=start_after)

    storage = Recording(tmp_path)
    for n in range(0x10, 0x30):  # a long timeline: 0x10..0x2F
        storage.write_bytes(f"t/wal/0000000100000000000000{n:02X}.zst", b"x")
    seen = [
        info.key
        for info in storage.list("t/wal/00000001", start_after="t/wal/00000001000000000000002E")
    ]
    assert seen == ["t/wal/00000001000000000000002E.zst", "t/wal/00000001000000000000002F.zst"]
    asked.clear()
    assert beyond_the_archived(storage, "t", "000000010000000000000030", ZSTD) == (None, None)
    assert asked == [("t/wal/00000001", "t/wal/00000001000000000000003")]


@pytest.mark.parametrize("one_request", [True, False])
def test_a_file_is_looked_for_with_one_listing_where_that_is_one_request(
    tmp_path: Path, one_request: bool
) -> None:
    """An object store (a listing of a name's prefix is one request) is asked once,
    found or not; a directory gets a stat first (its listing reads every entry)."""
    calls: list[str] = []

    class Counting(PosixStorage):
        prefix_listing_is_one_request = one_request

        def stat(self, key: str):  # type: ignore[no-untyped-def]
            calls.append("stat")
            return super().stat(key)

        def list(self, prefix: str = "", *, start_after: str | None = None):  # type: ignore[no-untyped-def]
            calls.append("list")
            return super().list(prefix, start_after=start_after)

    storage = Counting(tmp_path)
    storage.write_bytes("t/wal/00000002.history", b"1\t0/3000000\tx\n")  # stored uncompressed
    storage.write_bytes("t/wal/000000010000000000000003.zst", b"x")
    assert find_archived(storage, "t", "00000002.history", ZSTD) == "t/wal/00000002.history"
    assert find_archived(storage, "t", "00000003.history", ZSTD) is None
    assert find_archived(storage, "t", "000000010000000000000003", ZSTD) == (
        "t/wal/000000010000000000000003.zst"
    )
    assert calls == (["list"] * 3 if one_request else ["stat", "list", "stat", "list", "stat"])


def test_the_sla_report_breaches_on_a_hole_and_says_why() -> None:
    window = {
        "latest_time": "2026-11-30T10:00:00Z",
        "wal_gaps": ["000000010000000000000004"],
        "cut_reason": "WAL segment 000000010000000000000004 is missing while later WAL is archived",
    }
    section = archive_section(window, [])
    assert section["verdict"] == BREACHED
    assert "000000010000000000000004 is missing" in section["reasons"][0]
    whole = archive_section({"wal_gaps": []}, [{"checked_at": "x", "problems": []}])
    assert whole["verdict"] == COMPLIANT


def test_the_sla_report_breaches_while_the_newest_check_sees_a_damaged_segment() -> None:
    damaged = {
        "checked_at": "t1",
        "problems": ["wal_chain: 1 gap(s): damaged 0000000100000000000000AA"],
    }
    healed = {"checked_at": "t2", "problems": []}
    assert archive_section({"wal_gaps": []}, [damaged])["verdict"] == BREACHED
    assert "damaged 0000000100000000000000AA" in archive_section({}, [damaged])["reasons"][0]
    assert archive_section({"wal_gaps": []}, [damaged, healed])["verdict"] == COMPLIANT


def test_one_listing_lists_the_archive_once_per_scope() -> None:
    """A restore's checks share one listing of the archive; outside the scope every call
    lists again (long-running processes must see new segments)."""
    from pgbackup.engine import walchain
    from pgbackup.storage.base import ObjectInfo

    class CountingStorage:
        calls = 0

        def list(self, prefix: str) -> list[ObjectInfo]:
            CountingStorage.calls += 1
            return [ObjectInfo(f"{prefix}000000010000000000000003.zst", 10, 0.0)]

    storage = CountingStorage()
    with walchain.one_listing():
        first = walchain.archived_names(storage, "db")  # type: ignore[arg-type]
        first["mutated"] = "by a caller"
        again = walchain.archived_names(storage, "db")  # type: ignore[arg-type]
    assert CountingStorage.calls == 1
    assert again == {"000000010000000000000003": "db/wal/000000010000000000000003.zst"}
    walchain.archived_names(storage, "db")  # type: ignore[arg-type]
    walchain.archived_names(storage, "db")  # type: ignore[arg-type]
    assert CountingStorage.calls == 3
