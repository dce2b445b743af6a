"""Follow a tar stream as it flows past, without extracting it.

A base backup streams from pg_basebackup straight into the repository; on the way we
pick up the few small members we need (``backup_label``, ``backup_manifest``) and count
files. This parser only tracks member boundaries, so it costs almost nothing per chunk.
"""

from __future__ import annotations

BLOCK = 512


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if not field:
        return 0
    if field[0] & 0x80:  # GNU base-256 for large sizes
        value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        return value
    return int(field, 8)


class TarScanner:
    """Feed chunks with :meth:`feed`; read ``captured`` (name -> bytes) and ``members``."""

    def __init__(self, capture: set[str], capture_limit: int = 64 * 1024 * 1024):
        self.capture = capture
        self.capture_limit = capture_limit
        self.captured: dict[str, bytes] = {}
        self.members = 0
        self.payload_bytes = 0
        self._header = bytearray()
        self._remaining = 0  # payload + padding bytes of the current member still to come
        self._payload_left = 0
        self._current: str | None = None
        self._buffer: bytearray | None = None
        self._long_name: str | None = None
        self._long_name_buf: bytearray | None = None
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and not self.ended:
            if self._remaining:
                take = min(self._remaining, len(view))
                payload = min(take, self._payload_left)
                if payload:
                    if self._buffer is not None:
                        self._buffer += view[:payload]
                    elif self._long_name_buf is not None:
                        self._long_name_buf += view[:payload]
                    self._payload_left -= payload
                self._remaining -= take
                view = view[take:]
                if not self._remaining:
                    self._finish_member()
                continue
            need = BLOCK - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == BLOCK:
                header = bytes(self._header)
                self._header.clear()
                self._start_member(header)

    def _start_member(self, header: bytes) -> None:
        if header == b"\0" * BLOCK:
            # End-of-archive marker (two zero blocks); tolerate the second.
            pass
            return
        name = header[0:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode(errors="replace")
        if header[257:262] == b"ustar" and prefix:
            name = f"{prefix}/{name}"
        typeflag = header[156:157]
        size = _octal(header[124:136])
        if typeflag == b"L":  # GNU long name for the next member
            self._long_name_buf = bytearray()
            self._current = None
        else:
            if self._long_name is not None:
                name, self._long_name = self._long_name, None
            if name.startswith("./"):
                name = name[2:]
            self._current = name
            if typeflag in (b"0", b"\0"):
                self.members += 1
                self.payload_bytes += size
            if name in self.capture and size <= self.capture_limit:
                self._buffer = bytearray()
        self._payload_left = size
        self._remaining = size + (-size % BLOCK)
        if not self._remaining:
            self._finish_member()

    def _finish_member(self) -> None:
        if self._long_name_buf is not None:
            self._long_name = bytes(self._long_name_buf).split(b"\0", 1)[0].decode(errors="replace")
            self._long_name_buf = None
        elif self._buffer is not None and self._current is not None:
            self.captured[self._current] = bytes(self._buffer)
            self._buffer = None
        self._current = None


def parse_backup_label(text: str) -> dict[str, str]:
    """``backup_label`` lines (``START WAL LOCATION: 0/2000028 (file ...)``) as a dict."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            result[key.strip()] = value.strip()
    return result
