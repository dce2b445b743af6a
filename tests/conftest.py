"""Shared pytest fixtures."""

from __future__ import annotations

# ---- storage services (owner: storage; see tests/services.py) --------------------------
# Session-scoped: each emulator starts once, on first use, and stops at the end of the
# run. Each yields (spec, env): the repository spec (bucket/container already created)
# and the environment a client needs (apply with monkeypatch.setenv).
from collections.abc import Iterator
from typing import Any

import pytest

try:  # tests/ is a rootdir-relative directory (no __init__.py) or a package
    import services  # type: ignore[import-not-found,no-redef]
    from receivers import alert_receivers  # type: ignore[import-not-found,no-redef]  # noqa: F401 (fixture)
except ImportError:  # pragma: no cover
    from tests import services  # type: ignore[no-redef]
    from tests.receivers import alert_receivers  # type: ignore[no-redef]  # noqa: F401 (fixture)


@pytest.fixture(scope="session")
def s3_service() -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    with services.moto_s3() as found:
        yield found


@pytest.fixture(scope="session")
def gcs_service() -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    with services.gcs_emulator() as found:
        yield found


@pytest.fixture(scope="session")
def azure_service() -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    if services.azurite_binary() is None:
        pytest.skip(services.AZURITE_MISSING)
    with services.azurite() as found:
        yield found


# ---- end of storage services -----------------------------------------------------------
