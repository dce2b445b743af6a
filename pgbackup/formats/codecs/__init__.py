"""Compression and encryption as streaming layers.

A stored object is compressed (zstd, lz4, gzip or nothing) and then, optionally, encrypted
with age to a list of X25519 recipients. Every layer writes its standard format, so an
object can be undone without pgbackup::

    age -d -i key.txt base.tar.zst.age | zstd -d | tar -x

Writing is push-style (:class:`Encoder`: ``write()`` bytes in, encoded bytes out to a sink
callable on the caller's thread); reading is pull-style (:func:`open_decoder` returns a
readable binary stream). Both keep memory bounded (a few MiB) whatever the stream length.

age encryption is done by pyrage, whose streaming API pulls from a reader and pushes to a
writer; a background thread bridges it to our push/pull interfaces through bounded queues.

The compression libraries and pyrage are imported on first use so that ``wal-push`` and
``wal-fetch`` only load what the object at hand needs.

The code is split by stage: :mod:`.spec` (specs and name suffixes), :mod:`.keys` (age
recipients and identities), :mod:`.encode` (the push-style pipeline), :mod:`.decode`
(the pull-style readers) and :mod:`.oneshot` (small objects in one call); this package
re-exports their public API. The streaming modules (:mod:`.encode`, :mod:`.decode`, with
their threads and queues) and :mod:`.keys` are imported when one of their names is first
asked for: wal-push needs only :mod:`.spec` and :mod:`.oneshot`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from pgbackup.formats.codecs.oneshot import decode_bytes, encode_bytes
from pgbackup.formats.codecs.spec import (
    CHUNK_SIZE,
    COMPRESSIONS,
    CodecError,
    CodecSpec,
    CorruptDataError,
    parse_suffix,
    suffix,
)

if TYPE_CHECKING:
    from pgbackup.formats.codecs.decode import open_decoder
    from pgbackup.formats.codecs.encode import Encoder
    from pgbackup.formats.codecs.keys import load_identities, load_recipients

_LAZY = {
    "open_decoder": "decode",
    "Encoder": "encode",
    "load_identities": "keys",
    "load_recipients": "keys",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CHUNK_SIZE",
    "COMPRESSIONS",
    "CodecError",
    "CodecSpec",
    "CorruptDataError",
    "Encoder",
    "decode_bytes",
    "encode_bytes",
    "load_identities",
    "load_recipients",
    "open_decoder",
    "parse_suffix",
    "suffix",
]
