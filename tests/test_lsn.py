"""LSN arithmetic and WAL file names against values PostgreSQL produces."""

from __future__ import annotations

import pytest

from pgbackup.formats.lsn import (
    format_lsn,
    history_file_name,
    is_backup_label_file,
    is_history,
    is_partial,
    is_segment,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segment_names,
    segment_start_lsn,
    segments_per_xlogid,
)

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/3000028", 0x3000028),
        ("0/0", 0),
        ("1/0", 1 << 32),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
        ("a/ff", (0xA << 32) | 0xFF),
    ],
)
def test_parse_and_format_lsn(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text.upper()
    assert parse_lsn(format_lsn(value)) == value


@pytest.mark.parametrize(
    "bad", ["", "3000028", "0/", "/1", "0/3000028/1", "x/1", "0/123456789", "0x1/2", "-1/0"]
)
def test_parse_lsn_rejects_bad_input_with_clear_message(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN") as info:
        parse_lsn(bad)
    assert "0/3000028" in str(info.value)  # shows the expected shape


def test_format_lsn_range() -> None:
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(1 << 64)


@pytest.mark.parametrize(
    ("tli", "lsn", "seg_size", "name"),
    [
        (1, "0/3000028", 16 * MiB, "000000010000000000000003"),
        (1, "1/0", 16 * MiB, "000000010000000100000000"),
        (1, "0/FFFFFFFF", 16 * MiB, "0000000100000000000000FF"),
        (2, "16/B374D848", 16 * MiB, "0000000200000016000000B3"),
        (0x1A, "0/0", 16 * MiB, "0000001A0000000000000000"),
        # 1 GiB segments: 4 per xlogid; 64 MiB: 64 per xlogid
        (1, "2/C0000000", 1024 * MiB, "000000010000000200000003"),
        (1, "0/9000000", 64 * MiB, "000000010000000000000002"),
        (1, "0/1800000", 1 * MiB, "000000010000000000000018"),
    ],
)
def test_segment_names_match_postgresql(tli: int, lsn: str, seg_size: int, name: str) -> None:
    assert segment_name(tli, parse_lsn(lsn), seg_size) == name
    parsed = parse_segment_name(name, seg_size)
    assert parsed is not None
    assert parsed[0] == tli
    assert parsed[1] == parse_lsn(lsn) // seg_size
    start = segment_start_lsn(name, seg_size)
    assert start <= parse_lsn(lsn) < start + seg_size


def test_segments_per_xlogid() -> None:
    assert segments_per_xlogid() == 0x100
    assert segments_per_xlogid(1024 * MiB) == 4
    for bad in (0, 3 * MiB, 512 * 1024, 2048 * MiB):
        with pytest.raises(ValueError, match="segment size"):
            segments_per_xlogid(bad)


def test_segment_start_lsn() -> None:
    assert segment_start_lsn("000000010000000000000003") == 0x3000000
    assert format_lsn(segment_start_lsn("000000010000000100000000")) == "1/0"
    with pytest.raises(ValueError, match="not a WAL segment"):
        segment_start_lsn("00000002.history")
    # segment part beyond segments-per-xlogid is not a valid name for that size
    assert parse_segment_name("000000010000000000000100") is None
    assert parse_segment_name("0000000100000000000000FF") == (1, 0xFF)


def test_segment_names_range_crosses_xlogid() -> None:
    names = list(segment_names(1, parse_lsn("0/FE000000"), parse_lsn("1/1000028")))
    assert names == [
        "0000000100000000000000FE",
        "0000000100000000000000FF",
        "000000010000000100000000",
        "000000010000000100000001",
    ]


def test_timeline_validation() -> None:
    with pytest.raises(ValueError, match="timeline"):
        segment_name(0, 0)
    assert history_file_name(2) == "00000002.history"


def test_file_kinds() -> None:
    seg = "000000010000000000000003"
    assert is_segment(seg)
    assert not is_segment(seg.lower().replace("3", "a"))  # PostgreSQL uses upper-case hex
    assert not is_segment(seg + ".partial")
    assert not is_segment(seg[:-1])
    assert is_history("00000002.history")
    assert not is_history("0000002.history")
    assert not is_history(seg)
    assert is_backup_label_file("000000010000000000000003.00000028.backup")
    assert not is_backup_label_file("000000010000000000000003.backup")
    assert is_partial("000000020000000000000005.partial")
    assert not is_partial("000000020000000000000005")
    assert parse_segment_name("00000002.history") is None
    assert parse_segment_name(seg + ".partial") is None


def test_parse_history_real_file() -> None:
    # 00000003.history as written by PostgreSQL after two promotions
    text = (
        "1\t0/3000158\tno recovery target specified\n"
        "\n"
        '2\t0/5000000\tat restore point "before_drop"\n'
    )
    assert parse_history(text) == [
        (1, 0x3000158, "no recovery target specified"),
        (2, 0x5000000, 'at restore point "before_drop"'),
    ]
    assert parse_history("# comment\n1\t1/A0\n") == [(1, (1 << 32) | 0xA0, "")]
    assert parse_history("") == []


def test_parse_history_rejects_bad_lines() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_history("1\t0/3000158\tok\nbogus\n")
    with pytest.raises(ValueError, match="increasing"):
        parse_history("2\t0/3000158\ta\n1\t0/4000000\tb\n")
