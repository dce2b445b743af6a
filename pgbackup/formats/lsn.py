"""WAL file names and LSN arithmetic, following PostgreSQL's definitions (xlog_internal.h).

An LSN is a 64-bit byte position in the WAL, written ``%X/%X`` (high/low 32 bits). WAL is cut
into segments of ``seg_size`` bytes (16 MiB by default); segment number ``segno = lsn //
seg_size`` is named ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, ``segno // segments_per_xlogid``
and ``segno % segments_per_xlogid``, with ``segments_per_xlogid = 0x100000000 // seg_size``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pgbackup.formats.walpage import is_partial, is_segment, upper_hex

__all__ = [
    "DEFAULT_SEG_SIZE",
    "format_lsn",
    "history_file_name",
    "is_backup_label_file",
    "is_history",
    "is_partial",
    "is_segment",
    "parse_history",
    "parse_lsn",
    "parse_segment_name",
    "segment_name",
    "segment_names",
    "segment_start_lsn",
    "segments_per_xlogid",
]

DEFAULT_SEG_SIZE = 16 * 1024 * 1024
_MAX_LSN = (1 << 64) - 1
_MAX_TLI = 0xFFFFFFFF

# WAL file names are checked with string operations, and the two patterns below compiled
# on first use: wal-push imports this module once per segment, and compiling six regular
# expressions cost more than the rest of the module.
_LSN_PATTERN = r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})"
_HISTORY_LINE_PATTERN = r"(\d+)\s+([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})(?:\s+(.*))?"


def parse_lsn(text: str) -> int:
    """``"0/3000028"`` -> ``0x3000028``; ValueError naming the bad input otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"invalid LSN {text!r}: expected a string like '0/3000028'")
    match = re.fullmatch(_LSN_PATTERN, text.strip())
    if not match:
        raise ValueError(
            f"invalid LSN {text!r}: expected two hexadecimal numbers of at most 8 digits "
            "separated by '/', e.g. '0/3000028'"
        )
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """``0x3000028`` -> ``"0/3000028"`` (upper-case hex, as PostgreSQL prints it)."""
    if not 0 <= value <= _MAX_LSN:
        raise ValueError(f"invalid LSN {value!r}: must be between 0 and 2**64-1")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _check_seg_size(seg_size: int) -> None:
    if seg_size < 1024 * 1024 or seg_size > 1024 * 1024 * 1024 or seg_size & (seg_size - 1):
        raise ValueError(
            f"invalid WAL segment size {seg_size}: must be a power of two between 1 MiB and 1 GiB"
        )


def segments_per_xlogid(seg_size: int = DEFAULT_SEG_SIZE) -> int:
    _check_seg_size(seg_size)
    return 0x100000000 // seg_size


def _check_timeline(timeline: int) -> None:
    if not 1 <= timeline <= _MAX_TLI:
        raise ValueError(f"invalid timeline {timeline!r}: must be between 1 and {_MAX_TLI}")


def _name(timeline: int, segno: int, per: int) -> str:
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_name(timeline: int, lsn: int, seg_size: int = DEFAULT_SEG_SIZE) -> str:
    """Name of the WAL segment holding ``lsn`` on ``timeline`` (XLByteToSeg + XLogFileName)."""
    _check_timeline(timeline)
    per = segments_per_xlogid(seg_size)
    if not 0 <= lsn <= _MAX_LSN:
        raise ValueError(f"invalid LSN {lsn!r}: must be between 0 and 2**64-1")
    return _name(timeline, lsn // seg_size, per)


def segment_names(
    timeline: int, start_lsn: int, end_lsn: int, seg_size: int = DEFAULT_SEG_SIZE
) -> Iterator[str]:
    """Names of the segments holding ``start_lsn`` up to and including ``end_lsn``."""
    _check_timeline(timeline)
    per = segments_per_xlogid(seg_size)
    for segno in range(start_lsn // seg_size, end_lsn // seg_size + 1):
        yield _name(timeline, segno, per)


def parse_segment_name(name: str, seg_size: int = DEFAULT_SEG_SIZE) -> tuple[int, int] | None:
    """``(timeline, segment number)`` for a plain segment name, else None."""
    if not is_segment(name):
        return None
    per = segments_per_xlogid(seg_size)
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    if seg >= per:
        return None
    return timeline, log * per + seg


def segment_start_lsn(name: str, seg_size: int = DEFAULT_SEG_SIZE) -> int:
    """LSN of the first byte of segment ``name``; ValueError if it is not a segment name."""
    parsed = parse_segment_name(name, seg_size)
    if parsed is None:
        raise ValueError(f"{name!r} is not a WAL segment name for {seg_size}-byte segments")
    return parsed[1] * seg_size


def history_file_name(timeline: int) -> str:
    _check_timeline(timeline)
    return f"{timeline:08X}.history"


def is_history(name: str) -> bool:
    return name.endswith(".history") and upper_hex(name[:-8], 8)


def is_backup_label_file(name: str) -> bool:
    return (
        len(name) == 40
        and name.endswith(".backup")
        and name[24] == "."
        and upper_hex(name[:24], 24)
        and upper_hex(name[25:33], 8)
    )


def parse_history(text: str) -> list[tuple[int, int, str]]:
    """Entries ``(parent_tli, switchpoint_lsn, reason)`` of a timeline history file.

    As PostgreSQL's readTimeLineHistory: blank lines and ``#`` comments are skipped, the
    timeline IDs must increase; anything else is a ValueError naming the line.
    """
    entries: list[tuple[int, int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = re.fullmatch(_HISTORY_LINE_PATTERN, stripped)
        if not match:
            raise ValueError(
                f"syntax error in timeline history line {number}: {line!r} "
                "(expected 'TLI<TAB>X/X<TAB>reason')"
            )
        tli = int(match.group(1))
        lsn = (int(match.group(2), 16) << 32) | int(match.group(3), 16)
        if entries and tli <= entries[-1][0]:
            raise ValueError(
                f"invalid timeline history line {number}: timeline IDs must be increasing"
            )
        entries.append((tli, lsn, (match.group(4) or "").strip()))
    return entries
