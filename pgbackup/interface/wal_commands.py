"""The WAL fast path: ``wal-push`` and ``wal-fetch`` as PostgreSQL runs them.

PostgreSQL runs ``pgbackup wal-push`` once per WAL segment (archive_command) and
``pgbackup wal-fetch`` once per file it asks for (restore_command), so these two commands
are dispatched by the console script before Invoke (125 ms to import) is loaded; they load
a cached, already validated policy and import nothing else they do not need
(features/wal_archive.feature checks that with ``python -X importtime``).
"""

from __future__ import annotations

import os
import sys

# pathlib and contextlib (with re, enum, urllib...) are imported only where needed: the
# wal-push fast path (wal_fastpush) must not pay for them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

WAL_COMMANDS = ("wal-push", "wal-fetch")

#: Every flag of the WAL commands: flag -> (the commands that read it, whether it takes a
#: value). :func:`wal_main` parses with this table (``--config`` also as ``-c``; a value
#: as the next word or after ``=``), and the Invoke tasks build their command line with
#: :func:`wal_argv` from it; tests/test_wal_fastpush.py checks that the Invoke wal-push
#: task has a parameter for each of wal-push's flags.
WAL_FLAGS: dict[str, tuple[tuple[str, ...], bool]] = {
    "--config": (WAL_COMMANDS, True),
    "--target": (WAL_COMMANDS, True),
    "--async": (("wal-push",), False),
    "--from": (("wal-fetch",), True),  # an upload destination to fetch from
    "--until": (("wal-fetch",), True),  # the last segment recovery needs
    "--as-of": (("wal-fetch",), True),  # read the repository as it was then (docs/security.md)
}
#: Internal errors (bugs): sysexits' EX_SOFTWARE.
EXIT_INTERNAL = 70

