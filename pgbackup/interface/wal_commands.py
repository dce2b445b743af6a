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
    config = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
            i += 1
            continue
        rest.append(arg)
        i += 1
    return config, rest


def wal_main(argv: list[str]) -> int:
    """``wal-push PATH`` / ``wal-fetch NAME PATH`` with ``--config``/``--target``.

    Exit status: 0 done; 1 (wal-fetch) not in the archive; 2 bad usage or policy;
    3 or more: the push/fetch failed (message on stderr); 255 (wal-fetch during archive
    recovery): failed, and PostgreSQL must abort recovery (see fetch_failure_status).
    """
    from pgbackup.errors import PgBackupError

    config, rest = split_config(argv)
    target = None
    source = None  # wal-fetch --from NAME: an upload destination
    until = None  # wal-fetch --until SEGMENT: recovery needs nothing after it
    asynchronous = False
    positional: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i] == "--async":
            asynchronous = True
            i += 1
            continue
        if rest[i] == "--target" and i + 1 < len(rest):
            target = rest[i + 1]
            i += 2
            continue
        if rest[i].startswith("--target="):
            target = rest[i].split("=", 1)[1]
            i += 1
            continue
        if rest[i] == "--until" and i + 1 < len(rest):
            until = rest[i + 1]
            i += 2
            continue
        if rest[i] == "--from" and i + 1 < len(rest):
            source = rest[i + 1]
            i += 2
            continue
        positional.append(rest[i])
        i += 1
    command, args = positional[0], positional[1:]
    want = 1 if command == "wal-push" else 2
    if len(args) != want:
        usage = (
            "wal-push [--config FILE] [--target NAME] [--async] PATH"
            if want == 1
            else "wal-fetch [--config FILE] [--target NAME] [--from UPLOAD] [--until SEGMENT] NAME PATH"
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
    try:
        if command == "wal-push":
            # The common case, with none of the imports below (wal_fastpush says which
            # case and why); anything else, or any doubt, goes the general way.
            from pgbackup.interface.wal_fastpush import fast_push

            try:
                if fast_push(config, target, args[0]):
                    return 0
            except OSError as exc:  # linked into place, but its directory not fsynced
                unsynced = exc
        from pgbackup.engine import wal
        from pgbackup.policy import find_config, load_policy_fast

        policy = load_policy_fast(find_config(config))
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
        print(f"pgbackup {command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return fetch_failure_status(_cwd()) if command == "wal-fetch" else 70


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
