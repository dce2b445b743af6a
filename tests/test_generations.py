"""engine/generations: the history's records, the namespace of each generation, the refusal
of a cluster nobody declared, and the storage view that names keys as generation 1's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pgbackup.engine import generations as g
from pgbackup.storage import open_storage

NOW = "2026-12-06T21:00:00Z"


def test_generation_1_is_the_target_itself_and_later_ones_live_under_gen() -> None:
    assert g.root("main", 1) == "main"
    assert g.root("main", 2) == "main/gen/2"
    assert g.history_key("main", 3) == "main/history/3.json"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("main/wal/000000010000000000000003.zst", "main/gen/2/wal/000000010000000000000003.zst"),
        (
            "main/base/20261206T210000Z/metadata.json",
            "main/gen/2/base/20261206T210000Z/metadata.json",
        ),
        ("main/archive.json", "main/gen/2/archive.json"),
        ("main/runs/x-check.json", "main/runs/x-check.json"),  # shared
        ("main/history/1.json", "main/history/1.json"),  # shared
        ("main/drills/x.json", "main/drills/x.json"),  # shared
        ("other/wal/000000010000000000000003.zst", "other/wal/000000010000000000000003.zst"),
        ("main/gen/2/wal/X", "main/gen/2/wal/X"),  # idempotent
    ],
)
def test_keys_of_a_generation(key: str, expected: str) -> None:
    assert g.mapped(key, "main", 2) == expected
    assert g.mapped(key, "main", 1) == key


def test_listed_keys_map_back_and_other_generations_are_hidden() -> None:
    assert g.unmapped("main/gen/2/wal/X", "main", 2) == "main/wal/X"
    assert g.unmapped("main/gen/3/wal/X", "main", 2) is None
    assert g.unmapped("main/wal/X", "main", 2) is None  # generation 1's
    assert g.unmapped("main/runs/r.json", "main", 2) == "main/runs/r.json"


def test_the_first_upgrade_writes_generation_1_and_2() -> None:
    writes = g.plan_upgrade([], "111", 15, "222", 16, "main", NOW)
    assert [w["generation"] for w in writes] == [1, 2]
    assert writes[0] == {
        "generation": 1,
        "system_identifier": "111",
        "major": 15,
        "recorded_at": NOW,
        "reason": "first cluster",
    }
    assert writes[1]["reason"] == "pg_upgrade 15 -> 16"
    assert writes[1]["previous_system_identifier"] == "111"
    assert writes[1]["previous_generation"] == 1


def test_a_new_initdb_of_the_same_major_is_a_new_cluster() -> None:
    history = g.plan_upgrade([], "111", 15, "222", 16, "main", NOW)
    writes = g.plan_upgrade(history, None, None, "333", 16, "main", NOW)
    assert [(w["generation"], w["reason"]) for w in writes] == [(3, "new cluster (initdb)")]


@pytest.mark.parametrize(
    ("server", "major", "words"),
    [
        ("111", 15, "nothing to record"),  # the old server still answers: never upgraded
        ("222", 16, "nothing to record"),  # run twice
    ],
)
def test_the_step_twice_or_on_the_wrong_server_is_refused(
    server: str, major: int, words: str
) -> None:
    history = [] if server == "111" else g.plan_upgrade([], "111", 15, "222", 16, "main", NOW)
    with pytest.raises(g.GenerationError) as info:
        g.plan_upgrade(history, "111", 15, server, major, "main", NOW)
    assert words in info.value.message
    assert "already holds" in info.value.message


def test_an_older_generation_or_major_is_refused() -> None:
    history = g.plan_upgrade([], "111", 15, "222", 16, "main", NOW)
    with pytest.raises(g.GenerationError, match="older than the current generation 2"):
        g.plan_upgrade(history, None, None, "111", 15, "main", NOW)
    with pytest.raises(g.GenerationError, match="a downgrade is not an upgrade"):
        g.plan_upgrade(history, None, None, "999", 15, "main", NOW)


def test_a_target_never_archived_has_nothing_to_upgrade() -> None:
    with pytest.raises(g.GenerationError, match="nothing to upgrade from"):
        g.plan_upgrade([], None, None, "222", 16, "main", NOW)


def test_the_refusal_names_the_command() -> None:
    message, hint = g.undeclared("main", "222", ["111"])
    assert "cluster 222 is not a declared generation of target 'main'" in message
    assert "pgbackup upgrade --target main" in hint


def test_records_read_back_and_damage_is_named() -> None:
    rec = g.record(2, "222", 16, NOW, reason="pg_upgrade 15 -> 16")
    assert g.parse_record(g.record_bytes(rec), "k") == rec
    with pytest.raises(Exception, match="k is damaged"):
        g.parse_record(b"{", "k")
    with pytest.raises(Exception, match="no generation"):
        g.parse_record(b"{}", "k")


def test_of_sysid() -> None:
    history = g.plan_upgrade([], "111", 15, "222", 16, "main", NOW)
    assert g.of_sysid(history, 222)["generation"] == 2  # type: ignore[index]
    assert g.of_sysid(history, "111")["generation"] == 1  # type: ignore[index]
    assert g.of_sysid(history, "333") is None
    assert g.of_sysid(history, None) is None


def test_the_view_keeps_generations_apart_on_real_storage(tmp_path: Path) -> None:
    storage = open_storage({"path": str(tmp_path)})
    storage.write_bytes("main/wal/A.zst", b"one")
    two = g.view(storage, "main", 2)
    assert isinstance(two, type(storage))
    two.write_bytes("main/wal/A.zst", b"two")  # the same name: no collision
    two.write_bytes("main/runs/r.json", b"{}")
    assert (tmp_path / "main/gen/2/wal/A.zst").read_bytes() == b"two"
    assert (tmp_path / "main/wal/A.zst").read_bytes() == b"one"
    assert (tmp_path / "main/runs/r.json").is_file()
    assert [i.key for i in two.list("main/wal/")] == ["main/wal/A.zst"]
    two.write_bytes("main/wal/B.zst", b"two")
    assert [i.key for i in two.list("main/wal/", start_after="main/wal/A.zst")] == [
        "main/wal/B.zst"
    ]
    assert two.read_bytes("main/wal/A.zst") == b"two"
    assert storage.read_bytes("main/wal/A.zst") == b"one"
    assert g.number_of(two) == 2 and g.number_of(storage) == 1
    assert g.view(storage, "main", 1) is storage


def test_history_is_written_once_and_routes_clusters(tmp_path: Path) -> None:
    storage = open_storage({"path": str(tmp_path)})
    assert g.generations(storage, "main")[0]["system_identifier"] is None
    storage.write_bytes("main/archive.json", b'{"system_identifier": "111"}')
    assert g.for_cluster(storage, "main", 999) is storage  # no history: as before #30
    writes = g.plan_upgrade([], "111", 15, "222", 16, "main", NOW)
    g.write_records(storage, "main", writes)
    assert json.loads((tmp_path / "main/history/2.json").read_text())["system_identifier"] == "222"
    with pytest.raises(g.GenerationError, match="already exists"):
        g.write_records(storage, "main", writes)  # never rewritten
    assert g.number_of(g.for_cluster(storage, "main", 222)) == 2
    assert g.number_of(g.for_cluster(storage, "main", 111)) == 1
    with pytest.raises(g.GenerationError, match="pgbackup upgrade --target main"):
        g.for_cluster(storage, "main", 333)
    assert g.number_of(g.for_cluster(storage, "main", None, strict=False)) == 2


def test_a_backup_of_a_cluster_nobody_declared_is_refused(tmp_path: Path) -> None:
    storage = open_storage({"path": str(tmp_path)})
    assert g.backup_storage(storage, "main", SimpleNamespace(system_identifier="111")) is storage
    storage.write_bytes("main/archive.json", b'{"system_identifier": "111"}')
    with pytest.raises(g.GenerationError, match="backup refused"):
        g.backup_storage(storage, "main", SimpleNamespace(system_identifier="222"))
    assert not (tmp_path / "main/base").exists()


def test_an_unknown_previous_major_is_said() -> None:
    writes = g.plan_upgrade([], "111", None, "222", 16, "main", NOW)
    assert writes[1]["reason"] == "new cluster (PostgreSQL 16; the previous major is unknown)"


def test_the_previous_major_is_read_from_the_newest_archived_segment(tmp_path: Path) -> None:
    """A target with WAL and no backup: its cluster's major from the page magic."""
    import struct

    from pgbackup.engine.upgrade import archived_major
    from pgbackup.formats.codecs import CodecSpec, encode_bytes
    from pgbackup.formats.walpage import WAL_PAGE_MAGIC

    storage = open_storage({"path": str(tmp_path)})
    policy = SimpleNamespace(encryption=None)
    assert archived_major(policy, storage, "main") is None
    for name, major in (("000000010000000000000002", 15), ("000000010000000000000003", 16)):
        page = struct.pack("<HHIQI4xQII", WAL_PAGE_MAGIC[major], 2, 1, 0, 0, 111, 1 << 24, 8192)
        data = page + bytes(8192 - len(page))
        storage.write_bytes(f"main/wal/{name}.zst", encode_bytes(CodecSpec("zstd", 3), data))
    assert archived_major(policy, storage, "main") == 16