# restore_command's exit statuses, as PostgreSQL reads them (src/backend/access/transam/
# xlogarchive.c, RestoreArchivedFile, PostgreSQL 15 to 18): 0 is "restored"; a death by
# signal, or an exit status above 125 (wait_result_is_any_signal(rc, true)), is FATAL
# for the startup process, so recovery aborts and the server stops; every other status
# means "not in the archive", and archive recovery ENDS there and promotes. 255 is above
# 125 and is no 128+signal that PostgreSQL would read as SIGTERM (143: a quiet exit).
EXIT_NOT_ARCHIVED = 1
EXIT_FETCH_FAILED = 3
EXIT_ABORT_RECOVERY = 255


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config X`` / ``--config=X`` / ``-c X`` out of argv (anywhere)."""
    flags, rest = _split_flags(argv, ("--config",))
    config = flags.get("--config")
    return (config if isinstance(config, str) else None), rest


def _split_flags(
    argv: list[str], names: tuple[str, ...] = tuple(WAL_FLAGS)
) -> tuple[dict[str, str | bool], list[str]]:
    """The flags of ``names`` found anywhere in argv (by :data:`WAL_FLAGS`), and the rest."""
    found: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag = "--config" if arg == "-c" else arg.split("=", 1)[0]
        if flag in names:
            takes_value = WAL_FLAGS[flag][1]
            if not takes_value and arg == flag:
                found[flag] = True
                i += 1
                continue
            if takes_value and "=" in arg and arg.startswith("--"):
                found[flag] = arg.split("=", 1)[1]
                i += 1
                continue
            if takes_value and "=" not in arg and i + 1 < len(argv):
                found[flag] = argv[i + 1]
                i += 2
                continue
        rest.append(arg)
        i += 1
    return found, rest


def _value(flags: dict[str, str | bool], flag: str) -> str | None:
    value = flags.get(flag)
    return value if isinstance(value, str) else None


def wal_argv(command: str, args: list[str], **flags: str | bool | None) -> list[str]:
    """The command line of ``command`` with ``args`` and the flags given (by name, without
    the dashes; None or False: not given), as :func:`wal_main` reads it."""
    argv = [command, *args]
    for name, value in flags.items():
        flag = f"--{name}"
        if flag not in WAL_FLAGS or command not in WAL_FLAGS[flag][0]:
            raise ValueError(f"{command} has no flag {flag}")
        if value is None or value is False:
            continue
        argv += [flag, str(value)] if WAL_FLAGS[flag][1] else [flag]
    return argv


def wal_main(argv: list[str]) -> int:
    """``wal-push PATH`` / ``wal-fetch NAME PATH`` with the flags of :data:`WAL_FLAGS`.

    Exit status: 0 done; 1 (wal-fetch) not in the archive; 2 bad usage or policy;
    3 or more: the push/fetch failed (message on stderr); 255 (wal-fetch during archive
    recovery): failed, and PostgreSQL must abort recovery (see fetch_failure_status);
    70: a bug (one line on stderr, the traceback in the log file).
    """
    from pgbackup.errors import PgBackupError

    flags, positional = _split_flags(argv)
    config, target = _value(flags, "--config"), _value(flags, "--target")
    source = _value(flags, "--from")  # wal-fetch --from NAME: an upload destination
    until = _value(flags, "--until")  # wal-fetch --until SEGMENT: recovery needs nothing after it
    as_of = _value(flags, "--as-of")  # wal-fetch --as-of TIME: the repository as it was then
    asynchronous = flags.get("--async") is True
    command, args = positional[0], positional[1:]
    want = 1 if command == "wal-push" else 2
    if len(args) != want:
        usage = (
            "wal-push [--config FILE] [--target NAME] [--async] PATH"
            if want == 1
            else "wal-fetch [--config FILE] [--target NAME] [--from UPLOAD] [--until SEGMENT] "
            "[--as-of TIME] NAME PATH"
        )
        print(f"pgbackup: usage: pgbackup {usage}", file=sys.stderr)
        return 2
    if asynchronous and command == "wal-push":
        from pgbackup.engine.walasync import push_async

        return push_async(
            config or os.environ.get("PGBACKUP_CONFIG") or "backup.yaml", target, args[0]
        )
    policy = None
    unsynced: OSError | None = None
    policy_path: str | None = None
    if command == "wal-fetch":
        # The read-ahead first (engine/walprefetch): a hit is a link, with no policy
        # loaded and no storage client started.
        from pgbackup.policyrules import named_policy_file

        policy_path = named_policy_file(config)
        # An --as-of fetch has no read-ahead: the spool is the live repository's.
        if as_of is None and policy_path is not None:
            answered = _served_from_spool(policy_path, target, source, until, args)
            if answered is not None:
                return answered  # 0, or 1: not archived, as the prefetcher's fetch found
    try:
        if command == "wal-push":
            # The common case, with none of the imports below (wal_fastpush says which
            # case and why); anything else goes the general way. A bug in it is raised,
            # and reported below like any other.
            from pgbackup.engine.wal_fastpush import NotDurable, fast_push

            try:
                if fast_push(config, target, args[0]):
                    return 0
            except NotDurable as exc:  # linked into place, but its directory not fsynced
                unsynced = exc
        from pgbackup.policy import find_config, load_policy_fast

        policy = load_policy_fast(find_config(config))
        # wal-fetch: the read-ahead first, before this process imports the engine or opens
        # a storage client (the prefetcher it starts opens the archive meanwhile); when
        # this call started it, its answer, from the client it opens anyway, rather than
        # a second client opened here beside it.
        if (
            command == "wal-fetch"
            and as_of is None
            and policy_path
            and _read_ahead(policy, policy_path, target, source, until, args[0])
        ):
            answered = _served_from_spool(policy_path, target, source, until, args, True)
            if answered is not None:
                return answered
        from pgbackup.engine import wal

        if unsynced is not None:
            raise wal.WalError(
                f"cannot make {os.path.basename(args[0])} durable in the archive "
                f"(fsync of its directory): {unsynced.strerror or unsynced}"
            )
        if command == "wal-push":
            wal.push(policy, args[0], target)
        else:
            storage = None
            if source is not None:
                from pgbackup.engine.uploads import upload_storage

                storage = upload_storage(policy, source)
            if as_of is not None:
                from pgbackup.storage import open_storage

                storage = open_storage({**policy.repository, "as_of": as_of})
            wal.fetch(policy, args[0], args[1], target, storage, until=until)
        return 0
    except PgBackupError as exc:
        if command == "wal-fetch" and _not_archived(exc):
            # not archived: PostgreSQL asks for files that do not exist; stay quiet
            return EXIT_NOT_ARCHIVED
        print(f"pgbackup {command}: error: {exc}", file=sys.stderr)
        _alert_wal_failure(policy, command, target, args, exc)
        if command == "wal-fetch":
            return fetch_failure_status(_cwd())
        return max(exc.exit_code, 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug; still one line, never a traceback in the server log
        where = _log_internal_error(policy, config, command, exc)
        print(
            f"pgbackup {command}: internal error: {type(exc).__name__}: {exc} (a bug in "
            f"pgbackup{f'; the traceback is in {where}' if where else ''})",
            file=sys.stderr,
        )
        return fetch_failure_status(_cwd()) if command == "wal-fetch" else EXIT_INTERNAL


def _served_from_spool(
    policy_path: str,
    target: str | None,
    source: str | None,
    until: str | None,
    args: list[str],
    just_started: bool = False,
) -> int | None:
    """wal-fetch NAME PATH answered by the read-ahead (its spool, or its prefetcher):
    the exit status, or None. Anything that goes wrong there is said and left to the
    synchronous fetch, which has every rule."""
    from pgbackup.engine.walprefetch import PREFIX, serve

    try:
        return serve(
            policy_path, target, source, until, args[0], args[1], just_started=just_started
        )
    except Exception as exc:
        print(f"{PREFIX}spool not used: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _read_ahead(
    policy: object,
    policy_path: str | None,
    target: str | None,
    source: str | None,
    until: str | None,
    name: str,
) -> bool:
    """Before a synchronous fetch: the read-ahead of the segments after ``name`` started
    (when the target's wal_fetch asks for it); True when this call started it. Never a
    reason for the fetch to fail."""
    from pgbackup.engine.walprefetch import PREFIX, kick

    try:
        return kick(policy, policy_path, target, source, until, name) == "started"
    except Exception as exc:
        print(f"{PREFIX}read-ahead not started: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False


def _log_internal_error(
    policy: object, config: str | None, command: str, exc: Exception
) -> str | None:
    """Write the traceback of a bug to the policy's log file (as the other commands do,
    interface/direct.outcome); the file's path, or None when there is none."""
    import traceback

    try:
        if policy is None:  # the fast path failed before the policy was loaded
            from pgbackup.policy import find_config, load_policy_fast

            policy = load_policy_fast(find_config(config))
        from pgbackup.ui import LOG, LOG_FILE_ONLY, default_log_file, setup_logging

        path = default_log_file(policy)
        if path is None:
            return None
        setup_logging(policy)
        LOG.error(
            "%s: internal error\n%s",
            command,
            "".join(traceback.format_exception(exc)),
            extra=LOG_FILE_ONLY,
        )
        return str(path)
    except Exception:  # the report of a bug must not hide it
        return None


