"""The shared half of every object-store repository (S3, GCS, Azure Blob).

Barman's CloudInterface idea: this base owns what is the same everywhere —

* key <-> object-name mapping under the spec's ``prefix``;
* streamed writes with bounded memory: a writer fills one part (``part_size``, 8 MiB by
  default) and hands each full part to a pool of ``streams`` threads (4 by default), so
  up to ``streams`` parts are in flight while the next one fills; ``write`` blocks when
  the window is full, so memory stays about (streams + 1) x part_size. An object smaller
  than one part is sent with a single put; anything larger goes through the provider's
  multipart mechanism, each part retried alone, and the last part is held back until
  ``commit`` (which waits for every part, in number order) so that the provider can
  finish the upload with it (GCS needs the final chunk to close a resumable session, and
  a resumable session takes its chunks in order: GCS uploads one part at a time, in
  the background, ``parallel_parts = False``);
* streamed reads: the first GET tells the object's size and version (ETag, generation);
  an object larger than one part is then read as ranged GETs of ``part_size`` bytes, up
  to ``streams`` in flight, each pinned to that version (a concurrent overwrite fails
  the read, it never mixes two objects) and retried alone, handed to the caller strictly
  in order (:class:`RangedReader`); memory stays about (streams + 1) x part_size;
* retries of transient failures (connection reset, timeouts, HTTP 408/429/5xx,
  throttling) with exponential backoff and jitter, then one clear StorageError. Where the
  SDK has a good retry layer of its own (botocore "standard" mode, azure-core's
  ExponentialRetry) the provider configures it and sets ``attempts`` to 1, so tries do not
  multiply; GCS resumable-session requests are raw HTTP and retried here (4 attempts,
  resuming from the offset the session reports). Streamed reads resume at the current
  offset (ranged GET) after a mid-body failure, for every provider;

and each provider implements a handful of primitives (``_put``, ``_begin``,
``_upload_part``, ``_complete``, ``_abort_upload``, ``_open_read``, ``_list``,
``_stat``, ``_delete``; for ranged reads ``_open_read_info`` and ``_read_range``) plus
``_classify`` which turns an SDK exception into "transient", "not found", "exists" or a
user-facing StorageError.

Nothing here imports a cloud SDK.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, TypeVar

from pgbackup.errors import ConfigError, ObjectExists, ObjectNotFound, StorageError
from pgbackup.storage.base import ObjectInfo, ObjectWriter, Storage, not_found

T = TypeVar("T")

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_STREAMS = 4  # requests in flight per object (parts up, ranges down)
MAX_STREAMS = 64
DEFAULT_ATTEMPTS = 4  # our own attempts, on top of whatever the SDK already retried
BACKOFF_BASE = 0.5  # seconds; doubled each attempt, with jitter
BACKOFF_MAX = 8.0

# What ``_classify`` answers.
TRANSIENT = "transient"
NOT_FOUND = "not_found"
EXISTS = "exists"


def parse_size(value: Any, what: str) -> int:
    """``8388608``, ``"8MiB"``, ``"16 MB"``, ``"512k"`` -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    units = {
        "": 1,
        "b": 1,
        "k": 1024,
        "kb": 1024,
        "kib": 1024,
        "m": MiB,
        "mb": MiB,
        "mib": MiB,
        "g": 1024 * MiB,
        "gb": 1024 * MiB,
        "gib": 1024 * MiB,
    }
    digits = len(text) - len(text.lstrip("0123456789"))
    number, unit = text[:digits], text[digits:]
    if not number or unit not in units:
        raise ConfigError(f"{what}: {value!r} is not a size (examples: 8MiB, 16777216)")
    return int(number) * units[unit]


class ShortRange(ConnectionError):
    """A ranged GET answered fewer (or more) bytes than asked: transient, fetched again."""


class ObjectChanged(StorageError):
    """The object was overwritten while it was being read in ranges."""


def normalize_prefix(prefix: Any) -> str:
    """``"platform"`` / ``"/platform/"`` / ``None`` -> ``"platform/"`` / ``""``."""
    text = str(prefix or "").strip("/")
    return f"{text}/" if text else ""


