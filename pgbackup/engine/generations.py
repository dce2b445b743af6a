"""A target's generations: the clusters that archived into it, one after another.

After ``pg_upgrade`` (or a new ``initdb`` and a dump restored) the server is a new
cluster: a new system identifier, WAL file names that start again where the old ones
were. Two clusters never mix in one archive, so each generation has a namespace of its own
in the repository, and the target's history says which cluster each one holds:

```
<target>/base/ <target>/wal/ <target>/archive.json        generation 1 (as before #30)
<target>/gen/<n>/base/ <target>/gen/<n>/wal/ .../archive.json  generation n >= 2
<target>/history/<n>.json     one record per generation, written once by `pgbackup upgrade`
```

A repository without ``history/`` is one generation, read and written exactly as before.
``runs/``, ``drills/`` and the locks stay shared by every generation.

:func:`view` gives the engine a generation as a storage whose keys read like generation
1's (``<target>/wal/...``), so backup, restore, wal-push, wal-fetch, verify and cleanup
keep one way of naming keys. wal-push's fast path does not import it: it reads the
namespace's name from :mod:`pgbackup.formats.walpage`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from pgbackup.errors import ObjectExists, PgBackupError
from pgbackup.formats.walpage import ARCHIVE_INFO, GENERATIONS, generation_root

HISTORY = "history"
#: The key prefix a generation's own objects live under (named in formats/walpage, which
#: wal-push's fast path reads without importing this module).
root = generation_root
#: The parts of a target that belong to one generation; everything else is shared.
OWN = ("base/", "wal/", ARCHIVE_INFO)


class GenerationError(PgBackupError):
    """The upgrade step was refused, or a cluster nobody declared reached the archive."""

    exit_code = 2


# --- pure: names and records -------------------------------------------------------------


def history_key(target: str, number: int) -> str:
    return f"{target}/{HISTORY}/{number}.json"


def record(
    number: int,
    system_identifier: str,
    major: int | None,
    recorded_at: str,
    *,
    reason: str,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One history record (``<target>/history/<n>.json``)."""
    rec: dict[str, Any] = {
        "generation": number,
        "system_identifier": str(system_identifier),
        "major": major,
        "recorded_at": recorded_at,
        "reason": reason,
    }
    if previous is not None:
        rec["previous_generation"] = previous["generation"]
        rec["previous_system_identifier"] = previous["system_identifier"]
        rec["previous_major"] = previous.get("major")
    return rec


def record_bytes(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, indent=2, sort_keys=True).encode() + b"\n"


def parse_record(data: bytes, key: str) -> dict[str, Any]:
    try:
        rec = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PgBackupError(f"{key} is damaged (not JSON)") from None
    if (
        not isinstance(rec, dict)
        or not isinstance(rec.get("generation"), int)
        or not rec.get("system_identifier")
    ):
        raise PgBackupError(f"{key} is damaged (no generation or system_identifier)")
    return rec


def of_sysid(history: list[dict[str, Any]], sysid: int | str | None) -> dict[str, Any] | None:
    """The generation holding cluster ``sysid`` (the newest, should one come back)."""
    if sysid is None:
        return None
    found = [g for g in history if str(g["system_identifier"]) == str(sysid)]
    return found[-1] if found else None


def upgrade_command(target: str, config: str | None = None) -> str:
    conf = f"--config {config} " if config else ""
    return f"pgbackup {conf}upgrade --target {target}"


def undeclared(target: str, sysid: int | str, known: list[str]) -> tuple[str, str]:
    """The words for a cluster that reached a target nobody declared (one home: wal-push,
    backup, check)."""
    return (
        f"cluster {sysid} is not a declared generation of target {target!r} "
        f"(its archive holds cluster{'s' if len(known) > 1 else ''} {', '.join(known)})",
        f"after pg_upgrade or a new initdb of this server, run `{upgrade_command(target)}` "
        "once (then take a new full backup); otherwise archive_command points at the "
        "wrong target or --config: each cluster needs its own target",
    )


