"""The parallel tar extractor restores exactly what tarfile wrote, and refuses escapes."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pgbackup.errors import RestoreError
from pgbackup.formats import untar
from pgbackup.formats.untar import extract


def make_tar(
    members: list[tuple[str, bytes | None, str | None]], fmt: int = tarfile.GNU_FORMAT
) -> io.BytesIO:
    """members: (name, content or None for a directory, symlink target or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_round_trip(tmp_path: Path, fmt: int) -> None:
    big = os.urandom(9 * 1024 * 1024 + 123)  # several write chunks
    long_dir = "d" * 60 + "/" + "e" * 60 if fmt == tarfile.USTAR_FORMAT else "x" * 150
    members = [
        ("base", None, None),
        ("base/1", None, None),
        ("base/1/16384", big, None),
        ("base/1/empty", b"", None),
        (f"{long_dir}/file", b"long name", None),
        ("pg_tblspc/16400", None, "/srv/tablespace"),
        ("PG_VERSION", b"15\n", None),
    ]
    written = extract(make_tar(members, fmt), tmp_path)
    assert (tmp_path / "base/1/16384").read_bytes() == big
    assert (tmp_path / "base/1/empty").read_bytes() == b""
    assert (tmp_path / long_dir / "file").read_bytes() == b"long name"
    assert os.readlink(tmp_path / "pg_tblspc/16400") == "/srv/tablespace"
    assert stat.S_IMODE((tmp_path / "PG_VERSION").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "base").stat().st_mode) == 0o700
    assert written == len(big) + len(b"long name") + 3


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "base/../../escape"])
def test_refuses_paths_outside(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(RestoreError, match="outside the data directory"):
        extract(make_tar([(name, b"x", None)]), root)
    assert not (tmp_path / "escape").exists()


def test_refuses_members_beneath_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    tar = make_tar([("link", None, str(outside)), ("link/file", b"x", None)])
    with pytest.raises(RestoreError, match="beneath a symbolic link"):
        extract(tar, root)
    assert list(outside.iterdir()) == []


def test_truncated_stream_is_an_error(tmp_path: Path) -> None:
    data = make_tar([("f", os.urandom(100_000), None)]).getvalue()
    with pytest.raises(RestoreError, match="ended in the middle"):
        extract(io.BytesIO(data[:50_000]), tmp_path)


def test_sparse_members_keep_their_size_but_no_data(tmp_path: Path) -> None:
    """extract's filter: a skipped relation is a file of its size, all zeros, no blocks."""
    from pgbackup.formats.untar import SPARSE

    big = os.urandom(9 * 1024 * 1024 + 5)
    members = [
        ("base/5/1259", b"catalog", None),
        ("base/16384/16390", big, None),
        ("base/16384/16391", b"small", None),
        ("global/1262", b"pg_database", None),
    ]
    skipped = {"base/16384/16390", "base/16384/16391"}
    written = extract(make_tar(members), tmp_path / "a", sparse=skipped.__contains__)
    a = tmp_path / "a"
    assert (a / "base/5/1259").read_bytes() == b"catalog"
    assert (a / "global/1262").read_bytes() == b"pg_database"
    assert (a / "base/16384/16391").read_bytes() == b"\0" * 5
    assert (a / "base/16384/16390").stat().st_size == len(big)
    assert (a / "base/16384/16390").stat().st_blocks * 512 < 1024 * 1024  # a hole, not data
    assert written == len(b"catalog") + len(b"pg_database")
    # The same through the context variable run_restore's callers set.
    token = SPARSE.set(skipped.__contains__)
    try:
        extract(make_tar(members), tmp_path / "b")
    finally:
        SPARSE.reset(token)
    assert (tmp_path / "b/base/16384/16391").read_bytes() == b"\0" * 5
    assert (tmp_path / "b/base/5/1259").read_bytes() == b"catalog"


def relation_segment() -> bytes:
    """Several write chunks, a multiple of the direct-write alignment (as relation and
    WAL segments are): the O_DIRECT path."""
    return os.urandom(2 * untar.CHUNK + 5 * untar.DIRECT_ALIGN)


def test_aligned_large_files_are_written_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real = untar._open_for_chunks

    def spy(path: Path, mode: int, size: int) -> tuple[int, bool]:
        fd, direct = real(path, mode, size)
        seen.append(direct)
        return fd, direct

    monkeypatch.setattr(untar, "_open_for_chunks", spy)
    data = relation_segment()
    odd = os.urandom(untar.CHUNK + 1000)  # not aligned: through the page cache
    extract(make_tar([("base/1/16384", data, None), ("base/1/odd", odd, None)]), tmp_path)
    assert (tmp_path / "base/1/16384").read_bytes() == data
    assert (tmp_path / "base/1/odd").read_bytes() == odd
    # Only the aligned file is written directly (where the filesystem allows it).
    assert seen == [_direct_works(tmp_path), False]


def test_a_filesystem_refusing_o_direct_at_open_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & untar._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(untar.os, "open", refusing)
    data = relation_segment()
    extract(make_tar([("base/1/16384", data, None)]), tmp_path)
    assert (tmp_path / "base/1/16384").read_bytes() == data


def test_a_direct_write_refused_switches_the_file_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _direct_works(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    real_pwrite = untar._pwrite_all
    refused: list[int] = []

    def picky(fd: int, data: memoryview, offset: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & untar._O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        real_pwrite(fd, data, offset)

    monkeypatch.setattr(untar, "_pwrite_all", picky)
    data = relation_segment()
    extract(make_tar([("base/1/16384", data, None)]), tmp_path)
    assert (tmp_path / "base/1/16384").read_bytes() == data
    assert refused == [0]  # refused once, then the file was buffered


def _direct_works(where: Path) -> bool:
    if not untar._O_DIRECT:
        return False
    try:
        os.close(os.open(where / ".probe", os.O_WRONLY | os.O_CREAT | untar._O_DIRECT, 0o600))
        return True
    except OSError:
        return False
    finally:
        (where / ".probe").unlink(missing_ok=True)


def test_kept_members_are_read_past_and_left_as_they_are(tmp_path: Path) -> None:
    """A delta restore's ``keep``: the file on disk is already the backup's; its bytes are
    counted as restored but none is written."""
    (tmp_path / "base/1").mkdir(parents=True)
    (tmp_path / "base/1/16384").write_bytes(b"already here")
    big = os.urandom(untar.CHUNK + 7)
    members = [
        ("base/1/16384", b"from the backup", None),
        ("base/1/16385", big, None),
        ("PG_VERSION", b"18\n", None),
    ]
    counted: list[int] = []
    kept = {"base/1/16384", "base/1/16385"}
    written = extract(make_tar(members), tmp_path, on_bytes=counted.append, keep=kept.__contains__)
    assert (tmp_path / "base/1/16384").read_bytes() == b"already here"
    assert not (tmp_path / "base/1/16385").exists()
    assert (tmp_path / "PG_VERSION").read_bytes() == b"18\n"
    assert written == 3
    assert sum(counted) == len(b"from the backup") + len(big) + 3


def test_a_writer_failing_is_a_restore_error(tmp_path: Path, monkeypatch: Any) -> None:
    """An OS error in a writer thread reaches the caller as one RestoreError, and no
    later member is read."""

    def full(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(untar.os, "pwrite", full)
    members = [(f"base/1/{n}", b"x" * 100, None) for n in range(50)]
    with pytest.raises(RestoreError, match="cannot write into .*No space left on device"):
        extract(make_tar(members), tmp_path)
