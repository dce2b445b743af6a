"""python-zstandard's C backend, loaded without running the ``zstandard`` package's ``__init__``.

``import zstandard`` imports ``platform`` (to pick a backend) and ``typing``: about a tenth
of wal-push's Python start-up on top of the extension itself, paid once per WAL segment.
:func:`load` returns the very extension module the package would load, registered under
its own name (``zstandard.backend_c``) so that a later ``import zstandard`` reuses it;
anything unexpected falls back to the package. It imports nothing of pgbackup.

:func:`wal_threads` decides how many zstd workers one WAL segment gets.
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


def wal_threads() -> int:
    """zstd workers for one WAL segment (0: compress in the calling thread).

    ``$PGBACKUP_WAL_THREADS`` when set. Otherwise one worker per idle core when at least
    two cores are idle right now (``/proc/loadavg``'s runnable count, this process
    included), else 0. Workers pay only on idle cores: on 2 cores with nothing else
    running, two workers take a full-page-image segment's compression from 50 to 37 ms;
    with the cores busy (a loaded server: the case that matters for archiving) they cost
    10-15 ms more CPU per segment and gain nothing, and single-threaded wal-push was 25-30 %
    faster (bench/wal_push.py at load 6 on 2 cores). pgBackRest compresses in one thread.
    """
    configured = os.environ.get("PGBACKUP_WAL_THREADS")
    if configured:
        return int(configured)
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
        cpus = len(os.sched_getaffinity(0))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0
    idle = cpus - max(running - 1, 0)
    return idle if idle >= 2 else 0
