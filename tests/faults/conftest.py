"""Fixtures for the fault-injection suite (real PostgreSQL, real processes).

Reuses the acceptance harness in ``features/harness.py``. Mode: CI by default (fewer
injections, a few minutes); ``PGBACKUP_FAULTS=long`` for the full counts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FEATURES = HERE.parents[1] / "features"
for p in (str(FEATURES), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import counts  # noqa: E402
import pytest  # noqa: E402
from harness import harness_fixture, pytest_runtest_makereport  # noqa: E402, F401 (fixture, hook)


@pytest.fixture
def provider() -> str:
    """The fault suite attacks the local sandbox's processes (features/providers.py)."""
    return "local"


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = counts.write()
    if path is not None:
        print(f"\nfault counts written to {path}", file=sys.stderr)
