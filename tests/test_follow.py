"""The archive follower hashes files as they grow, and says how much it hashed."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from pgbackup.engine.follow import ArchiveFollower


def write_slowly(path: Path, chunks: list[bytes], delay: float) -> None:
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            time.sleep(delay)


def test_follows_files_that_appear_and_grow(tmp_path: Path) -> None:
    directory = tmp_path / "backup"  # created later, as pg_basebackup does
    chunks = [os.urandom(300_000) for _ in range(12)]
    follower = ArchiveFollower(directory, ".tar.zst").start()
    time.sleep(0.03)
    directory.mkdir()
    writers = [
        threading.Thread(target=write_slowly, args=(directory / name, chunks, 0.005))
        for name in ("base.tar.zst", "16385.tar.zst")
    ]
    for w in writers:
        w.start()
    (directory / "pg_wal.tar").write_bytes(b"\0" * 1000)  # random-access written: not followed
    (directory / "backup_manifest.tmp").write_bytes(b"{}")
    for w in writers:
        w.join()
    followed = follower.finish()
    whole = b"".join(chunks)
    assert followed == {
        directory / "base.tar.zst": (len(whole), hashlib.sha256(whole).hexdigest()),
        directory / "16385.tar.zst": (len(whole), hashlib.sha256(whole).hexdigest()),
    }


def test_a_file_written_after_the_last_look_is_read_at_finish(tmp_path: Path) -> None:
    follower = ArchiveFollower(tmp_path, ".tar.gz").start()
    data = os.urandom(5000)
    (tmp_path / "base.tar.gz").write_bytes(data)
    assert follower.finish() == {
        tmp_path / "base.tar.gz": (len(data), hashlib.sha256(data).hexdigest())
    }


def test_a_rewritten_file_is_caught_by_its_size(tmp_path: Path) -> None:
    """What the caller checks: bytes hashed against the size at the end. A file cut
    short and rewritten (never done by pg_basebackup) does not pass for followed."""
    path = tmp_path / "base.tar.zst"
    path.write_bytes(b"x" * 4096)
    follower = ArchiveFollower(tmp_path, ".tar.zst").start()
    time.sleep(0.05)
    path.write_bytes(b"y" * 100)  # truncated and rewritten in place
    hashed, _digest = follower.finish()[path]
    assert hashed != path.stat().st_size


def test_a_follower_never_started_finishes_with_nothing(tmp_path: Path) -> None:
    """pg_basebackup could not be started: the follower's thread never ran."""
    (tmp_path / "base.tar.zst").write_bytes(b"x" * 10)
    assert ArchiveFollower(tmp_path, ".tar.zst").finish() == {}
