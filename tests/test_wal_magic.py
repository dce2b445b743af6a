"""WAL page headers of every supported major: the cluster check and the content check read
them the same way (XLOG_PAGE_MAGIC per version, src/include/access/xlog_internal.h)."""

from __future__ import annotations

import struct

import pytest

from pgbackup.engine.wal import MAGIC_MAJOR, WAL_PAGE_MAGIC, segment_sysid, wal_major

SEG = 16 * 1024 * 1024


def long_header(magic: int, sysid: int, pageaddr: int = 0) -> bytes:
    """XLogLongPageHeaderData: magic, info (XLP_LONG_HEADER), tli, pageaddr, rem_len, pad,
    sysid, seg_size, xlog_blcksz."""
    return struct.pack("<HHIQI4xQII", magic, 0x0002, 1, pageaddr, 0, sysid, SEG, 8192)


@pytest.mark.parametrize(
    ("major", "magic"), [(15, 0xD110), (16, 0xD113), (17, 0xD116), (18, 0xD118)]
)
def test_each_majors_magic_is_known_and_its_header_read(major: int, magic: int) -> None:
    assert WAL_PAGE_MAGIC[major] == magic
    page = long_header(magic, 7412345678901234567)
    assert wal_major(page) == major
    assert segment_sysid(page) == (7412345678901234567, SEG)


def test_a_page_of_unknown_format_gives_no_system_identifier() -> None:
    page = long_header(0xBEEF, 42)
    assert wal_major(page) is None and segment_sysid(page) is None


def test_magics_are_distinct_per_major() -> None:
    assert len(MAGIC_MAJOR) == len(WAL_PAGE_MAGIC)
