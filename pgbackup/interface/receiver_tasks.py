"""The ``wal-receive`` task: stream WAL into the repository (engine: pgbackup/engine/receiver.py)."""

from __future__ import annotations

import sys
from typing import Any

from invoke import Collection

from pgbackup.engine.uploads import UploadError
from pgbackup.errors import UsageError
from pgbackup.interface.taskkit import (
    load,
    policy_task,
)


@policy_task(
    name="wal-receive",
    help={
        "target": "the target to stream (needs wal_receiver: in its policy)",
    },
)
def wal_receive(c: Any, target: str | None = None) -> None:
    """Stream WAL with pg_receivewal into the repository until SIGTERM (then flush, exit 0)."""
    from pgbackup.engine.receiver import receive

    policy = load()
    chosen = policy.target(target)

    def ready(text: str) -> None:
        print(text)
        sys.stdout.flush()

    receiver = receive(policy, chosen, ready=ready)
    print(
        f"stopped: {receiver.stored} WAL files stored, {receiver.partial_uploads} partial "
        f"uploads, {receiver.restarts} restarts of pg_receivewal"
    )


@policy_task(
    name="wal-ship",
    iterable=["to"],
    help={
        "target": "the target whose archived WAL is shipped (default: every target)",
        "to": "only this upload destination (repeatable; default: every one)",
        "once": "one round, then exit (non-zero when a destination failed)",
        "interval": "seconds between two rounds (default 1)",
    },
)
def wal_ship(
    c: Any,
    target: str | None = None,
    to: list[str] | None = None,
    once: bool = False,
    interval: float = 1.0,
) -> None:
    """Copy archived WAL to every upload destination as it arrives, until SIGTERM (or --once)."""
    from pgbackup.engine.shipper import ship

    policy = load()
    if interval <= 0:
        raise UsageError(f"--interval {interval}: must be more than 0 seconds")
    if not policy.uploads:
        raise UsageError(
            f"no upload destinations in {policy.path}: nothing to ship WAL to",
            hint="declare them under uploads: (docs/offsite.md)",
        )
    names = [policy.target(target).name] if target else list(policy.targets)

    def ready(text: str) -> None:
        print(text)
        sys.stdout.flush()

    failed = ship(policy, names, to or None, once=once, interval=interval, ready=ready)
    if failed:
        raise UploadError(
            "WAL not shipped to:\n  " + "\n  ".join(failed),
            hint="fix the destination; the next round copies what is missing, in order",
        )


def register(ns: Collection) -> None:
    ns.add_task(wal_receive)
    ns.add_task(wal_ship)