def plan_upgrade(
    history: list[dict[str, Any]],
    bound_sysid: str | None,
    bound_major: int | None,
    server_sysid: str,
    server_major: int,
    target: str,
    now: str,
) -> list[dict[str, Any]]:
    """The records ``pgbackup upgrade`` writes (generation 1's too, the first time), or
    GenerationError saying why nothing is to be written."""
    if not history:
        if bound_sysid is None:
            raise GenerationError(
                f"target {target!r} holds no archived cluster yet: there is nothing to "
                "upgrade from",
                hint="the first wal-push or backup binds the target to its cluster; run "
                "`pgbackup upgrade` only after the cluster behind it was replaced",
            )
        history = [record(1, bound_sysid, bound_major, now, reason="first cluster")]
        writes = list(history)
    else:
        writes = []
    current = history[-1]
    same = of_sysid(history, server_sysid)
    if same is not None and same is current:
        raise GenerationError(
            f"the server of target {target!r} is cluster {server_sysid}, which generation "
            f"{current['generation']} already holds (recorded {current['recorded_at']}): "
            "nothing to record",
            hint="run it once, after pg_upgrade or a new initdb, against the NEW server "
            "(the target's connection must reach it)",
        )
    if same is not None:
        raise GenerationError(
            f"the server of target {target!r} is cluster {server_sysid}, generation "
            f"{same['generation']} of its history, older than the current generation "
            f"{current['generation']} (cluster {current['system_identifier']}): refused",
            hint="the target's connection reaches an old server; point it at the new one",
        )
    old_major = current.get("major")
    if old_major is not None and server_major < int(old_major):
        raise GenerationError(
            f"the server of target {target!r} runs PostgreSQL {server_major}, older than "
            f"generation {current['generation']}'s {old_major}: a downgrade is not an upgrade",
            hint="check the target's connection: it should reach the upgraded server",
        )
    if old_major is None:
        reason = f"new cluster (PostgreSQL {server_major}; the previous major is unknown)"
    elif server_major != int(old_major):
        reason = f"pg_upgrade {old_major} -> {server_major}"
    else:
        reason = "new cluster (initdb)"
    writes.append(
        record(
            current["generation"] + 1,
            server_sysid,
            server_major,
            now,
            reason=reason,
            previous=current,
        )
    )
    return writes


# --- the repository ----------------------------------------------------------------------


def read_history(storage: Any, target: str) -> list[dict[str, Any]]:
    """Every record of ``target``'s history, oldest first; [] for one generation."""
    keys = [i.key for i in storage.list(f"{target}/{HISTORY}/") if i.key.endswith(".json")]
    records = [parse_record(storage.read_bytes(k), k) for k in keys]
    return sorted(records, key=lambda r: int(r["generation"]))


def generations(storage: Any, target: str) -> list[dict[str, Any]]:
    """The history, or generation 1 alone as the archive binds it (no history yet)."""
    history = read_history(storage, target)
    if history:
        return history
    try:
        info = json.loads(storage.read_bytes(f"{target}/{ARCHIVE_INFO}"))
        sysid = str(info.get("system_identifier"))
    except (PgBackupError, ValueError):
        sysid = None
    return [{"generation": 1, "system_identifier": sysid, "major": None, "implicit": True}]


def write_records(storage: Any, target: str, records: list[dict[str, Any]]) -> None:
    """Each record created once (never rewritten): a concurrent step loses cleanly."""
    for rec in records:
        key = history_key(target, int(rec["generation"]))
        try:
            storage.write_bytes(key, record_bytes(rec), if_absent=True)
        except ObjectExists:
            if rec["generation"] == 1:
                continue  # generation 1 as another step wrote it: the same cluster
            raise GenerationError(
                f"{key} already exists: another `pgbackup upgrade` recorded generation "
                f"{rec['generation']} meanwhile",
                hint="see `pgbackup list` for the target's generations",
            ) from None


DELETED_HINT = (
    "`pgbackup check` names what was deleted (tampering); remove the delete markers with "
    "the maintenance credentials (docs/security.md), then archiving and backups resume"
)


def deleted_at(storage: Any, key: str) -> str | None:
    """When ``key``, which reads as absent, was deleted: the time of its newest delete
    marker in a versioned storage (S3 with versioning, docs/security.md), ISO 8601; None
    when it never existed there (or the storage keeps no versions, or reads a past
    ``--as-of``)."""
    if not getattr(storage, "versioned", False) or getattr(storage, "as_of", None) is not None:
        return None
    markers = [v.written for v in storage.versions(key) if v.key == key and v.deleted]
    return max(markers).strftime("%Y-%m-%dT%H:%M:%SZ") if markers else None


def refuse_deleted(storage: Any, target: str, key: str, what: str) -> None:
    """Refuse (GenerationError) to write where ``key`` of ``target``'s archive reads as
    absent because it was deleted (a delete marker), not because it never existed.

    A holder of the host's credentials can add delete markers on a locked bucket: to the
    archive's binding (``archive.json``) and the history, a new cluster's WAL or backup
    would otherwise land in generation 1's namespace, binding it again to the wrong
    cluster. Under object lock nothing is lost; nothing is written until the markers are
    removed either."""
    when = deleted_at(storage, key)
    if when is None:
        return
    raise GenerationError(
        f"{what} refused: {key} of target {target!r} was deleted at {when} (a delete "
        "marker): its archive is not bound again",
        hint=DELETED_HINT,
    )


