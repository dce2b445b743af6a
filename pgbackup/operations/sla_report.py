"""The SLA report: evidence gathered from the repository, judged, and rendered.

``build_report`` gathers the evidence (run records of backups, verifications and checks,
drill results, archived WAL times, the recoverable window, the recoverability timeline of
:mod:`pgbackup.operations.recoverability`) and judges it with the pure sections of
:mod:`pgbackup.operations.sla`; ``render_*`` turn a report into Markdown, JSON or a
self-contained HTML page (:mod:`pgbackup.operations.report`: Jinja2 templates, matplotlib
charts inlined as SVG, no network).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pgbackup.operations.sla import (
    AREA_TITLES,
    AT_RISK,
    BREACHED,
    COMPLIANT,
    archive_section,
    chain_increments,
    fmt_seconds,
    frequency_section,
    full_backup_bytes,
    measure,
    outcomes_section,
    overall,
    parse_timestamp,
    projection_lines,
    retention_section,
    rpo_section,
    rto_projection,
    rto_section,
    wal_since_backup,
)

# --------------------------------------------------------------------------- evidence


def build_report(
    policy: Any,
    repo: Any,
    target: Any,
    since: int,
    now: datetime | None = None,
    *,
    timeline: bool = True,
) -> dict[str, Any]:
    """The report of one target over the last ``since`` seconds.

    ``timeline``: also draw up the recoverability timeline (which reads every upload
    destination); the exporter reads those on their own and leaves it out."""
    from pgbackup.engine.generations import generation_views
    from pgbackup.engine.inventory import recoverable_window
    from pgbackup.engine.repository import Repository

    now = now or datetime.now(UTC)
    start = now - timedelta(seconds=since)
    # A target that held several clusters (engine/generations): the newest generation's
    # backups and WAL are judged; every generation's window is shown, and retention counts
    # from the oldest point any of them can restore.
    views = generation_views(repo.storage, target.name)
    base_repo, repo = repo, Repository(views[-1][1])
    generations = [
        {
            "generation": gen["generation"],
            "major": gen.get("major"),
            "system_identifier": gen.get("system_identifier"),
            "window": recoverable_window(Repository(seen), policy, target.name),
        }
        for gen, seen in (views if len(views) > 1 else [])
    ]
    ev = Evidence(repo, target.name, start)
    complete = ev.complete
    times = ev.backup_times()
    first_seen = ev.first_seen(times)
    period_start = max(start, first_seen) if first_seen else start
    database_bytes = next(
        (float(c["database_bytes"]) for c in reversed(ev.checks) if c.get("database_bytes")),
        full_backup_bytes(complete),
    )
    window = recoverable_window(repo, policy, target.name) if complete else {}
    sections = {
        "rpo": rpo_section(policy.sla.rpo, ev.checks, ev.wal_times()),
        "rto": rto_section(
            policy.sla.rto,
            ev.drills,
            database_bytes,
            chain_increments(complete),
            ev.projection(policy.sla.rto),
        ),
        "backups": frequency_section(policy.schedules.get("backup"), times, period_start, now),
        "retention": retention_section(
            policy.retention.days,
            parse_timestamp(
                next(
                    (
                        g["window"]["earliest_time"]
                        for g in generations
                        if g["window"]["earliest_time"]
                    ),
                    window.get("earliest_time"),
                )
            ),
            first_seen,
            len(complete),
            now,
        ),
        "verification": outcomes_section(ev.verifies, ev.drills),
        "archive": archive_section(window, ev.checks),
    }
    verdict, reasons = overall(sections)
    recoverability = None
    if timeline:
        from pgbackup.operations.recoverability import build_timeline

        recoverability = build_timeline(
            policy, base_repo, target.name, start, now, window=window or None, drills=ev.drills
        )
    return {
        "target": target.name,
        "generated_at": now.isoformat(),
        "period_start": start.isoformat(),
        "period_seconds": since,
        "verdict": verdict,
        "reasons": reasons,
        "sections": sections,
        "window": window,
        **({"generations": generations} if generations else {}),
        "timeline": recoverability,
        "series": ev.series(),
    }


class Evidence:
    """What the repository holds of one target since ``start``: the recorded runs (check,
    verify, backup), the drills, the complete backups and the archived WAL."""

    def __init__(self, repo: Any, target: str, start: datetime) -> None:
        from pgbackup.operations.monitor import drill_records

        self.repo = repo
        self.target = target
        self.start = start
        self.all_runs = list(repo.runs(target))
        runs = self.all_runs
        self.checks = [
            r
            for r in runs
            if r.get("kind") == "check" and self.in_period(r, "checked_at", "recorded_at")
        ]
        self.verifies = [
            r for r in runs if r.get("kind") == "verify" and self.in_period(r, "recorded_at")
        ]
        self.backup_runs = [
            r
            for r in runs
            if r.get("kind") == "backup" and self.in_period(r, "started_at", "recorded_at")
        ]
        self.drills = [d for d in drill_records(repo, target) if self.in_period(d, "started_at")]
        self.complete = repo.complete_backups(target)
        self._wal: list[Any] | None = None

    def in_period(self, rec: dict[str, Any], *keys: str) -> bool:
        """The record's first time of ``keys`` is in the period (no time: not in it)."""
        for k in keys:
            t = parse_timestamp(rec.get(k))
            if t is not None:
                return t >= self.start
        return False

    def wal_objects(self) -> list[Any]:
        """The archived WAL files (listed once: several measures read them)."""
        if self._wal is None:
            self._wal = list(self.repo.storage.list(f"{self.target}/wal/"))
        return self._wal

    def wal_times(self) -> list[datetime]:
        """When each WAL segment archived in the period arrived."""
        from pgbackup.engine.wal import is_wal_name

        out = []
        for obj in self.wal_objects():
            name = obj.key.rsplit("/", 1)[-1][:24]
            if is_wal_name(name) and obj.mtime >= self.start.timestamp():
                out.append(datetime.fromtimestamp(obj.mtime, UTC))
        return out

    def projection(self, rto: int | None) -> dict[str, Any]:
        """The RTO projection (sla.rto_projection): the newest backup's size (its chain's),
        the WAL archived since it, the drills' latest measured rates."""
        complete = self.complete
        newest = complete[-1].metadata if complete else {}
        wal_bytes, segments = wal_since_backup(
            newest.get("stop_lsn"),
            (obj.key.rsplit("/", 1)[-1] for obj in self.wal_objects()) if newest else (),
            int(newest.get("wal_segment_size") or 16 * 1024 * 1024),
        )
        return rto_projection(
            rto,
            self.drills,
            full_backup_bytes(complete),
            chain_increments(complete),
            wal_bytes,
            segments,
        )

    def backup_times(self) -> list[datetime]:
        """When each backup started: the complete ones, and the runs that succeeded."""
        times = [parse_timestamp(b.metadata.get("start_time")) for b in self.complete]
        times += [
            parse_timestamp(r.get("started_at"))
            for r in self.backup_runs
            if r.get("status") == "ok"
        ]
        return sorted({t for t in times if t is not None})

    def first_seen(self, times: list[datetime]) -> datetime | None:
        """The first time pgbackup recorded anything of the target."""
        firsts = [
            t
            for t in [*(parse_timestamp(r.get("recorded_at")) for r in self.all_runs), *times]
            if t is not None
        ]
        return min(firsts) if firsts else None

    def series(self) -> dict[str, list[dict[str, Any]]]:
        """The backups and drills of the period, as the charts draw them."""
        return {
            "backups": [
                {
                    "backup_id": b.backup_id,
                    "start_time": b.metadata.get("start_time"),
                    "duration_seconds": b.metadata.get("duration_seconds"),
                    "stored_bytes": b.metadata.get("stored_bytes"),
                    "raw_bytes": b.metadata.get("raw_bytes"),
                }
                for b in self.complete
                if self.in_period(b.metadata, "start_time")
            ],
            "drills": [
                {
                    "started_at": d.get("started_at"),
                    "rto_seconds": d.get("rto_seconds"),
                    "status": d.get("status"),
                }
                for d in self.drills
            ],
        }


