"""One-shot encoding and decoding of small objects held in memory.

WAL segments and metadata are encoded and decoded in a single call rather than through
the streaming layers: one zstd call with no chunk joins, one pyrage call. This is the
path wal-push and wal-fetch take for every segment.
"""

from __future__ import annotations

from typing import cast

from pgbackup.errors import EncryptionError
from pgbackup.formats.codecs.spec import _AGE_MAGIC, CodecSpec


def encode_bytes(
    spec: CodecSpec,
    data: bytes,
    *,
    recipients: list[str] | None = None,
    threads: int = 0,
) -> bytes:
    """Encode a small object in memory (WAL segments, metadata), in one call."""
    if spec.compression == "zstd":
        from pgbackup.formats.codecbase import zstd_whole

        compressed = zstd_whole(data, spec.level, threads)  # the bytes wal-push's fast path stores
    else:
        from pgbackup.formats.codecs.encode import _make_compress

        compress, flush = _make_compress(spec, threads)
        compressed = compress(data) + flush()
    if not spec.encrypted:
        return compressed
    if not recipients:
        raise EncryptionError(
            "encryption is enabled but no age recipients were given",
            hint="set encryption.recipients_file in backup.yaml to a file of 'age1...' public keys",
        )
    from pgbackup.formats.codecs.keys import _age, _parse_recipients

    try:
        return cast(bytes, _age().encrypt(compressed, _parse_recipients(recipients)))
    except EncryptionError:
        raise
    except Exception as exc:
        raise EncryptionError(f"age encryption failed: {exc}") from None


def decode_bytes(
    spec: CodecSpec,
    data: bytes,
    *,
    identities: list[str] | None = None,
    what: str = "stored object",
) -> bytes:
    """Decode a small object in memory; errors as for :func:`open_decoder`."""
    import io

    from pgbackup.formats.codecs.decode import open_decoder
    from pgbackup.formats.codecs.keys import (
        _age,
        _decrypt_error,
        _missing_identity,
        _parse_identities,
    )

    if spec.encrypted:
        if not identities:
            raise _missing_identity()
        parsed = _parse_identities(identities)
        try:
            data = cast(bytes, _age().decrypt(data, parsed))
        except Exception as exc:
            raise _decrypt_error(exc, what) from None
    if data.startswith(_AGE_MAGIC) and spec.compression != "none":
        raise EncryptionError(
            f"{what} is age-encrypted but was read as unencrypted",
            hint="its metadata or file name should say encrypted (.age); set encryption.identity_file",
        )
    if spec.compression == "zstd":
        from pgbackup.formats.codecbase import zstd_unwhole

        whole = zstd_unwhole(data)  # one frame of known size: every WAL segment wal-push stores
        if whole is not None:
            return whole
    with open_decoder(
        io.BytesIO(data), CodecSpec(spec.compression, spec.level, False), what=what
    ) as stream:
        return stream.read()
