"""Who compresses a base backup: the server, or pgbackup when the server cannot.

PostgreSQL compresses a base backup on the server (``pg_basebackup
--compress=server-zstd``) since version 15 (``src/backend/backup/basebackup_zstd.c``),
and only with the libraries it was built with: ``configure --with-zstd`` / ``--with-lz4``.
Builds without them exist (the PyPI builds of 16 and 18 the test-suite runs are zlib
only), and pg_basebackup's ``client-zstd`` needs the same library in the client.

So the policy's method is kept whatever the server is: when the server cannot compress
with it, pg_basebackup writes uncompressed tar archives and pgbackup compresses each one
itself (python-zstandard, lz4, zlib: the codecs of ``pgbackup.formats.codecs``) into the very name
the server would have written (``base.tar.zst``, ``<oid>.tar.zst``), then removes the
uncompressed file. The repository format, the sha256 of each stored object and the
manifest verification (the manifest describes the files *inside* the tar) are the same.
The price: the uncompressed archive is written once to the backup's directory (or the
staging directory) before it is compressed; with server-side compression it never is.

The server's build is read from ``pg_settings``: ``wal_compression`` lists ``lz4`` and
``zstd`` exactly when the server was built with them (``wal_compression_options`` in
``src/backend/utils/misc/guc_tables.c``, ``#ifdef USE_LZ4`` / ``#ifdef USE_ZSTD``).
gzip needs zlib, which every build we know links (PostgreSQL requires it unless built
``--without-zlib``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pgbackup.formats.codecs import CodecSpec, Encoder, suffix
from pgbackup.postgres.connection import ServerFacts
from pgbackup.storage.posix import fsync_path

READ_SIZE = 4 << 20
SERVER_SIDE_SINCE = 15  # BASE_BACKUP ... COMPRESSION: PostgreSQL 15 and later

SUPPORT_SQL = (
    "SELECT current_setting('server_version_num')::int, "
    "(SELECT enumvals FROM pg_settings WHERE name = 'wal_compression')"
)


class CompressionSide(NamedTuple):
    """Where the policy's compression happens for one server, and why."""

    method: str
    side: str  # "server", "pgbackup" or "none"
    reason: str

    def argv_spec(self, spec: CodecSpec) -> CodecSpec:
        """The compression pg_basebackup is asked for: the policy's, or none."""
        return spec if self.side == "server" else CodecSpec("none", 0, spec.encrypted)

    def as_dict(self) -> dict[str, str]:
        return {"method": self.method, "side": self.side, "reason": self.reason}


def decide(method: str, server_version_num: int, server_methods: set[str]) -> CompressionSide:
    """Pure: the side that compresses ``method`` for a server of this version and build."""
    major = server_version_num // 10000
    if method == "none":
        return CompressionSide(method, "none", "the policy asks for no compression")
    if major < SERVER_SIDE_SINCE:
        return CompressionSide(
            method,
            "pgbackup",
            f"PostgreSQL {major} cannot compress a base backup on the server (15 and later can)",
        )
    if method not in server_methods:
        return CompressionSide(
            method,
            "pgbackup",
            f"the server (PostgreSQL {major}) was built without {method} "
            f"(its wal_compression offers only {', '.join(sorted(server_methods)) or 'pglz'})",
        )
    return CompressionSide(method, "server", f"the server (PostgreSQL {major}) has {method}")


def server_methods(enumvals: Any) -> set[str]:
    """Methods the server can compress a base backup with, from wal_compression's enumvals."""
    values = set(enumvals or [])
    return {"gzip"} | (values & {"lz4", "zstd"})


def from_facts(facts: ServerFacts, method: str) -> CompressionSide:
    """Decide from what the server said in a backup's preflight query (its version and
    ``wal_compression``'s values): no connection of its own, so a backup pays neither
    for importing psycopg nor for another handshake."""
    return decide(method, facts.version_num, server_methods(facts.wal_compression_methods))


def probe(conninfo: Mapping[str, Any], method: str) -> CompressionSide:
    """Ask the server (one short query) and decide (``plan``)."""
    if method == "none":
        return decide(method, SERVER_SIDE_SINCE * 10000, set())
    from pgbackup.postgres.connection import connect

    with connect(conninfo) as conn:
        row = conn.execute(SUPPORT_SQL).fetchone()
    return decide(method, int(row[0]), server_methods(row[1]))


def compress_archives(
    directory: Path, spec: CodecSpec, threads: int = -1, skip: tuple[str, ...] = ("pg_wal.tar",)
) -> list[Path]:
    """Compress every uncompressed ``*.tar`` pg_basebackup wrote into ``directory`` to the
    name the server would have written, durably, and remove the original.

    ``pg_wal.tar`` is skipped: the backup compresses it on its way to the repository.
    """
    codec = CodecSpec(spec.compression, spec.level)
    done: list[Path] = []
    for raw in sorted(directory.glob("*.tar")):
        if raw.name in skip:
            continue
        out = raw.with_name(raw.name + suffix(codec))
        with open(out, "wb") as f:
            with Encoder(codec, f.write, threads=threads) as enc:
                enc.write_file(raw, READ_SIZE)
            f.flush()
            os.fsync(f.fileno())
        raw.unlink()
        done.append(out)
    if done:
        fsync_path(directory)
    return done
