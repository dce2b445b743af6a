"""The one task collection: ``invoke`` (root ``tasks.py``) and ``pgbackup`` both run it.

Each task module registers its own tasks here; none imports another, so the interface
has no import circle.
"""

from __future__ import annotations

from invoke import Collection

from pgbackup.interface import engine_tasks, ops_tasks, receiver_tasks

ns = Collection()
engine_tasks.register(
    ns
)  # validate, plan, backup, list, verify, restore, cleanup, wal-*, sandbox.*, demo
ops_tasks.register(ns)  # check, drill, extract, sla-report, exporter, schedule.*
receiver_tasks.register(ns)  # wal-receive, wal-ship
