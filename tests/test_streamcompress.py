"""Which side compresses a base backup (pgbackup/engine/streamcompress.py), and pgbackup's own
compression of pg_basebackup's tar archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from pgbackup.engine.streamcompress import compress_archives, decide, server_methods
from pgbackup.formats.codecs import CodecSpec, open_decoder

DEBIAN_15 = ["pglz", "lz4", "zstd", "on", "off"]  # pg_settings.enumvals, read off real servers
PYPI_16_18 = ["pglz", "on", "off"]


def test_a_server_built_with_zstd_compresses_itself() -> None:
    side = decide("zstd", 150018, server_methods(DEBIAN_15))
    assert side.side == "server"
    assert side.argv_spec(CodecSpec("zstd", 3)) == CodecSpec("zstd", 3)


@pytest.mark.parametrize("method", ["zstd", "lz4"])
def test_a_server_built_without_the_method_leaves_it_to_pgbackup(method: str) -> None:
    side = decide(method, 160002, server_methods(PYPI_16_18))
    assert side.side == "pgbackup"
    assert f"built without {method}" in side.reason and "PostgreSQL 16" in side.reason
    assert side.argv_spec(CodecSpec(method, 3, True)) == CodecSpec("none", 0, True)


def test_gzip_is_the_servers_everywhere_zlib_is() -> None:
    assert decide("gzip", 180006, server_methods(PYPI_16_18)).side == "server"


def test_before_15_the_server_never_compresses() -> None:
    side = decide("zstd", 140011, server_methods(["pglz", "lz4", "on", "off"]))
    assert side.side == "pgbackup" and "15 and later" in side.reason


def test_no_compression_is_nobodys_job() -> None:
    assert decide("none", 160002, set()).side == "none"


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("method", ["zstd", "lz4", "gzip"])
def test_compressed_archives_decode_to_the_same_bytes(tmp_path: Path, method: str) -> None:
    base = _tar({"PG_VERSION": b"16\n", "base/1/1259": bytes(range(256)) * 4096})
    wal = _tar({"000000010000000000000002": b"\x13\xd1" + b"\0" * 100})
    (tmp_path / "base.tar").write_bytes(base)
    (tmp_path / "16385.tar").write_bytes(base[:10240])
    (tmp_path / "pg_wal.tar").write_bytes(wal)
    (tmp_path / "backup_manifest").write_text("{}")
    done = compress_archives(tmp_path, CodecSpec(method, 3, True), threads=0)
    suffix = {"zstd": ".zst", "lz4": ".lz4", "gzip": ".gz"}[method]
    assert [p.name for p in done] == [f"16385.tar{suffix}", f"base.tar{suffix}"]
    names = sorted(p.name for p in tmp_path.iterdir())
    # pg_wal.tar is left for the backup, which compresses it on its way to the repository.
    assert names == sorted(["backup_manifest", "pg_wal.tar", *(p.name for p in done)])
    with (
        open(tmp_path / f"base.tar{suffix}", "rb") as f,
        open_decoder(f, CodecSpec(method, 3), what="base") as dec,
    ):
        assert hashlib.sha256(dec.read()).digest() == hashlib.sha256(base).digest()
