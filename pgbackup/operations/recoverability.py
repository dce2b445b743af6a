"""To what points in time can a target be restored, from where, and where are the holes?

The recoverability timeline of one target over a period, per repository (the primary one
and each upload destination, a *lane* each): base backups as marks at their end (their
consistency point), the spans that archived WAL makes continuously recoverable, and the
holes — segments missing between archived ones, and segments the newest check found
unreadable — placed in time between the arrival of their neighbours. Drills come with
their measured RTO.

The model is plain data (JSON-ready): the SLA report draws it (``pgbackup.operations.report``),
``list`` prints a compact text version (:func:`render_text`), ``sla-report --format json``
carries it. It reads what :func:`pgbackup.engine.inventory.recoverable_window` says (the window's
end is the last commit replayable after the newest backup) and one WAL listing per
repository; it decodes nothing itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

DEFAULT_SEG_SIZE = 16 * 1024 * 1024
_DAMAGED = re.compile(r"damaged ([0-9A-F]{24})\b")


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 text (``Z`` or an offset) or a datetime, as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _required(value: Any) -> datetime:
    t = parse_time(value)
    assert t is not None
    return t


def view(
    timeline: dict[str, Any], first_seen: Any = None, *, least: timedelta = timedelta(0)
) -> tuple[datetime, datetime]:
    """The time range drawn: the report's period, started at the first evidence (with a
    margin) when the repository is younger than the period: minutes of history are not
    drawn as a sliver at the right edge of 30 days. ``least``: the shortest range (a
    chart wants clock ticks; a line of text wants every column)."""
    start, end = _required(timeline["start"]), _required(timeline["end"])
    times = [
        _required(t)
        for lane in timeline["lanes"]
        for t in [
            *(m["stop_time"] for m in lane["backups"] if m["in_period"]),
            *(s["start"] for s in lane["recoverable"]),
            *(g["start"] for g in lane["gaps"]),
        ]
    ] + [_required(d["time"]) for d in timeline["drills"]]
    if first_seen is not None:
        times.append(_required(first_seen))
    if times:
        first = max(start, min(times))
        margin = max((end - first) * 0.04, timedelta(seconds=1))
        start = max(start, min(first - margin, end - least))
    # Room on the right, so that what happened just now (a drill) is not cut at the edge.
    return start, end + max((end - start) * 0.02, timedelta(seconds=1))


def iso(value: datetime) -> str:
    """Seconds precision, ``Z``: what a reader of the report needs, no microseconds."""
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def wal_arrivals(repo: Any, target: str) -> dict[str, float]:
    """Archived WAL segment name -> when it arrived (the object's mtime): one listing.

    Segments only: ``.backup``, ``.history`` and ``.partial`` files are not counted."""
    from pgbackup.formats.codecs import parse_suffix
    from pgbackup.formats.lsn import is_segment

    out: dict[str, float] = {}
    for obj in repo.storage.list(f"{target}/wal/"):
        name, _spec = parse_suffix(obj.key.rsplit("/", 1)[-1])
        if is_segment(name):
            out[name] = obj.mtime
    return out


def unreadable_from_checks(repo: Any, target: str) -> set[str]:
    """Segments the newest ``check`` record names as damaged (its WAL-chain check decodes
    every archived file; the report does not repeat that work)."""
    newest: dict[str, Any] | None = None
    for record in repo.runs(target, "check"):
        newest = record
    if newest is None:
        return set()
    return {m.group(1) for p in newest.get("problems") or [] for m in _DAMAGED.finditer(str(p))}


def lane(
    name: str,
    repo: Any,
    policy: Any,
    target: str,
    start: datetime,
    end: datetime,
    *,
    window: dict[str, Any] | None = None,
    unreadable: Iterable[str] = (),
    clock: dict[int, float] | None = None,
) -> dict[str, Any]:
    """What one repository makes recoverable for ``target`` between ``start`` and ``end``.

    ``window``: the repository's ``recoverable_window`` when the caller has it already.
    ``clock``: segment number -> when its WAL was archived, from the primary repository:
    an upload destination's copies all carry the time of the copy, not of the WAL.
    The lane's ``clock`` key holds its own, for the lanes that follow.
    """
    from pgbackup.engine.inventory import recoverable_window

    backups = repo.complete_backups(target)
    arrivals = wal_arrivals(repo, target)
    if window is None:
        window = recoverable_window(repo, policy, target) if backups else {}
    seg_size = int(
        (backups[-1].metadata.get("wal_segment_size") if backups else None) or DEFAULT_SEG_SIZE
    )
    bad = set(unreadable) | set(window.get("unreadable") or [])
    present, names = present_segments(arrivals, seg_size, bad)
    known = dict(clock) if clock else {}
    for segno, when in present.items():
        known.setdefault(segno, when)
    ordered = sorted(known)

    def arrival(segno: int) -> datetime:
        return datetime.fromtimestamp(_estimate(known, ordered, segno), UTC)

    latest = parse_time(window.get("latest_time"))
    marks, spans = backup_spans(backups, present, seg_size, arrival, latest, start, end)
    recoverable = _merge(spans)
    holes = wal_holes(backups, present, names, arrivals, bad, seg_size, arrival)
    return {
        "name": name,
        "error": None,
        "backups": marks,
        "recoverable": [
            {"start": iso(a), "end": iso(b)} for a, b in recoverable if b >= start and a <= end
        ],
        "gaps": holes,
        "window": {
            "earliest_time": window.get("earliest_time"),
            "latest_time": window.get("latest_time"),
            "wal_gaps": list(window.get("wal_gaps") or []),
            "cut_reason": window.get("cut_reason"),
        },
        "segments": len(arrivals),
        "clock": present,
    }


def present_segments(
    arrivals: dict[str, float], seg_size: int, bad: set[str]
) -> tuple[dict[int, float], dict[int, str]]:
    """Segment number -> its first arrival, and -> its name, over every timeline (a number
    held on any timeline counts); unreadable segments are not there."""
    from pgbackup.formats.lsn import parse_segment_name

    present: dict[int, float] = {}
    names: dict[int, str] = {}
    for seg, when in arrivals.items():
        parsed = parse_segment_name(seg, seg_size)
        if parsed is None or seg in bad:
            continue
        if parsed[1] not in present or when < present[parsed[1]]:
            present[parsed[1]] = when
            names[parsed[1]] = seg
    return present, names


def backup_spans(
    backups: list[Any],
    present: dict[int, float],
    seg_size: int,
    arrival: Callable[[int], datetime],
    latest: datetime | None,
    start: datetime,
    end: datetime,
) -> tuple[list[dict[str, Any]], list[tuple[datetime, datetime]]]:
    """Each backup's mark on the lane, and the span it makes recoverable: from its end to
    the last segment archived after it without a hole (the window's end for the newest)."""
    from pgbackup.formats.lsn import parse_lsn

    newest_segno = max(present, default=None)
    marks = []
    spans: list[tuple[datetime, datetime]] = []
    for b in backups:
        stop = parse_time(b.metadata.get("stop_time"))
        if stop is None:
            continue
        marks.append(
            {
                "backup_id": b.backup_id,
                "stop_time": iso(stop),
                "stop_lsn": b.metadata.get("stop_lsn"),
                "in_period": start <= stop <= end,
            }
        )
        # The backup carries the WAL up to its end; replay on needs the archived segments
        # from the one holding its end, without a hole.
        segno = parse_lsn(b.metadata["stop_lsn"]) // seg_size
        reached = None
        while segno in present:
            reached = segno
            segno += 1
        until = stop
        if reached is not None:
            until = max(stop, arrival(reached))
            if reached == newest_segno and latest is not None and latest >= stop:
                until = latest  # the window's end: the last commit replayable
        spans.append((stop, until))
    return marks, spans


def wal_holes(
    backups: list[Any],
    present: dict[int, float],
    names: dict[int, str],
    arrivals: dict[str, float],
    bad: set[str],
    seg_size: int,
    arrival: Callable[[int], datetime],
) -> list[dict[str, Any]]:
    """Each run of segments missing (or unreadable) between the oldest backup's end and
    the newest archived segment, with when the hole opened and closed."""
    from pgbackup.formats.lsn import parse_lsn

    newest_segno = max(present, default=None)
    if not backups or newest_segno is None:
        return []
    holes = []
    segno = min(parse_lsn(b.metadata["stop_lsn"]) // seg_size for b in backups)
    while segno < newest_segno:
        if segno in present:
            segno += 1
            continue
        run_start = segno
        while segno not in present:
            segno += 1
        before = max((s for s in present if s < run_start), default=None)
        missing = [_segment_name(arrivals, n, seg_size, names) for n in range(run_start, segno)]
        kinds = {"unreadable" if m in bad else "missing" for m in missing}
        holes.append(
            {
                "segments": missing,
                "kind": "unreadable" if kinds == {"unreadable"} else "missing",
                "start": iso(arrival(before) if before is not None else arrival(segno)),
                "end": iso(arrival(segno)),
            }
        )
    return holes


def _estimate(known: dict[int, float], ordered: list[int], segno: int) -> float:
    """When segment ``segno`` was archived: known, or between its known neighbours."""
    import bisect

    if segno in known:
        return known[segno]
    i = bisect.bisect_left(ordered, segno)
    lo = ordered[i - 1] if i > 0 else None
    hi = ordered[i] if i < len(ordered) else None
    if lo is None or hi is None:
        return known[lo if hi is None else hi]  # type: ignore[index]
    return known[lo] + (known[hi] - known[lo]) * (segno - lo) / (hi - lo)


def _segment_name(
    arrivals: dict[str, float], segno: int, seg_size: int, names: dict[int, str]
) -> str:
    """The name a missing segment number would have, on its neighbour's timeline."""
    from pgbackup.formats.lsn import segment_name

    near = names.get(segno - 1) or names.get(segno + 1) or next(iter(arrivals), "00000001")
    return segment_name(int(near[:8], 16), segno * seg_size, seg_size)


def _merge(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def generation_lanes(
    policy: Any, repo: Any, target: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """One lane per generation of ``target`` (engine/generations: the clusters it held
    after pg_upgrade or a new initdb), oldest first; [] while it has one. The gap between
    two generations is where neither lane is recoverable."""
    from pgbackup.engine.generations import generation_views
    from pgbackup.engine.repository import Repository

    views = generation_views(repo.storage, target)
    if len(views) < 2:
        return []
    lanes = []
    for gen, storage in views:
        seen = Repository(storage)
        name = f"generation {gen['generation']}" + (
            f" (PostgreSQL {gen['major']})" if gen.get("major") else ""
        )
        lanes.append(
            lane(
                name,
                seen,
                policy,
                target,
                start,
                end,
                unreadable=unreadable_from_checks(seen, target),
            )
        )
    return lanes


def build_timeline(
    policy: Any,
    repo: Any,
    target: str,
    start: datetime,
    end: datetime,
    *,
    window: dict[str, Any] | None = None,
    drills: list[dict[str, Any]] | None = None,
    uploads: bool = True,
) -> dict[str, Any]:
    """The timeline of ``target``: a lane for the repository and one per upload destination.

    A destination that cannot be read gets a lane with its ``error`` and nothing else."""
    from pgbackup.operations.monitor import drill_records

    lanes = generation_lanes(policy, repo, target, start, end)
    if lanes:
        primary = lanes[-1]  # the newest generation's, the one upload copies follow
        for other in lanes[:-1]:
            other.pop("clock")
    else:
        primary = lane(
            "primary",
            repo,
            policy,
            target,
            start,
            end,
            window=window,
            unreadable=unreadable_from_checks(repo, target),
        )
        lanes = [primary]
    clock = primary.pop("clock")
    for spec in (policy.uploads or []) if uploads else []:
        name = str(spec["name"])
        try:
            from pgbackup.engine.repository import Repository
            from pgbackup.engine.uploads import upload_storage

            copy = Repository(upload_storage(policy, name))
            found = lane(name, copy, policy, target, start, end, clock=clock)
            found.pop("clock")
            lanes.append(found)
        except Exception as exc:  # one unreadable destination must not hide the others
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            lanes.append(
                {
                    "name": name,
                    "error": message,
                    "backups": [],
                    "recoverable": [],
                    "gaps": [],
                    "window": {},
                    "segments": 0,
                }
            )
    if drills is None:
        drills = drill_records(repo, target)
    points = []
    for d in drills:
        when = parse_time(d.get("finished_at") or d.get("started_at"))
        if when is not None and start <= when <= end:
            points.append(
                {
                    "time": iso(when),
                    "rto_seconds": d.get("rto_seconds"),
                    "status": d.get("status"),
                    "backup_id": d.get("backup_id"),
                }
            )
    return {
        "target": target,
        "start": iso(start),
        "end": iso(end),
        "rto_objective_seconds": policy.sla.rto,
        "lanes": lanes,
        "drills": points,
    }


# --------------------------------------------------------------------------- text


def render_text(console: Any, timeline: dict[str, Any], width: int | None = None) -> None:
    """A compact picture of the timeline for a terminal: one row per lane.

    ``▲`` a base backup, ``━`` recoverable, ``╳`` a hole (red), ``·`` nothing to restore."""
    from rich.text import Text

    start, end = view(timeline)
    label = max([7, *(len(lane["name"]) for lane in timeline["lanes"])]) + 2
    cols = max(20, min(100, (width or console.width or 80) - label - 1))
    total = max((end - start).total_seconds(), 1.0)

    def col(value: str) -> int:
        t = parse_time(value)
        assert t is not None
        return min(cols - 1, max(0, int((t - start).total_seconds() / total * cols)))

    head = Text(" " * label)
    left, right = _short(start), _short(end)
    head.append(left + " " * max(1, cols - len(left) - len(right)) + right, style="dim")
    console.print(head)
    for lane in timeline["lanes"]:
        row = Text(f"{lane['name']:<{label}}", style="bold")
        if lane.get("error"):
            row.append(f"unreadable: {lane['error']}", style="red")
            console.print(row)
            continue
        cells = [("·", "dim")] * cols
        for span in lane["recoverable"]:
            for i in range(col(span["start"]), col(span["end"]) + 1):
                cells[i] = ("━", "green")
        for gap in lane["gaps"]:
            for i in range(col(gap["start"]), col(gap["end"]) + 1):
                cells[i] = ("╳", "bold red")
        for mark in lane["backups"]:
            if mark["in_period"]:
                cells[col(mark["stop_time"])] = ("▲", "bold")
        for char, style in cells:
            row.append(char, style=style)
        console.print(row)
        for gap in lane["gaps"]:
            what = "unreadable" if gap["kind"] == "unreadable" else "missing"
            first, n = gap["segments"][0], len(gap["segments"])
            console.print(
                Text(" " * label)
                + Text(
                    f"╳ {what} {first}"
                    + (f" (+{n - 1})" if n > 1 else "")
                    + f", between {_short(parse_time(gap['start']), True)}"
                    + f" and {_short(parse_time(gap['end']), True)}",
                    style="red",
                )
            )


def _short(t: datetime | None, seconds: bool = False) -> str:
    fmt = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
    return t.astimezone(UTC).strftime(fmt) if t else "-"


def print_windows(
    console: Any, policy: Any, repo: Any, data: dict[str, Any], now: datetime
) -> None:
    """``list`` on a terminal: after the tables, each target's window as a text timeline
    (the repository only; ``data`` is the inventory, whose windows are reused)."""
    from rich.text import Text

    for target, info in data.items():
        if not info["backups"]:
            continue
        start = now - timedelta(days=3650)  # every backup held; the view starts at the first
        lanes = generation_lanes(policy, repo, target, start, now)
        for found in lanes:
            found.pop("clock")
        tl = {
            "target": target,
            "start": iso(start),
            "end": iso(now),
            "lanes": lanes
            or [
                lane(
                    "repository",
                    repo,
                    policy,
                    target,
                    start,
                    now,
                    window=info["window"],
                    unreadable=unreadable_from_checks(repo, target),
                )
            ],
            "drills": [],
        }
        console.print(Text(f"recoverability of {target}:", style="bold"))
        render_text(console, tl)
