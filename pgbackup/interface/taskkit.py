"""What every task shares: one error → one message and an exit status, the policy
loaded once, the repository, ``--json`` output, the console.

Tasks stay thin (flags in, engine call, render out); these helpers are the whole of
their plumbing, so the task modules import this and nothing of each other.
"""

from __future__ import annotations

import functools
import json as jsonlib
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from invoke.exceptions import Exit

from pgbackup.errors import UsageError
from pgbackup.interface.direct import load, outcome, targets

__all__ = ["load", "targets"]  # shared with the commands run without Invoke (direct.py)

F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Turn pgbackup errors into one clear message and an exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exit:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            message, code = outcome(exc)
            raise Exit(message, code=code) from None

    return wrapper  # type: ignore[return-value]


def repository(policy: Any) -> Any:
    from pgbackup.engine.repository import Repository
    from pgbackup.storage import open_storage

    return Repository(open_storage(policy.repository))


def policy_now() -> datetime:
    """Now, or the instant in $PGBACKUP_NOW: lets `plan`/`cleanup` answer "what on date X?"."""
    override = os.environ.get("PGBACKUP_NOW")
    if not override:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(override.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"PGBACKUP_NOW={override!r} is not an ISO 8601 timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def emit_json(data: Any) -> None:
    print(jsonlib.dumps(data, indent=2, sort_keys=True, default=str))


def console() -> Any:
    from rich.console import Console

    # Wide enough for a listing when piped (cron mail, log files); a terminal sets its own.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


CONFIG_HELP = "policy file (default: $PGBACKUP_CONFIG, ./backup.yaml, /etc/pgbackup/backup.yaml)"
