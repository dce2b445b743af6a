"""How the engine's answers look on a terminal: rich tables and lines from plain data.

The engine returns data and logs; it never prints. The tasks render with these.
"""

from __future__ import annotations

from typing import Any

from pgbackup.ui import human_bytes


def render_inventory(console: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    for target, info in data.items():
        table = Table(title=f"target {target}", title_justify="left")
        gens = info.get("generations")
        for col in (
            *(("gen", "major", "system identifier") if gens else ()),
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
                *(
                    (str(r.get("generation")), str(r.get("major")), str(r.get("system_identifier")))
                    if gens
                    else ()
                ),
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
                ("newest generation's " if gens else "")
                + f"recoverable window: {w['earliest_time']} (LSN {w['earliest_lsn']}) .. "
                f"{w['latest_time']} (LSN {w['latest_lsn']}, timeline {w.get('timeline')})"
            )
            for gap in w.get("wal_gaps", [])[:10]:
                console.print(f"  WAL gap: {gap}")
            if w.get("time_not_checked"):
                console.print(f"  not checked: {w['time_not_checked']}")
        else:
            console.print("recoverable window: none (no complete backup)")
        for g in gens or []:
            gw = g["window"]
            if g.get("gap_before"):
                gap = g["gap_before"]
                console.print(
                    f"  gap: nothing restorable from {gap['from_time'] or '-'} to "
                    f"{gap['to_time'] or 'a first backup of generation ' + str(g['generation'])}"
                )
            console.print(
                f"  generation {g['generation']} (cluster {g['system_identifier']}, PostgreSQL "
                f"{g['major']}): "
                + (
                    f"{gw['earliest_time']} .. {gw['latest_time']} (LSN {gw['latest_lsn']})"
                    if gw["earliest_time"]
                    else "no complete backup yet"
                )
            )
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
