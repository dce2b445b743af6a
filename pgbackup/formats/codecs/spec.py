"""Codec specs and object-name suffixes: the vocabulary of the other codec modules.

A :class:`CodecSpec` records how a stored object was written and :func:`suffix` /
:func:`parse_suffix` carry it in object names; every other codec module builds on it and
many callers need nothing else, so it is kept apart from the streaming machinery and
imports nothing but ``typing`` and the error classes. The constants the other codec
modules share live here too; the suffixes and the one-shot job size come from
:mod:`pgbackup.formats.codecbase`, their light home (wal-push's fast path reads them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pgbackup.errors import PgBackupError, VerifyError
from pgbackup.formats.codecbase import AGE_SUFFIX as _AGE_SUFFIX
from pgbackup.formats.codecbase import SUFFIXES as _SUFFIXES
from pgbackup.formats.codecbase import WHOLE_JOB_SIZE as WHOLE_JOB_SIZE

#: Unit of work between layers: one library call per chunk, never more than a few in memory.
CHUNK_SIZE = 1024 * 1024
#: Bounded queue depth (in chunks) between the caller and the age thread.
_QUEUE_DEPTH = 4

COMPRESSIONS = ("zstd", "lz4", "gzip", "none")
_LEVELS = {"zstd": (-7, 22), "lz4": (0, 16), "gzip": (0, 9)}
_AGE_MAGIC = b"age-encryption.org/"


class CodecError(PgBackupError):
    """An unsupported compression method or level."""


class CorruptDataError(VerifyError):
    """Stored data cannot be decompressed: truncated or corrupt."""


class _CodecFields(NamedTuple):
    compression: str
    level: int
    encrypted: bool


class CodecSpec(_CodecFields):
    """How a stored object was written; recorded in metadata so it can be read back.

    An immutable record (a NamedTuple: cheaper to import than a dataclass, and wal-push
    imports this module once per segment), checked when it is made.
    """

    __slots__ = ()

    def __new__(
        cls, compression: str = "zstd", level: int = 3, encrypted: bool = False
    ) -> CodecSpec:
        if compression not in COMPRESSIONS:
            raise CodecError(
                f"unknown compression method {compression!r}",
                hint=f"use one of: {', '.join(COMPRESSIONS)}",
            )
        bounds = _LEVELS.get(compression)
        if bounds and not bounds[0] <= level <= bounds[1]:
            raise CodecError(
                f"compression level {level} is out of range for {compression}",
                hint=f"{compression} levels go from {bounds[0]} to {bounds[1]}",
            )
        return super().__new__(cls, compression, level, encrypted)

    def to_dict(self) -> dict[str, Any]:
        return {"compression": self.compression, "level": self.level, "encrypted": self.encrypted}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecSpec:
        return cls(
            compression=str(data.get("compression", "none")),
            level=int(data.get("level", 0)),
            encrypted=bool(data.get("encrypted", False)),
        )


def suffix(spec: CodecSpec) -> str:
    """File-name suffix for objects written with ``spec``: ``.zst``, ``.lz4.age``, ``""`` ..."""
    return _SUFFIXES[spec.compression] + (_AGE_SUFFIX if spec.encrypted else "")


def parse_suffix(name: str) -> tuple[str, CodecSpec]:
    """Split ``000000010000000000000003.zst.age`` into the base name and its spec.

    The level is not encoded in a name; the returned spec has level 0 (decoding ignores it).
    """
    encrypted = name.endswith(_AGE_SUFFIX)
    if encrypted:
        name = name[: -len(_AGE_SUFFIX)]
    for method, ext in _SUFFIXES.items():
        if ext and name.endswith(ext):
            return name[: -len(ext)], CodecSpec(method, 0, encrypted)
    return name, CodecSpec("none", 0, encrypted)
