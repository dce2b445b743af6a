"""The decoding side: pull-style readers that undo age and compression layers.

:func:`open_decoder` stacks the :class:`_RawDecoder` layers (age decryption in a thread,
zstd with its frame tracker to catch a stream cut short, gzip, lz4) under one buffered
reader, bounded in memory whatever the stream length. It is the largest part of the
codecs, and reading shares nothing with the encoding pipeline but the spec and the keys,
hence its own module.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from pgbackup.errors import PgBackupError
from pgbackup.formats.codecs.keys import (
    _age,
    _decrypt_error,
    _missing_identity,
    _parse_identities,
)
from pgbackup.formats.codecs.spec import (
    _QUEUE_DEPTH,
    CHUNK_SIZE,
    CodecSpec,
    CorruptDataError,
)


def _read_source(source: Any, n: int) -> bytes:
    data = source.read(n)
    return b"" if data is None else bytes(data)


class _RawDecoder(io.RawIOBase):
    """Base for the pull-style layers: subclasses implement ``_read(n)`` (b"" at EOF)."""

    def __init__(self, what: str):
        super().__init__()
        self._what = what
        self._pending = b""

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _readinto(self, buffer: Any) -> int | None:
        """Decode straight into ``buffer`` when the layer can (None: it cannot).

        A restore decodes hundreds of MiB; every intermediate bytes object is a copy and
        fresh pages for the kernel to fault in and zero.
        """
        return None

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        if size == 0:
            return 0
        if not self._pending:
            direct = self._readinto(buffer)
            if direct is not None:
                return direct
        data = self._pending
        if not data:
            data = self._read(max(size, CHUNK_SIZE))
        if len(data) > size:
            self._pending = data[size:]
            data = data[:size]
        else:
            self._pending = b""
        buffer[: len(data)] = data
        return len(data)

    def _corrupt(self, detail: str) -> CorruptDataError:
        return CorruptDataError(
            f"{self._what} cannot be decompressed: {detail}",
            hint="the stored object is truncated or damaged; run 'invoke verify' and use another backup",
        )


class _Passthrough(_RawDecoder):
    def __init__(self, source: Any, what: str):
        super().__init__(what)
        self._source = source

    def _read(self, n: int) -> bytes:
        return _read_source(self._source, n)


class _ZstdFrameTracker:
    """Follows zstd frame boundaries (RFC 8878) in the compressed bytes.

    python-zstandard's stream reader reports a cut-short frame as a clean end of stream;
    this tracker tells whether the input stopped exactly at a frame boundary.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 4
        self._state = "magic"
        self._skip = 0
        self._checksum = False
        self.frames = 0
        self.seen = 0
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self.frames > 0 and self._state == "magic" and not self._buf and not self._skip

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        self.seen += end
        while True:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if self._skip:
                    return
            want = self._need - len(self._buf)
            if end - pos < want:
                self._buf += view[pos:]
                return
            if self._buf:
                self._buf += view[pos : pos + want]
                field = bytes(self._buf)
                self._buf.clear()
            else:
                field = bytes(view[pos : pos + want])
            pos += want
            self._advance(field)

    def _advance(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = "fhd", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skipsize", 4
            else:
                raise ValueError("not zstd data (bad frame magic number)")
        elif state == "skipsize":
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = "magic", 4
        elif state == "fhd":
            fhd = field[0]
            single = bool(fhd & 0x20)
            fcs = (0, 2, 4, 8)[fhd >> 6] or (1 if single else 0)
            did = (0, 1, 2, 4)[fhd & 3]
            self._checksum = bool(fhd & 4)
            self._skip = (0 if single else 1) + did + fcs
            self._state, self._need = "block", 3
        elif state == "block":
            header = int.from_bytes(field, "little")
            kind = (header >> 1) & 3
            if kind == 3:
                raise ValueError("reserved zstd block type")
            self._skip = 1 if kind == 1 else header >> 3
            if header & 1:  # last block
                if self._checksum:
                    self._state, self._need = "checksum", 4
                else:
                    self._state, self._need = "magic", 4
                    self.frames += 1
        else:  # checksum
            self._state, self._need = "magic", 4
            self.frames += 1


class _TrackedSource:
    def __init__(self, source: Any, tracker: _ZstdFrameTracker):
        self._source = source
        self._tracker = tracker

    def read(self, n: int = -1) -> bytes:
        data = _read_source(self._source, n)
        if data:
            try:
                self._tracker.feed(data)
            except ValueError as exc:
                self._tracker.error = str(exc)
                raise
        return data


class _ZstdDecoder(_RawDecoder):
    def __init__(self, source: Any, what: str):
        super().__init__(what)
        import zstandard

        self._zstd_error = zstandard.ZstdError
        self._tracker = _ZstdFrameTracker()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(Any, _TrackedSource(source, self._tracker)),
            read_size=CHUNK_SIZE,
            read_across_frames=True,
            closefd=False,
        )

    def _read(self, n: int) -> bytes:
        return cast(bytes, self._decode(self._reader.read, n))

    def _readinto(self, buffer: Any) -> int:
        return cast(int, self._decode(self._reader.readinto, buffer))

    def _decode(self, method: Callable[[Any], Any], arg: Any) -> Any:
        try:
            result = method(arg)
        except self._zstd_error as exc:
            raise self._corrupt(str(exc)) from None
        except ValueError:
            if self._tracker.error is None:
                raise
            raise self._corrupt(self._tracker.error) from None
        if not result and not self._tracker.complete:
            if self._tracker.seen == 0:
                raise self._corrupt("the stream is empty")
            raise self._corrupt("the zstd stream ends in the middle of a frame (truncated)")
        return result


