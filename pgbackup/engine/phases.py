"""Where a backup's or a restore's time goes: seconds and bytes per phase (issue #26).

A :class:`Phases` accumulates, for each named phase, the seconds spent inside it and the
bytes it handled; the run record, ``metadata.json``, ``restore --json`` and the drill's
record carry it as ``{"phases": {name: {"seconds": s, "bytes": n}}}``.

What a phase's seconds mean: time spent *inside* that phase's calls, summed over every
thread that made them. Phases are streamed together, so they overlap in wall-clock
time and their sum may exceed the run's duration: a restore's reading thread alternates
between storage reads (``transfer``) and decoder calls (``decode``) while three writer
threads write (``write``) and fsync (``sync``) what it decoded. Timed calls nest: the
storage reads a decoder makes from inside its own read are ``transfer``, and only the
rest of that read (decompression, decryption, the sha256 of the stored bytes) is
``decode`` (:meth:`Phases.begin` / :meth:`Phases.end` keep a per-thread stack and give
each phase its own time, without what nested calls took).

The cost: two ``perf_counter`` calls and one lock per timed call; callers time whole
chunks (1-4 MiB), never bytes. Pure: no I/O, thread-safe.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from time import perf_counter
from typing import Any, BinaryIO


class Phases:
    """Seconds and bytes per phase, from any number of threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._bytes: dict[str, int] = {}
        self._local = threading.local()

    def add(self, name: str, seconds: float, nbytes: int = 0) -> None:
        """Count ``seconds`` and ``nbytes`` to phase ``name`` (one more call of it)."""
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + max(0.0, seconds)
            self._bytes[name] = self._bytes.get(name, 0) + nbytes

    def begin(self) -> float:
        """Start timing a call on this thread; give the result to :meth:`end`."""
        stack = self._stack()
        stack.append(0.0)
        return perf_counter()

    def end(self, name: str, began: float, nbytes: int = 0) -> None:
        """The call begun at ``began`` ends: its own time (less the calls timed inside it,
        which count to their own phases) goes to ``name``."""
        elapsed = perf_counter() - began
        stack = self._stack()
        nested = stack.pop() if stack else 0.0
        if stack:
            stack[-1] += elapsed
        self.add(name, elapsed - nested, nbytes)

    @contextlib.contextmanager
    def timed(self, name: str, nbytes: int = 0) -> Iterator[Timing]:
        """``with phases.timed("transfer", n) as t:`` times the block; ``t.bytes`` may be
        set inside it when the count is known only then. Counted even when it raises."""
        timing = Timing(nbytes)
        began = self.begin()
        try:
            yield timing
        finally:
            self.end(name, began, timing.bytes)

    def _stack(self) -> list[float]:
        stack: list[float] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def seconds_of(self, name: str) -> float:
        with self._lock:
            return self._seconds.get(name, 0.0)

    def bytes_of(self, name: str) -> int:
        with self._lock:
            return self._bytes.get(name, 0)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: {"seconds": s, "bytes": n}}``, in the order the phases first ran."""
        with self._lock:
            return {
                name: {"seconds": round(s, 3), "bytes": self._bytes.get(name, 0)}
                for name, s in self._seconds.items()
            }


class Timing:
    """The bytes of one timed block (:meth:`Phases.timed`), settable inside it."""

    __slots__ = ("bytes",)

    def __init__(self, nbytes: int = 0) -> None:
        self.bytes = nbytes


class TimedReader:
    """A stream whose ``read`` calls count to one phase (seconds and bytes read): a
    storage object read by a restore counts to ``transfer``."""

    def __init__(self, inner: BinaryIO, phases: Phases, name: str) -> None:
        self.inner = inner
        self.phases = phases
        self.name = name

    def read(self, n: int = -1) -> bytes:
        began = self.phases.begin()
        data = b""
        try:
            data = self.inner.read(n)
            return data
        finally:
            self.phases.end(self.name, began, len(data))

    def readinto(self, buffer: Any) -> int:
        """Into the caller's buffer, without a copy when the inner stream can (untar reads
        the decoded stream this way)."""
        began = self.phases.begin()
        count = 0
        try:
            readinto = getattr(self.inner, "readinto", None)
            if readinto is not None:
                count = int(readinto(buffer) or 0)
            else:
                data = self.inner.read(len(buffer))
                buffer[: len(data)] = data
                count = len(data)
            return count
        finally:
            self.phases.end(self.name, began, count)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


def rate(phase: dict[str, Any] | None) -> float | None:
    """Bytes per second of one recorded phase (``{"seconds", "bytes"}``); None when it
    measured nothing."""
    if not phase:
        return None
    seconds, nbytes = float(phase.get("seconds") or 0), float(phase.get("bytes") or 0)
    if seconds <= 0 or nbytes <= 0:
        return None
    return nbytes / seconds


def replayed_bytes(start_lsn: str | None, reached_lsn: str | None) -> int:
    """The WAL a recovery replayed, in bytes: from the backup's start LSN (where its
    redo begins) to the LSN recovery reached; 0 when either is unknown."""
    if not start_lsn or not reached_lsn:
        return 0
    from pgbackup.formats.lsn import parse_lsn

    return max(0, parse_lsn(reached_lsn) - parse_lsn(start_lsn))
