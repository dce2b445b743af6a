"""What the repository holds, per target: backups and the recoverable window, as data
(``list`` renders it: :func:`pgbackup.interface.render.render_inventory`)."""

from __future__ import annotations

from typing import Any

from pgbackup.engine.repository import Repository


def recoverable_window(
    repo: Repository, policy: Any, target: str, timeline: int | None = None
) -> dict[str, Any]:
    """Earliest and latest point a restore can reach.

    Earliest: the oldest complete backup's end (its consistency point). Latest: the end
    of the unbroken run of archived WAL after the newest backup, or that backup's end
    when no WAL follows it.
    """
    from pgbackup.engine.walchain import window_end

    backups = repo.complete_backups(target)
    if not backups:
        return {
            "earliest_time": None,
            "earliest_lsn": None,
            "latest_time": None,
            "latest_lsn": None,
        }
    first, last = backups[0].metadata, backups[-1].metadata
    end = window_end(policy, repo, target, backups, timeline)
    window = {
        "earliest_time": first["stop_time"],
        "earliest_lsn": first["stop_lsn"],
        "latest_time": end.get("time") or last["stop_time"],
        "latest_lsn": end.get("lsn") or last["stop_lsn"],
        "timeline": end.get("timeline", last["timeline"]),
        "wal_gaps": end.get("gaps", []),
    }
    if end.get("not_checked"):
        # pg_waldump missing: the end's LSN is known, its time is not (never a silent guess).
        window["time_not_checked"] = (
            f"the time of the window's end was not read from {end.get('last_segment')}: "
            f"{end['not_checked']}"
        )
    if window["wal_gaps"]:
        # The window ends at the hole, not at the newest archived WAL: say why.
        window["cut_reason"] = (
            f"WAL segment {window['wal_gaps'][0]} is missing while later WAL is archived: "
            f"nothing after {window['latest_time']} (LSN {window['latest_lsn']}) can be restored"
        )
    return window


def inventory(policy: Any, repo: Repository, targets: list[Any]) -> dict[str, Any]:
    """Per target: every backup of every generation (engine/generations), the recoverable
    window of the newest generation (``window``), and, once a target has a history, each
    generation with its own window and the gap before it (``generations``)."""
    from pgbackup.engine.generations import generation_views

    out: dict[str, Any] = {}
    for t in targets:
        rows = []
        views = generation_views(repo.storage, t.name)
        gens: list[dict[str, Any]] = []
        for gen, storage in views:
            seen = Repository(storage)
            number = int(gen["generation"])
            for b in seen.backups(t.name):
                rows.append(backup_row(b, number))
            if len(views) > 1:
                gens.append(
                    {
                        "generation": number,
                        "system_identifier": gen.get("system_identifier"),
                        "major": gen.get("major"),
                        "reason": gen.get("reason"),
                        "recorded_at": gen.get("recorded_at"),
                        "window": recoverable_window(seen, policy, t.name),
                    }
                )
        for before, after in zip(gens, gens[1:], strict=False):
            after["gap_before"] = {
                "from_time": before["window"]["latest_time"],
                "to_time": after["window"]["earliest_time"],
            }
        out[t.name] = {
            "backups": rows,
            "window": gens[-1]["window"]
            if gens
            else recoverable_window(Repository(views[-1][1]), policy, t.name),
        }
        if gens:
            out[t.name]["generations"] = gens
        if policy.uploads:  # what a lost host leaves: the window at each destination
            out[t.name]["uploads"] = destination_windows(policy, repo, t.name)
    return out


def backup_row(b: Any, generation: int) -> dict[str, Any]:
    """One backup as ``list`` shows it."""
    m = b.metadata
    version_num = m.get("server_version_num")
    return {
        "backup_id": b.backup_id,
        "status": b.status,
        "problem": b.problem,
        "generation": m.get("generation", generation),
        "system_identifier": m.get("system_identifier"),
        "major": int(version_num) // 10000 if version_num else None,
        "start_time": m.get("start_time"),
        "stop_time": m.get("stop_time"),
        "start_lsn": m.get("start_lsn"),
        "stop_lsn": m.get("stop_lsn"),
        "timeline": m.get("timeline"),
        "raw_bytes": m.get("raw_bytes"),
        "stored_bytes": m.get("stored_bytes", b.stored_bytes),
        "duration_seconds": m.get("duration_seconds"),
        "compression": (m.get("compression") or {}).get("method"),
        "encrypted": m.get("encrypted"),
        "source": m.get("source", "primary"),
        "tablespaces": [t.get("name") for t in m.get("tablespaces") or []],
        "backup_type": m.get("backup_type", "full") if m else None,
        "parent": m.get("parent"),
        "chain": list(m.get("chain") or []),
        "phases": m.get("phases"),
    }


def destination_windows(policy: Any, source: Repository, target: str) -> dict[str, dict[str, Any]]:
    """``list``: per upload destination, the window a restore ``--from`` it reaches and
    its lag behind the repository (what a lost host loses restoring from there), or
    ``error`` when it cannot be read within PROBE_TIMEOUT."""
    from pgbackup.engine.shipper import PROBE_TIMEOUT, destination_lag, probe_within
    from pgbackup.engine.uploads import upload_storage

    out: dict[str, dict[str, Any]] = {}
    for spec in policy.uploads or []:
        name = str(spec.get("name"))

        def read(name: str = name) -> dict[str, Any]:
            dest = Repository(upload_storage(policy, name))
            window = recoverable_window(dest, policy, target)
            window["lag_seconds"] = destination_lag(policy, source, target, name)["lag_seconds"]
            return window

        got = probe_within(read, PROBE_TIMEOUT)
        out[name] = got["value"] if "value" in got else {"error": got["error"]}
    return out
