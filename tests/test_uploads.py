"""Upload copies and wal-ship move several objects at once (issue #26 point 1).

A posix repository is the source; the destination is S3 (moto, tests/services.py) behind
tests/faultproxy.py, whose ``hold`` keeps each request in flight long enough for the
proxy's in-flight counter to show how many the copy sends at once, and whose ``rule``
fails chosen requests.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pgbackup.engine.repository import METADATA, Repository, iso, utcnow
from pgbackup.engine.shipper import Shipper, destination_lag
from pgbackup.engine.uploads import (
    Copy,
    CopyCancelled,
    UploadError,
    copy_backup,
    copy_objects,
    first_failure,
    object_weight,
    sync_wal,
    upload_backup,
)
from pgbackup.errors import StorageError
from pgbackup.storage import Storage, open_storage

try:
    from faultproxy import FaultProxy  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from tests.faultproxy import FaultProxy  # type: ignore[no-redef]

MiB = 1024 * 1024
STREAMS = 3
BACKUP = "20261206T120000Z"
SEG = "0000000100000000000000{:02X}"
SMALL = ["backup_manifest", "pg_wal.tar.zst", "16385.tar.zst", "16386.tar.zst", "16387.tar.zst"]


def blob(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // 32 + 1))[:size]


@pytest.fixture
def dest_spec(
    s3_service: tuple[dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dict[str, Any], FaultProxy]]:
    """(the spec of an S3 destination through a fault proxy, streams 3, 5 MiB parts; the proxy)"""
    spec, env = s3_service
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    port = int(spec["endpoint_url"].rsplit(":", 1)[1])
    with FaultProxy(port, rate=0.0, max_faults=1000) as proxy:
        yield (
            dict(
                spec,
                name="offsite",
                endpoint_url=proxy.url,
                prefix=f"up-{uuid.uuid4().hex[:8]}/",
                part_size="5MiB",
                streams=STREAMS,
            ),
            proxy,
        )


def storage_of(spec: dict[str, Any]) -> Storage:
    return open_storage({k: v for k, v in spec.items() if k != "name"})


def make_backup(repo: Path, large: int = 12 * MiB) -> dict[str, bytes]:
    """A complete backup of target ``t`` in the posix repository ``repo``: its objects."""
    store = open_storage({"path": str(repo)})
    objects = {"base.tar.zst": blob(large, "base")}
    objects.update({name: blob(50_000 + i, name) for i, name in enumerate(SMALL)})
    prefix = Repository.base_prefix("t", BACKUP)
    for name, data in objects.items():
        store.write_bytes(prefix + name, data)
    meta = {
        "backup_id": BACKUP,
        "status": "complete",
        "start_time": iso(utcnow()),
        "start_lsn": "0/1000028",
        "timeline": 1,
        "stop_time": iso(utcnow()),
        "objects": {n: {"sha256": hashlib.sha256(d).hexdigest()} for n, d in objects.items()},
    }
    Repository(store).write_metadata("t", BACKUP, meta)
    return objects


def make_wal(repo: Path, n: int) -> None:
    store = open_storage({"path": str(repo)})
    for i in range(1, n + 1):
        store.write_bytes(f"t/wal/{SEG.format(i)}.zst", blob(20_000, f"seg{i}"))


def puts(proxy: FaultProxy, spec: dict[str, Any]) -> list[str]:
    """The key of each PUT the proxy saw (parts included), in order."""
    marker = f"/{spec['bucket']}/{spec['prefix']}"
    return [p.split(marker, 1)[1].split("?", 1)[0] for m, p, _ in proxy.seen if m == "PUT"]


def policy(tmp_path: Path, spec: dict[str, Any]) -> Any:
    return SimpleNamespace(
        path=tmp_path / "backup.yaml",
        repository={"path": str(tmp_path / "repo")},
        uploads=[spec],
        targets=["t"],
    )


# --- the bound ------------------------------------------------------------------------------


def test_the_weight_of_an_object_is_its_parts_up_to_the_window(tmp_path: Path) -> None:
    posix = open_storage({"path": str(tmp_path)})
    assert object_weight(posix, 100 * MiB) == 1  # a posix destination: one at a time
    s3 = SimpleNamespace(streams=4, part_size=8 * MiB, parallel_parts=True)
    gcs = SimpleNamespace(streams=4, part_size=8 * MiB, parallel_parts=False)
    assert [object_weight(s3, n) for n in (0, 1, 8 * MiB, 8 * MiB + 1, 100 * MiB)] == [
        1,
        1,
        1,
        2,
        4,
    ]
    assert object_weight(gcs, 100 * MiB) == 1  # one chunk in flight per GCS upload


def test_a_failure_stops_the_batch_and_cancels_what_is_in_flight(tmp_path: Path) -> None:
    """copy_objects alone, with a stand-in copy: nothing starts after a failure, the copies
    in flight with it are cancelled, and the failure named is the real one."""
    src = open_storage({"path": str(tmp_path / "a")})
    dst = SimpleNamespace(streams=3, part_size=MiB, parallel_parts=True)
    started: list[str] = []
    lock = threading.Lock()

    def copy(src: Any, dst: Any, key: str, *, stop: threading.Event, **_: Any) -> int:
        with lock:
            started.append(key)
        if key == "k2":
            time.sleep(0.2)  # k0 and k1 are in flight by now
            raise StorageError("k2: the destination refused it")
        for _ in range(100):
            if stop.is_set():
                raise CopyCancelled(f"copy of {key} cancelled")
            time.sleep(0.05)
        return 1

    outcomes = copy_objects(
        src,
        dst,  # type: ignore[arg-type]
        [Copy(f"k{i}", 10) for i in range(8)],
        copy=copy,
    )
    assert sorted(started) == ["k0", "k1", "k2"]
    assert [type(o.error).__name__ if o.error else o.done for o in outcomes] == [
        "CopyCancelled",
        "CopyCancelled",
        "StorageError",
        *[False] * 5,
    ]
    error = first_failure(outcomes)
    assert isinstance(error, StorageError) and "destination refused" in str(error)


# --- backups --------------------------------------------------------------------------------


def test_a_backups_objects_move_several_at_once_and_metadata_last(
    tmp_path: Path, dest_spec: tuple[dict[str, Any], FaultProxy]
) -> None:
    spec, proxy = dest_spec
    objects = make_backup(tmp_path / "repo")
    proxy.hold = 0.3
    source = Repository(open_storage({"path": str(tmp_path / "repo")}))
    dest = Repository(storage_of(spec))
    copied = copy_backup(source, dest, "t", BACKUP)
    assert copied == sum(len(d) for d in objects.values())
    # Several at once, never more requests than the destination's streams.
    assert proxy.peak_in_flight == STREAMS
    prefix = Repository.base_prefix("t", BACKUP)
    for name, data in objects.items():
        assert dest.storage.read_bytes(prefix + name) == data
    assert dest.read_metadata("t", BACKUP)["backup_id"] == BACKUP
    sent = puts(proxy, spec)
    assert sent[-1] == prefix + METADATA and sent.count(prefix + METADATA) == 1


def test_an_object_failing_once_is_sent_again_alone(
    tmp_path: Path, dest_spec: tuple[dict[str, Any], FaultProxy]
) -> None:
    spec, proxy = dest_spec
    objects = make_backup(tmp_path / "repo")
    failed: list[str] = []

    def rule(method: str, path: str, headers: dict[str, str]) -> str | None:
        if method == "PUT" and path.split("?")[0].endswith("/16386.tar.zst") and not failed:
            failed.append(path)
            return "503"
        return None

    proxy.rule = rule
    source = Repository(open_storage({"path": str(tmp_path / "repo")}))
    dest = Repository(storage_of(spec))
    copy_backup(source, dest, "t", BACKUP)
    assert failed
    prefix = Repository.base_prefix("t", BACKUP)
    sent = puts(proxy, spec)
    counts = {name: sent.count(prefix + name) for name in SMALL}
    assert counts == {n: 2 if n == "16386.tar.zst" else 1 for n in SMALL}, counts
    assert sent.count(prefix + "base.tar.zst") == 3  # its three parts, each once
    for name, data in objects.items():
        assert dest.storage.read_bytes(prefix + name) == data
    assert dest.storage.stat(prefix + METADATA) is not None


def test_an_object_failing_for_good_fails_the_copy_and_leaves_no_metadata(
    tmp_path: Path, dest_spec: tuple[dict[str, Any], FaultProxy]
) -> None:
    spec, proxy = dest_spec
    spec = dict(spec, retries=0)
    make_backup(tmp_path / "repo")
    proxy.hold = 0.2  # the others are in flight when it fails
    proxy.rule = lambda m, p, h: (
        "503" if m == "PUT" and p.split("?")[0].endswith("/16386.tar.zst") else None
    )
    with pytest.raises(UploadError) as err:
        upload_backup(policy(tmp_path, spec), "t", BACKUP)
    text = str(err.value)
    assert text.count("upload offsite:") == 1 and "16386.tar.zst" in text, text
    proxy.rule = None
    dest = storage_of(spec)
    prefix = Repository.base_prefix("t", BACKUP)
    assert dest.stat(prefix + METADATA) is None
    assert dest.stat(prefix + "16386.tar.zst") is None
    client = dest.client  # type: ignore[attr-defined]
    uploads = client.list_multipart_uploads(Bucket=spec["bucket"], Prefix=spec["prefix"])
    assert uploads.get("Uploads", []) == []  # a cancelled large object was aborted
    runs = list((tmp_path / "repo" / "t" / "runs").iterdir())
    assert len(runs) == 1 and json.loads(runs[0].read_text())["status"] == "failed"
    # the next attempt copies what is missing, metadata.json last
    upload_backup(policy(tmp_path, spec), "t", BACKUP)
    assert dest.stat(prefix + METADATA) is not None


# --- WAL ------------------------------------------------------------------------------------


def test_a_backups_wal_moves_several_segments_at_once(
    tmp_path: Path, dest_spec: tuple[dict[str, Any], FaultProxy]
) -> None:
    spec, proxy = dest_spec
    make_wal(tmp_path / "repo", 9)
    proxy.hold = 0.2
    source = Repository(open_storage({"path": str(tmp_path / "repo")}))
    dest = Repository(storage_of(spec))
    assert sync_wal(source, dest, "t") == 9
    assert proxy.peak_in_flight == STREAMS
    # create-only writes (If-None-Match: *)
    assert all(
        h.get("if-none-match") == "*" for m, p, h in proxy.seen if m == "PUT" and "/wal/" in p
    )
    assert sync_wal(source, dest, "t") == 0  # nothing twice


def test_wal_ship_progress_never_passes_a_failed_segment(
    tmp_path: Path, dest_spec: tuple[dict[str, Any], FaultProxy]
) -> None:
    spec, proxy = dest_spec
    spec = dict(spec, retries=0)
    make_wal(tmp_path / "repo", 8)
    proxy.hold = 0.2  # segments 1, 2 and 3 are sent together; 2 fails, 1 and 3 are stored
    proxy.rule = lambda m, p, h: (
        "503" if m == "PUT" and SEG.format(2) in p and "/wal/" in p else None
    )
    pol = policy(tmp_path, spec)
    shipper = Shipper(pol, "t")
    result = shipper.once()["offsite"]
    assert result["status"] == "failed" and SEG.format(2) in result["error"], result
    dest = storage_of(spec)
    there = {i.key.rsplit("/", 1)[1] for i in dest.list("t/wal/")}
    assert SEG.format(1) + ".zst" in there and SEG.format(3) + ".zst" in there
    assert SEG.format(2) + ".zst" not in there
    # Shipped: segment 1 only, not 3 stored after the gap; check's lag starts at 2.
    assert shipper.states["offsite"].shipped == 1
    source = Repository(open_storage({"path": str(tmp_path / "repo")}))
    lag = destination_lag(pol, source, "t", "offsite")
    assert lag["oldest_missing"] == SEG.format(2) and lag["missing"] == 8 - len(there)
    # The destination is back: the gap is filled, nothing is copied twice.
    proxy.rule = None
    proxy.seen.clear()
    assert shipper.once()["offsite"]["status"] == "ok"
    assert {i.key.rsplit("/", 1)[1] for i in dest.list("t/wal/")} == {
        SEG.format(i) + ".zst" for i in range(1, 9)
    }
    again = [p for m, p, _ in proxy.seen if m == "PUT"]
    assert not [p for p in again if SEG.format(1) in p or SEG.format(3) in p]
    assert destination_lag(pol, source, "t", "offsite")["missing"] == 0


def test_an_interrupt_while_a_batch_waits_cancels_what_is_in_flight(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM (signals.py raises in the main thread) while copy_objects waits:
    the copies in flight are cancelled, no other starts, and the interrupt goes on."""
    import signal

    src = open_storage({"path": str(tmp_path / "a")})
    dst = SimpleNamespace(streams=2, part_size=MiB, parallel_parts=True)
    started: list[str] = []
    cancelled: list[str] = []

    def copy(src: Any, dst: Any, key: str, *, stop: threading.Event, **_: Any) -> int:
        started.append(key)
        if stop.wait(10):
            cancelled.append(key)
            raise CopyCancelled(f"copy of {key} cancelled")
        return 1

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            copy_objects(src, dst, [Copy(f"k{i}", 10) for i in range(5)], copy=copy)  # type: ignore[arg-type]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 5
    assert sorted(started) == ["k0", "k1"] and sorted(cancelled) == ["k0", "k1"]


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_copies_to_gcs_and_azure_move_several_objects_at_once(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    spec, env = request.getfixturevalue(f"{kind}_service")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    dest = Repository(
        open_storage(
            dict(spec, prefix=f"up-{uuid.uuid4().hex[:8]}/", part_size="1MiB", streams=STREAMS)
        )
    )
    objects = make_backup(tmp_path / "repo", large=3 * MiB + 5)
    make_wal(tmp_path / "repo", 7)
    source = Repository(open_storage({"path": str(tmp_path / "repo")}))
    assert copy_backup(source, dest, "t", BACKUP) == sum(len(d) for d in objects.values())
    prefix = Repository.base_prefix("t", BACKUP)
    for name, data in objects.items():
        assert dest.storage.read_bytes(prefix + name) == data
    assert dest.read_metadata("t", BACKUP)["backup_id"] == BACKUP
    assert sync_wal(source, dest, "t") == 7
    assert sync_wal(source, dest, "t") == 0


# --- retention at destinations, across generations (engine/generations) -----------------


def test_cleanup_uploads_expires_every_generations_copies_and_keeps_the_newest(
    tmp_path: Path,
) -> None:
    """After an upgrade a destination holds generation 1's copies under <target>/base/ and
    generation 2's under <target>/gen/2/base/: retention_days applies to both; the newest
    copy of all is kept; generation 1's WAL stays (as in the repository)."""
    from datetime import UTC, datetime

    from pgbackup.engine import generations as g
    from pgbackup.engine.uploads import cleanup_uploads
    from pgbackup.policy import load_policy_fast

    config = tmp_path / "backup.yaml"
    config.write_text(
        f"version: 1\nrepository: {{path: {tmp_path / 'repo'}}}\n"
        f"uploads: [{{name: off, path: {tmp_path / 'off'}, retention_days: 1}}]\n"
        "targets:\n  main:\n    connection: {host: 127.0.0.1, dbname: x}\n"
    )
    off = open_storage({"path": str(tmp_path / "off")})
    g.write_records(
        off, "main", g.plan_upgrade([], "111", 15, "222", 15, "main", "2026-11-01T00:00:00Z")
    )

    def copy(storage: Any, backup_id: str, generation: int) -> None:
        meta = {
            "status": "complete",
            "backup_id": backup_id,
            "stop_time": f"2026-11-{backup_id[6:8]}T00:10:00Z",
            "generation": generation,
            "start_lsn": "0/2000028",
            "timeline": 1,
            "objects": [{"name": "base.tar", "size": 4}],
        }
        storage.write_bytes(f"main/base/{backup_id}/base.tar", b"data")
        storage.write_bytes(f"main/base/{backup_id}/{METADATA}", json.dumps(meta).encode())

    gen2 = g.view(off, "main", 2)
    copy(off, "20261101T000000Z", 1)
    off.write_bytes("main/wal/000000010000000000000002.zst", b"wal of generation 1")
    copy(gen2, "20261102T000000Z", 2)
    copy(gen2, "20261103T000000Z", 2)
    policy = load_policy_fast(str(config))
    now = datetime(2026, 12, 7, tzinfo=UTC)
    assert cleanup_uploads(policy, now, dry_run=True) == {
        "off": {"main": ["20261101T000000Z", "20261102T000000Z"]}
    }
    assert (tmp_path / "off/main/base/20261101T000000Z").exists()  # a dry run
    removed = cleanup_uploads(policy, now)
    assert removed == {"off": {"main": ["20261101T000000Z", "20261102T000000Z"]}}
    assert [b.backup_id for b in Repository(off).backups("main")] == []
    assert [b.backup_id for b in Repository(gen2).backups("main")] == ["20261103T000000Z"]
    assert off.stat("main/wal/000000010000000000000002.zst") is not None
