"""matplotlib charts as inline SVG: real time axes (UTC), units, readable labels.

Figures are made with the object API (``Figure``, no pyplot): no global state, no GUI
backend. Text stays text in the SVG (``svg.fonttype: none``) so the page is searchable and
small. Elements a reader (or a test) looks for carry ids (matplotlib's ``gid``):
``<slug>-backup-<lane>-<id>``, ``<slug>-recoverable-<lane>-<n>``, ``<slug>-gap-<lane>-<n>``,
``<slug>-drill-<n>``.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pgbackup.operations.recoverability import parse_time
from pgbackup.operations.recoverability import view as _view

GREEN, RED, GREY, INK, BLUE = "#2e8b57", "#d62728", "#b0b0b0", "#222222", "#2e86c1"
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.titlesize": 11.0,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def slug(text: str) -> str:
    """An id-safe form of a target or destination name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def view(timeline: dict[str, Any], first_seen: Any = None) -> tuple[datetime, datetime]:
    """The chart's time range: at least two minutes, so that seconds of history (a demo,
    a test) still get clock ticks."""
    return _view(timeline, first_seen, least=timedelta(minutes=2))


def _time(value: Any) -> datetime:
    t = parse_time(value)
    assert t is not None
    return t


def _svg(fig: Any) -> str:
    """The figure as an ``<svg>`` element for inlining (no XML prolog, no metadata)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF about the file
    return text[text.index("<svg") :]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.rcParams.update(_RC)  # type: ignore[arg-type]
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _time_axis(ax: Any, start: datetime, end: datetime) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(tz=UTC, minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC, show_offset=True))
    ax.set_xlim(start, end)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)


def human_seconds(value: float) -> str:
    """1.5 s, 2 min, 1 h: duration labels a reader does not have to convert."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.3g} s"
    if value < 3600:
        return f"{value / 60:.3g} min"
    if value < 86400:
        return f"{value / 3600:.3g} h"
    return f"{value / 86400:.3g} d"


_DURATION_TICKS = [
    0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200,
    14400, 28800, 43200, 86400, 172800, 604800,
]  # fmt: skip


def _duration_axis(ax: Any, low: float, high: float) -> None:
    """A log axis in seconds with human tick labels: 2 s and 1 h both readable."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ticks = [t for t in _DURATION_TICKS if low <= t <= high]
    if len(ticks) > 6:
        ticks = ticks[:: (len(ticks) + 5) // 6]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: human_seconds(v)))
    ax.grid(axis="y", color="#eeeeee", linewidth=0.8)


def timeline_svg(timeline: dict[str, Any], first_seen: Any = None) -> str:
    """Lanes (repository, each upload) over time, and the drills' RTO against the objective."""
    start, end = view(timeline, first_seen)
    n = len(timeline["lanes"])
    fig = _figure(10.0, 0.55 * n + 3.2)
    grid = fig.add_gridspec(2, 1, height_ratios=[0.55 * n + 0.9, 2.0])
    ax = fig.add_subplot(grid[0])
    axd = fig.add_subplot(grid[1], sharex=ax)
    _draw_lanes(ax, timeline, start, end)
    _draw_drills(axd, timeline, start, end)
    return _svg(fig)


def _draw_lanes(ax: Any, timeline: dict[str, Any], start: datetime, end: datetime) -> None:
    """One lane per repository: what is recoverable (green), the gaps (red), the backups'
    ends (triangles); a lane that cannot be read, hatched."""
    from matplotlib.dates import date2num
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    target = slug(timeline["target"])
    lanes = timeline["lanes"]
    x0, x1 = date2num(start), date2num(end)
    span = x1 - x0
    n = len(lanes)
    ax.set_title(f"Recoverability of {timeline['target']}", loc="left")
    for i, lane in enumerate(lanes):
        y = n - 1 - i
        lane_id = slug(lane["name"])
        if lane.get("error"):
            ax.broken_barh([(x0, span)], (y - 0.25, 0.5), facecolors="none", edgecolors=GREY,
                           hatch="//", gid=f"{target}-unreadable-{lane_id}")  # fmt: skip
            ax.text(x0 + span / 2, y, f"cannot be read: {lane['error'][:90]}", ha="center",
                    va="center", color=RED, fontsize=8)  # fmt: skip
            continue
        for j, s in enumerate(lane["recoverable"]):
            a = max(date2num(_time(s["start"])), x0)
            width = max(date2num(_time(s["end"])) - a, span * 0.002)
            ax.broken_barh([(a, width)], (y - 0.22, 0.44), facecolors=GREEN,
                           gid=f"{target}-recoverable-{lane_id}-{j}")  # fmt: skip
        for j, g in enumerate(lane["gaps"]):
            a = max(date2num(_time(g["start"])), x0)
            width = max(date2num(_time(g["end"])) - a, span * 0.006)
            ax.broken_barh([(a, width)], (y - 0.34, 0.68), facecolors=RED, edgecolors=RED,
                           gid=f"{target}-gap-{lane_id}-{j}")  # fmt: skip
        for m in lane["backups"]:
            if m["in_period"] and _time(m["stop_time"]) >= start:
                ax.plot([_time(m["stop_time"])], [y + 0.36], marker="v", markersize=8,
                        color=INK, linestyle="none",
                        gid=f"{target}-backup-{lane_id}-{slug(m['backup_id'])}")  # fmt: skip
    ax.set_yticks(range(n))
    ax.set_yticklabels([_lane_label(lane["name"]) for lane in reversed(lanes)])
    ax.set_ylim(-0.7, n - 0.2)
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelbottom=False)
    _time_axis(ax, start, end)
    ax.legend(
        handles=[
            Line2D([], [], marker="v", color=INK, linestyle="none", label="base backup (its end)"),
            Patch(facecolor=GREEN, label="recoverable (continuous WAL)"),
            Patch(facecolor=RED, label="gap: missing or unreadable WAL"),
        ],
        loc="lower right",
        bbox_to_anchor=(1, 1),
        ncol=3,
        frameon=False,
        fontsize=8,
    )


