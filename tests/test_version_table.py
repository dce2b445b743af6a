"""docs/testing.md's version table is the rendering of what the tests recorded (bench/versions.py)."""

from __future__ import annotations

import json
from pathlib import Path

from sourcefile import load_file  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[1]


def _module():  # type: ignore[no-untyped-def]
    return load_file("bench_versions", ROOT / "bench" / "versions.py")


def test_version_table_is_generated_from_the_recorded_results() -> None:
    versions = _module()
    text = (ROOT / "docs" / "testing.md").read_text()
    table = versions.render(versions.load(versions.SNAPSHOT))
    assert versions.readme_with(table, text) == text, (
        "run: .venv/bin/python bench/versions.py --update"
    )


def test_a_cell_says_what_was_proven() -> None:
    versions = _module()
    ok = {"outcome": "passed"}
    assert versions.cell([ok, ok]) == "✓ 2/2"
    assert versions.cell([ok, {"outcome": "failed"}]) == "✗ 1 of 2 failed"
    assert versions.cell([{"outcome": "skipped", "reason": "no engine"}]) == "– skipped: no engine"
    assert versions.cell([]) == "not run"
    snapshot = json.loads((ROOT / "docs" / "version-support.json").read_text())["results"]
    assert {int(e["major"]) for e in snapshot.values()} <= set(versions.MAJORS)


def test_a_run_of_one_major_replaces_only_that_majors_entries() -> None:
    """--update --major 17: a run in 17's container adds its column, the others stay."""
    versions = _module()
    snapshot = {
        "a on 15": {"major": 15, "outcome": "passed"},
        "a on 17": {"major": 17, "outcome": "failed"},
        "b on 17": {"major": 17, "outcome": "passed"},
    }
    results = {"a on 17": {"major": 17, "outcome": "passed"}, "c on 16": {"major": 16}}
    assert versions.with_major(snapshot, results, 17) == {
        "a on 15": {"major": 15, "outcome": "passed"},
        "a on 17": {"major": 17, "outcome": "passed"},
    }
