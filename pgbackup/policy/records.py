"""The policy as typed, immutable records: what every other layer receives.

A loaded ``backup.yaml`` becomes one :class:`Policy` holding :class:`Target`,
:class:`WalFetch`, :class:`Compression`, :class:`Encryption`, :class:`Retention`, :class:`Sla` and
:class:`DrillCheck` records. They live apart from the loader so that code which only
passes a policy around (engine, operations) reads their shape in one short file; add a
policy key's field here, and its default in ``build.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from pgbackup.errors import ConfigError

#: What ``backup --type`` accepts: a full backup, or an incremental on the newest complete
#: one (PostgreSQL 17+).
BACKUP_TYPES = ("full", "incremental")

# Immutable records. NamedTuple, not dataclasses: wal-push builds them once per segment,
# and importing dataclasses (with inspect) plus building eight classes cost it ~8 ms.


class Compression(NamedTuple):
    method: str
    level: int
    workers: int = 0  # zstd threads on the server for base backups (0: PostgreSQL's default)


class Encryption(NamedTuple):
    method: str
    recipients_file: Path
    identity_file: Path | None


class Sandbox(NamedTuple):
    path: Path
    port: int  # 0 = choose a free one
    scale: int


class WalFetch(NamedTuple):
    """A target's ``wal_fetch``: the read-ahead of recovery (engine/walprefetch)."""

    #: Segments spooled ahead of PostgreSQL (0: off); 8 by default from object storage
    #: and from a posix repository alike (measured on both: docs/benchmarks.md).
    read_ahead: int = 8
    streams: int = 4  # segments fetched at once


class Target(NamedTuple):
    name: str
    connection: dict[str, Any]  # libpq keywords, only those set
    sandbox: Sandbox | None
    pg_bin_dir: Path | None
    max_rate: str | None = None  # pg_basebackup --max-rate: spare a busy server's disks
    wal_receiver: dict[str, Any] | None = None  # wal-receive: slot, synchronous, directory
    wal_fetch: WalFetch = WalFetch()  # wal-fetch's read-ahead


class Retention(NamedTuple):
    days: int
    weekly: int
    monthly: int
    min_backups: int


class Sla(NamedTuple):
    rto: int | None  # seconds
    rpo: int | None  # seconds


class DrillCheck(NamedTuple):
    name: str
    sql: str
    expect: str
    dbname: str | None


class Policy(NamedTuple):
    path: Path
    repository: dict[str, Any]
    compression: Compression
    encryption: Encryption | None
    targets: dict[str, Target]
    retention: Retention
    schedules: dict[str, str]
    sla: Sla
    uploads: list[dict[str, Any]]
    alerts: dict[str, Any]
    drill_checks: list[DrillCheck]
    drill_port: int
    log_file: Path | None
    log_level: str
    drill_image: str | None = None  # drill --docker's image; None: pgbackup:<version>

    def target(self, name: str | None) -> Target:
        """The target called ``name``; with ``None``, the only target there is."""
        names = ", ".join(self.targets) or "(none)"
        if name is None:
            if len(self.targets) == 1:
                return next(iter(self.targets.values()))
            raise ConfigError(
                f"{self.path} declares several targets ({names}); say which one",
                hint="pass --target NAME",
            )
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"no target {name!r} in {self.path} (targets: {names})",
                hint="pass --target with one of the names above, or declare it under targets:",
            ) from None
