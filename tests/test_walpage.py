"""WAL page headers of every supported major: the cluster check and the content check read
them the same way (XLOG_PAGE_MAGIC per version, src/include/access/xlog_internal.h). The
rules live in formats/walpage, which both wal-push paths and walchain read."""

from __future__ import annotations

import json
import random
import re
import struct

import pytest

from pgbackup.engine import wal, walchain
from pgbackup.formats import lsn, walpage
from pgbackup.formats.walpage import (
    MAGIC_MAJOR,
    WAL_PAGE_MAGIC,
    archive_info_bytes,
    is_segment_or_partial,
    names_cluster,
    segment_sysid,
    wal_major,
)

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


def test_a_short_page_header_gives_no_system_identifier() -> None:
    page = struct.pack("<HHIQI4x", 0xD110, 0x0000, 1, 0, 0) + bytes(16)
    assert wal_major(page) == 15 and segment_sysid(page) is None


def test_magics_are_distinct_per_major() -> None:
    assert len(MAGIC_MAJOR) == len(WAL_PAGE_MAGIC)


def test_the_engine_reads_the_one_table() -> None:
    assert wal.segment_sysid is walpage.segment_sysid and wal.read_wal_file is walpage.read_wal_file
    assert walchain.MAGIC_MAJOR is MAGIC_MAJOR and walchain.wal_major is wal_major
    assert wal.ARCHIVE_INFO == walpage.ARCHIVE_INFO == "archive.json"


def test_segment_names_are_lsns() -> None:
    """walpage's name test (the one both wal-push paths and formats.lsn use) is exactly
    PostgreSQL's pattern, checked here with re."""
    rnd = random.Random(3)
    names = ["000000010000000000000003", "000000010000000000000003.partial", "x", ""]
    for _ in range(3000):
        names.append(
            "".join(
                rnd.choice("0123456789ABCDEFa.partil") for _ in range(rnd.choice((8, 24, 25, 32)))
            )
        )
    names += [n + ".partial" for n in names[:500]]
    for name in names:
        expected = re.fullmatch(r"[0-9A-F]{24}(\.partial)?", name) is not None
        assert is_segment_or_partial(name) == expected, name
        assert lsn.is_segment(name) == (re.fullmatch(r"[0-9A-F]{24}", name) is not None), name


@pytest.mark.parametrize("sysid", [0, 7, 7412345678901234567, 2**64 - 1])
def test_archive_json_is_json(sysid: int) -> None:
    data = archive_info_bytes(sysid, SEG)
    assert data == json.dumps({"system_identifier": str(sysid), "wal_segment_size": SEG}).encode()
    assert names_cluster(data, sysid)
    assert not names_cluster(data, sysid + 1) and not names_cluster(data, sysid * 10 + 1)
    assert not names_cluster(b'{"wal_segment_size": 1, "system_identifier": "%d"}' % sysid, sysid)
