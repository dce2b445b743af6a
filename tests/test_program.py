"""The ``pgbackup`` program's own surface: help, version, flags, completion (real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pgbackup import __version__

PGBACKUP = str(Path(sys.executable).parent / "pgbackup")
INVOKE_ONLY = ("--pty", "--dry", "--write-pyc", "--prompt-for-sudo-password", "--warn-only")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGBACKUP, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_version() -> None:
    for flag in ("--version", "-V"):
        proc = run(flag)
        assert proc.returncode == 0
        assert proc.stdout.strip() == f"pgbackup {__version__}"


def test_help_is_pgbackups_own() -> None:
    out = run("--help").stdout
    assert "Usage: pgbackup [--config FILE] <command>" in out
    assert "The policy file (backup.yaml)" in out
    for flag in (*INVOKE_ONLY, "--core-opts", "Runtime configuration", "--complete "):
        assert flag not in out, flag
    for command in ("backup", "restore", "drill", "wal-push", "schedule.install"):
        assert f"  {command} " in out, command


def test_command_help_speaks_pgbackup() -> None:
    out = run("backup", "--help").stdout
    assert out.startswith("Usage: pgbackup backup [--options]")
    assert "--target" in out and "core-opts" not in out


@pytest.mark.parametrize("flag", INVOKE_ONLY)
def test_invoke_core_flags_are_refused(flag: str) -> None:
    proc = run(flag, "list")
    assert proc.returncode != 0
    assert f"No idea what '{flag}' is" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_closed_pipe_is_quiet() -> None:
    proc = subprocess.run(
        f"'{PGBACKUP}' --help | head -1", shell=True, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.startswith("Usage: pgbackup")
    assert "Traceback" not in proc.stderr


def test_completion(tmp_path: Path) -> None:
    for shell in ("bash", "zsh"):
        script = run("--print-completion-script", shell).stdout
        assert "_complete_pgbackup" in script and "--complete" in script, shell
    commands = run("--complete", "--", "pgbackup").stdout.split()
    assert {"backup", "restore", "drill", "sla-report"} <= set(commands)
    flags = run("--complete", "--", "pgbackup", "restore", "--t").stdout.split()
    assert "--target-time" in flags
