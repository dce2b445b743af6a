"""The codec rules that need no import: stored names' suffixes and one-shot zstd.

:mod:`pgbackup.formats.codecs` (whose package imports ``typing`` and its record types)
reads them from here, and so does wal-push's fast path
(:mod:`pgbackup.engine.wal_fastpush`), which must not pay for that package: this module
imports nothing but :mod:`pgbackup.formats.zstdlib` (the C extension alone), on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: wal-push pays for each import
    from typing import Any

#: Object-name suffix of each compression method (``none``: no suffix).
SUFFIXES = {"zstd": ".zst", "lz4": ".lz4", "gzip": ".gz", "none": ""}
#: Appended after the compression suffix when the object is age-encrypted.
AGE_SUFFIX = ".age"
#: zstd job size for one-shot multi-threaded compression.
WHOLE_JOB_SIZE = 2 * 1024 * 1024


def stored_names(name: str) -> list[str]:
    """Every name under which ``name`` may be stored, whatever its codec."""
    return [name + ext + enc for ext in SUFFIXES.values() for enc in ("", AGE_SUFFIX)]


def zstd_whole(data: bytes, level: int, threads: int) -> bytes:
    """``data`` as one zstd frame (content size and checksum recorded), in one call.

    One-shot: no streaming context and no chunk joins; the bytes decode like any other
    zstd frame. With workers, 2 MiB jobs keep every core busy on a 16 MiB segment (zstd's
    default job is 8 MiB, two jobs): 17% less time on 20 pgbench segments (1 MiB: 12%),
    the same bytes.
    """
    from pgbackup.formats.zstdlib import load

    zstandard = load()  # the C backend, without the package's imports
    params = zstandard.ZstdCompressionParameters.from_level(  # type: ignore[attr-defined]
        level,
        source_size=len(data),
        threads=threads,
        job_size=WHOLE_JOB_SIZE if threads else 0,
        write_checksum=True,
    )
    compressor = zstandard.ZstdCompressor(compression_params=params)  # type: ignore[attr-defined]
    compressed: bytes = compressor.compress(data)
    return compressed


#: The largest object :func:`zstd_unwhole` decodes in one call (a WAL segment is at most 1 GiB).
WHOLE_MAX_SIZE = 1024 * 1024 * 1024


def zstd_unwhole(data: bytes) -> bytes | None:
    """``data`` decoded in one call when it is one zstd frame that records its content
    size (as :func:`zstd_whole` writes every WAL segment): about half the CPU of the
    streaming decoder, which WAL replay pays once per segment. None for anything else
    (several frames, no size recorded, corrupt or cut short): the streaming decoder
    then reads it, and says precisely what is wrong. zstd checks the frame's checksum
    and that exactly the recorded size comes out; extra bytes after it are refused."""
    from pgbackup.formats.zstdlib import load

    zstandard: Any = load()
    try:
        size = zstandard.frame_content_size(data)
        if size < 0 or size > WHOLE_MAX_SIZE:
            return None  # unknown (-1): written by a streaming encoder
        out: bytes = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError:
        return None
    return out if len(out) == size else None
