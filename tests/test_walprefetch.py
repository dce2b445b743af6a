"""The read-ahead's spool (engine/walprefetch): what it refuses, what it serves, and that a
hit imports no storage client.

A posix repository with a policy file, an archive bound to a cluster and zstd segments
built here; a "data directory" holding pg_control's system identifier and
recovery.signal. The prefetcher's fetch of one segment and wal-fetch's serving are run in
this process; the whole prefetcher with a real PostgreSQL is features/wal_prefetch.feature.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgbackup.engine import walprefetch
from pgbackup.engine.walprefetch import (
    SPOOL_DIR,
    Prefetcher,
    serve,
    spooled,
    verify_segment,
)
from pgbackup.formats.codecs import CodecSpec, encode_bytes
from pgbackup.formats.walpage import WAL_PAGE_MAGIC, XLP_LONG_HEADER, archive_info_bytes

SYSID = 7412345678901234567
SEG = 16 * 1024 * 1024
ZSTD = CodecSpec(compression="zstd", level=1, encrypted=False)


def segment(name: str, sysid: int = SYSID, seg_size: int = SEG, size: int | None = None) -> bytes:
    """A segment whose first page has the long header PostgreSQL writes for ``name``."""
    tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    pageaddr = (log * (0x100000000 // seg_size) + seg) * seg_size
    page = struct.pack("<HHIQI", WAL_PAGE_MAGIC[15], XLP_LONG_HEADER, tli, pageaddr, 0)
    page = page.ljust(24, b"\0") + struct.pack("<QII", sysid, seg_size, 8192)
    body = bytes(range(256)) * 64
    data = page + body
    total = seg_size if size is None else size
    return (data * (total // len(data) + 1))[:total]


# --- verify_segment ------------------------------------------------------------------------

NAME = "000000010000000000000003"


def test_a_segment_as_its_name_says_is_accepted() -> None:
    assert verify_segment(NAME, segment(NAME), SYSID, SEG) is None


def test_a_wrong_size_is_refused() -> None:
    problem = verify_segment(NAME, segment(NAME, size=SEG - 8192), SYSID, SEG)
    assert problem is not None and "bytes, a segment has" in problem


def test_another_clusters_segment_is_refused() -> None:
    problem = verify_segment(NAME, segment(NAME, sysid=SYSID + 1), SYSID, SEG)
    assert problem is not None and "written by cluster" in problem


@pytest.mark.parametrize(
    "other", ["000000010000000000000004", "000000020000000000000003", "000000010000000100000003"]
)
def test_a_page_of_another_name_is_refused(other: str) -> None:
    problem = verify_segment(NAME, segment(other), SYSID, SEG)
    assert problem is not None and "not where its name says" in problem


def test_a_page_without_the_magic_or_long_header_is_refused() -> None:
    data = bytearray(segment(NAME))
    data[0:2] = b"\0\0"
    assert "magic" in (verify_segment(NAME, bytes(data), SYSID, SEG) or "")
    data = bytearray(segment(NAME))
    data[2:4] = b"\0\0"
    assert "long header" in (verify_segment(NAME, bytes(data), SYSID, SEG) or "")


# --- a repository, a data directory, one prefetcher -----------------------------------------


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    (repo / "main" / "wal").mkdir(parents=True)
    (repo / "main" / "archive.json").write_bytes(archive_info_bytes(SYSID, SEG))
    config = tmp_path / "backup.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            repository: {{path: {repo}}}
            compression: {{method: zstd, level: 1}}
            targets:
              main:
                connection: {{host: db.internal}}
                wal_fetch: {{read_ahead: 4, streams: 2}}
            """
        )
    )
    data_dir = tmp_path / "data"
    (data_dir / "global").mkdir(parents=True)
    (data_dir / "pg_wal").mkdir()
    (data_dir / "global" / "pg_control").write_bytes(struct.pack("<Q", SYSID) + b"\0" * 100)
    (data_dir / "recovery.signal").write_text("")
    (data_dir / SPOOL_DIR).mkdir()
    monkeypatch.chdir(data_dir)
    yield {"repo": repo, "config": str(config), "data": data_dir}


def archive(setup: dict[str, Any], name: str, data: bytes | None = None) -> Path:
    path = setup["repo"] / "main" / "wal" / f"{name}.zst"
    path.write_bytes(encode_bytes(ZSTD, segment(name) if data is None else data))
    return path


