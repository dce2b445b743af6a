"""``backup`` and ``restore`` without Invoke, for their plain command lines.

Importing Invoke costs a CPU-bound tenth of a second at every start (``importlib.metadata``
to read its own version, ``unittest.mock`` and with it ``asyncio``): a tenth of a backup
of a 300 MB cluster (issue #15, bench/backup.py). So when the words after ``backup`` or
``restore`` are only the long options below, in a form Invoke would read the same way
(``--name VALUE``, ``--name=VALUE``, ``--flag``, each at most once), the console script
runs the command from here. Anything else (``--help``, short options, other options, a
repeated one, a stray word) goes to Invoke, unchanged: this module never rejects a line.

The commands' bodies live here and the Invoke tasks call them
(:mod:`pgbackup.interface.engine_tasks`), so both routes print the same lines and end
with the same exit status; :func:`outcome` is :func:`pgbackup.interface.taskkit.command`'s
translation of an exception into a message and a status.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgbackup.errors import PgBackupError, UsageError

#: command -> {long option: parameter name, and whether it takes a value}.
OPTIONS: dict[str, dict[str, tuple[str, bool]]] = {
    "backup": {"--target": ("target", True), "--type": ("type_", True)},
    "restore": {
        "--to": ("to", True),
        "--backup": ("backup", True),
        "--target": ("target", True),
        "--force": ("force", False),
        "--start": ("start", False),
        "--json": ("json_", False),
    },
}


def parse(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """``(command, keyword arguments)`` for a plain ``backup``/``restore`` line (``--config``
    already taken out), else None: the line is Invoke's."""
    if not argv or argv[0] not in OPTIONS:
        return None
    known = OPTIONS[argv[0]]
    kwargs: dict[str, Any] = {}
    words = iter(argv[1:])
    for word in words:
        name, eq, value = word.partition("=")
        if name not in known:
            return None
        param, takes_value = known[name]
        if param in kwargs:
            return None
        if not takes_value:
            if eq:
                return None
            kwargs[param] = True
            continue
        if not eq:
            value = next(words, "")
        if not value or value.startswith("-"):
            return None  # Invoke's own message for a missing value
        kwargs[param] = value
    return argv[0], kwargs


def outcome(exc: BaseException) -> tuple[str, int]:
    """The message and exit status of an exception that ends a command: a pgbackup error
    is one line and its own status, an interruption 130, anything else a bug (70, the
    traceback in the log file)."""
    if isinstance(exc, PgBackupError):
        return f"pgbackup: error: {exc}", exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "pgbackup: interrupted", 130
    import traceback

    from pgbackup.ui import LOG

    LOG.debug("internal error\n%s", "".join(traceback.format_exception(exc)))
    return (
        f"pgbackup: internal error: {type(exc).__name__}: {exc}\n"
        "  this is a bug in pgbackup; the traceback is in the log file",
        70,
    )


def run(command: str, kwargs: dict[str, Any]) -> int:
    """Run a parsed command as its Invoke task would; the exit status."""
    bodies: dict[str, Callable[..., int]] = {"backup": backup_targets, "restore": restore_one}
    try:
        return bodies[command](**kwargs)
    except Exception as exc:
        message, code = outcome(exc)
    except KeyboardInterrupt as exc:
        message, code = outcome(exc)
    print(message, file=sys.stderr)
    return code


def load(config: str | None, *, verbose: bool = False) -> Any:
    """Find, load and validate the policy, then set up logging."""
    from pgbackup.policy import find_config, load_policy_fast
    from pgbackup.ui import setup_logging

    # Validated in full, once per content (and referenced environment): a cache of hashes.
    policy = load_policy_fast(find_config(config), for_wal=False)
    setup_logging(policy, verbose=verbose, deferred=True)  # at the first message
    return policy


def targets(policy: Any, name: str | None) -> list[Any]:
    """``--target NAME`` or every target of the policy."""
    return [policy.target(name)] if name else list(policy.targets.values())


# --- backup ---------------------------------------------------------------------------