class _GzipDecoder(_RawDecoder):
    def __init__(self, source: Any, what: str):
        super().__init__(what)
        self._source = source
        self._dec = zlib.decompressobj(31)

    def _read(self, n: int) -> bytes:
        try:
            while True:
                dec = self._dec
                if dec.eof:
                    rest = dec.unused_data or _read_source(self._source, CHUNK_SIZE)
                    if not rest:
                        return b""
                    self._dec = dec = zlib.decompressobj(31)  # next gzip member
                    out = dec.decompress(rest, n)
                else:
                    data = dec.unconsumed_tail or _read_source(self._source, CHUNK_SIZE)
                    if not data:
                        raise self._corrupt("the gzip stream ends early (truncated)")
                    out = dec.decompress(data, n)
                if out:
                    return out
        except zlib.error as exc:
            raise self._corrupt(str(exc)) from None


class _Lz4Decoder(_RawDecoder):
    def __init__(self, source: Any, what: str):
        super().__init__(what)
        import lz4.frame

        self._factory = lz4.frame.LZ4FrameDecompressor
        self._source = source
        self._dec = self._factory()

    def _read(self, n: int) -> bytes:
        try:
            while True:
                dec = self._dec
                if dec.eof:
                    rest = dec.unused_data or _read_source(self._source, CHUNK_SIZE)
                    if not rest:
                        return b""
                    self._dec = dec = self._factory()  # next frame
                    out = dec.decompress(rest, n)
                elif dec.needs_input:
                    data = _read_source(self._source, CHUNK_SIZE)
                    if not data:
                        raise self._corrupt("the lz4 stream ends early (truncated)")
                    out = dec.decompress(data, n)
                else:
                    out = dec.decompress(b"", n)
                if out:
                    return cast(bytes, out)
        except RuntimeError as exc:  # lz4.frame reports corrupt input as RuntimeError
            raise self._corrupt(str(exc)) from None


_END = object()


class _CallbackWriter:
    def __init__(self, write: Callable[[bytes], int]):
        self.write = write

    def flush(self) -> None:
        pass


class _SourceGuard:
    """Wraps the ciphertext source for pyrage, remembering an error raised by the source."""

    def __init__(self, source: Any, closed: threading.Event):
        self._source = source
        self._closed = closed
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        if self._closed.is_set():
            raise OSError("reader closed")
        try:
            return _read_source(self._source, n)
        except BaseException as exc:
            self.error = exc
            raise


class _DecryptDecoder(_RawDecoder):
    """Pull-style age decryption: pyrage.decrypt_io runs in a thread feeding a bounded queue."""

    def __init__(self, source: Any, identities: list[Any], what: str):
        super().__init__(what)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._stop = threading.Event()
        self._guard = _SourceGuard(source, self._stop)
        self._buf = bytearray()
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(identities,), name="pgbackup-age-decrypt", daemon=True
        )
        self._thread.start()

    # producer side (thread) --------------------------------------------------
    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise OSError("reader closed")

    def _write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= CHUNK_SIZE:
            self._put(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def _run(self, identities: list[Any]) -> None:
        try:
            _age().decrypt_io(self._guard, _CallbackWriter(self._write), identities)
            if self._buf:
                self._put(bytes(self._buf))
            self._put(_END)
        except BaseException as exc:
            if self._stop.is_set():
                return
            error: BaseException
            if isinstance(self._guard.error, PgBackupError):
                error = self._guard.error
            elif self._guard.error is not None:
                error = PgBackupError(
                    f"reading {self._what} failed: {self._guard.error}",
                    hint="check the repository is reachable and the object is intact",
                )
            else:
                error = _decrypt_error(exc, self._what)
            with contextlib.suppress(OSError):  # the reader was closed meanwhile
                self._put(error)

    # consumer side -----------------------------------------------------------
    def _read(self, n: int) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if item is _END:
            self._done = True
            return b""
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return cast(bytes, item)

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        super().close()


class _Decoded(io.BufferedReader):
    """The stream returned by open_decoder; closing it does not close the source."""

    def __init__(self, raw: _RawDecoder, inner: list[_RawDecoder]):
        super().__init__(raw, buffer_size=CHUNK_SIZE)
        self._inner = inner

    def close(self) -> None:
        try:
            super().close()
        finally:
            for layer in self._inner:
                layer.close()


def open_decoder(
    source: BinaryIO,
    spec: CodecSpec,
    *,
    identities: list[str] | None = None,
    what: str = "stored object",
) -> BinaryIO:
    """Readable stream of the decoded bytes of ``source`` (written with ``spec``).

    Streaming and bounded in memory. ``identities`` are age secret keys (see
    :func:`load_identities`). ``what`` names the object in error messages. Damage is
    reported as :class:`CorruptDataError` or :class:`EncryptionError` from ``read()``,
    including a stream cut short. Closing the result does not close ``source``.
    """
    layers: list[_RawDecoder] = []
    inner: Any = source
    if spec.encrypted:
        if not identities:
            raise _missing_identity()
        decrypt = _DecryptDecoder(source, _parse_identities(identities), what)
        layers.append(decrypt)
        inner = decrypt
    raw: _RawDecoder
    if spec.compression == "zstd":
        raw = _ZstdDecoder(inner, what)
    elif spec.compression == "lz4":
        raw = _Lz4Decoder(inner, what)
    elif spec.compression == "gzip":
        raw = _GzipDecoder(inner, what)
    else:
        raw = layers.pop() if layers else _Passthrough(inner, what)
    return cast(BinaryIO, _Decoded(raw, layers))
