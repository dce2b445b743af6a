"""What every task shares: one error → one message and an exit status, the policy
loaded once, the repository, ``--json`` output, the console.

Tasks stay thin (flags in, engine call, render out); these helpers are the whole of
their plumbing, so the task modules import this and nothing of each other.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json as jsonlib
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from invoke import Task, task
from invoke.exceptions import Exit

from pgbackup.errors import UsageError
from pgbackup.interface.direct import load, outcome, targets, use_config
from pgbackup.interface.options import CONFIG_HELP, build, default_of, help_of, kinds

__all__ = ["load", "targets"]  # shared with the commands run without Invoke (direct.py)

F = TypeVar("F", bound=Callable[..., Any])
CONFIG = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None)


def policy_task(
    *, help: dict[str, str] | None = None, name: str | None = None, **task_options: Any
) -> Callable[[Callable[..., Any]], Task[Any]]:
    """An Invoke task of a command that reads the policy: ``--config FILE`` is added to
    its options here, once for every task (the body calls :func:`load` without it), and
    errors become one message and an exit status (:func:`command`). Long options only:
    Invoke's automatic short flags change as options come and go, and ran out of letters
    (``--=STRING``) on restore."""

    def decorate(body: Callable[..., Any]) -> Task[Any]:
        signature = inspect.signature(body)
        context, *params = signature.parameters.values()

        @functools.wraps(body)
        def run(c: Any, *args: Any, config: str | None = None, **kwargs: Any) -> Any:
            use_config(config)
            return body(c, *args, **kwargs)

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[context, *params, CONFIG]
        )
        return task(  # type: ignore[no-any-return]
            name=name,
            help={**(help or {}), "config": CONFIG_HELP},
            auto_shortflags=False,
            **task_options,
        )(command(run))

    return decorate


def options_task(
    options: type, *, name: str | None = None
) -> Callable[[Callable[[Any, Any], Any]], Task[Any]]:
    """An Invoke task whose options are the fields of the record ``options``
    (interface/options.py): its signature, its help and its repeatable options come from
    the record; the body is called with the record, typed."""

    def decorate(body: Callable[[Any, Any], Any]) -> Task[Any]:
        fields = {f.name: f for f in dataclasses.fields(options)}
        params = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=default_of(f))
            for n, f in fields.items()
        ]

        @functools.wraps(body)
        def run(c: Any, **values: Any) -> Any:
            return body(c, build(options, values))

        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("c", inspect.Parameter.POSITIONAL_ONLY), *params]
        )
        iterable = [n for n, kind in kinds(options).items() if kind is list]
        return policy_task(help=help_of(options), name=name, iterable=iterable)(run)

    return decorate


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


def repository(policy: Any, *, role: str | None = None) -> Any:
    """The policy's repository; ``role="maintenance"``: opened with the
    ``maintenance_profile``'s credentials when the policy names one (cleanup)."""
    from pgbackup.engine.repository import Repository
    from pgbackup.storage import open_storage

    spec = {**policy.repository, "role": role} if role else policy.repository
    return Repository(open_storage(spec))


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
