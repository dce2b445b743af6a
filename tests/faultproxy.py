"""A small HTTP/1.1 proxy on loopback that injects network faults between a client and a server.

Put it between pgbackup and an S3 (moto) server: the client's ``endpoint_url`` points at
the proxy, the proxy forwards to the real server. For a configurable share of requests it
injects one of these faults (chosen by a seeded ``random.Random``, bounded by
``max_faults``):

* ``drop``      close the client connection after reading the request, before forwarding
                (a connection reset; the server never saw the request);
* ``lost``      forward the request, let the server apply it, then close the client
                connection without an answer (the request took effect, the client cannot know);
* ``503``       answer ``503 Slow Down`` (S3's throttling error) without forwarding;
* ``truncate``  forward, then send the answer's headers and only half its body, then close.

The proxy understands just enough HTTP/1.1 (Content-Length and chunked bodies, keep-alive)
to relay requests one by one. Usage::

    with FaultProxy(upstream_port, seed=7, rate=0.2, max_faults=40) as proxy:
        endpoint = proxy.url
        proxy.enabled = False  # pass everything through for a while
        ...
        proxy.counts            # {"requests": n, "drop": .., "lost": .., "503": .., "truncate": ..}

``only`` restricts faults to the requests it accepts (``only(method, path)``), e.g. every
DELETE and every write of one key: a deterministic "the network died at this point".

``rule(method, path, headers)`` (headers lower-cased) names the fault for one request
itself, or None to pass it through, whatever ``rate`` says: e.g. "truncate the first two
GETs of the range that starts at 5 MiB". Every request is also noted in ``seen``
(method, path, headers) for assertions on what the client sent.

``hold`` (seconds, 0 by default) holds every request that long before it is answered or
forwarded (a fault or not), counted in ``in_flight`` meanwhile: requests sent together
overlap for sure, so ``peak_in_flight`` shows how many a client keeps in flight.
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

FAULTS = ("drop", "lost", "503", "truncate")

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>faultproxy</RequestId></Error>"
)


class _Closed(Exception):
    """The peer closed the connection."""


def _read_head(f: BinaryIO) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """(first line, headers, raw head bytes) of one HTTP message."""
    first = f.readline(65537)
    if not first:
        raise _Closed
    raw = [first]
    headers = []
    while True:
        line = f.readline(65537)
        if not line:
            raise _Closed
        raw.append(line)
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return first, headers, b"".join(raw)


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _read_body(f: BinaryIO, headers: Sequence[tuple[str, str]], *, until_close: bool) -> bytes:
    """The raw body bytes (chunked framing kept as is)."""
    te = (_header(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        out = []
        while True:
            size_line = f.readline(65537)
            if not size_line:
                raise _Closed
            out.append(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers up to the blank line
                    line = f.readline(65537)
                    if not line:
                        raise _Closed
                    out.append(line)
                    if line in (b"\r\n", b"\n"):
                        return b"".join(out)
            data = f.read(size + 2)
            if len(data) < size + 2:
                raise _Closed
            out.append(data)
    length = _header(headers, "content-length")
    if length is not None:
        n = int(length)
        data = f.read(n)
        if len(data) < n:
            raise _Closed
        return data
    return f.read() if until_close else b""


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        seed: int = 1,
        rate: float = 0.2,
        max_faults: int = 50,
        faults: Sequence[str] = FAULTS,
        only: Callable[[str, str], bool] | None = None,
        rule: Callable[[str, str, dict[str, str]], str | None] | None = None,
    ):
        self.upstream = (upstream_host, upstream_port)
        self.rate = rate
        self.max_faults = max_faults
        self.faults = tuple(faults)
        self.only = only  # (method, path) -> whether this request may get a fault
        self.rule = rule  # (method, path, headers) -> the fault for this request, or None
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.in_flight = 0  # requests forwarded and not yet answered
        self.peak_in_flight = 0  # the most at once since the proxy started (or was reset)
        self.enabled = True
        self.hold = 0.0  # seconds each request waits (in flight) before its answer
        self.counts: dict[str, int] = {"requests": 0, **{f: 0 for f in FAULTS}}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def injected(self) -> int:
        return sum(self.counts[f] for f in FAULTS)

    # --- one client connection ------------------------------------------------------------

    def _decide(self, method: str, path: str, headers: dict[str, str] | None = None) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            self.seen.append((method, path, dict(headers or {})))
            if not self.enabled or self.injected >= self.max_faults:
                return None
            if self.rule is not None:
                fault = self.rule(method, path, dict(headers or {}))
                if fault is not None:
                    self.counts[fault] += 1
                return fault
            if self.only is not None and not self.only(method, path):
                return None
            if self._random.random() >= self.rate:
                return None
            fault = self._random.choice(self.faults)
            self.counts[fault] += 1
            return fault

    def _serve(self, client: socket.socket) -> None:
        cf = client.makefile("rb")
        upstream: socket.socket | None = None
        uf: BinaryIO | None = None
        try:
            while True:
                try:
                    first, headers, head = _read_head(cf)
                    if (_header(headers, "expect") or "").lower() == "100-continue":
                        # Take the body at once; the server gets the request without Expect.
                        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                        head = b"".join(
                            line + b"\n"
                            for line in head.split(b"\n")[:-1]
                            if not line.lower().startswith(b"expect:")
                        )
                    body = _read_body(cf, headers, until_close=False)
                except (_Closed, OSError, ValueError):
                    return
                method = first.split(b" ", 1)[0].upper()
                path = first.split(b" ")[1].decode("latin-1") if b" " in first else ""
                fault = self._decide(method.decode("latin-1"), path, dict(headers))
                if self.hold:
                    with self._lock:
                        self.in_flight += 1
                        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                    time.sleep(self.hold)
                    with self._lock:
                        self.in_flight -= 1
                if fault == "drop":
                    return
                if fault == "503":
                    client.sendall(
                        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: " + str(len(SLOW_DOWN)).encode() + b"\r\n\r\n" + SLOW_DOWN
                    )
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=120)
                    uf = upstream.makefile("rb")
                assert uf is not None
                with self._lock:
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    upstream.sendall(head + body)
                    status, rheaders, rhead = _read_head(uf)
                    code = int(status.split(b" ", 2)[1])
                    while 100 <= code < 200:  # interim answers: not relayed
                        status, rheaders, rhead = _read_head(uf)
                        code = int(status.split(b" ", 2)[1])
                    no_body = method == b"HEAD" or code in (204, 304) or 100 <= code < 200
                    conn_close = (_header(rheaders, "connection") or "").lower() == "close"
                    rbody = b"" if no_body else _read_body(uf, rheaders, until_close=conn_close)
                except (_Closed, OSError, ValueError):
                    return
                finally:
                    with self._lock:
                        self.in_flight -= 1
                if fault == "lost":
                    return
                if fault == "truncate" and len(rbody) > 1:
                    client.sendall(rhead + rbody[: len(rbody) // 2])
                    return
                try:
                    client.sendall(rhead + rbody)
                except OSError:  # the client went away (e.g. closed a body it had enough of)
                    return
                if conn_close:
                    return
        finally:
            for closable in (cf, uf, upstream):
                if closable is not None:
                    with contextlib.suppress(OSError):
                        closable.close()
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
