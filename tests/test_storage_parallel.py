"""Parallel transfers (issue #26 points 1-2) against the real emulators.

Uploads send up to ``streams`` parts at once (GCS: one, in order) with a bounded window;
reads of objects larger than one part are ranged GETs, up to ``streams`` ahead, handed over
in order. Faults come from tests/faultproxy.py between the client and the emulator (so the
SDK's own retry layer is exercised as in production), or, for the window and overwrite
checks, from nothing at all.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgbackup.errors import StorageError
from pgbackup.storage import open_storage
from pgbackup.storage.cloud import CloudReader, CloudStorage, ObjectChanged, RangedReader

try:
    from faultproxy import FaultProxy  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from tests.faultproxy import FaultProxy  # type: ignore[no-redef]

MiB = 1024 * 1024
CLOUD_KINDS = ["s3", "gcs", "azure"]
STREAMS = 3
# S3 needs 5 MiB parts; GCS a multiple of 256 KiB; 1 MiB keeps Azure to one GET a range.
PART = {"s3": 5 * MiB, "gcs": MiB, "azure": MiB}


def pattern(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"parallel-{seed}".encode()).digest() * (MiB // 32)
    out = bytearray()
    i = 0
    while len(out) < size:
        out += block[i % 32 :] + block[: i % 32]  # every MiB different
        i += 1
    return bytes(out[:size])


def upstream_port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1].split("/", 1)[0])


@pytest.fixture
def proxied(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, CloudStorage, FaultProxy]]:
    """(kind, storage through a fault proxy with streams=3 and a small part, the proxy)."""
    kind = request.param
    spec, env = request.getfixturevalue(f"{kind}_service")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = spec["account_url"] if kind == "azure" else spec["endpoint_url"]
    with FaultProxy(upstream_port(url), rate=0.0, max_faults=1000) as proxy:
        spec = dict(spec, prefix=f"par-{uuid.uuid4().hex[:8]}/", part_size=PART[kind])
        spec["streams"] = STREAMS
        if kind == "azure":
            account = url.rstrip("/").rsplit("/", 1)[1]
            spec["account_url"] = f"{proxy.url}/{account}"
            monkeypatch.setenv(
                "AZURE_STORAGE_CONNECTION_STRING",
                env["AZURE_STORAGE_CONNECTION_STRING"].replace(url, spec["account_url"]),
            )
        else:
            spec["endpoint_url"] = proxy.url
            if kind == "gcs":
                monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store = open_storage(spec)
        assert isinstance(store, CloudStorage)
        yield kind, store, proxy


cloud = pytest.mark.parametrize("proxied", CLOUD_KINDS, indirect=True)


def data_gets(kind: str, proxy: FaultProxy) -> list[int]:
    """The start of each GET of object data the proxy saw (0 for a GET of the whole)."""
    return [
        range_start(h) or 0
        for m, p, h in proxy.seen
        if m == "GET" and (kind != "gcs" or "alt=media" in p)
    ]


def range_start(headers: dict[str, str]) -> int | None:
    value = headers.get("x-ms-range") or headers.get("range")
    if not value or not value.startswith("bytes="):
        return None
    return int(value[6:].split("-", 1)[0])


def part_number(kind: str, method: str, path: str, headers: dict[str, str]) -> int | None:
    """Which part of a multipart upload this request sends (1-based), else None."""
    if method != "PUT":
        return None
    if kind == "s3" and "partNumber=" in path:
        return int(path.split("partNumber=", 1)[1].split("&", 1)[0])
    if kind == "azure" and "comp=block&" in path + "&" and "blockid=" in path:
        from urllib.parse import unquote

        block = unquote(path.split("blockid=", 1)[1].split("&", 1)[0])
        for _ in range(3):  # the SDK encodes our (base64) block id once more
            block = base64.b64decode(block).decode()
            if "-" in block:
                return int(block.rsplit("-", 1)[1])
        return None
    if kind == "gcs" and "upload_id=" in path:
        rng = headers.get("content-range", "")
        if rng.startswith("bytes ") and not rng.startswith("bytes */"):
            return int(rng[6:].split("-", 1)[0]) // PART[kind] + 1
    return None


class Peak:
    """Wraps a primitive; counts calls at once, holding each until ``want`` run together
    (or 5 s pass) so that the peak shows the pool's width, not the machine's speed."""

    def __init__(self, fn: Callable[..., Any], want: int) -> None:
        self.fn, self.want = fn, want
        self.active = self.peak = 0
        self.cond = threading.Condition()

    def __call__(self, *args: Any) -> Any:
        with self.cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.active >= self.want, timeout=5)
        try:
            return self.fn(*args)
        finally:
            with self.cond:
                self.active -= 1
                self.want = 0  # the peak was seen once: do not hold later calls
                self.cond.notify_all()


def write_in_chunks(store: CloudStorage, key: str, data: bytes) -> Any:
    with store.open_write(key) as w:
        for i in range(0, len(data), MiB):
            w.write(data[i : i + MiB])
            assert len(w.buffer) <= w.part_size  # type: ignore[attr-defined]
        writer = w
    return writer


def read_all(f: Any, n: int = 300_000) -> bytes:
    out = bytearray()
    while True:
        chunk = f.read(n)
        if not chunk:
            return bytes(out)
        out += chunk


# --- round trips --------------------------------------------------------------------------


@cloud
def test_several_parts_round_trip_with_parallel_streams(proxied) -> None:
    kind, store, proxy = proxied
    part = PART[kind]
    data = pattern(4 * part + part // 2 + 7, seed=1)
    uploads = Peak(store._upload_part, want=STREAMS if store.parallel_parts else 1)
    store._upload_part = uploads  # type: ignore[method-assign]
    w = write_in_chunks(store, "base/big.tar.zst", data)
    assert len(w.parts) == 4
    # The window: ``streams`` parts in flight plus the one filling, never more.
    assert w.max_buffered_parts <= STREAMS + 1
    assert uploads.peak == (STREAMS if kind != "gcs" else 1)
    info = store.stat("base/big.tar.zst")
    assert info is not None and info.size == len(data)

    ranges = Peak(store._read_range, want=2)
    store._read_range = ranges  # type: ignore[method-assign]
    f = store.open_read("base/big.tar.zst")
    try:
        assert isinstance(f, RangedReader)
        got = read_all(f)
        assert f.max_buffered_ranges <= STREAMS + 1
        assert sorted(f.tries) == [i * part for i in range(5)]
        assert set(f.tries.values()) == {1}
    finally:
        f.close()
    assert got == data
    assert ranges.peak >= 2
    # Range 0 came with the GET that opened the object (Azure's SDK asks that one for its
    # first 4 MiB): no other GET asked for it.
    starts = data_gets(kind, proxy)
    assert sorted(starts) == [i * part for i in range(5)]


@cloud
def test_readinto_and_partial_reads_of_a_ranged_object(proxied) -> None:
    kind, store, _ = proxied
    data = pattern(2 * PART[kind] + 123, seed=2)
    write_in_chunks(store, "x.bin", data)
    f = store.open_read("x.bin")
    try:
        assert isinstance(f, RangedReader)
        head = f.read(10)
        buf = bytearray(PART[kind] + 5)
        n = f.readinto(buf)  # at most up to the end of the current range
        rest = f.read()
        assert head + bytes(buf[:n]) + rest == data
        assert f.read(5) == b""
    finally:
        f.close()


@cloud
def test_small_objects_stay_one_put_and_one_get(proxied) -> None:
    kind, store, proxy = proxied
    w = store.writer("wal/000000010000000000000001.zst")
    w.write(pattern(PART[kind] - 1, seed=3))
    w.commit()
    assert w.parts == [] and w.max_buffered_parts == 0  # type: ignore[attr-defined]
    f = store.open_read("wal/000000010000000000000001.zst")
    try:
        assert isinstance(f, CloudReader)
        assert f.read() == pattern(PART[kind] - 1, seed=3)
    finally:
        f.close()
    assert data_gets(kind, proxy) == [0]


# --- faults -------------------------------------------------------------------------------


@cloud
def test_a_part_failing_once_is_sent_again_alone(proxied) -> None:
    kind, store, proxy = proxied
    failed: list[int] = []

    def rule(method: str, path: str, headers: dict[str, str]) -> str | None:
        if part_number(kind, method, path, headers) == 2 and not failed:
            failed.append(2)
            return "503"
        return None

    proxy.rule = rule
    data = pattern(3 * PART[kind] + 99, seed=4)
    write_in_chunks(store, "base/p.tar", data)
    proxy.rule = None
    sent = [part_number(kind, m, p, h) for m, p, h in proxy.seen]
    counts = {n: sent.count(n) for n in set(sent) if n is not None}
    assert counts == {1: 1, 2: 2, 3: 1, 4: 1}, counts
    assert store.read_bytes("base/p.tar") == data


@cloud
def test_a_range_failing_twice_then_succeeding_is_fetched_again_alone(proxied) -> None:
    kind, store, proxy = proxied
    part = PART[kind]
    data = pattern(5 * part + 5, seed=5)
    write_in_chunks(store, "base/r.tar", data)
    cut: list[int] = []

    def rule(method: str, path: str, headers: dict[str, str]) -> str | None:
        if method == "GET" and range_start(headers) == 2 * part and len(cut) < 2:
            cut.append(1)
            return "truncate"  # headers and half the body, then the connection closes
        return None

    proxy.seen.clear()
    proxy.rule = rule
    f = store.open_read("base/r.tar")
    try:
        got = read_all(f)
    finally:
        f.close()
    assert got == data
    starts = data_gets(kind, proxy)
    counts = {s: starts.count(s) for s in set(starts)}
    assert counts == {0: 1, part: 1, 2 * part: 3, 3 * part: 1, 4 * part: 1, 5 * part: 1}


@cloud
def test_a_range_failing_for_good_is_one_clear_error_never_short_data(proxied) -> None:
    kind, store, proxy = proxied
    part = PART[kind]
    data = pattern(4 * part, seed=6)
    write_in_chunks(store, "base/dead.tar", data)
    proxy.rule = lambda m, p, h: "truncate" if range_start(h) == 2 * part else None
    store._sleep = lambda attempt: None  # type: ignore[method-assign]
    f = store.open_read("base/dead.tar")
    got = bytearray()
    with pytest.raises(StorageError) as err:
        while True:
            chunk = f.read(MiB)
            if not chunk:
                break
            got += chunk
    f.close()
    assert bytes(got) == data[: 2 * part]  # everything before the dead range, nothing after
    text = str(err.value)
    assert f"bytes {2 * part}-{3 * part - 1} of {4 * part}" in text, text
    assert "Traceback" not in text


@cloud
def test_an_overwrite_while_reading_fails_the_read(proxied) -> None:
    kind, store, _ = proxied
    part = PART[kind]
    store.streams = 2  # a short window: most ranges are fetched after the overwrite
    write_in_chunks(store, "base/o.tar", pattern(6 * part, seed=7))
    f = store.open_read("base/o.tar")
    try:
        assert f.read(10) == pattern(10, seed=7)
        # A different object (GCS's emulator names no generation: the size tells).
        write_in_chunks(store, "base/o.tar", pattern(7 * part, seed=8))
        with pytest.raises(ObjectChanged) as err:
            read_all(f)
        assert "overwritten while it was being read" in str(err.value)
    finally:
        f.close()


@pytest.mark.parametrize("kind", CLOUD_KINDS)
def test_many_streams_round_trip(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """streams above requests' 10 pooled connections: the providers widen their pools."""
    caplog.set_level("WARNING")
    spec, env = request.getfixturevalue(f"{kind}_service")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = open_storage(
        dict(spec, prefix=f"many-{uuid.uuid4().hex[:8]}/", part_size=PART[kind], streams=12)
    )
    data = pattern(13 * PART[kind] + 1, seed=9)
    write_in_chunks(store, "big", data)  # type: ignore[arg-type]
    f = store.open_read("big")
    try:
        assert isinstance(f, RangedReader) and f.streams == 12
        assert read_all(f) == data
        assert f.max_buffered_ranges <= 13
    finally:
        f.close()
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_write_waits_while_the_window_is_full_and_abort_cancels(
    s3_service: tuple[dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, env = s3_service
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = open_storage(
        dict(spec, prefix=f"win-{uuid.uuid4().hex[:8]}/", part_size="5MiB", streams=2)
    )
    assert isinstance(store, CloudStorage)
    gate = threading.Event()
    started: list[int] = []
    send = store._upload_part

    def held(upload: Any, name: str, number: int, offset: int, data: bytes) -> Any:
        started.append(number)
        gate.wait(60)
        return send(upload, name, number, offset, data)

    store._upload_part = held  # type: ignore[method-assign]
    w = store.writer("big")
    finished = threading.Event()

    def produce() -> None:
        try:
            for i in range(6):  # five parts to send, the sixth held back for commit
                w.write(pattern(5 * MiB, seed=20 + i))
        finally:
            finished.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for _ in range(600):
            if len(started) == 2:
                break
            threading.Event().wait(0.05)
        assert sorted(started) == [1, 2]
        # Two parts in flight, the third cut and waiting for a slot: write does not return.
        assert not finished.wait(1.0)
        assert len(w.parts) == 2  # type: ignore[attr-defined]
        assert w.max_buffered_parts == 3  # type: ignore[attr-defined]
    finally:
        gate.set()
        producer.join()
    w.abort()
    client = store.client  # type: ignore[attr-defined]
    uploads = client.list_multipart_uploads(Bucket=spec["bucket"], Prefix=store.prefix)
    assert uploads.get("Uploads", []) == []
    assert store.stat("big") is None


@cloud
def test_a_part_failing_for_good_fails_the_upload_and_leaves_nothing(proxied) -> None:
    kind, store, proxy = proxied
    # No retries anywhere (spec retries: 0), so the failure surfaces at once.
    store = open_storage({**_spec_of(store, kind), "retries": 0})  # type: ignore[assignment]
    proxy.rule = lambda m, p, h: "503" if part_number(kind, m, p, h) == 2 else None
    with pytest.raises(StorageError) as err:
        write_in_chunks(store, "base/f.tar", pattern(4 * PART[kind], seed=11))
    assert "upload part of" in str(err.value), str(err.value)
    proxy.rule = None
    assert store.stat("base/f.tar") is None
    assert list(store.list("base/")) == []


def _spec_of(store: CloudStorage, kind: str) -> dict[str, Any]:
    """The spec the ``proxied`` fixture opened ``store`` with."""
    spec: dict[str, Any] = {
        "kind": kind,
        "prefix": store.prefix,
        "part_size": store.part_size,
        "streams": store.streams,
    }
    if kind == "s3":
        spec.update(bucket=store.bucket, endpoint_url=store.endpoint_url)  # type: ignore[attr-defined]
    elif kind == "gcs":
        spec.update(bucket=store.bucket_name, endpoint_url=store.endpoint_url)  # type: ignore[attr-defined]
    else:
        spec.update(container=store.container_name, account_url=store.account_url)  # type: ignore[attr-defined]
    return spec
