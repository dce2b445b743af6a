"""Load a Python file that is not an importable module of the package (the root
conftest.py, containers/images.py, a bench/ script) under a name of its own, for the
tests that check or drive it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def load_file(name: str, path: Path) -> Any:
    """The module executed from ``path`` as ``name`` (not added to sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
