"""engine/early_start.py without a server: which plans are run, and that a start the
engine does not adopt leaves no process, no directory and no lock behind.

The "pg_basebackup" here is a shell script of that name that forks a child (as
pg_basebackup forks its WAL streamer) and sleeps; the features run the real one
(backup_restore.feature, "early start" scenarios)."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbackup.engine import early_start

WORDS = ["--config", "backup.yaml", "backup"]


@pytest.fixture(autouse=True)
def fresh_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PGBACKUP_CONFIG", str(tmp_path / "backup.yaml"))
    (tmp_path / "backup.yaml").write_text("version: 1\n")
    monkeypatch.chdir(tmp_path)
    for name, value in [
        ("_pending", None),
        ("_claimed", False),
        ("_key", None),
        ("_read_plan", None),
        ("_noted", None),
    ]:
        monkeypatch.setattr(early_start, name, value)
    yield
    early_start.stop_unadopted()


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A repository's target directory with its lock, and a fake pg_basebackup."""
    base = tmp_path / "repo" / "main" / "base"
    base.mkdir(parents=True)
    lock = tmp_path / "repo" / "main" / "backup.lock"
    lock.touch()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "pg_basebackup"
    # The child writes its pid where the test can find it, then both sleep.
    program.write_text('#!/bin/sh\nsleep 60 &\necho $! > "$2/child.pid"\nwait\n')
    program.chmod(0o755)
    return {"base": base, "lock": lock, "program": program}


