"""The archive follower hashes files as they grow, and says how much it hashed."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pgbackup.engine.follow import ArchiveFollower, StreamedUpload
from pgbackup.engine.phases import Phases
from pgbackup.storage import open_storage


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


# --- staged backups: each archive sent to storage while it grows (issue #26) -----------


@pytest.fixture(params=["posix", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    if request.param == "posix":
        return open_storage({"kind": "posix", "path": str(tmp_path / "repo")})
    spec, env = request.getfixturevalue("s3_service")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return open_storage(dict(spec, prefix=f"follow-{uuid.uuid4().hex[:8]}/", part_size="5MiB"))


def uploads_to(store: Any, phases: Phases) -> Any:
    return lambda name: StreamedUpload(store.writer(f"b/{name}"), False, None, phases)


def open_multipart_uploads(store: Any) -> list[str]:
    if store.kind != "s3":
        return []
    found = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return [u["Key"] for u in found.get("Uploads", [])]


def test_an_archive_is_sent_while_it_grows_and_committed_whole(tmp_path: Path, store: Any) -> None:
    directory = tmp_path / "staging"
    directory.mkdir()
    phases = Phases()
    follower = ArchiveFollower(directory, ".tar.zst", uploads_to(store, phases)).start()
    chunks = [os.urandom(1 << 20) for _ in range(12)]
    path = directory / "base.tar.zst"
    with open(path, "wb") as f:
        for chunk in chunks[:8]:
            f.write(chunk)
            f.flush()
        deadline = time.monotonic() + 20
        # pg_basebackup is still writing: bytes are already on their way to storage.
        while phases.as_dict().get("transfer", {}).get("bytes", 0) == 0:
            assert time.monotonic() < deadline, "nothing was sent while the file grew"
            time.sleep(0.02)
        for chunk in chunks[8:]:
            f.write(chunk)
    followed = follower.finish()
    upload = follower.upload_of(path, followed)
    assert upload is not None
    assert store.stat("b/base.tar.zst") is None  # nothing visible before the commit
    whole = b"".join(chunks)
    assert upload.commit() == {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
    assert store.read_bytes("b/base.tar.zst") == whole
    follower.abort_uploads()  # nothing left to abort: the committed object stays
    assert store.read_bytes("b/base.tar.zst") == whole
    assert open_multipart_uploads(store) == []


def test_an_archive_not_followed_to_its_end_or_left_over_is_aborted(
    tmp_path: Path, store: Any
) -> None:
    """A file whose size at the end is not what was sent is never committed (the caller
    sends the staged file again); a failed backup aborts every upload it began."""
    phases = Phases()
    follower = ArchiveFollower(tmp_path, ".tar.zst", uploads_to(store, phases)).start()
    (tmp_path / "base.tar.zst").write_bytes(os.urandom(3 << 20))
    (tmp_path / "16385.tar.zst").write_bytes(os.urandom(1 << 20))
    time.sleep(0.3)
    followed = follower.finish()
    (tmp_path / "base.tar.zst").write_bytes(b"short")  # never done by pg_basebackup
    assert follower.upload_of(tmp_path / "base.tar.zst", followed) is None
    follower.abort_uploads()  # the backup failed: 16385.tar.zst's upload goes too
    assert store.stat("b/base.tar.zst") is None and store.stat("b/16385.tar.zst") is None
    assert open_multipart_uploads(store) == []
