"""Extract a tar stream with parallel, durable writes.

``tar -x`` writes one file at a time and syncs nothing; a restore must be durable before
it reports success, and on a data directory most of the time goes into writing pages.
Here the caller's thread parses the (already decoded) stream and hands each chunk to a
small pool of writer threads (``os.pwrite`` releases the GIL), which also ``fsync`` every
file once its last chunk is written, so flushing overlaps extraction, as pgBackRest's
parallel restore does. A file of one chunk is created by its writer too (creating a
thousand files costs the reading thread otherwise). A larger one (relation segments, WAL
segments) is written with ``O_DIRECT`` from page-aligned buffers when its size allows:
the disk reads the bytes straight from our buffer, so they are not first copied into the
page cache (that copy was half of a restore's CPU time, measured with perf) and nothing
is left dirty for the final fsync. Where the filesystem refuses ``O_DIRECT`` the file is
written through the page cache, each chunk handed to the disk at once (sync_file_range).
Memory is bounded by the bytes in flight.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from time import perf_counter
from typing import BinaryIO, Protocol

from pgbackup.errors import RestoreError

BLOCK = 512
CHUNK = 4 * 1024 * 1024
IN_FLIGHT = 64 * 1024 * 1024
#: Writer threads. Three, not two: with every file fsynced the writers wait on the disk,
#: and a third keeps one more file in flight (bench: the base archive of a pgbench scale-20
#: cluster, 337 MiB, extracted in 0.90-0.93 s against 0.99-1.01 s with two, alternating
#: runs on this 2-core machine; four gained nothing more). Memory stays IN_FLIGHT.
WRITERS = 3


def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which starts writing a range to disk without waiting.

    PostgreSQL does the same for its own writes (``*_flush_after``): the disk works while
    the rest of the stream is decoded, instead of all at once when each file is synced.
    Measured on a settled disk (bench/backup.py): a scale-50 restore 1.89 s -> 1.66 s.
    None where there is no such call (the final fsync still makes every file durable).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE_WRITE = 2
_start_writeback = _writeback_starter()

#: Offsets, lengths and buffers of direct writes are multiples of this (the largest
#: logical block size of common disks; chunks are page-aligned mmap buffers).
DIRECT_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _open_for_chunks(path: Path, mode: int, size: int) -> tuple[int, bool]:
    """(fd, direct): a file written chunk by chunk, with O_DIRECT when its size is aligned
    and the filesystem accepts it (tmpfs and some FUSE filesystems refuse: EINVAL)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if _O_DIRECT and size % DIRECT_ALIGN == 0:
        try:
            return os.open(path, flags | _O_DIRECT, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode), False


def _pwrite_direct(fd: int, data: memoryview, offset: int) -> bool:
    """Write a chunk to an O_DIRECT file; True if it stayed direct. A filesystem that
    accepted O_DIRECT at open but refuses this write (EINVAL: an alignment it wants
    larger) gets the file switched to buffered writes, which Linux allows through
    fcntl(F_SETFL), and the chunk written again."""
    try:
        _pwrite_all(fd, data, offset)
        return True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
    _pwrite_all(fd, data, offset)
    return False


#: Members for which this answers True are restored as sparse files of their size (no
#: data written): ``pgbackup extract`` restores only the databases and relations it dumps,
#: as pgBackRest's ``--db-include`` does. A context variable, so that the scratch
#: restore can set it around ``run_restore`` without a parameter through every layer.
SPARSE: contextvars.ContextVar[Callable[[str], bool] | None] = contextvars.ContextVar(
    "pgbackup_untar_sparse", default=None
)


class PhaseRecorder(Protocol):
    """What times the extraction (``pgbackup.engine.phases.Phases``): ``begin`` on the
    thread making a call, ``end`` with the phase it counts to."""

    def begin(self) -> float: ...

    def end(self, name: str, began: float, nbytes: int = 0) -> None: ...

    def add(self, name: str, seconds: float, nbytes: int = 0) -> None: ...


#: Set around an extraction to learn where its time goes (issue #26): the writers' writes
#: count to ``write`` and their fsyncs (of files and directories) to ``sync``, per chunk,
#: never per byte (the caller times its reads of the decoded stream: engine/objects).
#: None: nothing timed.
PHASES: contextvars.ContextVar[PhaseRecorder | None] = contextvars.ContextVar(
    "pgbackup_untar_phases", default=None
)


