"""Outcome counts of the fault-injection suite, per fault kind.

Every test records each fault it injects (``record``) and each malformed input it tries
(``inputs``); at the end of the session ``conftest.py`` writes the totals to
``var/fault-counts.json`` (``bench/faults.py`` prints them as the reliability table).
A test records an outcome *before* it asserts, so a failing test still shows up as a
failed injection in the table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MODE = os.environ.get("PGBACKUP_FAULTS", "ci").strip().lower() or "ci"


def output_path(mode: str) -> Path:
    """var/fault-counts.json (CI mode) or var/fault-counts-long.json (long mode)."""
    name = "fault-counts.json" if mode == "ci" else f"fault-counts-{mode}.json"
    return Path(os.environ.get("PGBACKUP_FAULT_COUNTS", REPO / "var" / name))


OUTPUT = output_path(MODE)
LONG = MODE == "long"

_kinds: dict[str, dict[str, int]] = {}
_inputs: dict[str, dict[str, int]] = {}


def pick(ci: int, long: int) -> int:
    """How many injections of one kind: fewer in CI mode, more with PGBACKUP_FAULTS=long."""
    return long if LONG else ci


def record(kind: str, survived: bool, *, lost: int = 0, committed: int = 0) -> None:
    """One injected fault: did pgbackup survive it, and how many committed rows were lost."""
    row = _kinds.setdefault(
        kind, {"injected": 0, "survived": 0, "failed": 0, "committed": 0, "lost": 0}
    )
    row["injected"] += 1
    row["survived" if survived else "failed"] += 1
    row["committed"] += committed
    row["lost"] += lost


def transactions(kind: str, committed: int, lost: int) -> None:
    """Committed transactions a restore after the faults of ``kind`` had to contain."""
    row = _kinds.setdefault(
        kind, {"injected": 0, "survived": 0, "failed": 0, "committed": 0, "lost": 0}
    )
    row["committed"] += committed
    row["lost"] += lost


def inputs(kind: str, tried: int, *, rejected: int, tracebacks: int) -> None:
    """Malformed inputs: how many were tried, cleanly rejected, and ended in a traceback."""
    row = _inputs.setdefault(kind, {"tried": 0, "rejected": 0, "tracebacks": 0})
    row["tried"] += tried
    row["rejected"] += rejected
    row["tracebacks"] += tracebacks


def snapshot() -> dict[str, Any]:
    return {
        "mode": MODE,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "faults": {k: dict(v) for k, v in sorted(_kinds.items())},
        "inputs": {k: dict(v) for k, v in sorted(_inputs.items())},
        "totals": {
            "faults_injected": sum(v["injected"] for v in _kinds.values()),
            "survived": sum(v["survived"] for v in _kinds.values()),
            "failed": sum(v["failed"] for v in _kinds.values()),
            "committed": sum(v["committed"] for v in _kinds.values()),
            "lost": sum(v["lost"] for v in _kinds.values()),
            "inputs_tried": sum(v["tried"] for v in _inputs.values()),
            "tracebacks": sum(v["tracebacks"] for v in _inputs.values()),
        },
    }


def write(path: Path = OUTPUT) -> Path | None:
    if not _kinds and not _inputs:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def table(data: dict[str, Any]) -> str:
    """The reliability table as Markdown."""
    lines = [
        f"Mode: `{data['mode']}` (finished {data['finished_at']})",
        "",
        "| fault | injected | survived | failed | committed transactions checked | lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in data["faults"].items():
        lines.append(
            f"| {kind} | {row['injected']} | {row['survived']} | {row['failed']} "
            f"| {row['committed']} | {row['lost']} |"
        )
    t = data["totals"]
    lines.append(
        f"| **total** | **{t['faults_injected']}** | **{t['survived']}** | **{t['failed']}** "
        f"| **{t['committed']}** | **{t['lost']}** |"
    )
    lines += [
        "",
        "| malformed input | tried | rejected cleanly | tracebacks |",
        "|---|---:|---:|---:|",
    ]
    for kind, row in data["inputs"].items():
        lines.append(f"| {kind} | {row['tried']} | {row['rejected']} | {row['tracebacks']} |")
    lines.append(
        f"| **total** | **{t['inputs_tried']}** | "
        f"**{sum(r['rejected'] for r in data['inputs'].values())}** | **{t['tracebacks']}** |"
    )
    return "\n".join(lines)