def test_an_incremental_never_builds_on_another_generation(tmp_path: Path) -> None:
    """Issue #30 point 3: right after the step, the new cluster has no backup of its own,
    and the old generation's (the newest of the target) is not a parent: the incremental
    is refused with "take a full backup first"; once generation 2 has one, that is it."""
    from pgbackup.engine.backup_preflight import choose_parent
    from pgbackup.engine.repository import Repository
    from pgbackup.errors import BackupError

    storage = open_storage({"path": str(tmp_path)})
    storage.write_bytes("main/archive.json", b'{"system_identifier": "111"}')
    old: dict[str, object] = {"status": "complete", "system_identifier": "111", "objects": []}
    old["backup_id"] = "20261206T200000Z"
    storage.write_bytes("main/base/20261206T200000Z/metadata.json", json.dumps(old).encode())
    g.write_records(storage, "main", g.plan_upgrade([], "111", 17, "222", 18, "main", NOW))
    facts = SimpleNamespace(system_identifier="222")
    repo = Repository(g.backup_storage(storage, "main", facts))
    with pytest.raises(BackupError, match="take a full backup first"):
        choose_parent(repo, "main", facts)  # type: ignore[arg-type]
    new: dict[str, object] = {"status": "complete", "system_identifier": "222", "objects": []}
    new["backup_id"] = "20261206T210000Z"
    storage.write_bytes("main/gen/2/base/20261206T210000Z/metadata.json", json.dumps(new).encode())
    assert choose_parent(repo, "main", facts).backup_id == "20261206T210000Z"  # type: ignore[arg-type]
    gen1 = Repository(storage)
    assert [b.backup_id for b in gen1.complete_backups("main")] == ["20261206T200000Z"]