def refuse_deleted_history(storage: Any, target: str, what: str) -> None:
    """The same for the history: records that read as absent because they were deleted."""
    if not getattr(storage, "versioned", False) or getattr(storage, "as_of", None) is not None:
        return
    by_key: dict[str, list[Any]] = {}
    for v in storage.versions(f"{target}/{HISTORY}/"):
        by_key.setdefault(v.key, []).append(v)
    for key, found in sorted(by_key.items()):
        newest = max(found, key=lambda v: (v.written, v.deleted))
        if newest.deleted:
            raise GenerationError(
                f"{what} refused: {key} of target {target!r} was deleted at "
                f"{newest.written.strftime('%Y-%m-%dT%H:%M:%SZ')} (a delete marker): the "
                "target's generations cannot be told apart without it",
                hint=DELETED_HINT,
            )


def for_cluster(storage: Any, target: str, sysid: int | str | None, *, strict: bool = True) -> Any:
    """``storage`` as the generation of ``target`` holding cluster ``sysid`` sees it;
    ``storage`` itself while there is no history. A cluster the history does not declare
    is refused (``strict``: wal-push, backup: GenerationError), or read as the newest
    generation (wal-fetch, whose working directory may not tell)."""
    history = read_history(storage, target)
    if not history:
        return storage
    gen = of_sysid(history, sysid)
    if gen is None:
        if strict:
            message, hint = undeclared(
                target, sysid or "?", [str(g["system_identifier"]) for g in history]
            )
            raise GenerationError(message, hint=hint)
        gen = history[-1]
    return view(storage, target, int(gen["generation"]))


def backup_storage(storage: Any, target: str, facts: Any) -> Any:
    """Where a backup of the server ``facts`` describes goes: its generation's view. A
    cluster the target's archive is not bound to, nor its history declares, is refused
    before anything is written."""
    sysid = str(facts.system_identifier)
    if not read_history(storage, target):
        try:
            info = json.loads(storage.read_bytes(f"{target}/{ARCHIVE_INFO}"))
        except (PgBackupError, ValueError):
            # not bound yet: the first push binds it (unless the binding was deleted)
            refuse_deleted(storage, target, f"{target}/{ARCHIVE_INFO}", "backup")
            refuse_deleted_history(storage, target, "backup")
            return storage
        bound = str(info.get("system_identifier"))
        if bound != sysid:
            refuse_deleted_history(storage, target, "backup")
            message, hint = undeclared(target, sysid, [bound])
            raise GenerationError(f"backup refused: {message}", hint=hint)
        return storage
    try:
        return for_cluster(storage, target, sysid)
    except GenerationError as exc:
        raise GenerationError(f"backup refused: {exc.message}", hint=exc.hint) from None


def generation_views(storage: Any, target: str) -> list[tuple[dict[str, Any], Any]]:
    """Each generation of ``target`` with the storage it sees, oldest first."""
    if number_of(storage) != 1:
        return [({"generation": number_of(storage)}, storage)]
    return [(g, view(storage, target, int(g["generation"]))) for g in generations(storage, target)]


def restore_storage(
    storage: Any, target: str, backup: str | None, kind: str | None, value: Any
) -> Any:
    """The generation a restore reads: the one holding ``--backup ID``; for a time
    target, the newest generation with a complete backup ending before it; otherwise the
    newest. Without a history: ``storage`` itself."""
    from pgbackup.engine.repository import Repository

    views = generation_views(storage, target)
    if len(views) == 1:
        return views[0][1]
    if backup not in (None, "", "latest"):
        for _gen, seen in views:
            if any(True for _ in seen.list(f"{target}/base/{backup}/")):
                return seen
        return views[-1][1]
    if kind == "time":
        for _gen, seen in reversed(views):
            done = Repository(seen).complete_backups(target)
            if any(b.stop_time and b.stop_time <= value for b in done):
                return seen
        return views[0][1]  # before every generation: the oldest says where it starts
    return views[-1][1]


def copy_history(source: Any, dest: Any, target: str) -> None:
    """The target's history records at an upload destination too (each created once), so
    that a restore ``--from`` it finds every generation."""
    for info in source.list(f"{target}/{HISTORY}/"):
        if dest.stat(info.key) is None:
            with contextlib.suppress(ObjectExists):
                dest.write_bytes(info.key, source.read_bytes(info.key), if_absent=True)


