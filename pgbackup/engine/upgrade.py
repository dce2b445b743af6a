"""``pgbackup upgrade``: the step that records a target's new cluster after pg_upgrade or
a new initdb (docs/upgrades.md). The history's format and rules are
:mod:`pgbackup.engine.generations`'."""

from __future__ import annotations

import json
from typing import Any

from pgbackup.engine.backup import target_conninfo
from pgbackup.engine.generations import (
    GenerationError,
    history_key,
    plan_upgrade,
    read_history,
    refuse_deleted_history,
    root,
    write_records,
)
from pgbackup.engine.repository import Repository, iso, utcnow
from pgbackup.errors import PgBackupError
from pgbackup.formats.walpage import ARCHIVE_INFO
from pgbackup.postgres.connection import describe, server_facts
from pgbackup.storage import open_storage


def archived_major(policy: Any, storage: Any, target: str) -> int | None:
    """The major of the newest archived segment's cluster (its page magic), for a target
    with no backup to say it; None when none can be read."""
    from pgbackup.engine.wal import policy_identities
    from pgbackup.formats.codecs import decode_bytes, parse_suffix
    from pgbackup.formats.lsn import is_segment
    from pgbackup.formats.walpage import wal_major

    keys = {}
    for info in storage.list(f"{target}/wal/"):
        base, spec = parse_suffix(info.key.rsplit("/", 1)[-1])
        if is_segment(base):
            keys[base] = (info.key, spec)
    if not keys:
        return None
    key, spec = keys[max(keys)]
    try:
        identities = policy_identities(policy) if spec.encrypted else None
        return wal_major(
            decode_bytes(spec, storage.read_bytes(key), identities=identities, what=key)
        )
    except PgBackupError:
        return None


def run_upgrade(policy: Any, target: Any) -> dict[str, Any]:
    """``pgbackup upgrade --target NAME``: record that the target's server is now a new
    cluster (pg_upgrade, or a new initdb). The server is asked who it is; the history
    gains its generation (generation 1's record too, the first time), each record created
    once. Refused, with nothing written: a target never archived, a server the history
    already holds (run twice, or the old server still answering), a standby, an older
    major."""
    storage = open_storage(policy.repository)
    name = target.name
    history = read_history(storage, name)
    bound_sysid = bound_major = None
    if not history:
        # records deleted (delete markers) are not written again over them
        refuse_deleted_history(storage, name, "the upgrade step")
        try:
            info = json.loads(storage.read_bytes(f"{name}/{ARCHIVE_INFO}"))
            bound_sysid = str(info.get("system_identifier"))
        except (PgBackupError, ValueError):
            bound_sysid = None
        repo = Repository(storage)
        done = repo.complete_backups(name)
        if bound_sysid is None and done:
            bound_sysid = str(done[-1].metadata.get("system_identifier"))
        majors = [
            int(b.metadata["server_version_num"]) // 10000
            for b in done
            if str(b.metadata.get("system_identifier")) == bound_sysid
            and b.metadata.get("server_version_num")
        ]
        bound_major = majors[-1] if majors else archived_major(policy, storage, name)
    conninfo = target_conninfo(policy, target)
    facts = server_facts(conninfo, target.pg_bin_dir)
    if facts.in_recovery:
        raise GenerationError(
            f"{describe(conninfo)} is in recovery (a standby): the upgrade step records the "
            f"new primary of target {name!r}",
            hint="run it against the upgraded primary, once it has started",
        )
    writes = plan_upgrade(
        history,
        bound_sysid,
        bound_major,
        str(facts.system_identifier),
        facts.major,
        name,
        iso(utcnow()),
    )
    write_records(storage, name, writes)
    new = writes[-1]
    Repository(storage).record_run(name, "upgrade", {"status": "ok", **new})
    return {
        "target": name,
        "generation": new["generation"],
        "system_identifier": new["system_identifier"],
        "major": new["major"],
        "reason": new["reason"],
        "previous_generation": new.get("previous_generation"),
        "previous_system_identifier": new.get("previous_system_identifier"),
        "root": root(name, int(new["generation"])),
        "written": [history_key(name, int(r["generation"])) for r in writes],
    }
