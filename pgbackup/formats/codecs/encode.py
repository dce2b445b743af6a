"""The encoding pipeline: compression, then optional age encryption, push-style.

:class:`Encoder` takes bytes on the caller's thread and pushes encoded chunks to a sink;
age encryption runs pyrage in a background thread bridged by bounded queues
(:class:`_AgeEncryptPipe`). Kept apart from decoding, which is the mirror image built on
pull-style readers; the compression libraries are imported on first use.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from pgbackup.errors import EncryptionError
from pgbackup.formats.codecs.keys import _age, _parse_recipients
from pgbackup.formats.codecs.spec import _QUEUE_DEPTH, CHUNK_SIZE, CodecSpec


def _make_compress(
    spec: CodecSpec, threads: int
) -> tuple[Callable[[bytes | memoryview], bytes], Callable[[], bytes]]:
    """(compress(data) -> bytes, flush() -> bytes) for the spec's method."""
    if spec.compression == "zstd":
        cobj = _zstd_compressor(spec.level, threads).compressobj()
        return cobj.compress, cobj.flush
    if spec.compression == "lz4":
        import lz4.frame

        comp = lz4.frame.LZ4FrameCompressor(
            compression_level=spec.level,
            content_checksum=True,
            block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        )
        header = [comp.begin()]

        def lz4_compress(data: bytes | memoryview) -> bytes:
            out = comp.compress(data)
            if header:
                out = header.pop() + out
            return cast(bytes, out)

        def lz4_flush() -> bytes:
            tail = comp.flush()
            return cast(bytes, header.pop() + tail if header else tail)

        return lz4_compress, lz4_flush
    if spec.compression == "gzip":
        zobj = zlib.compressobj(spec.level, zlib.DEFLATED, 31)
        return zobj.compress, zobj.flush
    return bytes, lambda: b""


def _zstd_compressor(level: int, threads: int) -> Any:
    import zstandard

    return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)


_zero_frames: dict[tuple[int, int], bytes] = {}


def zero_frame(size: int, level: int) -> bytes:
    """One zstd frame of ``size`` zero bytes, made once per process.

    zstd frames written one after another decode as the concatenation of their contents
    (RFC 8878, section 3.1: zstd data is made up of one or more independent frames;
    `zstd -d` and pgbackup's decoder, ``read_across_frames``, read them all). A run of
    zeros is common at the end of a streamed WAL segment (pg_basebackup pads
    ``pg_wal.tar`` to the segment size before it writes the WAL over it), and comparing a
    MiB with zeros costs a small part of compressing it (issue #15: the end of a backup).
    """
    key = (size, level)
    frame = _zero_frames.get(key)
    if frame is None:
        frame = _zero_frames[key] = _zstd_compressor(level, 0).compress(bytes(size))
    return frame


class _QueueReader:
    """File-like ``read()`` over a queue of byte chunks (consumed by pyrage.encrypt_io)."""

    def __init__(self, chunks: queue.Queue[bytes | None]):
        self._chunks = chunks
        self._view = memoryview(b"")
        self._pos = 0
        self._eof = False
        self.aborted = False

    def read(self, n: int = -1) -> bytes:
        while self._pos >= len(self._view):
            if self._eof:
                return b""
            item = self._chunks.get()
            if item is None:
                if self.aborted:
                    # Fail the encryption instead of letting it write a valid final chunk.
                    raise OSError("encoding aborted")
                self._eof = True
                return b""
            self._view, self._pos = memoryview(item), 0
        end = len(self._view) if n is None or n < 0 else self._pos + n
        out = bytes(self._view[self._pos : end])
        self._pos += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _DequeWriter:
    def __init__(self, out: deque[bytes]):
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class _AgeEncryptPipe:
    """Push-style age encryption: feed() plaintext, encrypted output goes to ``emit``.

    pyrage runs in a thread reading a bounded queue; its output is handed back through a
    deque drained by the caller's thread, so ``emit`` (the sink) is only ever called from
    the thread that calls feed()/finish(). The caller never blocks on the output side, so
    the two cannot deadlock; output pending at any time is bounded by the queue depth.
    """

    def __init__(self, recipients: list[Any], emit: Callable[[bytes], None]):
        self._emit = emit
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._reader = _QueueReader(self._chunks)
        self._out: deque[bytes] = deque()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(recipients,), name="pgbackup-age-encrypt", daemon=True
        )
        self._thread.start()

    def _run(self, recipients: list[Any]) -> None:
        try:
            _age().encrypt_io(self._reader, _DequeWriter(self._out), recipients)
        except BaseException as exc:  # reported on the caller's thread
            self._error = exc

    def _drain(self) -> None:
        out = self._out
        while out:
            self._emit(out.popleft())

    def _check(self) -> None:
        if self._error is not None:
            raise EncryptionError(
                f"age encryption failed: {self._error}",
                hint="check the recipients in encryption.recipients_file",
            )

    def _put(self, item: bytes | None) -> None:
        while True:
            self._check()
            try:
                self._chunks.put(item, timeout=0.05)
                break
            except queue.Full:
                self._drain()
        self._drain()

    def feed(self, data: bytes) -> None:
        if data:
            self._put(data)

    def finish(self) -> None:
        self._put(None)
        self._thread.join()
        self._check()
        self._drain()

    def abort(self) -> None:
        self._reader.aborted = True
        # Make room for the sentinel: nothing queued will be used any more.
        while True:
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):
            self._chunks.put_nowait(None)
        self._out.clear()