def prefetcher(setup: dict[str, Any]) -> Prefetcher:
    p = Prefetcher(setup["config"], "main", None, None, str(setup["data"]))
    p.open()
    return p


def test_a_verified_segment_is_spooled_under_its_crc_and_served(setup: dict[str, Any]) -> None:
    archive(setup, NAME)
    p = prefetcher(setup)
    assert (p.ahead, p.streams) == (4, 2)
    assert p.fetch_one(NAME) == "spooled"
    spool = str(setup["data"] / SPOOL_DIR)
    assert list(spooled(spool)) == [NAME]
    assert not [e for e in os.listdir(spool) if e.startswith(".tmp.")]
    dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
    with _prefetcher_running(setup):
        assert serve(setup["config"], "main", None, None, NAME, str(dest)) == 0
    assert dest.read_bytes() == segment(NAME)
    # served by a link: the spool keeps it for PostgreSQL's second read of a segment
    kept = Path(spool) / spooled(spool)[NAME]
    assert os.stat(kept).st_ino == os.stat(dest).st_ino
    requests = (setup["data"] / SPOOL_DIR / "requests").read_text()
    assert requests.startswith(f"{NAME} hit ")


def test_a_request_wakes_the_prefetcher_through_its_socket(setup: dict[str, Any]) -> None:
    """wal-fetch's request line is followed by a datagram to the prefetcher's abstract
    socket (it looks at once, not at its next turn), which leaves no file in the data
    directory (pg_basebackup warns about a special file there); nobody bound to it is no
    error."""
    import select

    p = prefetcher(setup)
    spool = setup["data"] / SPOOL_DIR
    assert p.wake_sock is not None
    assert p.wake_sock.getsockname() in (
        walprefetch.wake_address(str(spool)),
        walprefetch.wake_address(str(spool)).encode(),
    )
    assert sorted(os.listdir(spool)) == ["manifest"]
    assert select.select([p.wake_sock], [], [], 0)[0] == []
    walprefetch.record_request(str(spool), NAME, "hit", "x")
    assert select.select([p.wake_sock], [], [], 1)[0] == [p.wake_sock]
    assert p.wake_sock.recv(16) == b"\0"
    p.wake_sock.close()
    walprefetch.wake(str(spool))  # nobody bound: ECONNREFUSED, said nowhere
    walprefetch.wake(str(setup["data"] / "no such spool"))


def test_a_missing_segment_is_not_spooled_and_leaves_no_marker(setup: dict[str, Any]) -> None:
    p = prefetcher(setup)
    assert p.fetch_one(NAME) == "missing"
    assert spooled(str(setup["data"] / SPOOL_DIR)) == {}


def test_a_corrupt_compressed_segment_is_refused(setup: dict[str, Any]) -> None:
    path = archive(setup, NAME)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    outcome = prefetcher(setup).fetch_one(NAME)
    assert outcome.startswith("refused:"), outcome
    assert spooled(str(setup["data"] / SPOOL_DIR)) == {}