def mapped(key: str, target: str, number: int) -> str:
    """``<target>/wal/X`` -> ``<target>/gen/<n>/wal/X`` (idempotent; shared keys unchanged)."""
    head = f"{target}/"
    if number == 1 or not key.startswith(head):
        return key
    rest = key[len(head) :]
    if rest.startswith(OWN[:2]) or rest == ARCHIVE_INFO:
        return f"{head}{GENERATIONS}/{number}/{rest}"
    return key


def unmapped(key: str, target: str, number: int) -> str | None:
    """A stored key as the generation's view names it; None when the key belongs to
    another generation."""
    head = f"{target}/"
    if number == 1 or not key.startswith(head):
        return key
    own = f"{head}{GENERATIONS}/{number}/"
    if key.startswith(own):
        return head + key[len(own) :]
    rest = key[len(head) :]
    if rest.startswith((f"{GENERATIONS}/", *OWN[:2])) or rest == ARCHIVE_INFO:
        return None  # another generation's
    return key


class _GenerationView:
    """Mixed into a copy of a storage: its keys read as generation 1's do."""

    __slots__ = ()
    _gen_target: str
    _gen_number: int

    def _map(self, key: str) -> str:
        return mapped(key, self._gen_target, self._gen_number)

    def writer(self, key: str, *, if_absent: bool = False) -> Any:
        return super().writer(self._map(key), if_absent=if_absent)  # type: ignore[misc]

    def open_read(self, key: str) -> Any:
        return super().open_read(self._map(key))  # type: ignore[misc]

    def stat(self, key: str) -> Any:
        info = super().stat(self._map(key))  # type: ignore[misc]
        return None if info is None else info._replace(key=key)

    def delete(self, key: str) -> None:
        super().delete(self._map(key))  # type: ignore[misc]

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[Any]:
        after = None if start_after is None else self._map(start_after)
        for info in super().list(self._map(prefix), start_after=after):  # type: ignore[misc]
            key = unmapped(info.key, self._gen_target, self._gen_number)
            if key is not None and key.startswith(prefix):
                yield info._replace(key=key)

    # A versioned storage's versions and locks (S3), named as the listing names keys: so
    # that expire and expire_prefix, which list versions then delete them, see this
    # generation's objects through a view too.

    def versions(self, prefix: str = "") -> Iterator[Any]:
        for v in super().versions(self._map(prefix)):  # type: ignore[misc]
            key = unmapped(v.key, self._gen_target, self._gen_number)
            if key is not None and key.startswith(prefix):
                yield v._replace(key=key)

    def retention_of(self, key: str, version_id: str) -> Any:
        return super().retention_of(self._map(key), version_id)  # type: ignore[misc]

    def extend_retention(self, key: str, version_id: str, until: Any) -> None:
        super().extend_retention(self._map(key), version_id, until)  # type: ignore[misc]

    def delete_version(self, key: str, version_id: str) -> None:
        super().delete_version(self._map(key), version_id)  # type: ignore[misc]

    def path_of(self, key: str) -> Any:
        return super().path_of(self._map(key))  # type: ignore[misc]

    def make_durable(self, key: str) -> None:
        super().make_durable(self._map(key))  # type: ignore[misc]

    def describe(self) -> str:
        inner = super().describe()  # type: ignore[misc]
        return f"{inner}, generation {self._gen_number} of {self._gen_target!r}"


_VIEW_CLASSES: dict[type, type] = {}


def view(storage: Any, target: str, number: int) -> Any:
    """``storage`` as generation ``number`` of ``target`` sees it (itself for 1)."""
    if number == 1:
        return storage
    base = type(storage)
    if issubclass(base, _GenerationView):
        raise PgBackupError("a generation's view cannot be viewed again")
    cls = _VIEW_CLASSES.get(base)
    if cls is None:
        cls = type(
            f"Generation{base.__name__}",
            (_GenerationView, base),
            {"__slots__": ("_gen_target", "_gen_number")},
        )
        _VIEW_CLASSES[base] = cls
    out: Any = object.__new__(cls)
    for klass in base.__mro__:  # a copy of the storage's state, slots and __dict__ alike
        slots = getattr(klass, "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(storage, slot):
                object.__setattr__(out, slot, getattr(storage, slot))
    if hasattr(storage, "__dict__"):
        out.__dict__.update(storage.__dict__)
    out._gen_target, out._gen_number = target, number
    return out


def number_of(storage: Any) -> int:
    """Which generation a storage shows (1 for a plain one)."""
    return int(getattr(storage, "_gen_number", 1))
