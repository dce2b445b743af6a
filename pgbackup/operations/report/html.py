"""Render SLA reports (``pgbackup.operations.sla_report.build_reports``) as one self-contained HTML page."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pgbackup.operations.report import charts

_CSS_CLASS = {"COMPLIANT": "ok", "AT RISK": "risk", "BREACHED": "bad"}


def when(value: Any) -> str:
    """``2026-11-23 02:00:04 UTC``: seconds, the zone said, no microseconds."""
    from pgbackup.operations.recoverability import parse_time

    t = parse_time(value)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("pgbackup.operations.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    from pgbackup.operations.report.charts import human_seconds
    from pgbackup.operations.sla import fmt_seconds

    env.filters["when"] = when
    env.filters["duration"] = lambda s: "-" if s is None else human_seconds(float(s))
    env.filters["seconds"] = fmt_seconds
    return env


def target_view(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """What the template shows of one target: verdicts, measures, the charts as SVG."""
    from markupsafe import Markup

    from pgbackup.operations.sla import AREA_TITLES, measure, projection_lines

    timeline = r.get("timeline")
    start, end = charts.view(timeline) if timeline else (None, None)
    backups = [b for b in r["series"]["backups"] if b.get("start_time")]
    out: dict[str, Any] = {
        "name": name,
        "slug": charts.slug(name),
        "verdict": r["verdict"],
        "css": _CSS_CLASS[r["verdict"]],
        "period_start": r["period_start"],
        "generated_at": r["generated_at"],
        "reasons": r["reasons"],
        "sections": [
            {
                "title": AREA_TITLES.get(key, key),
                "verdict": s["verdict"],
                "css": _CSS_CLASS[s["verdict"]],
                "measured": measure(key, s),
                "reasons": s["reasons"],
            }
            for key, s in r["sections"].items()
        ],
        "projection": [
            {"text": line, "warning": line.startswith("WARNING")}
            for line in projection_lines(r["sections"]["rto"]["projection"])
        ]
        if r["sections"]["rto"].get("projection")
        else [],
        "drills": r["sections"]["verification"]["drills"],
        "missed": r["sections"]["backups"]["missed_runs"],
        "timeline": timeline,
        "timeline_svg": Markup(charts.timeline_svg(timeline)) if timeline else None,
        "charts": [],
    }
    if timeline and start and end:
        sizes = [float(b["stored_bytes"] or 0) for b in backups]
        unit, factor = charts.byte_unit(max(sizes, default=0))
        out["charts"] = [
            Markup(
                charts.series_svg(
                    "Backup duration",
                    [(b["start_time"], float(b["duration_seconds"] or 0)) for b in backups],
                    "duration (s)",
                    start,
                    end,
                    gid=f"{out['slug']}-durations",
                )
            ),
            Markup(
                charts.series_svg(
                    "Backup size (stored)",
                    [
                        (b["start_time"], size / factor)
                        for b, size in zip(backups, sizes, strict=True)
                    ],
                    f"stored ({unit})",
                    start,
                    end,
                    color="#8e44ad",
                    gid=f"{out['slug']}-sizes",
                )
            ),
        ]
    return out


def render_html(reports: dict[str, Any]) -> str:
    """The page: one section per target; every chart inline, no external resource."""
    env = _environment()
    targets = [target_view(name, r) for name, r in reports.items()]
    generated = next(iter(reports.values()))["generated_at"] if reports else None
    return str(env.get_template("report.html.j2").render(targets=targets, generated=generated))
