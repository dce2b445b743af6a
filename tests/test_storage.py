"""One contract, four storage kinds: posix in tmp_path, S3 via moto server, GCS via
gcp-storage-emulator, Azure Blob via Azurite (skipped with a reason when not installed).

Every test gets a fresh prefix inside a shared bucket/container, so the services start
once per session (fixtures in conftest.py, helpers in tests/services.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pgbackup.errors import ObjectExists, ObjectNotFound, StorageError
from pgbackup.storage import open_storage
from pgbackup.storage.base import Storage

try:
    import services  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from tests import services  # type: ignore[no-redef]

MiB = 1024 * 1024
KINDS = ["posix", "s3", "gcs", "azure"]
CLOUD_KINDS = ["s3", "gcs", "azure"]


def _service(request: pytest.FixtureRequest, kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    return request.getfixturevalue(f"{kind}_service")


@pytest.fixture
def spec_env(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch):
    """(spec, env) for the parametrized ``kind``, with a fresh prefix and env applied."""
    kind = request.param
    if kind == "posix":
        return {"kind": "posix", "path": str(tmp_path / "repo")}, {}
    spec, env = _service(request, kind)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = dict(spec, prefix=f"t-{uuid.uuid4().hex[:8]}/platform/")
    return spec, env


@pytest.fixture
def store(spec_env) -> Storage:
    return open_storage(spec_env[0])


all_kinds = pytest.mark.parametrize("spec_env", KINDS, indirect=True)
cloud_kinds = pytest.mark.parametrize("spec_env", CLOUD_KINDS, indirect=True)


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-enough bytes."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]


# --- round trips ------------------------------------------------------------------------


@all_kinds
def test_small_round_trip(store: Storage) -> None:
    store.write_bytes("a/b/hello.txt", b"hello")
    assert store.read_bytes("a/b/hello.txt") == b"hello"
    store.write_bytes("a/b/hello.txt", b"replaced")  # plain writes overwrite
    assert store.read_bytes("a/b/hello.txt") == b"replaced"


@all_kinds
def test_empty_object(store: Storage) -> None:
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""
    info = store.stat("empty")
    assert info is not None and info.size == 0


@all_kinds
def test_large_stream_in_1mib_chunks(store: Storage) -> None:
    """40 MiB in 1 MiB writes: the multipart path, with at most one part buffered."""
    size = 40 * MiB
    chunk = pattern(MiB, seed=1)
    expected = hashlib.sha256()
    with store.open_write("base/big.tar.zst") as w:
        for i in range(40):
            piece = chunk[i:] + chunk[:i]  # every MiB different
            w.write(piece)
            expected.update(piece)
            buffered = getattr(w, "buffer", None)
            if buffered is not None:  # cloud writers: bounded memory
                assert len(buffered) <= w.part_size  # type: ignore[attr-defined]
        if hasattr(w, "parts"):
            assert len(w.parts) >= 4, "expected a multipart upload"  # type: ignore[attr-defined]
    info = store.stat("base/big.tar.zst")
    assert info is not None and info.size == size
    got = hashlib.sha256()
    total = 0
    for piece in store.iter_chunks("base/big.tar.zst"):
        assert len(piece) <= MiB
        got.update(piece)
        total += len(piece)
    assert total == size
    assert got.hexdigest() == expected.hexdigest()


@all_kinds
def test_partial_reads_stream(store: Storage) -> None:
    data = pattern(3 * MiB + 17, seed=2)
    store.write_bytes("x.bin", data)
    f = store.open_read("x.bin")
    try:
        assert f.read(10) == data[:10]
        assert f.read(MiB) == data[10 : 10 + MiB]
        assert f.read() == data[10 + MiB :]
        assert f.read(5) == b""
    finally:
        f.close()


# --- visibility ---------------------------------------------------------------------------


@all_kinds
@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["single", "multipart"])
def test_nothing_visible_before_commit(store: Storage, size: int) -> None:
    w = store.writer("wal/000000010000000000000001.zst")
    w.write(pattern(size, seed=3))
    assert store.stat("wal/000000010000000000000001.zst") is None
    assert list(store.list("wal/")) == []
    with pytest.raises(ObjectNotFound):
        store.open_read("wal/000000010000000000000001.zst")
    w.commit()
    assert store.read_bytes("wal/000000010000000000000001.zst") == pattern(size, seed=3)


@all_kinds
@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["single", "multipart"])
def test_abort_leaves_nothing(store: Storage, size: int) -> None:
    w = store.writer("base/1/base.tar.zst")
    w.write(pattern(size, seed=4))
    w.abort()
    w.abort()  # twice is fine
    assert store.stat("base/1/base.tar.zst") is None
    assert list(store.list("")) == []


@all_kinds
def test_open_write_aborts_on_error(store: Storage) -> None:
    with pytest.raises(RuntimeError), store.open_write("base/2/base.tar.zst") as w:
        w.write(pattern(9 * MiB, seed=5))
        raise RuntimeError("pg_basebackup died")
    assert list(store.list("")) == []


def test_s3_abort_removes_the_multipart_upload(
    s3_service: tuple[dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, env = s3_service
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = open_storage(dict(spec, prefix=f"t-{uuid.uuid4().hex[:8]}/"))
    w = store.writer("big")
    w.write(pattern(20 * MiB, seed=6))
    client = store.client  # type: ignore[attr-defined]
    uploads = client.list_multipart_uploads(Bucket=spec["bucket"], Prefix=store.prefix)  # type: ignore[attr-defined]
    assert len(uploads.get("Uploads", [])) == 1
    w.abort()
    uploads = client.list_multipart_uploads(Bucket=spec["bucket"], Prefix=store.prefix)  # type: ignore[attr-defined]
    assert uploads.get("Uploads", []) == []


# --- if_absent ----------------------------------------------------------------------------


@all_kinds
@pytest.mark.parametrize("size", [100, 12 * MiB], ids=["single", "multipart"])
def test_if_absent_never_overwrites(store: Storage, size: int) -> None:
    key = "wal/000000010000000000000002.zst"
    store.write_bytes(key, b"original", if_absent=True)  # absent: fine
    with pytest.raises(ObjectExists) as err, store.open_write(key, if_absent=True) as w:
        w.write(pattern(size, seed=7))
    assert key in str(err.value)
    assert store.read_bytes(key) == b"original"
    assert [i.key for i in store.list("wal/")] == [key]


@all_kinds
def test_if_absent_multipart_on_absent_key(store: Storage) -> None:
    data = pattern(17 * MiB, seed=8)
    with store.open_write("new", if_absent=True) as w:
        for i in range(0, len(data), MiB):
            w.write(data[i : i + MiB])
    assert store.read_bytes("new") == data


# --- list, stat, delete ---------------------------------------------------------------------


@all_kinds
def test_a_listing_can_start_after_a_key(store: Storage) -> None:
    """Only keys sorting after ``start_after`` (S3 and GCS start the listing there; Azure
    and a directory list every key and drop the rest): the same answer from every kind."""
    for name in ("0000000A", "0000000B", "0000000B.partial", "0000000C", "00000010"):
        store.write_bytes(f"db/wal/{name}.zst", b"x")
    store.write_bytes("db/wal/00000001.history.zst", b"h")
    keys = sorted(i.key for i in store.list("db/wal/0000000", start_after="db/wal/0000000B"))
    assert keys == [
        "db/wal/0000000B.partial.zst",
        "db/wal/0000000B.zst",
        "db/wal/0000000C.zst",
    ]  # (00000010 sorts after, but is not under the prefix)
    assert list(store.list("db/wal/0000000", start_after="db/wal/0000000C.zst")) == []


@all_kinds
def test_list_by_prefix_with_sizes(store: Storage) -> None:
    store.write_bytes("db1/base/b1/base.tar.zst", b"x" * 10)
    store.write_bytes("db1/base/b1/metadata.json", b"{}")
    store.write_bytes("db1/wal/0001.zst", b"y" * 3)
    store.write_bytes("db10/wal/0001.zst", b"z")
    found = {i.key: i.size for i in store.list("db1/")}
    assert found == {
        "db1/base/b1/base.tar.zst": 10,
        "db1/base/b1/metadata.json": 2,
        "db1/wal/0001.zst": 3,
    }
    assert {i.key for i in store.list("db1")} == set(found) | {"db10/wal/0001.zst"}
    assert {i.key for i in store.list("db1/wal/")} == {"db1/wal/0001.zst"}
    assert {i.key for i in store.list("")} == set(found) | {"db10/wal/0001.zst"}
    assert list(store.list("nothing/")) == []
    assert all(i.mtime > 1_600_000_000 for i in store.list(""))


@all_kinds
def test_stat(store: Storage) -> None:
    assert store.stat("k") is None
    assert not store.exists("k")
    store.write_bytes("k", b"12345")
    info = store.stat("k")
    assert info is not None
    assert (info.key, info.size) == ("k", 5)
    assert info.mtime > 1_600_000_000
    assert store.exists("k")


@all_kinds
def test_delete_and_delete_absent(store: Storage) -> None:
    store.write_bytes("d/1", b"1")
    store.write_bytes("d/2", b"2")
    store.delete("d/1")
    assert store.stat("d/1") is None
    assert [i.key for i in store.list("d/")] == ["d/2"]
    store.delete("d/1")  # absent: not an error
    store.delete("never/existed")
    assert store.delete_prefix("d/") == 1
    assert list(store.list("")) == []


@all_kinds
def test_missing_key_is_object_not_found(store: Storage) -> None:
    with pytest.raises(ObjectNotFound) as err:
        store.open_read("wal/00000001000000000000FFFF.zst")
    assert "00000001000000000000FFFF" in str(err.value)


@all_kinds
def test_invalid_keys_are_refused(store: Storage) -> None:
    for key in ("/abs", "a/../b"):
        with pytest.raises(StorageError):
            store.write_bytes(key, b"x")


# --- describe, errors -------------------------------------------------------------------


@all_kinds
def test_describe_has_no_secret(store: Storage, spec_env) -> None:
    spec, env = spec_env
    text = store.describe()
    assert text
    secrets = [v for k, v in env.items() if v and ("KEY" in k or "SECRET" in k)]
    if "AZURE_STORAGE_CONNECTION_STRING" in env:
        secrets.append(services.AZURITE_KEY)
    secrets.append(os.environ.get("AWS_SECRET_ACCESS_KEY", "") or "\0")
    for secret in secrets:
        assert secret not in text
        assert secret not in repr(store)
    # The location names the bucket/container.
    assert (spec.get("bucket") or spec.get("container") or spec.get("path")) in text


@pytest.mark.parametrize("kind", CLOUD_KINDS)
def test_missing_bucket_is_a_clear_storage_error(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, env = _service(request, kind)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    spec = dict(spec, bucket=missing, container=missing)
    store = open_storage(spec)
    actions = [
        lambda: store.write_bytes("a", b"1"),
        lambda: list(store.list("")),
        lambda: store.stat("a"),
        lambda: store.read_bytes("a"),
    ]
    for action in actions:
        with pytest.raises(StorageError) as err:
            action()
        assert not isinstance(err.value, ObjectNotFound | ObjectExists)
        message = str(err.value)
        assert missing in message and "does not exist" in message
        assert "hint:" in message


@pytest.mark.parametrize("kind", CLOUD_KINDS)
def test_unreachable_endpoint_is_a_clear_storage_error(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, env = _service(request, kind)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    port = services.free_port()  # nothing listens there
    if kind == "azure":
        monkeypatch.setenv(
            "AZURE_STORAGE_CONNECTION_STRING",
            env["AZURE_STORAGE_CONNECTION_STRING"].replace(
                spec["account_url"], f"http://127.0.0.1:{port}/{services.AZURITE_ACCOUNT}"
            ),
        )
    else:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
        spec = dict(spec, endpoint_url=f"http://127.0.0.1:{port}")
    store = open_storage(dict(spec, retries=0))
    with pytest.raises(StorageError) as err:
        store.write_bytes("a", b"1")
    assert "hint:" in str(err.value)


def test_no_aws_credentials_is_a_clear_storage_error(
    s3_service: tuple[dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _env = s3_service
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_storage(spec)
    with pytest.raises(StorageError) as err:
        store.stat("x")
    assert "no AWS credentials" in str(err.value)


def test_no_azure_credentials_names_azure_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    try:
        import azure.identity  # noqa: F401
    except ImportError:
        with pytest.raises(StorageError) as err:
            open_storage(
                {
                    "kind": "azure",
                    "container": "c",
                    "account_url": "https://acct.blob.core.windows.net",
                }
            )
        assert "azure-identity" in str(err.value)
    else:  # pragma: no cover - azure-identity installed: DefaultAzureCredential is used
        pytest.skip("azure-identity is installed")


def test_bad_part_size_is_a_config_error() -> None:
    from pgbackup.errors import ConfigError

    with pytest.raises(ConfigError):
        open_storage(
            {
                "kind": "gcs",
                "bucket": "b",
                "endpoint_url": "http://127.0.0.1:1",
                "part_size": "1000",
            }
        )
    with pytest.raises(ConfigError):
        open_storage({"kind": "s3", "bucket": "b", "part_size": "1MiB"})


@pytest.mark.parametrize("spec_env", ["s3"], indirect=True)
def test_part_size_from_spec(spec_env) -> None:
    store = open_storage(dict(spec_env[0], part_size="5MiB"))
    w = store.writer("p")
    w.write(pattern(11 * MiB, seed=9))
    assert len(w.parts) == 2  # type: ignore[attr-defined]
    w.commit()
    assert store.read_bytes("p") == pattern(11 * MiB, seed=9)


# --- retries (a fake provider: no network) -----------------------------------------------


def test_transient_failures_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgbackup.storage import cloud

    class Flaky(cloud.CloudStorage):
        kind = "flaky"

        def __init__(self, failures: int) -> None:
            super().__init__(prefix="p", part_size=1024, attempts=4)
            self.failures = failures
            self.objects: dict[str, bytes] = {}
            self.sleeps: list[int] = []

        def container_url(self) -> str:
            return "flaky://bucket"

        def _sleep(self, attempt: int) -> None:
            self.sleeps.append(attempt)

        def _classify(self, exc, action, key):  # type: ignore[no-untyped-def]
            return cloud.TRANSIENT if isinstance(exc, ConnectionResetError) else StorageError("x")

        def _flake(self) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionResetError("reset by peer")

        def _put(self, name, data, if_absent):  # type: ignore[no-untyped-def]
            self._flake()
            self.objects[name] = data

        def _begin(self, name, if_absent):  # type: ignore[no-untyped-def]
            return []

        def _upload_part(self, upload, name, number, offset, data):  # type: ignore[no-untyped-def]
            self._flake()
            upload.append((number, data))  # parts arrive in any order
            return number

        def _complete(self, upload, name, parts, offset, last, if_absent):  # type: ignore[no-untyped-def]
            self._flake()
            assert parts == list(range(1, len(parts) + 1))
            self.objects[name] = b"".join(d for _, d in sorted(upload)) + last

        def _abort_upload(self, upload, name):  # type: ignore[no-untyped-def]
            pass

        def _open_read(self, name, start):  # type: ignore[no-untyped-def]
            import io

            return io.BytesIO(self.objects[name][start:])

        def _list(self, prefix, start_after):  # type: ignore[no-untyped-def]
            return iter(())

        def _stat(self, name):  # type: ignore[no-untyped-def]
            return None

        def _delete(self, name):  # type: ignore[no-untyped-def]
            pass

    s = Flaky(failures=3)
    s.write_bytes("k", b"abc")
    assert s.objects["p/k"] == b"abc"
    assert s.sleeps == [1, 2, 3]

    s = Flaky(failures=4)
    with pytest.raises(StorageError) as err:
        s.write_bytes("k2", b"abc")
    assert "after 4 attempts" in str(err.value) and "flaky://bucket/p/k2" in str(err.value)

    s = Flaky(failures=2)  # multipart: parts are retried too
    data = pattern(5000, seed=10)
    s.write_bytes("k3", data)
    assert s.objects["p/k3"] == data

    # A read that breaks mid-body resumes at the current offset.
    class Breaking:
        def __init__(self, data: bytes, fail_after: int | None) -> None:
            self.data, self.pos, self.fail_after = data, 0, fail_after

        def read(self, n: int) -> bytes:
            if self.fail_after is not None and self.pos >= self.fail_after:
                raise ConnectionResetError("reset mid-body")
            out = self.data[self.pos : self.pos + n]
            self.pos += len(out)
            return out

        def close(self) -> None:
            pass

    opened: list[int] = []

    def open_read(name: str, start: int) -> Breaking:
        opened.append(start)
        return Breaking(s.objects[name][start:], 1500 if len(opened) == 1 else None)

    s._open_read = open_read  # type: ignore[method-assign]
    f = s.open_read("k3")
    got = b"".join(iter(lambda: f.read(1000), b""))
    assert got == data
    assert opened == [0, 2000]


# --- import hygiene ------------------------------------------------------------------------


def test_importing_storage_imports_no_cloud_sdk() -> None:
    code = (
        "import sys, pgbackup.storage, pgbackup.storage.cloud\n"
        "from pgbackup.storage import open_storage\n"
        "open_storage({'kind': 'posix', 'path': '/tmp/x'})\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'google', 'azure')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_posix_unreadable_is_an_error_never_an_empty_listing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wal-fetch reads "nothing listed" as "not archived", and PostgreSQL then ends
    recovery there: a directory that cannot be read must say so instead. (Tests run as
    root, whom permission bits do not stop, so the refusals are simulated.)"""
    import errno

    from pgbackup.storage import posix

    store = posix.PosixStorage(tmp_path)
    store.write_bytes("db/wal/000000010000000000000001", b"x")
    real_walk, real_stat = os.walk, os.stat

    def walk_refused(top: Any, onerror: Any = None, **kw: Any) -> Any:
        onerror(PermissionError(errno.EACCES, "Permission denied", str(top)))
        yield from real_walk(top, onerror=onerror, **kw)

    monkeypatch.setattr(posix.os, "walk", walk_refused)
    with pytest.raises(StorageError, match="cannot list .*permission denied"):
        list(store.list("db/wal/"))
    monkeypatch.setattr(posix.os, "walk", real_walk)

    def stat_refused(path: Any, *a: Any, **kw: Any) -> Any:
        if str(path).endswith("wal"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(posix.os, "stat", stat_refused)
    with pytest.raises(StorageError, match="cannot list .*permission denied"):
        list(store.list("db/wal/"))
    monkeypatch.setattr(posix.os, "stat", real_stat)
    # A missing directory is an empty listing, and a missing object is absent.
    assert list(store.list("other/wal/")) == []
    assert store.stat("db/wal/000000010000000000000002") is None


def test_posix_stat_of_an_unreadable_object_is_an_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import pathlib

    from pgbackup.storage import posix

    store = posix.PosixStorage(tmp_path)
    real = pathlib.Path.stat

    def refused(self: pathlib.Path, *a: Any, **kw: Any) -> Any:
        if self.name == "000000010000000000000001":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", refused)
    with pytest.raises(StorageError, match="cannot read .*permission denied"):
        store.stat("db/wal/000000010000000000000001")


def test_posix_delete_prefix_removes_an_empty_directory_and_keeps_a_foreign_file(
    tmp_path: Path,
) -> None:
    """An early-started pg_basebackup's directory, failed before writing, goes with its
    backup; a directory that still holds a file that is not an object (say a writer's
    temporary file) stays, as does anything outside the prefix."""
    from pgbackup.storage import posix

    store = posix.PosixStorage(tmp_path)
    (tmp_path / "main" / "base" / "20260101T000000Z").mkdir(parents=True)
    (tmp_path / "main" / "base" / "20260101T000001Z").mkdir(parents=True)
    assert store.delete_prefix("main/base/20260101T000000Z/") == 0
    assert not (tmp_path / "main" / "base" / "20260101T000000Z").exists()
    assert (tmp_path / "main" / "base" / "20260101T000001Z").is_dir()
    store.write_bytes("main/base/20260101T000002Z/base.tar.zst", b"x")
    assert store.delete_prefix("main/base/20260101T000002Z/") == 1
    assert not (tmp_path / "main" / "base" / "20260101T000002Z").exists()
    assert (tmp_path / "main" / "base").is_dir()
    writing = tmp_path / "main" / "base" / "20260101T000003Z" / f"base.tar.zst{posix.TMP_SUFFIX}"
    writing.parent.mkdir()
    writing.write_bytes(b"x")
    assert store.delete_prefix("main/base/20260101T000003Z/") == 0
    assert writing.read_bytes() == b"x"


# --- S3 object lock and --as-of (docs/security.md) ----------------------------------------


@pytest.fixture
def locked_s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A spec on a fresh bucket with versioning and object lock (moto), 5 MiB parts."""
    import boto3

    spec, env = _service(request, "s3")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"locked-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=spec["endpoint_url"], region_name="us-east-1").create_bucket(
        Bucket=bucket, ObjectLockEnabledForBucket=True
    )
    lock = {"mode": "governance", "margin": 60, "days": 2, "weekly": 1, "monthly": 0}
    return dict(spec, bucket=bucket, part_size="5MiB", object_lock=lock)


def test_s3_lock_on_every_write_and_as_of_reads(locked_s3: dict[str, Any]) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    st = open_storage(locked_s3)
    big = pattern(11 * MiB, seed=7)  # a multipart upload, read back in version-pinned ranges
    st.write_bytes("db/base/B1/base.tar.zst", big)
    st.write_bytes("db/base/B1/metadata.json", b"meta")
    st.write_bytes("db/wal/000000010000000000000001.zst", b"wal")
    st.write_bytes("db/wal/000000010000000000000002.partial.zst", b"p1")
    st.write_bytes("db/wal/000000010000000000000002.partial.zst", b"p2")  # by design
    with pytest.raises(ObjectExists):  # written once: an overwrite is refused
        st.write_bytes("db/base/B1/metadata.json", b"evil")
    now = datetime.now(UTC)
    for v in st.versions("db/"):
        lock = st.retention_of(v.key, v.version_id)
        if ".partial" in v.key:
            assert lock is None
            continue
        assert lock is not None and lock[0] == "GOVERNANCE", v
        horizon = timedelta(days=2 if "/base/" in v.key else 7, seconds=60)
        assert abs((lock[1] - (now + horizon)).total_seconds()) < 30, (v.key, lock)
    time.sleep(1.1)
    before = datetime.now(UTC)
    time.sleep(1.1)
    import boto3

    s3 = boto3.client("s3", endpoint_url=locked_s3["endpoint_url"], region_name="us-east-1")
    prefix = locked_s3["prefix"]
    s3.put_object(Bucket=locked_s3["bucket"], Key=prefix + "db/base/B1/base.tar.zst", Body=b"x")
    s3.delete_object(Bucket=locked_s3["bucket"], Key=prefix + "db/wal/000000010000000000000001.zst")
    live = open_storage(locked_s3)
    assert live.read_bytes("db/base/B1/base.tar.zst") == b"x"
    assert live.stat("db/wal/000000010000000000000001.zst") is None
    past = open_storage(dict(locked_s3, as_of=before.isoformat()))
    assert past.read_bytes("db/base/B1/base.tar.zst") == big
    assert past.read_bytes("db/wal/000000010000000000000001.zst") == b"wal"
    assert {i.key for i in past.list("db/")} == {
        "db/base/B1/base.tar.zst",
        "db/base/B1/metadata.json",
        "db/wal/000000010000000000000001.zst",
        "db/wal/000000010000000000000002.partial.zst",
    }
    assert past.read_bytes("db/wal/000000010000000000000002.partial.zst") == b"p2"
    with pytest.raises(StorageError, match="read as of"):
        past.delete("db/base/B1/metadata.json")
    earlier = open_storage(dict(locked_s3, as_of="2000-01-01T00:00:00Z"))
    assert list(earlier.list("db/")) == []
    with pytest.raises(ObjectNotFound):
        earlier.read_bytes("db/base/B1/metadata.json")
    # A locked version cannot be removed: expire keeps it and says until when.
    held = live.expire("db/base/B1/metadata.json")
    assert held is not None and held > datetime.now(UTC)
    assert past.read_bytes("db/base/B1/metadata.json") == b"meta"
    assert live.protection() == {"versioning": True, "object_lock": True}
