"""Fixtures for the fault-injection suite (real PostgreSQL, real processes).

Reuses the acceptance harness in ``features/harness.py``. Mode: CI by default (fewer
injections, a few minutes); ``PGBACKUP_FAULTS=long`` for the full counts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
FEATURES = HERE.parents[1] / "features"
for p in (str(FEATURES), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import counts  # noqa: E402
from harness import Harness  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.fault_failed = report.failed


@pytest.fixture
def h(request: Any) -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.teardown(failed=getattr(request.node, "fault_failed", False))


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = counts.write()
    if path is not None:
        print(f"\nfault counts written to {path}", file=sys.stderr)