# --- a versioned bucket under object lock (docs/security.md, features/upgrade_object_lock) --


@pytest.fixture
def locked_bucket(
    s3_service: tuple[dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    """A storage on a fresh moto bucket with versioning and object lock, and a boto3
    client with the same (the host's) credentials: the attacker."""
    import uuid

    import boto3

    spec, env = s3_service
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"locked-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=spec["endpoint_url"], region_name="us-east-1")
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    lock = {"mode": "governance", "margin": 60, "days": 1, "weekly": 0, "monthly": 0}
    return open_storage(dict(spec, bucket=bucket, object_lock=lock)), s3


def _delete_marker(storage: Any, s3: Any, key: str) -> None:
    s3.delete_object(Bucket=storage.bucket, Key=storage.object_name(key))


def test_a_deleted_binding_or_history_is_not_written_again(locked_bucket: tuple[Any, Any]) -> None:
    """The archive.json and history records an attacker deleted (delete markers) read as
    absent; wal-push, backup and the upgrade step refuse instead of binding generation 1's
    namespace to whichever cluster comes next."""
    from pgbackup.engine.wal import WalError, bind_archive

    storage, s3 = locked_bucket
    bind_archive(storage, "main", 111, 16 * 1024 * 1024)  # the first push binds it
    g.write_records(storage, "main", g.plan_upgrade([], "111", 15, "222", 15, "main", NOW))
    bind_archive(g.for_cluster(storage, "main", 222), "main", 222, 16 * 1024 * 1024)
    assert storage.stat("main/gen/2/archive.json") is not None
    for key in ("main/archive.json", "main/history/1.json", "main/history/2.json"):
        _delete_marker(storage, s3, key)
    assert g.read_history(storage, "main") == []  # what the attacker made it look like
    with pytest.raises(WalError, match=r"main/archive.json of target 'main' was deleted at"):
        bind_archive(g.for_cluster(storage, "main", 222), "main", 222, 16 * 1024 * 1024)
    assert storage.stat("main/archive.json") is None  # not bound again
    assert [v.deleted for v in storage.versions("main/archive.json")].count(False) == 1
    with pytest.raises(g.GenerationError, match="backup refused: main/archive.json"):
        g.backup_storage(storage, "main", SimpleNamespace(system_identifier="222"))
    # generation 1's binding back, the history still deleted: refused, naming the history
    storage.write_bytes("main/archive.json", b'{"system_identifier": "111"}', if_absent=True)
    with pytest.raises(WalError, match=r"main/history/1.json of target 'main' was deleted"):
        bind_archive(g.for_cluster(storage, "main", 222), "main", 222, 16 * 1024 * 1024)
    with pytest.raises(g.GenerationError, match=r"history/1.json of target 'main' was deleted"):
        g.backup_storage(storage, "main", SimpleNamespace(system_identifier="222"))
    # a binding never written is bound, on a versioned bucket as anywhere
    bind_archive(storage, "other", 333, 16 * 1024 * 1024)
    assert storage.stat("other/archive.json") is not None


def test_a_view_lists_and_expires_its_own_versions(locked_bucket: tuple[Any, Any]) -> None:
    """expire_prefix through a later generation's view finds that generation's versions
    (and their locks), not generation 1's names: a locked copy is held, not 'removed'."""
    storage, _s3 = locked_bucket
    gen2 = g.view(storage, "main", 2)
    gen2.write_bytes("main/base/B2/metadata.json", b"meta")
    storage.write_bytes("main/base/B1/metadata.json", b"gen 1")
    assert [v.key for v in gen2.versions("main/base/")] == ["main/base/B2/metadata.json"]
    (v,) = gen2.versions("main/base/B2/")
    assert gen2.retention_of(v.key, v.version_id) is not None
    removed, held = gen2.expire_prefix("main/base/B2/")
    assert (removed, held is not None) == (0, True)
    assert storage.stat("main/gen/2/base/B2/metadata.json") is not None
