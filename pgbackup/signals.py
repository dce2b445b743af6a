"""SIGTERM handled as Ctrl-C, for the commands that must clean up when stopped.

A backup removes its half-written directory and an extraction its scratch cluster in
``finally`` blocks and ``except KeyboardInterrupt`` handlers; SIGTERM (systemd, a
container runtime, ``kill``) would end the process without running them. The engine
(backup) and the operations (extract) both need this, so it lives at the top level
beside errors.py and ui.py, below every layer.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs, so cleanup unwinds as it
    does for Ctrl-C; the previous handler comes back afterwards. Outside the main thread
    (where no handler can be set) the block runs unchanged."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