def backup_targets(
    config: str | None = None, target: str | None = None, type_: str = "full"
) -> int:
    """The ``backup`` task: every target (or ``target``); 0, or the worst failure's status
    (each failure already said on stderr and notified)."""
    from pgbackup.policy.records import BACKUP_TYPES

    if type_ not in BACKUP_TYPES:
        raise UsageError(
            f"--type {type_!r}: a backup is full or incremental",
            hint="pgbackup backup --type full|incremental",
        )
    policy = load(config)
    return backup_each(policy, targets(policy, target), type_)


def backup_each(policy: Any, chosen: list[Any], type_: str) -> int:
    """Back up each chosen target; 0, or the worst failure's status."""
    from pgbackup.engine.backup import run_backup
    from pgbackup.ui import human_bytes

    failures = []
    for t in chosen:
        try:
            meta = run_backup(policy, t, type_)
        except PgBackupError as exc:
            failures.append(exc)
            print(f"pgbackup: error: {exc}", file=sys.stderr)
            notify(policy, "backup", t.name, "failed", str(exc))
            continue
        kind = f" (incremental on {meta['parent']})" if meta.get("parent") else ""
        print(
            f"backup {meta['backup_id']}{kind} of {t.name}: {human_bytes(meta['raw_bytes'])} -> "
            f"{human_bytes(meta['stored_bytes'])} stored in {meta['duration_seconds']:.1f}s "
            f"(LSN {meta['start_lsn']}..{meta['stop_lsn']}, timeline {meta['timeline']})"
        )
        try:
            after_backup(policy, t, meta)
        except PgBackupError as exc:  # the local backup stays complete; the copy failed
            failures.append(exc)
            print(f"pgbackup: error: {exc}", file=sys.stderr)
            notify(policy, "backup", t.name, "failed", f"upload of {meta['backup_id']}: {exc}")
    return max((f.exit_code for f in failures), default=0)


def after_backup(policy: Any, target: Any, meta: dict[str, Any]) -> None:
    """Copies to upload destinations, when the policy declares them."""
    if not policy.uploads:
        return
    from pgbackup.engine.uploads import upload_backup

    upload_backup(policy, target, meta["backup_id"])


def notify(policy: Any, event: str, target: str, status: str, message: str) -> None:
    from pgbackup.operations.alerts import notify_event

    notify_event(policy, event, target, status, message)


# --- restore --------------------------------------------------------------------------


def restore_one(
    to: str | None = None,
    config: str | None = None,
    port: int | str | None = None,
    no_archive: bool = False,
    from_: str | None = None,
    json_: bool = False,
    **options: Any,
) -> int:
    """The ``restore`` task's body: its options as the task names them (``--no-archive``,
    ``--from``, ``--json``); the others go to the engine's restore_command as they are."""
    from pgbackup.engine.restore_command import restore_command

    if not to:
        raise UsageError("restore needs --to DIR (an empty or new directory)")
    if port is not None and not str(port).isdigit():
        raise UsageError(f"--port {port!r} is not a port number")
    policy = load(config)
    result = restore_command(
        policy,
        to=Path(to),
        port=int(port) if port is not None else None,
        archive=not no_archive,
        from_upload=from_,
        **options,
    )
    if json_:
        import json

        print(json.dumps(result.as_dict(), indent=2, sort_keys=True, default=str))
        return 0
    if result.delta:
        from pgbackup.ui import human_bytes

        d = result.delta
        print(
            f"delta: {d['kept_files']} files ({human_bytes(d['reused_bytes'])}) reused, "
            f"{human_bytes(d['written_bytes'])} written, {d['removed_files']} stale files removed"
        )
    print(
        f"restored backup {result.backup_id} of {result.target} into {result.directory} "
        f"in {result.seconds:.1f}s"
        + (f"; server running on port {result.port}" if result.started else "")
    )
    if result.recovery:
        rec = result.recovery
        print(
            f"recovered to {rec.get('last_replay_time') or '?'} (LSN {rec.get('last_replay_lsn')}, "
            f"timeline {rec.get('timeline')}); state: {rec.get('state')}"
        )
    return 0


def main(argv: list[str]) -> int | None:
    """The exit status of a plain ``backup``/``restore`` line run here; None: Invoke's line."""
    parsed = parse(argv)
    if parsed is None:
        return None
    command, kwargs = parsed
    return run(command, kwargs)
