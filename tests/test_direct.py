"""A plain ``backup``/``restore`` line runs without Invoke (pgbackup/interface/direct.py);
every other line is Invoke's, and both routes read a line the same way."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from pgbackup.errors import ConfigError
from pgbackup.interface import engine_tasks
from pgbackup.interface.direct import OPTIONS, outcome, parse


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup"], ("backup", {})),
        (["backup", "--target", "db1"], ("backup", {"target": "db1"})),
        (
            ["backup", "--target=db1", "--type", "incremental"],
            ("backup", {"target": "db1", "type_": "incremental"}),
        ),
        (
            ["restore", "--backup", "latest", "--to", "/x"],
            ("restore", {"backup": "latest", "to": "/x"}),
        ),
        (
            ["restore", "--to=/x", "--force", "--start", "--json"],
            ("restore", {"to": "/x", "force": True, "start": True, "json_": True}),
        ),
    ],
)
def test_plain_lines_are_run_directly(
    argv: list[str], expected: tuple[str, dict[str, object]]
) -> None:
    assert parse(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["list"],
        ["backup", "--help"],
        ["backup", "-h"],
        ["backup", "-t", "db1"],  # short options: Invoke's
        ["backup", "--target"],  # a missing value: Invoke's message
        ["backup", "--target", "--type", "full"],
        ["backup", "--target", "a", "--target", "b"],  # repeated
        ["backup", "extra"],  # a stray word (another task?)
        ["backup", "restore"],
        ["restore", "--to", "/x", "--target-time", "2026-01-01"],  # PITR: Invoke's
        ["restore", "--force=yes"],
        ["restore", "--to", "/x", "--delta"],
        ["--list", "backup"],
    ],
)
def test_other_lines_are_invokes(argv: list[str]) -> None:
    assert parse(argv) is None


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_options_are_the_tasks_own(command: str) -> None:
    """Each direct option is a parameter of the Invoke task, taking a value exactly when
    the task's parameter is not a flag (a bool default)."""
    task = engine_tasks.backup if command == "backup" else engine_tasks.restore
    params = inspect.signature(task.body).parameters
    for flag, (name, takes_value) in OPTIONS[command].items():
        assert name in params, (command, flag)
        assert flag == "--" + name.rstrip("_").replace("_", "-")
        assert takes_value == (not isinstance(params[name].default, bool)), (command, flag)


def test_outcome_is_the_tasks_message_and_status() -> None:
    assert outcome(ConfigError("bad")) == ("pgbackup: error: bad", ConfigError("bad").exit_code)
    assert outcome(KeyboardInterrupt()) == ("pgbackup: interrupted", 130)
    message, code = outcome(ValueError("oops"))
    assert code == 70 and message.startswith("pgbackup: internal error: ValueError: oops")


def test_direct_backup_does_not_import_invoke(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The whole point: a plain backup line (here one that fails on its policy) never
    imports Invoke, and says what Invoke's route says."""
    policy = tmp_path / "backup.yaml"
    policy.write_text("version: 1\n")
    code = (
        "import sys\n"
        "from pgbackup.interface import console\n"
        "try:\n"
        f"    console.main(['--config', {str(policy)!r}, 'backup'])\n"
        "except SystemExit as e:\n"
        "    print('invoke' in sys.modules, e.code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "2"], proc.stdout + proc.stderr
    assert "pgbackup: error:" in proc.stderr