def _cwd() -> Path:
    from pathlib import Path

    return Path.cwd()


def fetch_failure_status(data_dir: Path) -> int:
    """The exit status of a wal-fetch that failed for any reason but "not archived".

    restore_command runs in the data directory. In archive recovery (``recovery.signal``)
    a failure must abort recovery: PostgreSQL would read 1..125 as "not archived", end
    recovery at this file and promote without the WAL that follows. A standby
    (``standby.signal``, which wins when both exist) retries restore_command every
    wal_retrieve_retry_interval and streams meanwhile, and never ends recovery on a
    miss: a FATAL there would turn a passing S3 error into an outage, so it gets an
    ordinary failure, said loudly in the server log and alerted. Outside recovery (a
    person running it by hand) the status is 3.
    """
    if (data_dir / "standby.signal").exists():
        return EXIT_FETCH_FAILED
    if (data_dir / "recovery.signal").exists():
        return EXIT_ABORT_RECOVERY
    return EXIT_FETCH_FAILED


def _not_archived(exc: Exception) -> bool:
    """Only "the archive does not hold it" may look like a quiet miss to PostgreSQL.

    Any other failure (a missing or wrong key, an unreachable repository) must not: a
    quiet exit 1 makes recovery end there and the server promote.
    """
    from pgbackup.engine.wal import WalNotFound

    return isinstance(exc, WalNotFound)


def _alert_wal_failure(
    policy: object, command: str, target: str | None, args: list[str], exc: Exception
) -> None:
    """A failed push or fetch alerts (on state change) without slowing the happy path."""
    if policy is None:
        return
    import contextlib

    from pgbackup.operations.alerts import notify_event

    with contextlib.suppress(Exception):
        notify_event(
            policy, command, target or "-", "failed", f"{os.path.basename(args[0])}: {exc}"
        )
