"""python-zstandard's C backend, loaded without running the ``zstandard`` package's ``__init__``.

``import zstandard`` imports ``platform`` (to pick a backend) and ``typing``: about a tenth
of wal-push's Python start-up on top of the extension itself, paid once per WAL segment.
:func:`load` returns the very extension module the package would load, registered under
its own name (``zstandard.backend_c``) so that a later ``import zstandard`` reuses it;
anything unexpected falls back to the package. It imports nothing of pgbackup.
"""

from __future__ import annotations

import os
import sys


def load() -> object:
    """The module with ``ZstdCompressor``, ``ZstdCompressionParameters`` and the rest."""
    module = sys.modules.get("zstandard.backend_c") or sys.modules.get("zstandard")
    if module is not None:
        return module
    try:
        from importlib._bootstrap import _load  # type: ignore[attr-defined]
        from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec

        for entry in sys.path:
            for ext in EXTENSION_SUFFIXES:
                path = os.path.join(entry or ".", "zstandard", "backend_c" + ext)
                if os.path.isfile(path):
                    loader = ExtensionFileLoader("zstandard.backend_c", path)
                    return _load(ModuleSpec("zstandard.backend_c", loader, origin=path))  # type: ignore[no-any-return]
    except Exception:  # pragma: no cover - an unusual install: the package decides
        pass
    import zstandard

    return zstandard
