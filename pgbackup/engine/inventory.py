"""What the repository holds, per target: backups and the recoverable window."""

from __future__ import annotations

from typing import Any

from pgbackup.engine.repository import Repository
from pgbackup.ui import human_bytes


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
    if window["wal_gaps"]:
        # The window ends at the hole, not at the newest archived WAL: say why.
        window["cut_reason"] = (
            f"WAL segment {window['wal_gaps'][0]} is missing while later WAL is archived: "
            f"nothing after {window['latest_time']} (LSN {window['latest_lsn']}) can be restored"
        )
    return window


def inventory(policy: Any, repo: Repository, targets: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in targets:
        rows = []
        for b in repo.backups(t.name):
            m = b.metadata
            rows.append(
                {
                    "backup_id": b.backup_id,
                    "status": b.status,
                    "problem": b.problem,
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
                }
            )
        out[t.name] = {"backups": rows, "window": recoverable_window(repo, policy, t.name)}
        if policy.uploads:  # what a lost host leaves: the window at each destination
            out[t.name]["uploads"] = destination_windows(policy, repo, t.name)
    return out


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


def render_inventory(console: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    for target, info in data.items():
        table = Table(title=f"target {target}", title_justify="left")
        for col in (
            "backup",
            "type",
            "status",
            "stop time (UTC)",
            "LSN range",
            "TL",
            "size",
            "stored",
            "secs",
        ):
            table.add_column(col)
        for r in info["backups"]:
            table.add_row(
                r["backup_id"],
                (
                    f"incr. on {r['parent']} (chain of {len(r['chain']) + 1})"
                    if r.get("parent")
                    else (r.get("backup_type") or "-")
                ),
                r["status"]
                + (" (from a standby)" if r.get("source") == "standby" else "")
                + (f": {r['problem']}" if r["problem"] else ""),
                (r["stop_time"] or "-").replace("T", " ").replace("Z", ""),
                f"{r['start_lsn']}..{r['stop_lsn']}" if r["start_lsn"] else "-",
                str(r["timeline"] or "-"),
                human_bytes(r["raw_bytes"]) if r["raw_bytes"] else "-",
                human_bytes(r["stored_bytes"]) if r["stored_bytes"] else "-",
                f"{r['duration_seconds']:.1f}" if r["duration_seconds"] else "-",
            )
        console.print(table)
        w = info["window"]
        if w["earliest_time"]:
            console.print(
                f"recoverable window: {w['earliest_time']} (LSN {w['earliest_lsn']}) .. "
                f"{w['latest_time']} (LSN {w['latest_lsn']}, timeline {w.get('timeline')})"
            )
            for gap in w.get("wal_gaps", [])[:10]:
                console.print(f"  WAL gap: {gap}")
        else:
            console.print("recoverable window: none (no complete backup)")
        for dest, uw in (info.get("uploads") or {}).items():
            if uw.get("error"):
                console.print(f"  at {dest}: unreachable ({uw['error']})")
            elif uw.get("earliest_time"):
                console.print(
                    f"  at {dest}: {uw['earliest_time']} .. {uw['latest_time']} "
                    f"(LSN {uw['latest_lsn']}; {uw['lag_seconds']:.0f}s behind the repository)"
                )
            else:
                console.print(f"  at {dest}: none (no complete backup copy there)")
