"""``backup`` and ``restore`` without Invoke, for their plain command lines.

Importing Invoke costs a CPU-bound tenth of a second at every start (``importlib.metadata``
to read its own version, ``unittest.mock`` and with it ``asyncio``): a tenth of a backup
of a 300 MB cluster (issue #15, bench/backup.py). So when the words after ``backup`` or
``restore`` are only the long options of the command's record (interface/options.py, the
same record the Invoke task is made from), in a form Invoke would read the same way
(``--name VALUE``, ``--name=VALUE``, ``--flag``), the console script runs the command
from here. Anything else (``--help``, short options, other options, a
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
from pgbackup.interface.options import DIRECT, BackupOptions, RestoreOptions, parse_argv


def parse(argv: list[str]) -> tuple[str, Any, str | None] | None:
    """``(command, options record, --config)`` for a plain ``backup``/``restore`` line,
    else None: the line is Invoke's. The parser is generated from the command's record
    (interface/options.py), the one the Invoke task is made from."""
    if not argv or argv[0] not in DIRECT:
        return None
    parsed: tuple[Any, str | None] | None = parse_argv(DIRECT[argv[0]], argv[1:])
    if parsed is None:
        return None
    return argv[0], *parsed


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


def run(command: str, argv: list[str]) -> int | None:
    """Run a plain command line as its Invoke task would; the exit status, or None when
    the line is Invoke's."""
    bodies: dict[str, Callable[[Any], int]] = {"backup": backup_targets, "restore": restore_one}
    try:
        parsed = parse([command, *argv])
        if parsed is None:
            return None
        _, options, config = parsed
        use_config(config)
        return bodies[command](options)
    except Exception as exc:
        message, code = outcome(exc)
    except KeyboardInterrupt as exc:
        message, code = outcome(exc)
    print(message, file=sys.stderr)
    return code


def use_config(config: str | None) -> None:
    """``--config FILE``, wherever it was read (the console's argv, an Invoke task's
    option): the policy of this process and of the programs it starts (a drill's
    pgbackup, a restored server's restore_command), through $PGBACKUP_CONFIG."""
    if config:
        import os

        os.environ["PGBACKUP_CONFIG"] = os.path.abspath(config)


_AS_OF: list[str] = []  # --as-of of this command, when given (use_as_of)


def use_as_of(as_of: str | None) -> None:
    """``--as-of TIME``: every storage this command opens on the repository reads it as it
    was then (storage/s3.py). Checked here, before the policy is read."""
    _AS_OF.clear()
    if as_of is None:
        return
    from pgbackup.policy.immutability import parse_as_of

    try:
        parse_as_of(as_of)
    except ValueError:
        raise UsageError(
            f"--as-of {as_of!r} is not a time",
            hint="an ISO 8601 time, e.g. --as-of '2026-11-23 14:30:00+00'",
        ) from None
    _AS_OF.append(as_of)


def load(*, verbose: bool = False) -> Any:
    """Find (--config, $PGBACKUP_CONFIG, ./backup.yaml, /etc/pgbackup/backup.yaml), load
    and validate the policy, then set up logging. With ``--as-of`` the repository's spec
    carries it: the policy this command passes around reads the past."""
    from pgbackup.policy import find_config, load_policy_fast
    from pgbackup.ui import setup_logging

    # Validated in full, once per content (and referenced environment): a cache of hashes.
    policy = load_policy_fast(find_config(None), for_wal=False)
    setup_logging(policy, verbose=verbose, deferred=True)  # at the first message
    if _AS_OF:
        policy = policy._replace(repository={**policy.repository, "as_of": _AS_OF[0]})
    return policy


def targets(policy: Any, name: str | None) -> list[Any]:
    """``--target NAME`` or every target of the policy."""
    return [policy.target(name)] if name else list(policy.targets.values())


# --- backup ---------------------------------------------------------------------------


def backup_targets(options: BackupOptions) -> int:
    """The ``backup`` task: every target (or ``--target``); 0, or the worst failure's
    status (each failure already said on stderr and notified)."""
    from pgbackup.policy.records import BACKUP_TYPES

    if options.type_ not in BACKUP_TYPES:
        raise UsageError(
            f"--type {options.type_!r}: a backup is full or incremental",
            hint="pgbackup backup --type full|incremental",
        )
    policy = load()
    return backup_each(policy, targets(policy, options.target), options.type_)


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


def restore_one(options: RestoreOptions) -> int:
    """The ``restore`` task's body: the record's options, each passed by name to the
    engine's restore_command (``--no-archive`` and ``--from`` in the engine's words)."""
    from pgbackup.engine.restore_command import restore_command

    o = options
    if not o.to:
        raise UsageError("restore needs --to DIR (an empty or new directory)")
    use_as_of(o.as_of)
    policy = load()
    result = restore_command(
        policy,
        to=Path(o.to),
        backup=o.backup,
        force=o.force,
        start=o.start,
        port=o.port,
        target=o.target,
        db=o.db,
        target_time=o.target_time,
        target_lsn=o.target_lsn,
        target_xid=o.target_xid,
        target_name=o.target_name,
        target_action=o.target_action,
        target_timeline=o.target_timeline,
        exclusive=o.exclusive,
        archive=not o.no_archive,
        from_upload=o.from_,
        tablespace_map=o.tablespace_map,
        tablespace_map_all=o.tablespace_map_all,
        standby=o.standby,
        primary_conninfo=o.primary_conninfo,
        delta=o.delta,
    )
    if o.json_:
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
    if not argv or argv[0] not in DIRECT:
        return None
    return run(argv[0], argv[1:])
