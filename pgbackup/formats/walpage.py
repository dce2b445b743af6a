"""A WAL file's first page and the archive's ``archive.json``: the one home of their rules.

Both paths of ``wal-push`` read them: the general one (:mod:`pgbackup.engine.wal`, and
:mod:`pgbackup.engine.walchain` when it checks an archive) and the fast one
(:mod:`pgbackup.engine.wal_fastpush`), which runs once per segment and imports nothing
it can avoid. So this module imports only ``os`` and ``struct`` (and ``mmap`` for a
large file), never ``re``, ``json``, ``pathlib`` or ``typing``.
"""

from __future__ import annotations

import os
import struct

# XLOG_PAGE_MAGIC of each major version (src/include/access/xlog_internal.h): the first two
# bytes of every WAL page, bumped whenever the WAL format changes. A page of any of these
# has the same header layout (XLogPageHeaderData, XLogLongPageHeaderData) since 9.3.
WAL_PAGE_MAGIC = {14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}
MAGIC_MAJOR = {magic: major for major, magic in WAL_PAGE_MAGIC.items()}
#: The majors pgbackup runs on: those its test-suite proves (docs/testing.md). Any other is
#: refused before anything is written (postgres/majors.py says why and what to do).
SUPPORTED_MAJORS = (15, 16, 17, 18)
XLP_LONG_HEADER = 0x0002
#: A file this large or larger is mapped rather than read (see :func:`read_wal_file`).
MAP_THRESHOLD = 1024 * 1024
#: The archive's binding to one cluster: ``<target>/archive.json``.
ARCHIVE_INFO = "archive.json"
#: After a major upgrade, generation n >= 2 of a target lives under ``<target>/gen/<n>/``
#: (engine/generations). Here because wal-push's fast path needs the name, not that module.
GENERATIONS = "gen"


def generation_root(target: str, number: int) -> str:
    """The key prefix generation ``number`` of ``target`` keeps its own objects under."""
    return target if number == 1 else f"{target}/{GENERATIONS}/{number}"


_HEX_UPPER = "0123456789ABCDEF"


def segment_sysid(data: bytes) -> tuple[int, int] | None:
    """(system identifier, segment size) from a segment's long page header, if present.

    XLogPageHeaderData is 24 bytes when aligned (magic, info, tli, pageaddr, rem_len);
    the long header adds xlp_sysid (uint64) and xlp_seg_size (uint32).
    """
    if len(data) < 40:
        return None
    magic, info = struct.unpack_from("<HH", data, 0)
    if magic not in MAGIC_MAJOR or not info & XLP_LONG_HEADER:
        return None
    sysid, seg_size = struct.unpack_from("<QI", data, 24)
    return sysid, seg_size


def wal_major(data: bytes) -> int | None:
    """The PostgreSQL major whose WAL format wrote this page (None: not a WAL page we know)."""
    return MAGIC_MAJOR.get(struct.unpack_from("<H", data, 0)[0]) if len(data) >= 2 else None


def upper_hex(text: str, length: int) -> bool:
    """``text`` is exactly ``length`` upper-case hexadecimal digits (``[0-9A-F]{length}``),
    without importing ``re``; the one test of WAL file names (formats/lsn uses it too)."""
    return len(text) == length and not text.strip(_HEX_UPPER)


def is_segment(name: str) -> bool:
    """A WAL segment's name: timeline, log and segment, 24 upper-case hex digits."""
    return upper_hex(name, 24)


def is_partial(name: str) -> bool:
    return name.endswith(".partial") and is_segment(name[:-8])


def is_segment_or_partial(name: str) -> bool:
    """A segment's name or its ``.partial``'s: the files whose first page has a long header."""
    return is_segment(name) or is_partial(name)


def read_wal_file(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; a segment is mapped rather than copied.

    A private 16 MiB buffer costs a page fault per 4 KiB page (about 8 ms a segment,
    which is a tenth of wal-push); the map reads the page cache in place. PostgreSQL
    neither writes nor truncates a segment while its archive_command runs.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < MAP_THRESHOLD:
            return f.read()
        import mmap

        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)  # type: ignore[return-value]


def archive_info_bytes(sysid: int, seg_size: int) -> bytes:
    """``archive.json`` as the first push writes it: ``json.dumps`` of
    ``{"system_identifier": str(sysid), "wal_segment_size": seg_size}`` (a test checks
    that), spelled out so that the fast path can recognise it without importing json."""
    return b'{"system_identifier": "%d", "wal_segment_size": %d}' % (sysid, seg_size)


def names_cluster(archive_info: bytes, sysid: int) -> bool:
    """``archive_info`` (the file's bytes) is as :func:`archive_info_bytes` writes it, for
    cluster ``sysid``. False says only "not recognised": an ``archive.json`` written some
    other way is JSON that :func:`pgbackup.engine.wal.read_archive_info` reads in full."""
    return archive_info.startswith(b'{"system_identifier": "%d", ' % sysid)
