"""The ``pgbackup`` console script: the task collection as a program, plus the WAL fast path.

``wal-push``/``wal-fetch`` go straight to :mod:`pgbackup.interface.wal_commands` (no Invoke,
no rich, no jsonschema: they run once per WAL segment); every other command runs the same
task collection as ``invoke`` does (:mod:`pgbackup.interface.collection`), except a plain
``backup``/``restore`` line, which :mod:`pgbackup.interface.direct` runs without Invoke.
"""

from __future__ import annotations

import os
import sys

from pgbackup.interface.wal_commands import WAL_COMMANDS, split_config, wal_main

DIRECT_COMMANDS = ("backup", "restore")  # see pgbackup.interface.direct


def exit_now(code: int) -> None:
    """End the process once a command has said everything and made it durable: tearing
    the interpreter down (every module, the mapped segment) adds ~5 ms to each archived
    WAL segment and ~10 ms to a backup (issue #15). Log handlers are flushed first."""
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command is the first word after --config FILE (which may come first).
    first = next((a for a in split_config(argv)[1] if not a.startswith("-")), None)
    if first in WAL_COMMANDS:
        code = wal_main(argv)
        if from_console:
            exit_now(code)
        sys.exit(code)
    config, rest = split_config(argv)
    if config is not None:
        # `pgbackup --config FILE task` (the documented form) means the policy, not
        # Invoke's own runtime config file.
        os.environ["PGBACKUP_CONFIG"] = os.path.abspath(config)
    try:
        if first in DIRECT_COMMANDS:
            from pgbackup.interface.direct import main as direct_main

            # A plain backup/restore line runs without importing Invoke (a tenth of a
            # second); any other line of theirs (--help included) is Invoke's.
            direct_code = direct_main(rest)
            if direct_code is not None:
                if from_console:
                    exit_now(direct_code)
                sys.exit(direct_code)
        from pgbackup import __version__
        from pgbackup.interface.collection import ns
        from pgbackup.interface.program import PgBackupProgram

        program = PgBackupProgram(
            namespace=ns, version=__version__, name="pgbackup", binary="pgbackup"
        )
        program.run(["pgbackup", *rest])
    except KeyboardInterrupt:  # Ctrl-C before a command ran
        print("pgbackup: interrupted", file=sys.stderr)
        if from_console:
            exit_now(130)
        sys.exit(130)
    except BrokenPipeError:  # `pgbackup --help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
