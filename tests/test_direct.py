"""A plain ``backup``/``restore`` line runs without Invoke (pgbackup/interface/direct.py);
every other line is Invoke's, and both routes read a line the same way."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from pgbackup.errors import ConfigError, UsageError
from pgbackup.interface import engine_tasks
from pgbackup.interface.direct import outcome, parse
from pgbackup.interface.options import DIRECT, BackupOptions, RestoreOptions, flag_name, kinds


@pytest.mark.parametrize(
    ("argv", "expected", "config"),
    [
        (["backup"], BackupOptions(), None),
        (["backup", "--target", "db1"], BackupOptions(target="db1"), None),
        (
            ["backup", "--target=db1", "--type", "incremental", "--config", "/p.yaml"],
            BackupOptions(target="db1", type_="incremental"),
            "/p.yaml",
        ),
        (
            ["restore", "--backup", "latest", "--to", "/x"],
            RestoreOptions(backup="latest", to="/x"),
            None,
        ),
        (
            ["restore", "--to=/x", "--force", "--start", "--json", "--port", "5499"],
            RestoreOptions(to="/x", force=True, start=True, json_=True, port=5499),
            None,
        ),
        (
            ["restore", "--to", "/x", "--target-time", "2026-01-01", "--exclusive", "--delta"],
            RestoreOptions(to="/x", target_time="2026-01-01", exclusive=True, delta=True),
            None,
        ),
        (
            ["restore", "--to", "/x", "--tablespace-map", "a=/a", "--tablespace-map=b=/b"],
            RestoreOptions(to="/x", tablespace_map=["a=/a", "b=/b"]),
            None,
        ),
        (
            ["restore", "--from", "s3copy", "--no-archive"],
            RestoreOptions(from_="s3copy", no_archive=True),
            None,
        ),
    ],
)
def test_plain_lines_are_run_directly(
    argv: list[str], expected: object, config: str | None
) -> None:
    assert parse(argv) == (argv[0], expected, config)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["list"],
        ["backup", "--help"],
        ["backup", "-h"],
        ["backup", "-t", "db1"],  # short options: Invoke's (which has none: its message)
        ["backup", "--target"],  # a missing value: Invoke's message
        ["backup", "--target", "--type", "full"],
        ["backup", "--target", "a", "--target", "b"],  # repeated
        ["backup", "extra"],  # a stray word (another task?)
        ["backup", "restore"],
        ["restore", "--force=yes"],
        ["restore", "--to", "/x", "--no-such-flag"],
        ["--list", "backup"],
    ],
)
def test_other_lines_are_invokes(argv: list[str]) -> None:
    assert parse(argv) is None


@pytest.mark.parametrize("command", sorted(DIRECT))
def test_the_task_is_made_from_the_same_record(command: str) -> None:
    """The Invoke task's options are the record's fields plus --config, each with help and
    a long name; a flag exactly where the field is a bool; no short flags."""
    task = engine_tasks.backup if command == "backup" else engine_tasks.restore
    record = DIRECT[command]
    arguments = {a.attr_name or a.name: a for a in task.get_arguments()}
    assert set(arguments) == {f.name for f in dataclasses.fields(record)} | {"config"}
    for arg in arguments.values():
        assert arg.help, arg
        assert all(len(name) > 1 for name in arg.names), arg.names  # no '-x', no nameless '--'
    for name, kind in kinds(record).items():
        assert (arguments[name].kind is bool) == (kind is bool), name
        assert "--" + arguments[name].names[0] == flag_name(name)


def test_restore_help_names_every_option() -> None:
    """`pgbackup restore --help` once listed a nameless `--=STRING` (Invoke's automatic
    short flags ran out of letters and took the dash)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pgbackup.interface.console", "restore", "--help"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--=" not in proc.stdout and "--target-name=STRING" in proc.stdout
    for f in dataclasses.fields(RestoreOptions):
        assert flag_name(f.name) in proc.stdout, f.name


def test_a_wrong_port_is_one_message() -> None:
    with pytest.raises(UsageError, match="--port 'x' is not a number"):
        parse(["restore", "--to", "/x", "--port", "x"])


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


def test_every_task_takes_config_once_and_long_options_only() -> None:
    """--config is added to every task in one place (taskkit.policy_task, or the WAL
    tasks' own); no task offers Invoke's automatic short flags."""
    from pgbackup.interface.collection import ns

    def tasks(collection):  # type: ignore[no-untyped-def]
        yield from collection.tasks.values()
        for sub in collection.collections.values():
            yield from tasks(sub)

    for task in tasks(ns):
        arguments = task.get_arguments()
        assert [a.name for a in arguments].count("config") == 1, task.name
        for arg in arguments:
            assert all(len(name) > 1 for name in arg.names), (task.name, arg.names)