@pytest.mark.parametrize(
    "data",
    [
        segment(NAME, sysid=SYSID + 1),
        segment("000000010000000000000009"),
        segment(NAME, size=SEG // 2),
    ],
    ids=["another cluster", "another position", "short"],
)
def test_a_decodable_but_wrong_segment_is_refused(setup: dict[str, Any], data: bytes) -> None:
    archive(setup, NAME, data)
    outcome = prefetcher(setup).fetch_one(NAME)
    assert outcome.startswith("refused:"), outcome
    assert spooled(str(setup["data"] / SPOOL_DIR)) == {}


def test_a_foreign_spool_is_discarded_never_served(setup: dict[str, Any]) -> None:
    archive(setup, NAME)
    p = prefetcher(setup)
    assert p.fetch_one(NAME) == "spooled"
    spool = setup["data"] / SPOOL_DIR
    manifest = (spool / "manifest").read_text()
    (spool / "manifest").write_text(manifest.replace(p.identity, "0" * 32))
    dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
    assert serve(setup["config"], "main", None, None, NAME, str(dest)) is None
    assert not dest.exists()
    assert spooled(str(spool)) == {}


def test_a_spool_for_another_cluster_is_discarded(setup: dict[str, Any]) -> None:
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    control = setup["data"] / "global" / "pg_control"
    control.write_bytes(struct.pack("<Q", SYSID + 1) + b"\0" * 100)
    dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
    assert serve(setup["config"], "main", None, None, NAME, str(dest)) is None
    assert spooled(str(setup["data"] / SPOOL_DIR)) == {}


def test_a_spool_of_other_flags_is_not_served(setup: dict[str, Any]) -> None:
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
    assert serve(setup["config"], "main", "offsite", None, NAME, str(dest)) is None
    assert not dest.exists()


def test_a_spooled_file_damaged_after_it_was_written_is_refused(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    spool = setup["data"] / SPOOL_DIR
    path = spool / spooled(str(spool))[NAME]
    with open(path, "r+b") as f:
        f.seek(SEG // 2)
        f.write(b"\xff")
    dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
    assert serve(setup["config"], "main", None, None, NAME, str(dest)) is None
    assert not dest.exists() and not path.exists()
    assert "CRC-32" in capsys.readouterr().err


def _crc32_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the CRC-32 computations of 16 MiB from here on."""
    import zlib

    calls: list[int] = []
    real = zlib.crc32

    def counted(data: Any, value: int = 0) -> int:
        calls.append(len(data))
        return real(data, value)

    monkeypatch.setattr(zlib, "crc32", counted)
    return calls


def test_an_unwritten_spooled_file_is_served_without_a_second_crc(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spooled file's modification time is its CRC, the manifest names this boot: its
    bytes are those verified when it was spooled, and serving it reads only its header."""
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    spool = setup["data"] / SPOOL_DIR
    path = spool / spooled(str(spool))[NAME]
    assert os.stat(path).st_mtime_ns == int(path.name[25:], 16)
    assert f"boot {walprefetch.boot_id()}\n" in (spool / "manifest").read_text()
    calls = _crc32_counted(monkeypatch)
    dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
    with _prefetcher_running(setup):
        assert serve(setup["config"], "main", None, None, NAME, str(dest)) == 0
    assert calls == [] and dest.read_bytes() == segment(NAME)


@pytest.mark.parametrize("why", ["written since", "spooled in another boot"])
def test_a_spooled_file_not_proven_unwritten_is_checked_in_full(
    setup: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    why: str,
) -> None:
    """A write into the file moves its modification time off its CRC; a spool from
    another boot (an operating-system crash may have lost bytes of a renamed file) is
    never trusted by its times: both are checked with a full CRC-32, and damage refused."""
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    spool = setup["data"] / SPOOL_DIR
    path = spool / spooled(str(spool))[NAME]
    crc = int(path.name[25:], 16)
    with open(path, "r+b") as f:
        f.seek(SEG - 1)
        f.write(b"\x01")
    if why == "spooled in another boot":  # the damage hidden behind the CRC's time
        os.utime(path, ns=(crc, crc))
        manifest = spool / "manifest"
        manifest.write_text(
            manifest.read_text().replace(f"boot {walprefetch.boot_id()}", "boot another")
        )
    calls = _crc32_counted(monkeypatch)
    dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
    with _prefetcher_running(setup):
        assert serve(setup["config"], "main", None, None, NAME, str(dest)) is None
    assert calls == [SEG] and not dest.exists() and not path.exists()
    assert "CRC-32" in capsys.readouterr().err


def test_a_truncated_spooled_file_is_refused(setup: dict[str, Any]) -> None:
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    spool = setup["data"] / SPOOL_DIR
    path = spool / spooled(str(spool))[NAME]
    os.truncate(path, 8192)
    assert serve(setup["config"], "main", None, None, NAME, str(setup["data"] / "x")) is None


def test_history_and_partial_files_are_never_served_from_the_spool(setup: dict[str, Any]) -> None:
    (setup["data"] / SPOOL_DIR / "00000002.history").write_text("1\t0/3000000\tno reason\n")
    for name in ("00000002.history", f"{NAME}.partial"):
        assert serve(setup["config"], "main", None, None, name, str(setup["data"] / "x")) is None


def test_the_window_follows_the_timeline_and_stops_at_until(setup: dict[str, Any]) -> None:
    p = prefetcher(setup)
    assert p.window("0000000200000000000000FE") == [
        "0000000200000000000000FF",
        "000000020000000100000000",
        "000000020000000100000001",
        "000000020000000100000002",
    ]
    p.until = "000000020000000100000000"
    assert p.window("0000000200000000000000FE") == [
        "0000000200000000000000FF",
        "000000020000000100000000",
    ]


def test_nothing_is_started_outside_recovery(setup: dict[str, Any]) -> None:
    from pgbackup.policy import load_policy

    policy = load_policy(Path(setup["config"]))
    (setup["data"] / "recovery.signal").unlink()
    assert not walprefetch.kick(policy, setup["config"], "main", None, None, NAME)


def _hold_lock(spool: Path) -> int:
    fd = os.open(spool / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


class _prefetcher_running:
    """The spool's lock held, as a running prefetcher holds it: nothing is started."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.spool = setup["data"] / SPOOL_DIR

    def __enter__(self) -> None:
        self.fd = _hold_lock(self.spool)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# --- a hit imports no storage client ---------------------------------------------------------


def test_a_spool_hit_imports_no_storage_client_nor_the_policy_loader(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """An S3 repository (never reached: a hit needs no request), a spooled segment: the
    console's wal-fetch serves it without importing boto3, botocore or the policy loader."""
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    s3_config = tmp_path / "s3.yaml"
    s3_config.write_text(
        "version: 1\n"
        "repository: {kind: s3, bucket: b, endpoint_url: 'http://127.0.0.1:9'}\n"
        "targets:\n  main:\n    connection: {host: db.internal}\n"
    )
    spool = setup["data"] / SPOOL_DIR
    identity = walprefetch.spool_identity(str(s3_config), "main", None)
    manifest = walprefetch.manifest_bytes(identity, SYSID, SEG)
    (spool / "manifest").write_bytes(manifest)
    script = textwrap.dedent(
        f"""\
        import sys
        from pgbackup.interface.wal_commands import wal_main
        rc = wal_main(["wal-fetch", "--config", {str(s3_config)!r}, "--target", "main",
                       "{NAME}", "pg_wal/RECOVERYXLOG"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore")
                       or m in ("pgbackup.policy.loading", "pgbackup.storage", "json", "re"))
        print(rc, heavy)
        """
    )
    with _prefetcher_running(setup):
        proc = subprocess.run(
            [sys.executable, "-c", script],
            cwd=setup["data"],
            capture_output=True,
            text=True,
            env={**os.environ},
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 []", proc.stdout + proc.stderr
    assert (setup["data"] / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment(NAME)


# --- a killed prefetcher, the end of recovery ------------------------------------------------


def test_a_killed_prefetchers_temporary_files_are_removed_by_the_next(
    setup: dict[str, Any],
) -> None:
    archive(setup, NAME)
    assert prefetcher(setup).fetch_one(NAME) == "spooled"
    spool = setup["data"] / SPOOL_DIR
    (spool / f".tmp.{NAME}.12345").write_bytes(b"half a segment")
    prefetcher(setup)  # the next one, same archive: keeps the verified files
    assert sorted(os.listdir(spool)) == sorted(["manifest", spooled(str(spool))[NAME]])


def test_the_end_of_recovery_removes_the_spool_and_kills_no_stranger(
    setup: dict[str, Any],
) -> None:
    """A lock file naming a pid that holds no lock (a killed prefetcher's, reused since)
    gets no signal; the spool goes."""
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        spool = setup["data"] / SPOOL_DIR
        (spool / "lock").write_text(f"{stranger.pid}\n")
        walprefetch.end_read_ahead(setup["data"], timeout=1)
        assert not spool.exists()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


# --- a question asked of the running prefetcher ----------------------------------------------


@pytest.fixture
def running(setup: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The real prefetcher process on this data directory (this process plays the
    postmaster: postmaster.pid names it), stopped and its spool removed after."""
    (setup["data"] / "postmaster.pid").write_text(f"{os.getpid()}\n")
    env = {**os.environ, "PGBACKUP_GAP_GRACE": "0.2"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgbackup.engine.walprefetch",
            setup["config"],
            "main",
            "",
            "",
            str(setup["data"]),
        ],
        cwd=setup["data"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    spool = setup["data"] / SPOOL_DIR
    for _ in range(500):  # it holds the lock at once, writes its manifest once open
        if walprefetch._lock_holder(str(spool)) and (spool / "manifest").exists():
            break
        proc.poll()
        assert proc.returncode is None, proc.stderr.read() if proc.stderr else ""
        import time

        time.sleep(0.02)
    try:
        yield {**setup, "proc": proc}
    finally:
        walprefetch.end_read_ahead(setup["data"], timeout=5)
        proc.wait(timeout=10)


def _ask(setup: dict[str, Any], name: str, dest: Path) -> int | None:
    return serve(setup["config"], "main", None, None, name, str(dest))


def test_the_prefetcher_answers_what_the_spool_lacks_as_wal_fetch_would(
    running: dict[str, Any],
) -> None:
    """A segment not spooled yet, a history file, the end of the archive and a timeline
    that does not exist: answered by the prefetcher's fetch (0 with the bytes, 1 for not
    archived), so no wal-fetch starts an object-store client of its own."""
    archive(running, NAME)
    history = b"1\t0/3000000\tno recovery target specified\n"
    (running["repo"] / "main" / "wal" / "00000002.history.zst").write_bytes(
        encode_bytes(ZSTD, history)
    )
    dest = running["data"] / "pg_wal" / "RECOVERYXLOG"
    assert _ask(running, NAME, dest) == 0
    assert dest.read_bytes() == segment(NAME)
    assert _ask(running, "00000002.history", dest) == 0
    assert dest.read_bytes() == history
    assert _ask(running, "000000010000000000000004", dest) == 1  # the end of the archive
    assert _ask(running, "00000003.history", dest) == 1  # no such timeline
    lines = (running["data"] / SPOOL_DIR / "requests").read_text().splitlines()
    assert [line.split(" ")[1][:4] for line in lines] == ["ask:"] * 4


def test_the_last_segment_served_stays_for_the_end_of_recovery(running: dict[str, Any]) -> None:
    """At the end of recovery PostgreSQL asks for the segment after the last (not
    archived), then reads the last one again: still in the spool, served again without a
    question to the archive."""
    before, last, after = (NAME[:-1] + c for c in "234")
    archive(running, before)
    archive(running, last)
    dest = running["data"] / "pg_wal" / "RECOVERYXLOG"
    spool = running["data"] / SPOOL_DIR
    assert _ask(running, before, dest) == 0  # asked: the read-ahead follows it
    import time

    deadline = time.monotonic() + 30
    while last not in walprefetch.spooled(str(spool)):
        assert time.monotonic() < deadline, sorted(os.listdir(spool))
        time.sleep(0.02)
    assert _ask(running, last, dest) == 0  # served from the spool
    assert _ask(running, after, dest) == 1  # the end of the archive
    assert _ask(running, last, dest) == 0  # read again
    assert dest.read_bytes() == segment(last)
    hows = [line.split(" ")[:2] for line in (spool / "requests").read_text().splitlines()]
    assert [h[1][:4] for h in hows if h[0] == last] == ["hit", "hit"], hows


def test_a_hole_or_a_corrupt_file_is_no_answer_and_wal_fetch_fails_loudly(
    running: dict[str, Any],
) -> None:
    """The prefetcher's fetch fails (a hole: a later segment is archived; a corrupt
    file): no answer, and wal-fetch fetches it itself and aborts recovery (255), never 1."""
    archive(running, "000000010000000000000005")  # 3 and 4 missing: a hole
    path = archive(running, "000000010000000000000002")
    path.write_bytes(path.read_bytes()[:-100])  # torn
    dest = running["data"] / "pg_wal" / "RECOVERYXLOG"
    for name in (NAME, "000000010000000000000002"):
        assert _ask(running, name, dest) is None
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pgbackup.interface.console",
                "wal-fetch",
                "--config",
                running["config"],
                "--target",
                "main",
                name,
                "pg_wal/RECOVERYXLOG",
            ],
            cwd=running["data"],
            capture_output=True,
            text=True,
            env={**os.environ, "PGBACKUP_GAP_GRACE": "0.2"},
            timeout=60,
        )
        assert proc.returncode == 255, proc.stderr
        assert "error" in proc.stderr
    assert not dest.exists()


def test_a_wal_fetch_that_starts_the_read_ahead_asks_it_rather_than_fetch_beside_it(
    setup: dict[str, Any],
) -> None:
    """The first request of a recovery (a history probe, then the first segment): the
    wal-fetch that starts the prefetcher waits for it to open the archive and asks it,
    so one client is opened, not two at once; the answers are wal.fetch's (the file, or
    1 for a timeline that does not exist)."""
    archive(setup, NAME)
    (setup["data"] / "postmaster.pid").write_text(f"{os.getpid()}\n")
    os.rmdir(setup["data"] / SPOOL_DIR)  # nothing runs yet
    env = {**os.environ, "PGBACKUP_GAP_GRACE": "0.2"}

    def wal_fetch(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgbackup.interface.console", "wal-fetch", "--config",
             setup["config"], "--target", "main", name, "pg_wal/RECOVERYXLOG"],
            cwd=setup["data"], capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    try:
        probe = wal_fetch("00000002.history")
        assert probe.returncode == 1, probe.stderr  # not archived: answered by the prefetcher
        requests = (setup["data"] / SPOOL_DIR / "requests").read_text().split()
        assert "00000002.history" in requests and any(r.startswith("ask:") for r in requests)
        got = wal_fetch(NAME)
        assert got.returncode == 0, got.stderr
        assert (setup["data"] / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment(NAME)
    finally:
        walprefetch.end_read_ahead(setup["data"], timeout=5)


# --- the backup's first segment, and a question about a segment in flight -------------------


def test_the_backup_labels_first_segment_is_read_ahead_before_it_is_asked_for(
    setup: dict[str, Any],
) -> None:
    """The history probe that starts the prefetcher names the backup's first segment
    (backup_label) to it: that segment and the next are spooled while PostgreSQL still
    asks for history files, and its own request for the segment is a hit."""
    second = NAME[:-1] + chr(ord(NAME[-1]) + 1)  # the one after it
    archive(setup, NAME)
    archive(setup, second)
    (setup["data"] / "backup_label").write_text(
        f"START WAL LOCATION: 0/1000028 (file {NAME})\nCHECKPOINT LOCATION: 0/1000060\n"
    )
    (setup["data"] / "postmaster.pid").write_text(f"{os.getpid()}\n")
    os.rmdir(setup["data"] / SPOOL_DIR)
    spool = setup["data"] / SPOOL_DIR
    try:
        probe = subprocess.run(
            [sys.executable, "-m", "pgbackup.interface.console", "wal-fetch", "--config",
             setup["config"], "--target", "main", "00000002.history", "pg_wal/RECOVERYXLOG"],
            cwd=setup["data"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PGBACKUP_GAP_GRACE": "0.2"},
        )  # fmt: skip
        assert probe.returncode == 1, probe.stderr
        import time

        deadline = time.monotonic() + 30
        while not {NAME, second} <= set(walprefetch.spooled(str(spool))):
            assert time.monotonic() < deadline, sorted(os.listdir(spool))
            time.sleep(0.02)
        dest = setup["data"] / "pg_wal" / "RECOVERYXLOG"
        assert _ask(setup, NAME, dest) == 0
        assert dest.read_bytes() == segment(NAME)
        hows = [line.split(" ")[:2] for line in (spool / "requests").read_text().splitlines()]
        assert [NAME, "seed"] in hows and [NAME, "hit"] in hows  # served, never asked for
    finally:
        walprefetch.end_read_ahead(setup["data"], timeout=5)


def test_no_backup_label_means_no_seed(setup: dict[str, Any]) -> None:
    assert walprefetch.backup_start_segment(str(setup["data"])) is None
    (setup["data"] / "backup_label").write_text("START WAL LOCATION: 0/1000028 (file junk)\n")
    assert walprefetch.backup_start_segment(str(setup["data"])) is None


def test_a_question_about_a_segment_in_flight_is_answered_by_that_fetch(
    setup: dict[str, Any],
) -> None:
    """PostgreSQL caught up with the read-ahead: the segment it asks for is downloading.
    The answer is the spooled file (one download, the same inode), not a second fetch."""
    from concurrent.futures import Future, ThreadPoolExecutor

    archive(setup, NAME)
    p = prefetcher(setup)
    spool = setup["data"] / SPOOL_DIR
    with ThreadPoolExecutor(1) as pool:
        p.answer(NAME, "n1", pool.submit(p.fetch_one, NAME))
    assert (spool / "answer.n1").read_text() == "0"
    entry = walprefetch.spooled(str(spool))[NAME]
    assert (spool / "answer.n1.data").stat().st_ino == (spool / entry).stat().st_ino
    # A fetch in flight that ends otherwise (stopped, refused): the answer is wal.fetch's.
    (spool / entry).unlink()
    stopped: Future[str] = Future()
    stopped.set_result("stopped")
    p.answer(NAME, "n2", stopped)
    assert (spool / "answer.n2").read_text() == "0"
    assert (spool / "answer.n2.data").read_bytes() == segment(NAME)
    assert not walprefetch.spooled(str(spool))


def test_a_prefetcher_started_before_the_server_waits_for_it_then_follows_it(
    setup: dict[str, Any],
) -> None:
    """Started by a restore before its server (no postmaster.pid yet): it waits up to
    START_SECONDS for one; once seen, the server's end is its end."""
    archive(setup, NAME)
    p = prefetcher(setup)
    assert p.why_stop(0) is None  # no server yet, within the grace
    p.started -= walprefetch.START_SECONDS + 1
    assert p.why_stop(0) == "no server started"
    (setup["data"] / "postmaster.pid").write_text(f"{os.getpid()}\n")
    assert p.why_stop(0) is None and p.server_seen
    (setup["data"] / "postmaster.pid").unlink()
    assert p.why_stop(0) == "the server is gone"


def test_before_server_seeds_the_spool_with_the_flags_wal_fetch_uses(
    setup: dict[str, Any],
) -> None:
    (setup["data"] / "backup_label").write_text(f"START WAL LOCATION: 0/3000028 (file {NAME})\n")
    os.rmdir(setup["data"] / SPOOL_DIR)
    argv = walprefetch.BeforeServer(setup["config"], "main", None, "00000001000000000000000A")
    command = argv.prepare(str(setup["data"]))
    assert command[-6:] == [
        os.path.realpath(setup["config"]), "main", "", "00000001000000000000000A",
        str(setup["data"]), walprefetch.BEFORE_SERVER,
    ]  # fmt: skip
    identity = walprefetch.spool_identity(os.path.realpath(setup["config"]), "main", None)
    requests = (setup["data"] / SPOOL_DIR / "requests").read_text()
    assert requests == f"{NAME} seed {identity}\n"  # the identity wal-fetch computes


def test_the_read_ahead_report_sums_every_prefetcher_in_the_servers_log() -> None:
    log = "\n".join(
        [
            "LOG:  starting archive recovery",
            f"{walprefetch.PREFIX}2026-12-07 03:00:00 [12] reading ahead 8 segments, 4 at a "
            "time, into /d/pgbackup_spool (archive opened in 0.21 s); started by the restore, "
            "before the server",
            f"{walprefetch.PREFIX}2026-12-07 03:00:04 [12] stopped (the server is gone): 9 "
            "segments spooled, 7 served from the spool, 1 not in it (2 files answered for "
            "wal-fetch), 1 refused; spool removed",
            f"{walprefetch.PREFIX}2026-12-07 03:00:09 [31] stopped (recovery has ended): 4 "
            "segments spooled, 3 served from the spool, 0 not in it (1 files answered for "
            "wal-fetch), 0 refused; spool removed",
        ]
    )
    assert walprefetch.read_ahead_report(log) == {
        "spooled": 13,
        "served": 10,
        "not_in_spool": 1,
        "refused": 1,
        "started_before_server": True,
    }
    assert walprefetch.read_ahead_report("LOG:  redo done") is None


def test_answers_use_the_target_and_generation_found_when_the_archive_was_opened(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each question is wal.fetch's whole fetch, without looking up the target and the
    generation again (history.json: a request through the object store, per question)."""
    from pgbackup.engine import generations, wal

    archive(setup, NAME)
    p = prefetcher(setup)
    looked_up: list[str] = []
    monkeypatch.setattr(generations, "read_history", lambda *a, **k: looked_up.append("history"))
    monkeypatch.setattr(wal, "pick_target", lambda *a, **k: looked_up.append("target"))
    spool = setup["data"] / SPOOL_DIR
    p.answer(NAME, "n1")
    p.answer("00000002.history", "n2")
    p.answer("000000010000000000000004", "n3")
    assert [(spool / f"answer.n{i}").read_text() for i in (1, 2, 3)] == ["0", "1", "1"]
    assert (spool / "answer.n1.data").read_bytes() == segment(NAME)
    assert looked_up == []