def write_plan(
    layout: dict[str, Path], *, key: str | None = None, program: str = "", pid_file: str = ""
) -> Path:
    """The plan a successful backup of WORDS leaves (engine's note + remember)."""
    early_start._key = key if key is not None else early_start.command_key(WORDS)
    directory = layout["base"] / "20260101T000000Z"
    argv = [program or str(layout["program"]), "--pgdata", str(directory)]
    early_start.note(str(layout["lock"]), str(directory), "20260101T000000Z", argv, pid_file)
    early_start.remember()
    early_start._key = None
    return Path(early_start.plan_file())


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped later by init) counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_for(predicate, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_plan_file_is_private_and_keeps_the_id_as_a_mark(layout: dict[str, Path]) -> None:
    plan = write_plan(layout)
    assert plan.stat().st_mode & 0o777 == 0o600
    fields = plan.read_bytes().split(b"\0")
    assert fields[0] == early_start.MAGIC.encode()
    assert fields[-1] == str(layout["base"] / "{backup_id}").encode()
    assert b"20260101T000000Z" not in plan.read_bytes()


def test_an_unchanged_plan_is_not_written_again(layout: dict[str, Path]) -> None:
    plan = write_plan(layout)
    before = plan.stat().st_mtime_ns
    early_start._key = early_start.command_key(WORDS)
    early_start._read_plan = early_start._read(str(plan))
    directory = layout["base"] / "20260101T000000Z"
    early_start.note(
        str(layout["lock"]),
        str(directory),
        "20260101T000000Z",
        [str(layout["program"]), "--pgdata", str(directory)],
    )
    time.sleep(0.01)
    early_start.remember()
    assert plan.stat().st_mtime_ns == before


def test_a_start_runs_under_the_lock_and_stops_without_a_trace(layout: dict[str, Path]) -> None:
    write_plan(layout)
    early_start.begin(WORDS)
    start = early_start._pending
    assert start is not None
    directory = Path(start.directory)
    assert directory.parent == layout["base"] and directory.is_dir()
    assert start.argv == [str(layout["program"]), "--pgdata", str(directory)]
    assert not lock_is_free(layout["lock"])  # the target's lock, taken first
    assert "backup by pid" in layout["lock"].read_text()
    assert wait_for(lambda: (directory / "child.pid").exists())
    child = int((directory / "child.pid").read_text())

    early_start.stop_unadopted()  # no backup adopted it: the console script's exit
    assert not alive(start.pid)
    assert wait_for(lambda: not alive(child))  # the whole process group
    assert not directory.exists()
    assert lock_is_free(layout["lock"])


def test_the_engine_adopts_only_its_own_command_line(layout: dict[str, Path]) -> None:
    write_plan(layout)
    early_start.begin(WORDS)
    start = early_start.claim(str(layout["lock"]))
    assert start is not None
    fd = early_start.held_lock(str(layout["lock"]))
    assert fd is not None and early_start.held_lock(str(layout["lock"])) is None  # once
    try:
        assert start.adopt([*start.argv, "--label=other"]) is None
        assert not alive(start.pid) and not Path(start.directory).exists()
        assert start.adopt(start.argv) is None  # stopped stays stopped
    finally:
        os.close(fd)

    early_start._pending, early_start._claimed = None, False
    early_start.begin(WORDS)
    again = early_start.claim(str(layout["lock"]))
    assert again is not None and again.adopt(list(again.argv)) is again
    again.send_signal(15)
    assert again.wait(timeout=5) != 0


def test_a_failed_start_is_adopted_so_its_failure_is_the_backups(
    layout: dict[str, Path],
) -> None:
    """Cut off after the server had begun it (the server stopped in the middle): the
    engine adopts it and reports its failure; a second start would hide the cut."""
    layout["program"].write_text('#!/bin/sh\n: > "$2/pg_wal.tar"\nexit 1\n')
    write_plan(layout)
    early_start.begin(WORDS)
    start = early_start.claim(str(layout["lock"]))
    assert start is not None
    fd = early_start.held_lock(str(layout["lock"]))
    assert fd is not None
    try:
        assert wait_for(lambda: start.poll() is not None)
        assert start.adopt(list(start.argv)) is start
        assert start.wait(timeout=5) == 1  # what run_basebackup reports as the failure
    finally:
        os.close(fd)


@pytest.mark.parametrize("server", ["alive", "dead", "absent", "garbage"])
def test_a_sandbox_plan_starts_only_while_its_server_runs(
    layout: dict[str, Path], tmp_path: Path, server: str
) -> None:
    """A sandbox that is down is started by the engine before pg_basebackup: no early
    start meets a server that is not there."""
    pid_file = tmp_path / "sandbox" / "data" / "postmaster.pid"
    pid_file.parent.mkdir(parents=True)
    if server == "alive":
        pid_file.write_text(f"{os.getpid()}\n/data\n")
    elif server == "dead":
        gone = os.fork()
        if gone == 0:
            os._exit(0)
        os.waitpid(gone, 0)
        pid_file.write_text(f"{gone}\n/data\n")
    elif server == "garbage":
        pid_file.write_text("not a pid\n")
    write_plan(layout, pid_file=str(pid_file))
    early_start.begin(WORDS)
    assert (early_start._pending is not None) == (server == "alive")


def test_a_claim_for_another_target_stops_it(layout: dict[str, Path]) -> None:
    write_plan(layout)
    early_start.begin(WORDS)
    start = early_start._pending
    assert start is not None
    assert early_start.claim(str(layout["lock"].with_name("other.lock"))) is None
    assert not alive(start.pid) and not Path(start.directory).exists()
    assert lock_is_free(layout["lock"])


def test_a_busy_lock_starts_nothing(layout: dict[str, Path]) -> None:
    write_plan(layout)
    fd = os.open(layout["lock"], os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        early_start.begin(WORDS)
    finally:
        os.close(fd)
    assert early_start._pending is None
    assert list(layout["base"].iterdir()) == []


def test_a_taken_name_starts_nothing_and_is_left_alone(layout: dict[str, Path]) -> None:
    write_plan(layout)
    # A backup taken this very second: the early start would need its name.
    taken = layout["base"] / early_start.backup_id_at(time.time() + 0.2)
    taken.mkdir()
    (taken / "base.tar.zst").write_bytes(b"someone else's")
    while early_start.backup_id_at(time.time()) != taken.name:
        time.sleep(0.01)
    early_start.begin(WORDS)
    if early_start._pending is None:  # the same second: nothing started
        assert (taken / "base.tar.zst").read_bytes() == b"someone else's"
        assert lock_is_free(layout["lock"])
    else:  # the second ended in between: a name of its own
        assert early_start._pending.directory != str(taken)
    early_start.stop_unadopted()
    assert (taken / "base.tar.zst").read_bytes() == b"someone else's"


@pytest.mark.parametrize(
    "spoil",
    [
        "group-writable",
        "another owner",
        "another command",
        "another program",
        "not a plan",
        "another lock file",
        "a directory elsewhere",
    ],
)
def test_a_doubtful_plan_is_not_run(layout: dict[str, Path], spoil: str) -> None:
    plan = write_plan(
        layout,
        key=early_start.command_key(["backup"]) if spoil == "another command" else None,
        program="/bin/sleep" if spoil == "another program" else "",
    )
    if spoil == "group-writable":
        plan.chmod(0o620)
    elif spoil == "another owner":
        if os.geteuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(plan, 65534, 65534)
    elif spoil in ("another lock file", "a directory elsewhere"):
        fields = plan.read_bytes().split(b"\0")
        if spoil == "another lock file":
            fields[2] = fields[2].replace(b"backup.lock", b"other.lock")
            (layout["lock"].with_name("other.lock")).write_text("keep me")
        else:
            fields[3] = str(layout["base"].parent / "{backup_id}").encode()
        plan.write_bytes(b"\0".join(fields))
    elif spoil == "not a plan":
        plan.write_bytes(b"pgbackup-early-start 0\0" + plan.read_bytes().split(b"\0", 1)[1])
    early_start.begin(WORDS)
    assert early_start._pending is None
    assert list(layout["base"].iterdir()) == []
    assert sorted(p.name for p in layout["base"].parent.iterdir()) == [
        "backup.lock",
        "base",
        *(["other.lock"] if spoil == "another lock file" else []),
    ]
    assert lock_is_free(layout["lock"])
    if spoil == "another lock file":
        assert layout["lock"].with_name("other.lock").read_text() == "keep me"


def test_the_policy_file_is_part_of_the_key(layout: dict[str, Path], tmp_path: Path) -> None:
    write_plan(layout)
    (tmp_path / "backup.yaml").write_text("version: 1\n# edited\n")
    early_start.begin(WORDS)
    assert early_start._pending is None


def test_its_backup_id_is_the_engines() -> None:
    from datetime import UTC, datetime

    from pgbackup.engine.repository import new_backup_id

    now = time.time()
    assert early_start.backup_id_at(now) == new_backup_id(datetime.fromtimestamp(now, UTC))