class CloudWriter(ObjectWriter):
    """A streamed upload, up to ``streams`` parts in flight; see the module docstring."""

    def __init__(self, storage: CloudStorage, key: str, if_absent: bool):
        self.storage = storage
        self.key = key
        self.name = storage.object_name(key)
        self.if_absent = if_absent
        self.part_size = storage.part_size
        self.streams = storage.streams if storage.parallel_parts else 1
        self.buffer = bytearray()
        self.upload: Any = None  # the provider's handle of a started multipart upload
        self.parts: list[Future[Any]] = []  # one per part sent, in number order
        self.offset = 0  # bytes already handed over as parts
        self.closed = False
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Any]] = deque()  # parts not yet seen finished
        #: The most parts this writer ever held at once (in flight + the one filling).
        self.max_buffered_parts = 0

    def write(self, data: bytes) -> int:
        if self.closed:
            raise StorageError(f"write to {self.storage.location(self.key)} after commit/abort")
        self._reap()
        self.buffer += data
        # Keep a full part back: it may be the last one, which _complete sends.
        while len(self.buffer) > self.part_size:
            self._send_part(bytes(self.buffer[: self.part_size]))
            del self.buffer[: self.part_size]
        return len(data)

    def _reap(self) -> None:
        """Forget finished parts; raise a failure (a part's, after its own retries)."""
        running: deque[Future[Any]] = deque()
        for fut in self._pending:
            if fut.done():
                fut.result()
            else:
                running.append(fut)
        self._pending = running

    def _send_part(self, chunk: bytes) -> None:
        st = self.storage
        if self.upload is None:
            self.upload = st.call(
                "start upload of", self.key, lambda: st._begin(self.name, self.if_absent)
            )
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="pgbackup-put")
        while len(self._pending) >= self.streams:  # the window is full: wait for a slot
            wait(list(self._pending), return_when=FIRST_COMPLETED)
            self._reap()
        assert self._pool is not None
        upload, number, offset = self.upload, len(self.parts) + 1, self.offset
        fut = self._pool.submit(
            st.call,
            "upload part of",
            self.key,
            lambda: st._upload_part(upload, self.name, number, offset, chunk),
        )
        self.parts.append(fut)
        self._pending.append(fut)
        self.offset += len(chunk)
        self.max_buffered_parts = max(self.max_buffered_parts, len(self._pending) + 1)

    def _stop_pool(self) -> None:
        """Cancel parts not started, wait for those in flight."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def commit(self) -> None:
        if self.closed:
            raise StorageError(f"commit of {self.storage.location(self.key)} after commit/abort")
        st = self.storage
        data = bytes(self.buffer)
        self.buffer = bytearray()
        try:
            if self.upload is None:
                st.call("store", self.key, lambda: st._put(self.name, data, self.if_absent))
            else:
                done = [fut.result() for fut in self.parts]  # in number order; first failure
                self._stop_pool()
                st.call(
                    "complete upload of",
                    self.key,
                    lambda: st._complete(
                        self.upload, self.name, done, self.offset, data, self.if_absent
                    ),
                )
        except ObjectExists:
            raise ObjectExists(
                f"{st.location(self.key)} already exists (not overwritten)"
            ) from None
        self.closed = True
        self.upload = None

    def abort(self) -> None:
        self.buffer = bytearray()
        if self.closed:
            return
        self.closed = True
        self._stop_pool()
        if self.upload is not None:
            upload, self.upload = self.upload, None
            # Best effort: an unfinished upload is never visible anyway.
            with contextlib.suppress(Exception):
                self.storage._abort_upload(upload, self.name)


class CloudStorage(Storage):
    """Common behaviour of the object stores; subclasses implement the primitives."""

    kind = "cloud"
    #: Part sizes must be a multiple of this (GCS: 256 KiB) and at least ``min_part_size``.
    part_multiple = 1
    min_part_size = 1
    max_part_size = 4000 * MiB
    #: Whether parts of one upload may be sent at once (not GCS's resumable session).
    parallel_parts = True

    def __init__(
        self,
        *,
        prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
        attempts: int = 0,
        streams: int = DEFAULT_STREAMS,
    ):
        self.prefix = normalize_prefix(prefix)
        if not 1 <= streams <= MAX_STREAMS:
            raise ConfigError(f"repository.streams: {streams} is outside 1..{MAX_STREAMS}")
        self.streams = streams
        if part_size < self.min_part_size or part_size > self.max_part_size:
            raise ConfigError(
                f"repository.part_size: {part_size} bytes is outside what {self.kind} accepts "
                f"({self.min_part_size}..{self.max_part_size})"
            )
        if part_size % self.part_multiple:
            raise ConfigError(
                f"repository.part_size: {self.kind} needs a multiple of {self.part_multiple} bytes"
            )
        self.part_size = part_size
        self.attempts = attempts or DEFAULT_ATTEMPTS

    @staticmethod
    def common_options(spec: dict[str, Any]) -> dict[str, Any]:
        opts: dict[str, Any] = {"prefix": spec.get("prefix", "")}
        if spec.get("part_size") is not None:
            opts["part_size"] = parse_size(spec["part_size"], "repository.part_size")
        if spec.get("retries") is not None:
            opts["attempts"] = int(spec["retries"]) + 1
        if spec.get("streams") is not None:
            opts["streams"] = int(spec["streams"])
        return opts

    # --- naming ------------------------------------------------------------------------

    def object_name(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid repository key {key!r}")
        return self.prefix + key

    def key_of(self, name: str) -> str:
        return name[len(self.prefix) :]

    @abstractmethod
    def container_url(self) -> str:
        """``s3://bucket`` / ``gs://bucket`` / ``azure://account/container``."""

    def describe(self) -> str:
        return f"{self.container_url()}/{self.prefix}"

    def location(self, key: str) -> str:
        return f"{self.container_url()}/{self.prefix}{key}"

    # --- retries and error mapping -------------------------------------------------------

    @abstractmethod
    def _classify(self, exc: BaseException, action: str, key: str | None) -> str | StorageError:
        """TRANSIENT, NOT_FOUND, EXISTS, or the StorageError to raise for ``exc``."""

    def _sleep(self, attempt: int) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_BASE * (2 ** (attempt - 1)))
        time.sleep(delay * (0.5 + random.random() / 2))

    def call(self, action: str, key: str | None, fn: Callable[[], T], *, attempts: int = 0) -> T:
        """Run ``fn`` with retries; map failures. ObjectNotFound/ObjectExists pass through."""
        attempt = 0
        attempts = attempts or self.attempts
        while True:
            attempt += 1
            try:
                return fn()
            except StorageError:
                raise
            except Exception as exc:
                verdict = (
                    TRANSIENT if isinstance(exc, ShortRange) else self._classify(exc, action, key)
                )
                where = self.location(key or "")
                if verdict == NOT_FOUND:
                    raise not_found(self, key or "") from None
                if verdict == EXISTS:
                    raise ObjectExists(f"{where} already exists (not overwritten)") from None
                if verdict == TRANSIENT:
                    if attempt < attempts:
                        self._sleep(attempt)
                        continue
                    tries = (
                        f"after {attempt} attempts" if attempt > 1 else "(after the SDK's retries)"
                    )
                    raise StorageError(
                        f"cannot {action} {where}: still failing {tries}: {_short(exc)}",
                        hint="the storage service is unreachable or overloaded; check the "
                        "network/endpoint and retry later",
                    ) from None
                assert isinstance(verdict, StorageError)
                raise verdict from None

    # --- the Storage interface, built on the primitives ----------------------------------

    def writer(self, key: str, *, if_absent: bool = False) -> ObjectWriter:
        self.object_name(key)  # validate early
        return CloudWriter(self, key, if_absent)

    def open_read(self, key: str) -> BinaryIO:
        name = self.object_name(key)
        inner, size, version = self.call("read", key, lambda: self._open_read_info(name))
        if size is not None and size > self.part_size and self.streams > 1 and self.ranged_reads:
            return RangedReader(self, key, name, inner, size, version)  # type: ignore[return-value]
        return CloudReader(self, key, name, inner)  # type: ignore[return-value]

    prefix_listing_is_one_request = True

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        full = self.prefix + prefix
        after = None if start_after is None else self.prefix + start_after
        # Listing is a generator over pages: retry per page is the SDK's job; map errors.
        it = self.call("list", prefix or None, lambda: iter(self._list(full, after)))
        while True:
            try:
                name, size, mtime = next(it)
                if after is not None and name <= after:
                    continue  # GCS starts at it (inclusive); Azure, S3 --as-of list all
            except StopIteration:
                return
            except StorageError:
                raise
            except Exception as exc:
                verdict = self._classify(exc, "list", prefix or None)
                if isinstance(verdict, StorageError):
                    raise verdict from None
                raise StorageError(
                    f"cannot list {self.describe()}{prefix}: {_short(exc)}",
                    hint="check the network/endpoint and retry",
                ) from None
            yield ObjectInfo(key=self.key_of(name), size=size, mtime=mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        name = self.object_name(key)
        try:
            found = self.call("stat", key, lambda: self._stat(name))
        except ObjectNotFound:
            return None
        if found is None:
            return None
        size, mtime = found
        return ObjectInfo(key=key, size=size, mtime=mtime)

    def delete(self, key: str) -> None:
        name = self.object_name(key)
        try:
            self.call("delete", key, lambda: self._delete(name))
        except ObjectNotFound:
            return

    # --- provider primitives -------------------------------------------------------------

    @abstractmethod
    def _put(self, name: str, data: bytes, if_absent: bool) -> None:
        """Store a whole (small) object in one request."""

    @abstractmethod
    def _begin(self, name: str, if_absent: bool) -> Any:
        """Start a multipart upload; return its handle."""

    @abstractmethod
    def _upload_part(self, upload: Any, name: str, number: int, offset: int, data: bytes) -> Any:
        """Send part ``number`` (1-based; ``offset`` bytes precede it); return what _complete needs."""

    @abstractmethod
    def _complete(
        self,
        upload: Any,
        name: str,
        parts: Sequence[Any],
        offset: int,
        last: bytes,
        if_absent: bool,
    ) -> None:
        """Send ``last`` (possibly empty) as the final part and make the object visible."""

    @abstractmethod
    def _abort_upload(self, upload: Any, name: str) -> None:
        """Discard a started multipart upload."""

    @abstractmethod
    def _open_read(self, name: str, start: int) -> Any:
        """A streaming reader (``read(n)``, ``close()``) from byte ``start``; raise the SDK's
        not-found error when absent. Returning b"" from read means the end."""

    #: Whether the provider implements ``_read_range`` (ranged, version-pinned GETs).
    ranged_reads = False

    def _open_read_info(self, name: str) -> tuple[Any, int | None, Any]:
        """(reader from byte 0, the object's size, its version) from one GET; the size
        and version are None when the answer does not tell (then no ranged reads)."""
        return self._open_read(name, 0), None, None

    def _read_range(self, name: str, start: int, length: int, version: Any) -> bytes:
        """``length`` bytes from ``start`` of the object's ``version`` (as
        ``_open_read_info`` told it); raise ObjectChanged when that version is gone."""
        raise NotImplementedError

    @abstractmethod
    def _list(self, prefix: str, start_after: str | None) -> Iterator[tuple[str, int, float]]:
        """(object name, size, mtime) of every object under ``prefix``; from
        ``start_after`` on where the service can start a listing there (a kind that
        cannot lists them all: the caller drops what sorts before it)."""

    @abstractmethod
    def _stat(self, name: str) -> tuple[int, float] | None:
        """(size, mtime) or None."""

    @abstractmethod
    def _delete(self, name: str) -> None:
        """Remove the object (absent may raise the SDK's not-found error)."""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


class CloudReader(io.RawIOBase):
    """A streamed read that resumes at the current offset after a transient failure."""

    def __init__(self, storage: CloudStorage, key: str, name: str, inner: Any):
        super().__init__()
        self.storage = storage
        self.key = key
        self.name = name
        self.inner = inner
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed stream")
        attempt = 0
        while True:
            attempt += 1
            try:
                data = self.inner.read(size if size is not None and size >= 0 else -1)
                break
            except Exception as exc:
                verdict = self.storage._classify(exc, "read", self.key)
                if verdict != TRANSIENT or attempt >= max(self.storage.attempts, DEFAULT_ATTEMPTS):
                    if isinstance(verdict, StorageError):
                        raise verdict from None
                    raise StorageError(
                        f"cannot read {self.storage.location(self.key)} at byte {self.pos}: "
                        f"{_short(exc)}",
                        hint="check the network/endpoint and retry",
                    ) from None
                self.storage._sleep(attempt)
                self._close_inner()
                self.inner = self._reopen()
        self.pos += len(data)
        return bytes(data)

    def _reopen(self) -> Any:
        pos = self.pos
        return self.storage.call("read", self.key, lambda: self.storage._open_read(self.name, pos))

    def readall(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            chunk = self.read(MiB)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _close_inner(self) -> None:
        with contextlib.suppress(Exception):
            self.inner.close()

    def close(self) -> None:
        if not self.closed:
            self._close_inner()
        super().close()


class RangedReader(io.RawIOBase):
    """A large object read as ranged GETs, up to ``streams`` in flight, handed over in order.

    The first range comes from the GET that opened the object (it told the size and the
    version); every other range is a GET pinned to that version, fetched by a pool of
    ``streams`` threads at most ``streams`` ranges ahead of the reader. A range that
    fails (refused, cut mid-body, short) is fetched again alone, up to
    ``max(attempts, 4)`` times; then the read raises one StorageError at that range's
    place in the stream: the caller never receives fewer bytes than the object holds
    without an error.
    """

    def __init__(
        self,
        storage: CloudStorage,
        key: str,
        name: str,
        first: Any,
        size: int,
        version: Any,
    ):
        super().__init__()
        self.storage = storage
        self.key = key
        self.name = name
        self.size = size
        self.version = version
        self.range_size = storage.part_size
        self.streams = storage.streams
        self.attempts = max(storage.attempts, DEFAULT_ATTEMPTS)
        self.pos = 0
        self._first: Any = first
        self._next = 0  # start of the next range to schedule
        self._window: deque[tuple[int, int, Future[bytes]]] = deque()
        self._current = memoryview(b"")
        self._offset = 0  # in _current
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="pgbackup-get")
        #: The most ranges this reader ever held (scheduled + the one being handed over).
        self.max_buffered_ranges = 0
        #: How many GETs each range took, by start offset (the first GET counts as one).
        self.tries: dict[int, int] = {}
        self._fill()

    def readable(self) -> bool:
        return True

    # --- fetching ---------------------------------------------------------------------------

    def _fill(self) -> None:
        while self._next < self.size and len(self._window) < self.streams:
            start = self._next
            length = min(self.range_size, self.size - start)
            fut = self._pool.submit(self._fetch, start, length)
            self._window.append((start, length, fut))
            self._next += length
        held = len(self._window) + (1 if self._offset < len(self._current) else 0)
        self.max_buffered_ranges = max(self.max_buffered_ranges, held)

    def _count(self, start: int) -> None:
        with self._lock:
            self.tries[start] = self.tries.get(start, 0) + 1

    def _from_first(self, length: int) -> bytes:
        """The first range, from the body of the GET that opened the object."""
        first, self._first = self._first, None
        self._count(0)
        try:
            out = bytearray()
            while len(out) < length:
                data = first.read(min(length - len(out), MiB))
                if not data:
                    break
                out += data
        except Exception:
            out = bytearray()  # fetched again below, as any failed range
        finally:
            with contextlib.suppress(Exception):
                first.close()  # the rest of the body is read as ranges
        return bytes(out)

    def _fetch(self, start: int, length: int) -> bytes:
        if self.closed:
            raise StorageError(f"read of {self.storage.location(self.key)} after close")
        if start == 0 and self._first is not None:
            data = self._from_first(length)
            if len(data) == length:
                return data
        st = self.storage

        def once() -> bytes:
            if self.closed:
                raise StorageError(f"read of {st.location(self.key)} after close")
            self._count(start)
            data = st._read_range(self.name, start, length, self.version)
            if len(data) != length:
                raise ShortRange(
                    f"bytes {start}-{start + length - 1}: {len(data)} bytes received, "
                    f"{length} expected"
                )
            return data

        return st.call("read", self.key, once, attempts=self.attempts)

    # --- reading ------------------------------------------------------------------------------

    def _advance(self) -> bool:
        """Make the next range current; False at the end of the object."""
        if not self._window:
            return False
        start, length, fut = self._window.popleft()
        try:
            data = fut.result()
        except ObjectChanged:
            raise
        except StorageError as exc:
            raise StorageError(
                f"{exc.message} (bytes {start}-{start + length - 1} of {self.size})",
                hint=exc.hint or "check the network/endpoint and retry",
            ) from None
        self._current = memoryview(data)
        self._offset = 0
        self._fill()
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read of a closed stream")
        while self._offset >= len(self._current):
            if not self._advance():
                return 0
        n = min(len(buffer), len(self._current) - self._offset)
        buffer[:n] = self._current[self._offset : self._offset + n]
        self._offset += n
        self.pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("read of a closed stream")
        while self._offset >= len(self._current):
            if not self._advance():
                return b""
        end = min(len(self._current), self._offset + size)
        data = bytes(self._current[self._offset : end])
        self._offset = end
        self.pos += len(data)
        return data

    def readall(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            chunk = self.read(self.range_size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def close(self) -> None:
        if not self.closed:
            super().close()  # ranges not started see closed and stop
            for _, _, fut in self._window:
                fut.cancel()
            self._window.clear()
            self._current = memoryview(b"")
            self._pool.shutdown(wait=False, cancel_futures=True)
            first, self._first = self._first, None
            if first is not None:
                with contextlib.suppress(Exception):
                    first.close()
