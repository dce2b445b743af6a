"""A PostgreSQL program's major version is asked once per installed file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgbackup.postgres import binaries


@pytest.fixture
def fake_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    binaries.program_major.cache_clear()
    program = tmp_path / "pg_basebackup"
    program.write_text(
        f'#!/bin/sh\necho run >> {tmp_path}/runs\necho "pg_basebackup (PostgreSQL) 17.2"\n'
    )
    program.chmod(0o755)
    return program


def runs(program: Path) -> int:
    log = program.parent / "runs"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_the_answer_is_kept_across_processes(fake_program: Path) -> None:
    assert binaries.program_major(str(fake_program)) == 17
    binaries.program_major.cache_clear()  # as a new process would start
    assert binaries.program_major(str(fake_program)) == 17
    assert runs(fake_program) == 1


def test_a_replaced_program_is_asked_again(fake_program: Path) -> None:
    assert binaries.program_major(str(fake_program)) == 17
    binaries.program_major.cache_clear()
    fake_program.write_text(fake_program.read_text().replace("17.2", "18.1"))
    st = fake_program.stat()
    os.utime(fake_program, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert binaries.program_major(str(fake_program)) == 18
    assert runs(fake_program) == 2


def test_an_unwritable_cache_is_not_an_error(fake_program: Path, tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    assert binaries.program_major(str(fake_program)) == 17
    binaries.program_major.cache_clear()
    assert binaries.program_major(str(fake_program)) == 17
    assert runs(fake_program) == 2