class Encoder:
    """Compress (and optionally age-encrypt) a byte stream, pushing output to ``sink``.

    ``write()`` any number of times, then ``close()`` exactly once (it flushes the
    trailers). ``sink`` is called on the caller's thread with chunks of about
    :data:`CHUNK_SIZE` bytes. Use as a context manager to close on success and abort
    (emit nothing more) on error. ``threads`` is zstd's worker count: 0 compresses on the
    calling thread, -1 uses every core, N uses N workers.
    """

    def __init__(
        self,
        spec: CodecSpec,
        sink: Callable[[bytes], Any],
        *,
        recipients: list[str] | None = None,
        threads: int = 0,
    ):
        self.spec = spec
        self.raw_bytes = 0
        self.encoded_bytes = 0
        self._sink = sink
        self._closed = False
        self._out = bytearray()
        self._pending = bytearray()
        self._threads = threads
        self._compress, self._flush = _make_compress(spec, threads)
        self._frame_open = False  # zstd: data went into the current frame
        self._pipe: _AgeEncryptPipe | None = None
        if spec.encrypted:
            if not recipients:
                raise EncryptionError(
                    "encryption is enabled but no age recipients were given",
                    hint="set encryption.recipients_file in backup.yaml to a file of 'age1...' public keys",
                )
            self._pipe = _AgeEncryptPipe(_parse_recipients(recipients), self._emit)

    # output side ------------------------------------------------------------
    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if not self._out and len(data) >= CHUNK_SIZE:
            self._deliver(data)
            return
        self._out += data
        if len(self._out) >= CHUNK_SIZE:
            self._deliver(bytes(self._out))
            self._out.clear()

    def _deliver(self, data: bytes) -> None:
        self.encoded_bytes += len(data)
        self._sink(data)

    def _stage(self, data: bytes) -> None:
        """Compressed bytes: to the encryption thread (in ~CHUNK_SIZE pieces) or out."""
        if self._pipe is None:
            self._emit(data)
            return
        if not self._pending and len(data) >= CHUNK_SIZE:
            self._pipe.feed(data)
            return
        self._pending += data
        if len(self._pending) >= CHUNK_SIZE:
            self._pipe.feed(bytes(self._pending))
            self._pending.clear()

    # input side -------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        """Take ``data``; it is consumed before this returns (the caller may reuse it)."""
        if self._closed:
            raise ValueError("write to a closed Encoder")
        if not data:
            return
        self.raw_bytes += len(data)
        self._frame_open = True
        try:
            out = self._compress(data)
            if out:
                self._stage(out)
        except BaseException:
            self.abort()  # a failing sink or encryption thread: the output is unusable
            raise

    def _write_zeros(self, size: int) -> None:
        """``size`` zero bytes as a frame of their own (zstd; see :func:`zero_frame`):
        the current frame, if it holds data, ends first, and the next data starts one."""
        try:
            if self._frame_open:
                self._stage(self._flush())
                self._compress, self._flush = _make_compress(self.spec, self._threads)
                self._frame_open = False
            self._stage(zero_frame(size, self.spec.level))
            self.raw_bytes += size
        except BaseException:
            self.abort()
            raise

    def write_file(self, path: str | os.PathLike[str], read_size: int = 1 << 20) -> None:
        """Every byte of the file at ``path``, read into one buffer again and again: a
        fresh object per read costs its page faults each time (16 MiB of pg_wal.tar:
        ~2 ms of a backup's end, issue #15). :meth:`write` consumes what it is given.
        With zstd, a whole read of zeros is stored as a ready-made frame."""
        if self._closed:
            raise ValueError("write to a closed Encoder")
        buffer = bytearray(read_size)
        view = memoryview(buffer)
        zeros = bytes(read_size) if self.spec.compression == "zstd" else None
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                if n == read_size and buffer == zeros:  # a memcmp
                    self._write_zeros(n)
                else:
                    self.write(view[:n])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # A frame holds data, or nothing was written at all (then an empty frame);
            # after only ready-made frames of zeros, there is nothing to end.
            if self._frame_open or not self.raw_bytes:
                self._stage(self._flush())
            if self._pipe is not None:
                self._pipe.feed(bytes(self._pending))
                self._pending.clear()
                self._pipe.finish()
            if self._out:
                self._deliver(bytes(self._out))
                self._out.clear()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop without flushing: nothing more reaches the sink; the output is incomplete."""
        self._closed = True
        self._out.clear()
        self._pending.clear()
        if self._pipe is not None:
            self._pipe.abort()

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
