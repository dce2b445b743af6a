"""PostgreSQL programs are found where the policy says, and a PATH entry the caller cannot
search is skipped, never an internal error (issue #29 points 2 and 4)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pgbackup.errors import BinaryError
from pgbackup.postgres import binaries
from pgbackup.postgres.cluster import run_as, server_os_user

PROGRAM = "pg_issue29_probe"  # a name no PostgreSQL install has


class FakeTarget(NamedTuple):
    pg_bin_dir: Path | None


def fake_program(directory: Path, name: str = PROGRAM, major: int = 16) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / name
    program.write_text(f'#!/bin/sh\necho "{name} (PostgreSQL) {major}.2"\n')
    program.chmod(0o755)
    return program


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the server's OS user can read (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pgbackup-binaries-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hidden_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $PGBACKUP_PG_BIN_DIRS, a cache of this test's own."""
    monkeypatch.delenv("PGBACKUP_PG_BIN_DIRS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    binaries.program_major.cache_clear()


def test_the_target_pg_bin_dir_comes_first(
    hidden_env: None, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = fake_program(shared_dir / "path")
    in_policy = fake_program(shared_dir / "policy")
    monkeypatch.setenv("PATH", f"{on_path.parent}:/usr/bin:/bin")
    target = FakeTarget(in_policy.parent)
    assert binaries.program_for(target, PROGRAM, 16) == str(in_policy)
    assert binaries.program_for(FakeTarget(None), PROGRAM, 16) == str(on_path)


def test_a_missing_program_says_where_it_was_looked_for(
    hidden_env: None, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(BinaryError) as caught:
        binaries.program_for(FakeTarget(shared_dir), PROGRAM, 16)
    assert caught.value.message == (
        f"{PROGRAM} not found (PostgreSQL 16); looked in: {shared_dir}, "
        "/usr/lib/postgresql/16/bin, /usr/pgsql-16/bin, /usr/bin, /bin "
        f"(pg_bin_dir {shared_dir})"
    )


def test_find_program_cannot_be_called_without_a_pg_bin_dir() -> None:
    with pytest.raises(TypeError):
        binaries.find_program("psql", None)  # type: ignore[call-arg]


def lookup_as_server_user(path: str, pg_bin_dir: str | None) -> dict[str, Any]:
    """``find_program(PROGRAM, 16, pg_bin_dir)`` run as the server's OS user with ``path``
    as its PATH, as PostgreSQL runs restore_command (pgbackup wal-fetch) under runuser."""
    user = server_os_user()
    if user is None:
        pytest.skip("not root: there is no other OS user to run the lookup as")
    code = (
        "import json, sys\n"
        "from pgbackup.postgres.binaries import find_program\n"
        "try:\n"
        f"    print(json.dumps({{'found': find_program({PROGRAM!r}, 16, {pg_bin_dir!r})}}))\n"
        "except Exception as exc:\n"
        "    text = getattr(exc, 'message', str(exc))\n"
        "    print(json.dumps({'error': type(exc).__name__, 'message': text}))\n"
    )
    env = {"PATH": path, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = run_as([sys.executable, "-c", code], user, env=env, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """A directory owned by root, mode 0700 (as /root is), with a bin/ inside."""
    path = Path(tempfile.mkdtemp(prefix="pgbackup-rootonly-", dir="/tmp"))
    (path / "bin").mkdir()
    path.chmod(0o700)
    assert path.stat().st_uid == os.geteuid()
    yield path / "bin"
    shutil.rmtree(path, ignore_errors=True)


def test_an_unsearchable_path_entry_is_skipped(root_only_dir: Path, shared_dir: Path) -> None:
    later = fake_program(shared_dir / "bin")
    out = lookup_as_server_user(f"{root_only_dir}:{later.parent}:/usr/bin:/bin", None)
    assert out == {"found": str(later)}


def test_not_found_behind_an_unsearchable_path_entry_is_a_clear_error(
    root_only_dir: Path,
) -> None:
    out = lookup_as_server_user(f"{root_only_dir}:/usr/bin:/bin", None)
    assert out["error"] == "BinaryError", out
    assert out["message"] == (
        f"{PROGRAM} not found (PostgreSQL 16); looked in: /usr/lib/postgresql/16/bin, "
        f"/usr/pgsql-16/bin, {root_only_dir}, /usr/bin, /bin (no pg_bin_dir in the policy)"
    )


def test_the_server_programs_come_from_the_target_pg_bin_dir_too(
    hidden_env: None, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restore's and drill's clusters, and the probe of a server that may run on a
    restore's destination, use the target's server programs of the data's major."""
    from pgbackup.engine.delta import probe_cluster
    from pgbackup.postgres.cluster import Cluster

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    initdb = fake_program(shared_dir / "pg16" / "bin", "initdb", 16)
    data = shared_dir / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")
    assert probe_cluster(data, initdb.parent).bin_dir == initdb.parent
    assert Cluster(data, 0, major=16, pg_bin_dir=initdb.parent).bin_dir == initdb.parent
    # A pg_bin_dir of another major is passed over for the documented order.
    fake_program(shared_dir / "pg18" / "bin", "initdb", 18)
    monkeypatch.setenv("PGBACKUP_PG_BIN_DIRS", str(initdb.parent))
    assert Cluster(data, 0, major=16, pg_bin_dir=shared_dir / "pg18" / "bin").bin_dir == (
        initdb.parent
    )
