"""The ``pgbackup`` program: Invoke's Program, speaking for pgbackup only.

Invoke's core flags (``--pty``, ``--dry``, ``--write-pyc``, ``--prompt-for-sudo-password``,
and a ``-f/--config`` that means *Invoke's* runtime configuration file) mean nothing to a
DBA and collide with pgbackup's own ``--config``. They are not offered: the parser does
not accept them and ``--help`` does not list them; Invoke still sees their defaults.
"""

from __future__ import annotations

import inspect
from typing import Any

from invoke import Argument, Program
from invoke.util import Lexicon

#: Invoke's core flags that pgbackup keeps (the rest get their defaults, unseen).
KEPT = ("help", "version", "list", "complete", "print-completion-script")

USAGE = """\
Usage: pgbackup [--config FILE] <command> [--command-opts] ...
       pgbackup <command> --help          options of one command

The policy is --config FILE, else $PGBACKUP_CONFIG, else ./backup.yaml,
else /etc/pgbackup/backup.yaml.
"""


class PgBackupProgram(Program):
    """Invoke's Program with pgbackup's own core options, usage text and help."""

    def core_args(self) -> list[Argument]:
        by_name = {arg.name: arg for arg in super().core_args()}
        kept = [by_name[name] for name in KEPT]
        by_name["help"].help = "Show this help, or a command's options (--help COMMAND)."
        by_name["list"].help = "List the commands."
        by_name["print-completion-script"].help = (
            "Print the shell completion script (bash or zsh): "
            'eval "$(pgbackup --print-completion-script bash)"'
        )
        # The policy file. main() takes --config out of argv before Invoke parses it, so
        # this never reaches Invoke's own (runtime configuration) meaning of the name.
        kept.append(
            Argument(
                names=("config", "c"),
                help="The policy file (backup.yaml).",
            )
        )
        return kept

    @property
    def args(self) -> Lexicon:
        """The parsed core flags, plus Invoke's dropped ones at their defaults (Invoke's
        own code reads them)."""
        args: Lexicon = self.core[0].args
        for arg in super().core_args():
            if arg.name not in args:
                args[arg.name] = arg
        return args

    def print_help(self) -> None:
        print(USAGE)
        print("Options:")
        print("")
        self.print_columns(_without_complete(self.initial_context.help_tuples()))
        if self.namespace is not None:
            self.list_tasks()

    def print_task_help(self, name: str) -> None:
        """One command's usage, description and options (no Invoke vocabulary)."""
        tuples = self.parser.contexts[name].help_tuples()
        print(f"Usage: pgbackup {name}{' [--options]' if tuples else ''}")
        print("")
        for line in (inspect.getdoc(self.collection[name]) or "").splitlines():
            print(self.leading_indent + line if line.strip() else "")
        print("")
        print("Options:")
        if tuples:
            self.print_columns(tuples)
        else:
            print(self.leading_indent + "none")
            print("")


def _without_complete(tuples: list[Any]) -> list[Any]:
    """``--complete`` is the completion script's private entry point, not a user's flag."""
    return [t for t in tuples if not t[0].startswith("--complete")]