def build_reports(policy: Any, repo: Any, targets: list[Any], since: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {t.name: build_report(policy, repo, t, since, now) for t in targets}


# --------------------------------------------------------------------------- rendering


def render_markdown(reports: dict[str, Any]) -> str:
    lines = ["# pgbackup SLA compliance report", ""]
    for name, r in reports.items():
        lines += [
            f"## Target `{name}`: **{r['verdict']}**",
            "",
            f"Period: {r['period_start']} to {r['generated_at']}",
            "",
        ]
        for reason in r["reasons"]:
            lines.append(f"- {reason}")
        if r["reasons"]:
            lines.append("")
        lines += ["| Area | Verdict | Measured | Reasons |", "|---|---|---|---|"]
        for key, s in r["sections"].items():
            reasons = "; ".join(s["reasons"]).replace("|", "\\|")
            lines.append(f"| {AREA_TITLES[key]} | {s['verdict']} | {measure(key, s)} | {reasons} |")
        projection = r["sections"]["rto"].get("projection")
        if projection:
            lines += ["", *(f"- {line}" for line in projection_lines(projection))]
        gens = r.get("generations") or []
        if gens:
            lines += [
                "",
                "| Generation | PostgreSQL | Cluster | Recoverable from | to |",
                "|---|---|---|---|---|",
            ]
            for g in gens:
                w = g["window"]
                lines.append(
                    f"| {g['generation']} | {g['major']} | {g['system_identifier']} | "
                    f"{w.get('earliest_time') or '-'} | {w.get('latest_time') or '-'} |"
                )
            for before, after in zip(gens, gens[1:], strict=False):
                lines.append(
                    f"\nGap before generation {after['generation']}: nothing restorable from "
                    f"{before['window'].get('latest_time') or '-'} to "
                    f"{after['window'].get('earliest_time') or 'its first backup'}"
                )
        missed = r["sections"]["backups"]["missed_runs"]
        if missed:
            lines += ["", "Missed backup runs: " + ", ".join(missed[:50])]
        drills = r["sections"]["verification"]["drills"]
        if drills:
            lines += ["", "| Drill | Status | Backup | RTO | Error |", "|---|---|---|---|---|"]
            for d in drills:
                lines.append(
                    f"| {d['started_at']} | {d['status']} | {d['backup_id']} | {fmt_seconds(d['rto_seconds'])} | {d['error'] or ''} |"
                )
        lines.append("")
    return "\n".join(lines)


def render_json(reports: dict[str, Any]) -> str:
    return json.dumps(reports, indent=2, sort_keys=True, default=str)


def render_html(reports: dict[str, Any]) -> str:
    """One self-contained HTML page (Jinja2 templates, matplotlib charts inlined as SVG)."""
    from pgbackup.operations.report.html import render_html as render_page

    return render_page(reports)


def render(reports: dict[str, Any], fmt: str) -> str:
    if fmt == "md":
        return render_markdown(reports)
    if fmt == "json":
        return render_json(reports)
    if fmt == "html":
        return render_html(reports)
    from pgbackup.errors import UsageError

    raise UsageError(f"--format {fmt!r}: use md, json or html")


def render_sla_for_demo(policy: Any, console: Any, *, html: Any = None) -> None:
    """The last step of ``invoke demo``: the sandbox's SLA verdicts, in the terminal, and
    the HTML report (with its recoverability timeline) in the file ``html``."""
    from rich.table import Table

    from pgbackup.engine.repository import Repository
    from pgbackup.storage import open_storage

    repo = Repository(open_storage(policy.repository))
    reports = build_reports(policy, repo, list(policy.targets.values()), 30 * 86400)
    for name, r in reports.items():
        table = Table(title=f"SLA of {name}: {r['verdict']}", title_justify="left")
        for col in ("area", "verdict", "measured"):
            table.add_column(col)
        for key, s in r["sections"].items():
            style = {COMPLIANT: "green", AT_RISK: "yellow", BREACHED: "red"}[s["verdict"]]
            table.add_row(AREA_TITLES[key], f"[{style}]{s['verdict']}[/]", measure(key, s))
        console.print(table)
        for reason in r["reasons"]:
            console.print(f"  - {reason}")
    if html is not None:
        html.write_text(render_html(reports))
        console.print(f"   the HTML report, with the recoverability timeline: {html}")