def _skip(stream: BinaryIO, n: int) -> None:
    """Read and drop ``n`` bytes of the stream (a sparse member's data), chunk by chunk."""
    while n > 0:
        data = stream.read(min(n, CHUNK))
        if not data:
            raise RestoreError("the backup's tar stream ended in the middle of a member")
        n -= len(data)


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if not field:
        return 0
    if field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
    return int(field, 8)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    parts = []
    while n > 0:
        data = stream.read(min(n, CHUNK))
        if not data:
            raise RestoreError("the backup's tar stream ended in the middle of a member")
        parts.append(data)
        n -= len(data)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _fill(stream: BinaryIO, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        count = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not count:
            raise RestoreError("the backup's tar stream ended in the middle of a member")
        got += count


class _BufferPool:
    """Up to ``count`` reusable buffers of ``size`` bytes: taking one blocks while all are
    in flight (the memory bound). Reuse matters: a fresh buffer per chunk costs the kernel
    a page fault and a zeroed page for every 4 KiB restored."""

    def __init__(self, count: int, size: int):
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(count)
        self._size = size

    def take(self) -> mmap.mmap:
        """A free buffer: anonymous memory, so page-aligned as O_DIRECT requires."""
        self._slots.acquire()
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return mmap.mmap(-1, self._size)

    def give_back(self, buffer: mmap.mmap) -> None:
        self._free.put(buffer)
        self._slots.release()


def _safe_path(root: Path, name: str) -> Path:
    name = name[2:] if name.startswith("./") else name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or name.startswith("/"):
        raise RestoreError(
            f"refusing tar member {name!r}: it would land outside the data directory"
        )
    return root.joinpath(*parts)


class _OpenFile:
    """A file being written: synced and closed after its last chunk.

    Every chunk of one file goes to the same writer lane, in order, so no lock is needed.
    """

    def __init__(self, fd: int, pending: int, direct: bool = False, size: int = 0):
        self.fd = fd
        self.pending = pending
        self.direct = direct
        self.size = size

    def done_one(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            try:
                os.fsync(self.fd)
            finally:
                os.close(self.fd)


REGULAR = (b"0", b"\0", b"7")  # a file's data follows its header
EXTENSIONS = (b"L", b"x", b"g")  # GNU long name, pax headers: about the next member


class _Member:
    """One tar header: the member's type, name (as stored), size and mode."""

    __slots__ = ("header", "kind", "name", "padded", "size")

    def __init__(self, header: bytes):
        self.header = header
        self.size = _octal(header[124:136])
        self.kind = header[156:157]
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and prefix:
            name = f"{prefix}/{name}"
        self.name = name
        self.padded = self.size + (-self.size % BLOCK)

    @property
    def mode(self) -> int:
        return _octal(self.header[100:108]) & 0o700 or 0o600

    @property
    def link_target(self) -> str:
        return self.header[157:257].split(b"\0", 1)[0].decode("utf-8", "replace")


def extract(
    stream: BinaryIO,
    root: Path,
    workers: int = WRITERS,
    on_bytes: Callable[[int], None] | None = None,
    sparse: Callable[[str], bool] | None = None,
    keep: Callable[[str], bool] | None = None,
) -> int:
    """Extract the tar ``stream`` under ``root``; returns payload bytes written.

    ``sparse`` (default: :data:`SPARSE`) names members whose data is read past and left
    out: the file gets its size and holds zeros (a sparse file, nothing written).
    ``keep`` names members whose file on disk is already right (a delta restore): read
    past, the file left as it is.

    The procedure: read each member's header, place the member (a directory, a link, a
    file handed to the writers), until the end of the archive or a writer's failure; then
    wait for the writers and make the directories' entries durable.
    """
    phases = PHASES.get()
    run = _Extraction(stream, root, on_bytes, sparse if sparse is not None else SPARSE.get(), keep)
    run.phases = phases
    with run.writers(workers):
        while not run.errors:
            member = run.next_member()
            if member is None:
                break
            run.place(member)
    run.wait_for_writers()
    run.sync_directories()
    return run.written


class _Extraction:
    """One tar stream extracted under ``root``: the reading thread's state, and the writer
    lanes it hands chunks to (writers report failures in ``errors``)."""

    def __init__(
        self,
        stream: BinaryIO,
        root: Path,
        on_bytes: Callable[[int], None] | None,
        sparse: Callable[[str], bool] | None,
        keep: Callable[[str], bool] | None,
    ) -> None:
        self.stream = stream
        self.root = root
        self.on_bytes = on_bytes
        self.sparse = sparse
        self.keep = keep
        self.buffers = _BufferPool(IN_FLIGHT // CHUNK, CHUNK)
        self.errors: list[BaseException] = []
        self.futures: list[Future[None]] = []
        self.lanes: list[ThreadPoolExecutor] = []
        self.written = 0
        self.files = 0
        self.long_name: str | None = None
        self.pax_path: str | None = None
        self.directories: list[Path] = []
        self.symlinks: list[str] = []
        self.made: set[Path] = set()
        self.phases: PhaseRecorder | None = None

    @contextlib.contextmanager
    def writers(self, workers: int) -> Iterator[None]:
        """One lane (a single writer thread) per file: two threads writing one file only
        queue on its inode lock (the kernel spins on it: measured as system time with perf)."""
        self.lanes = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="untar") for _ in range(workers)
        ]
        with contextlib.ExitStack() as stack:
            for lane in self.lanes:
                stack.enter_context(lane)
            yield

    def next_lane(self) -> ThreadPoolExecutor:
        self.files += 1
        return self.lanes[self.files % len(self.lanes)]

    # --- reading ------------------------------------------------------------------------

    def next_member(self) -> _Member | None:
        """The next header; None at the end of the archive (two zero blocks, or EOF)."""
        header = self.stream.read(BLOCK)
        if len(header) < BLOCK or header == b"\0" * BLOCK:
            return None
        return _Member(header)

    def read_chunk(self, n: int) -> tuple[memoryview, mmap.mmap]:
        """The next ``n`` bytes of the stream, decoded straight into a pooled buffer."""
        buffer = self.buffers.take()
        view = memoryview(buffer)[:n]
        try:
            _fill(self.stream, view)
        except BaseException:
            self.buffers.give_back(buffer)
            raise
        return view, buffer

    def counted(self, n: int) -> None:
        if self.on_bytes is not None and n:
            self.on_bytes(n)

    # --- placing ------------------------------------------------------------------------

    def place(self, member: _Member) -> None:
        """Put one member where it belongs under ``root`` (an extension header is kept for
        the member it names)."""
        if member.kind in EXTENSIONS:
            self.remember_extension(member)
            return
        name = self.resolved_name(member.name)
        path = _safe_path(self.root, name)
        if any(str(path).startswith(link + "/") for link in self.symlinks):
            raise RestoreError(f"refusing tar member {name!r}: it lies beneath a symbolic link")
        if member.kind == b"5":
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.made.add(path)
            self.directories.append(path)
        elif member.kind == b"2":
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.symlink(member.link_target, path)
            self.symlinks.append(str(path))
        elif member.kind in REGULAR:
            self.place_file(member, name, path)
            return
        else:
            raise RestoreError(f"unexpected tar member type {member.kind!r} for {name!r}")
        if member.padded:
            _read_exact(self.stream, member.padded)

    def remember_extension(self, member: _Member) -> None:
        payload = _read_exact(self.stream, member.padded)[: member.size]
        if member.kind == b"L":
            self.long_name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif member.kind == b"x":
            for record in payload.decode("utf-8", "replace").splitlines():
                _len, _, kv = record.partition(" ")
                if kv.startswith("path="):
                    self.pax_path = kv[5:]

    def resolved_name(self, stored: str) -> str:
        """The member's name: a pax path or a GNU long name before it wins (once)."""
        if self.pax_path is not None:
            name, self.pax_path = self.pax_path, None
            return name
        if self.long_name is not None:
            name, self.long_name = self.long_name, None
            return name
        return stored

    def place_file(self, member: _Member, name: str, path: Path) -> None:
        """A regular file: left as it is (``keep``), sparse, one task for a small file, or
        chunk by chunk to one writer lane."""
        if self.keep is not None and self.keep(name):
            # A delta restore found this file already equal to the backup's: untouched.
            _skip(self.stream, member.padded)
            self.counted(member.size)
        elif self.sparse is not None and self.sparse(name):
            self.parent_of(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, member.mode)
            try:
                os.ftruncate(fd, member.size)
            finally:
                os.close(fd)
            _skip(self.stream, member.padded)
            self.counted(member.size)
        elif member.size <= CHUNK:
            self.parent_of(path)
            data, buffer = self.read_chunk(member.size)
            self.futures.append(
                self.next_lane().submit(self.write_small, path, member.mode, data, buffer)
            )
            self.written += member.size
            self.counted(member.size)
            if member.padded > member.size:
                _read_exact(self.stream, member.padded - member.size)
        else:
            self.parent_of(path)
            self.write_in_chunks(member, path)

    def write_in_chunks(self, member: _Member, path: Path) -> None:
        size = member.size
        fd, direct = _open_for_chunks(path, member.mode, size)
        handle = _OpenFile(fd, max(1, -(-size // CHUNK)), direct, size)
        lane = self.next_lane()
        offset = 0
        while offset < size:
            data, buffer = self.read_chunk(min(CHUNK, size - offset))
            self.futures.append(lane.submit(self.write, handle, data, buffer, offset))
            offset += len(data)
            self.written += len(data)
            if self.on_bytes is not None:
                self.on_bytes(len(data))
        if member.padded > size:
            _read_exact(self.stream, member.padded - size)
        if len(self.futures) > 4096:
            self.futures = [f for f in self.futures if not f.done()]

    def parent_of(self, path: Path) -> None:
        parent = path.parent
        if parent not in self.made:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.made.add(parent)

    # --- the writers (their own threads) -------------------------------------------------

    def write(self, handle: _OpenFile, data: memoryview, buffer: mmap.mmap, offset: int) -> None:
        try:
            t0 = perf_counter()
            if handle.direct:
                handle.direct = _pwrite_direct(handle.fd, data, offset)
            else:
                _pwrite_all(handle.fd, data, offset)
                if _start_writeback is not None:
                    _start_writeback(handle.fd, offset, len(data), _SYNC_FILE_RANGE_WRITE)
            t1 = perf_counter()
            last = handle.pending == 1
            handle.done_one()  # the last chunk fsyncs the file
            if self.phases is not None:
                self.phases.add("write", t1 - t0, len(data))
                if last:
                    self.phases.add("sync", perf_counter() - t1, handle.size)
        except BaseException as exc:  # reported by the reading thread
            self.errors.append(exc)
        finally:
            self.buffers.give_back(buffer)

    def write_small(self, path: Path, mode: int, data: memoryview, buffer: mmap.mmap) -> None:
        """A whole file in one task: creating files is slow on some filesystems (0.1-0.7 ms
        each here), and a data directory holds about a thousand; the writers create them
        in parallel while the reading thread decodes on."""
        try:
            t0 = perf_counter()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                _pwrite_all(fd, data, 0)
                t1 = perf_counter()
                os.fsync(fd)
            finally:
                os.close(fd)
            if self.phases is not None:
                self.phases.add("write", t1 - t0, len(data))
                self.phases.add("sync", perf_counter() - t1, len(data))
        except BaseException as exc:  # reported by the reading thread
            self.errors.append(exc)
        finally:
            self.buffers.give_back(buffer)

    # --- the end ------------------------------------------------------------------------

    def wait_for_writers(self) -> None:
        """Every write done; the first writer's failure raised (an OS error as the
        restore's)."""
        for f in self.futures:
            f.result()
        if self.errors:
            exc = self.errors[0]
            if isinstance(exc, OSError):
                raise RestoreError(
                    f"cannot write into {self.root}: {exc.strerror or exc}"
                ) from None
            raise exc

    def sync_directories(self) -> None:
        """Directory entries are durable once each directory is synced."""
        t0 = perf_counter()
        for d in [self.root, *self.directories]:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.phases is not None:
            self.phases.add("sync", perf_counter() - t0)
