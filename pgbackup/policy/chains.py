"""Chains of incremental backups (PostgreSQL 17+): pure checks over metadata, no I/O.

An incremental backup's ``metadata.json`` names its ``parent`` and its ``chain`` (the
backups it is built on, full backup first). It restores only when every member is present
and complete, and the links agree: the parent's own chain plus the parent is its chain,
every member comes from the same cluster, and each member starts after its parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pgbackup.formats.lsn import parse_lsn


def link_problems(
    backup_id: str, metadata: dict[str, Any], backups: dict[str, tuple[bool, dict[str, Any]]]
) -> list[str]:
    """Why the chain of ``backup_id`` cannot be restored (empty when it can, or when it is
    a full backup). ``backups``: every backup of the target, id -> (complete, metadata)."""
    chain = list(metadata.get("chain") or [])
    parent = metadata.get("parent")
    if not parent:
        return []
    problems = []
    if not chain or chain[-1] != parent:
        problems.append(f"its chain {chain} does not end at its parent {parent}")
    for member in chain:
        if member not in backups:
            problems.append(f"chain member {member} is missing from the repository")
        elif not backups[member][0]:
            problems.append(f"chain member {member} is not complete")
    if problems:
        return problems
    parent_meta = backups[parent][1]
    if list(parent_meta.get("chain") or []) + [parent] != chain:
        problems.append(
            f"its chain {chain} disagrees with parent {parent}'s ({parent_meta.get('chain')})"
        )
    sysid = metadata.get("system_identifier")
    for member in chain:
        other = backups[member][1].get("system_identifier")
        if other != sysid:
            problems.append(f"chain member {member} is of another cluster ({other}, not {sysid})")
    starts = [parse_lsn(backups[m][1]["start_lsn"]) for m in chain]
    starts.append(parse_lsn(metadata["start_lsn"]))
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        problems.append("its chain members do not start one after another (LSN order)")
    return problems


def broken_chains(infos: Sequence[Any]) -> dict[str, list[str]]:
    """Every complete incremental whose chain is broken, with why (``infos``: BackupInfo)."""
    backups = {b.backup_id: (bool(b.complete), dict(b.metadata)) for b in infos}
    out = {}
    for b in infos:
        if b.complete:
            found = link_problems(b.backup_id, b.metadata, backups)
            if found:
                out[b.backup_id] = found
    return out
