"""SIGTERM handled as Ctrl-C, for the commands that must clean up when stopped.

A backup removes its half-written directory and an extraction its scratch cluster in
``finally`` blocks and ``except KeyboardInterrupt`` handlers; SIGTERM (systemd, a
container runtime, ``kill``) would end the process without running them. The engine
(backup) and the operations (extract) both need this, so it lives at the top level
beside errors.py and ui.py, below every layer.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def _handled(signums: tuple[int, ...], handler: Any) -> Iterator[dict[int, Any] | None]:
    """``handler`` for ``signums`` while the block runs; the previous handlers (yielded)
    come back afterwards. Outside the main thread, where no handler can be set, nothing
    changes and None is yielded."""
    try:
        previous = {signum: signal.signal(signum, handler) for signum in signums}
    except ValueError:  # not the main thread
        yield None
        return
    try:
        yield previous
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs, so cleanup unwinds as it
    does for Ctrl-C; the previous handler comes back afterwards."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with _handled((signal.SIGTERM,), handler):
        yield


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs and deliver them as it ends.

    For spawning a child the caller must stop if interrupted: a KeyboardInterrupt raised
    inside ``subprocess.Popen`` after the fork (the child runs, its pid never reaches the
    caller) would leave it running unseen, writing where the caller has already cleaned
    up. Held this way, the interrupt arrives once the caller holds the process."""
    held: list[int] = []
    previous: dict[int, Any] | None = None
    try:
        with _handled((signal.SIGINT, signal.SIGTERM), lambda n, _f: held.append(n)) as previous:
            yield
    finally:
        for signum in dict.fromkeys(held):  # each once, in the order they came
            handler = (previous or {}).get(signum)
            if callable(handler):
                handler(signum, None)  # raises KeyboardInterrupt (Python's or ours)
            elif handler != signal.SIG_IGN:
                os.kill(os.getpid(), signum)  # the default action, now the handler is back
