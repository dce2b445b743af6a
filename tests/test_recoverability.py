"""The recoverability timeline (pgbackup.operations.recoverability) and its chart (pgbackup.operations.report)
over a real posix repository laid out by hand: backups' metadata and WAL segments whose
arrival times are set, one segment missing."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pgbackup.engine.repository import Repository
from pgbackup.operations.recoverability import lane, render_text
from pgbackup.operations.report import charts
from pgbackup.storage import open_storage

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
SEG = 16 * 1024 * 1024


class Policy:
    uploads: list[Any] = []

    class sla:  # noqa: N801
        rto = 3600
        rpo = 300


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """Backups ending in segments 2 and 6; segments 2..9 archived a minute apart, but 4."""
    root = tmp_path / "repo"
    for backup_id, segno, minute in (("b1", 2, 0), ("b2", 6, 4)):
        d = root / "platform" / "base" / backup_id
        d.mkdir(parents=True)
        meta = {
            "backup_id": backup_id,
            "objects": {},
            "status": "complete",
            "timeline": 1,
            "start_lsn": f"0/{segno:X}000028",
            "stop_lsn": f"0/{segno:X}000100",
            "stop_time": stamp(T0 + timedelta(minutes=minute, seconds=10)),
            "wal_segment_size": SEG,
        }
        (d / "metadata.json").write_text(json.dumps(meta))
    wal = root / "platform" / "wal"
    wal.mkdir(parents=True)
    for segno in range(2, 10):
        if segno == 4:
            continue
        f = wal / f"0000000100000000{segno:08X}.zst"
        f.write_bytes(b"x")
        arrival = (T0 + timedelta(minutes=segno - 2, seconds=30)).timestamp()
        os.utime(f, (arrival, arrival))
    (wal / "000000010000000000000002.00000028.backup.zst").write_bytes(b"x")
    return Repository(open_storage({"path": str(root)}))


def test_lane_places_backups_spans_and_the_hole(repo: Repository) -> None:
    window = {
        "earliest_time": stamp(T0),
        "latest_time": stamp(T0 + timedelta(minutes=7, seconds=50)),
    }
    got = lane(
        "primary",
        repo,
        Policy,
        "platform",
        T0 - timedelta(days=1),
        T0 + timedelta(hours=1),
        window=window,
    )
    assert [m["backup_id"] for m in got["backups"]] == ["b1", "b2"]
    assert all(m["in_period"] for m in got["backups"])
    # b1 replays segments 2 and 3, then 4 is missing; b2 replays 6..9 to the window's end.
    assert got["recoverable"] == [
        {"start": "2026-11-23T02:00:10Z", "end": "2026-11-23T02:01:30Z"},
        {"start": "2026-11-23T02:04:10Z", "end": "2026-11-23T02:07:50Z"},
    ]
    assert got["gaps"] == [
        {
            "segments": ["000000010000000000000004"],
            "kind": "missing",
            "start": "2026-11-23T02:01:30Z",
            "end": "2026-11-23T02:03:30Z",
        }
    ]
    assert got["segments"] == 7  # the .backup file is not a segment


def test_unreadable_segments_are_holes_too(repo: Repository) -> None:
    got = lane("primary", repo, Policy, "platform", T0, T0 + timedelta(hours=1), window={},
               unreadable=["000000010000000000000007"])  # fmt: skip
    assert [(g["segments"], g["kind"]) for g in got["gaps"]] == [
        (["000000010000000000000004"], "missing"),
        (["000000010000000000000007"], "unreadable"),
    ]


def test_a_copy_is_placed_by_the_primary_clock_not_by_its_copy_times(
    repo: Repository, tmp_path: Path
) -> None:
    """Every object of an upload destination carries the time it was copied (an hour later);
    its hole must still sit where the WAL was written, not at the copy time."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(root, tmp_path / "copy")
    copied = (T0 + timedelta(hours=1)).timestamp()
    for f in (tmp_path / "copy").rglob("*"):
        os.utime(f, (copied, copied))
    copy = Repository(open_storage({"path": str(tmp_path / "copy")}))
    period = (T0 - timedelta(days=1), T0 + timedelta(hours=2))
    primary = lane("primary", repo, Policy, "platform", *period, window={})
    got = lane("offsite", copy, Policy, "platform", *period, window={}, clock=primary["clock"])
    assert got["gaps"] == primary["gaps"]
    assert got["recoverable"][0] == primary["recoverable"][0]  # to 02:01:30, not 03:00


def timeline(repo: Repository) -> dict[str, Any]:
    primary = lane(
        "primary",
        repo,
        Policy,
        "platform",
        T0 - timedelta(days=30),
        T0 + timedelta(minutes=10),
        window={},
    )
    return {
        "target": "platform",
        "start": stamp(T0 - timedelta(days=30)),
        "end": stamp(T0 + timedelta(minutes=10)),
        "rto_objective_seconds": 3600,
        "lanes": [primary],
        "drills": [{"time": stamp(T0 + timedelta(minutes=8)), "rto_seconds": 2.2, "status": "ok"}],
    }


def test_the_chart_has_a_mark_per_backup_a_red_hole_and_the_drill_against_the_objective(
    repo: Repository,
) -> None:
    svg = charts.timeline_svg(timeline(repo))
    assert svg.startswith("<svg")
    assert re.findall(r'<g id="(platform-backup-primary-[^"]+)"', svg) == [
        "platform-backup-primary-b1",
        "platform-backup-primary-b2",
    ]
    hole = svg[svg.index('<g id="platform-gap-primary-0"') :]
    assert "fill: #d62728" in hole[: hole.index("</g>")]
    assert 'id="platform-drill-0"' in svg and 'id="platform-rto-objective"' in svg
    assert "objective 1 h" in svg and "2.2 s" in svg  # both readable on the log axis
    assert "<script" not in svg and "http://www.w3.org" in svg  # the namespace, nothing fetched
    assert not re.search(r"\d\d:\d\d:\d\d\.\d{3,}", svg)  # no microseconds anywhere


def test_the_view_starts_at_the_first_evidence_not_30_days_back(repo: Repository) -> None:
    start, end = charts.view(timeline(repo))
    assert T0 - timedelta(minutes=2) < start <= T0
    assert T0 + timedelta(minutes=10) < end < T0 + timedelta(minutes=11)  # a margin for now


def test_text_timeline_for_a_terminal(repo: Repository) -> None:
    console = Console(width=100, record=True, color_system=None)
    render_text(console, timeline(repo))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.startswith("primary"))
    assert row.count("▲") == 2 and "╳" in row and "━" in row
    assert row.index("▲") < row.index("╳") < row.rindex("▲")  # the hole sits between the backups
    assert "missing 000000010000000000000004" in text
