"""The ``wal-receive`` task: stream WAL into the repository (engine: pgbackup/receiver.py)."""

from __future__ import annotations

import sys
from typing import Any

from invoke import Collection, task

from pgbackup.tasks import CONFIG_HELP, command, load


@task(
    name="wal-receive",
    help={
        "config": CONFIG_HELP,
        "target": "the target to stream (needs wal_receiver: in its policy)",
    },
)
@command
def wal_receive(c: Any, target: str | None = None, config: str | None = None) -> None:
    """Stream WAL with pg_receivewal into the repository until SIGTERM (then flush, exit 0)."""
    from pgbackup.receiver import receive

    policy = load(config)
    chosen = policy.target(target)

    def ready(text: str) -> None:
        print(text)
        sys.stdout.flush()

    receiver = receive(policy, chosen, ready=ready)
    print(
        f"stopped: {receiver.stored} WAL files stored, {receiver.partial_uploads} partial "
        f"uploads, {receiver.restarts} restarts of pg_receivewal"
    )


def register(ns: Collection) -> None:
    ns.add_task(wal_receive)
