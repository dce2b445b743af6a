"""Command options declared once: a typed record per command, whose fields make the
Invoke task's signature and ``--help`` (:func:`pgbackup.interface.taskkit.options_task`)
and the argv parser of the commands run without Invoke (:func:`parse_argv`).

A field's name is its Python parameter (``from_``, ``json_``: Python keywords and
builtins take a trailing underscore); its flag is ``--`` plus the name without the
underscore, dashed (``target_time`` -> ``--target-time``). A ``bool`` field is a flag
without a value, a ``list`` field repeats, an ``int`` field takes a number. Light on
purpose: the console imports it for a plain ``backup``/``restore`` line, before Invoke.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, TypeVar, get_type_hints

from pgbackup.errors import UsageError

CONFIG_HELP = "policy file (default: $PGBACKUP_CONFIG, ./backup.yaml, /etc/pgbackup/backup.yaml)"

OptionsT = TypeVar("OptionsT")


def flag(help_text: str, default: Any = None) -> Any:
    """A field of an options record: its default and its ``--help`` line."""
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


def flag_name(name: str) -> str:
    """``target_time`` -> ``--target-time``; ``from_`` -> ``--from``."""
    return "--" + name.strip("_").replace("_", "-")


def help_of(options: type) -> dict[str, str]:
    """Invoke's ``help=`` for a record: flag name (without dashes) -> its line."""
    return {f.name.strip("_"): f.metadata["help"] for f in fields(options)}


def kinds(options: type) -> dict[str, type]:
    """Field name -> str, bool, int or list (what the flag takes)."""
    hints = get_type_hints(options)
    out: dict[str, type] = {}
    for f in fields(options):
        hint = str(hints[f.name])
        out[f.name] = next((k for k in (bool, int, list) if k.__name__ in hint), str)
    return out


def default_of(f: Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


# --- the records ------------------------------------------------------------------------

#: ``--as-of``: list, verify, restore, drill and extract read the repository as it was
#: then (docs/security.md); wal-fetch takes the same flag (interface/wal_commands).
AS_OF_HELP = (
    "read the repository as it was at this time (ISO 8601; an S3 repository with "
    "versioning): later versions and deletions are ignored"
)


@dataclass(frozen=True)
class BackupOptions:
    target: str | None = flag("only this target (default: every target)")
    type_: str = flag(
        "full (default) or incremental: on the newest backup, PostgreSQL 17+ with "
        "summarize_wal = on",
        "full",
    )


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops: shared by restore and extract (PostgreSQL's
    recovery_target_* settings, one at a time)."""

    target_time: str | None = flag("recover to this time (ISO 8601, e.g. '2026-11-23 14:30:00+00')")
    target_lsn: str | None = flag("recover to this LSN (e.g. 0/3000060)")
    target_xid: str | None = flag("recover to this transaction id")
    target_name: str | None = flag("recover to this restore point (pg_create_restore_point)")
    exclusive: bool = flag("stop just before the target instead of just after it", False)
    as_of: str | None = flag(AS_OF_HELP)


@dataclass(frozen=True)
class RestoreOptions(RecoveryTarget):
    to: str | None = flag("data directory to restore into (must be empty or absent unless --force)")
    backup: str | None = flag(
        "backup id or 'latest' (default: newest, or the newest before the recovery target)"
    )
    force: bool = flag("replace a non-empty directory (stopping a server running on it)", False)
    start: bool = flag("start the restored server and wait until it accepts connections", False)
    port: int | None = flag("port for the restored server (default: a free one with --start)")
    target: str | None = flag(
        "policy target name; or a recovery target: 'immediate' (backup end) or 'latest' "
        "(end of archive)"
    )
    db: str | None = flag("policy target name, when --target names a recovery target")
    target_action: str | None = flag(
        "promote (default), pause or shutdown when the target is reached"
    )
    target_timeline: str | None = flag("timeline to follow: 'latest', 'current' or a number")
    no_archive: bool = flag("turn archive_mode off in the restored cluster (scratch copies)", False)
    from_: str | None = flag("restore from this upload destination instead of the repository")
    json_: bool = flag("machine-readable output", False)
    tablespace_map: list[str] = flag(
        "NAME=DIR (repeatable; NAME or OID): restore that tablespace into DIR", []
    )
    tablespace_map_all: str | None = flag("restore every tablespace into DIR/<name>")
    standby: bool = flag(
        "build a standby: standby.signal, WAL from the repository (and --primary-conninfo)",
        False,
    )
    primary_conninfo: str | None = flag(
        "with --standby: the primary to stream from (libpq conninfo)"
    )
    delta: bool = flag(
        "restore over an existing stopped copy: rewrite only the files that differ", False
    )


@dataclass(frozen=True)
class ExtractOptions(RecoveryTarget):
    db: str | None = flag("the database the objects are in")
    table: list[str] = flag(
        "SCHEMA.TABLE to extract (repeatable; default: every table of --db)", []
    )
    schema: list[str] = flag("every object of this schema (repeatable)", [])
    target: str | None = flag(
        "recovery target 'latest' or 'immediate', or the policy target's name"
    )
    policy_target: str | None = flag("the policy target, when --target names a recovery target")
    backup: str | None = flag("backup id (default: the newest before the recovery target)")
    output: str | None = flag("write a pg_dump archive of the objects here (never overwritten)")
    format: str | None = flag("--output's format: custom (default, for pg_restore) or plain (SQL)")
    into_db: str | None = flag("load the objects into this NEW database on the live server")
    user: str | None = flag(
        "--into-db: connect to the live server as this role (default: the target's)"
    )
    docker: bool = flag("run the scratch server in a container (drill.image or --image)", False)
    image: str | None = flag(
        "with --docker: the image (default: drill.image, else pgbackup:<version>)"
    )
    json_: bool = flag("machine-readable output", False)


#: The commands the console runs without Invoke, and their records.
DIRECT: dict[str, type] = {"backup": BackupOptions, "restore": RestoreOptions}


def build(options: type[OptionsT], values: dict[str, Any]) -> OptionsT:
    """The record from parsed values (by field name); a number field checked."""
    for name, kind in kinds(options).items():
        value = values.get(name)
        if kind is int and value is not None and not str(value).isdigit():
            raise UsageError(f"{flag_name(name)} {value!r} is not a number")
        if kind is int and value is not None:
            values[name] = int(value)
    return options(**values)


def parse_argv(options: type[OptionsT], argv: list[str]) -> tuple[OptionsT, str | None] | None:
    """(record, ``--config`` value) from the words after the command, when each is one of
    the record's long options in a form Invoke reads the same way (``--name VALUE``,
    ``--name=VALUE``, ``--flag``; a list option may repeat, the others appear once);
    else None, and the line is Invoke's (``--help``, short options, a stray word), which
    gives its own message. Generated from the record: never a second table."""
    by_flag = {flag_name(name): (name, kind) for name, kind in kinds(options).items()}
    by_flag["--config"] = ("config", str)
    values: dict[str, Any] = {}
    words = iter(argv)
    for word in words:
        name_word, eq, value = word.partition("=")
        if name_word not in by_flag:
            return None
        name, kind = by_flag[name_word]
        if name in values and kind is not list:
            return None
        if kind is bool:
            if eq:
                return None
            values[name] = True
            continue
        if not eq:
            value = next(words, "")
        if not value or value.startswith("-"):
            return None
        if kind is list:
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    config = values.pop("config", None)
    return build(options, values), config