def _draw_drills(axd: Any, timeline: dict[str, Any], start: datetime, end: datetime) -> None:
    """Each drill's measured RTO (log scale) against the objective (dashed): met in green,
    missed or failed in red."""
    target = slug(timeline["target"])
    objective = timeline.get("rto_objective_seconds")
    drills = timeline["drills"]
    values = [float(d["rto_seconds"]) for d in drills if d.get("rto_seconds") is not None]
    bounds = [*values, *([float(objective)] if objective else [])] or [1.0, 60.0]
    _duration_axis(axd, max(min(bounds) / 3, 0.05), max(bounds) * 3)
    axd.set_title("Restore drills: measured RTO", loc="left", fontsize=10)
    axd.set_ylabel("RTO (log scale)")
    if objective:
        axd.axhline(float(objective), color=RED, linestyle="--", linewidth=1.2,
                    gid=f"{target}-rto-objective")  # fmt: skip
        axd.text(end, float(objective), f"objective {human_seconds(float(objective))} ",
                 ha="right", va="bottom", color=RED, fontsize=8)  # fmt: skip
    for k, d in enumerate(drills):
        t = _time(d["time"])
        ok = d.get("status") == "ok" and d.get("rto_seconds") is not None
        rto = float(d["rto_seconds"]) if d.get("rto_seconds") is not None else None
        level = rto if rto is not None else (float(objective) if objective else max(bounds))
        met = ok and (objective is None or (rto is not None and rto <= float(objective)))
        axd.plot([t], [level], marker="o" if ok else "X", markersize=8, linestyle="none",
                 color=GREEN if met else RED, gid=f"{target}-drill-{k}")  # fmt: skip
        label = human_seconds(rto) if rto is not None else "failed"
        axd.annotate(label, (t, level), textcoords="offset points", xytext=(0, 8), ha="center",
                     fontsize=8, color=INK if met else RED)  # fmt: skip
    if not drills:
        axd.text(0.5, 0.5, "no drill in the period (run `pgbackup drill`)", transform=axd.transAxes,
                 ha="center", va="center", color="#777777")  # fmt: skip
    axd.set_xlabel("time (UTC)")
    _time_axis(axd, start, end)


def _lane_label(name: str) -> str:
    return "repository" if name == "primary" else f"upload {name}"


_BYTE_UNITS = [("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)]


def byte_unit(largest: float) -> tuple[str, float]:
    """The unit that keeps the largest value between 1 and 1024."""
    unit = _BYTE_UNITS[0]
    for u in _BYTE_UNITS:
        if largest >= u[1]:
            unit = u
    return unit[0], float(unit[1])


def series_svg(
    title: str,
    points: list[tuple[Any, float]],
    ylabel: str,
    start: datetime,
    end: datetime,
    *,
    color: str = BLUE,
    gid: str = "",
) -> str:
    """Values over real time (one stem per backup), with the unit in the axis label."""
    fig = _figure(4.9, 2.6)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left")
    if points:
        times = [_time(t) for t, _v in points]
        values = [v for _t, v in points]
        ax.vlines(times, 0, values, color=color, linewidth=2, gid=gid or None)
        ax.plot(times, values, marker="o", linestyle="none", color=color, markersize=4)
        ax.set_ylim(0, max(values) * 1.2 or 1)
    else:
        ax.text(0.5, 0.5, "no backup in the period", transform=ax.transAxes, ha="center",
                va="center", color="#777777")  # fmt: skip
    ax.set_ylabel(ylabel)
    ax.set_xlabel("time (UTC)")
    _time_axis(ax, start, end)
    ax.grid(axis="y", color="#eeeeee", linewidth=0.8)
    return _svg(fig)
