"""wal-ship's rules on real posix storages: order, no second copy, the partial, catch-up."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pgbackup.engine.shipper import Shipper
from pgbackup.storage import open_storage

SEG = "0000000100000000000000{:02X}"


def policy(tmp_path: Path) -> Any:
    return SimpleNamespace(
        path=tmp_path / "backup.yaml",
        repository={"path": str(tmp_path / "repo")},
        uploads=[{"name": "nas", "path": str(tmp_path / "nas")}],
    )


def store(tmp_path: Path, name: str, data: bytes) -> None:
    open_storage({"path": str(tmp_path / "repo")}).write_bytes(f"t/wal/{name}.zst", data)


def at_nas(tmp_path: Path) -> dict[str, bytes]:
    wal = tmp_path / "nas" / "t" / "wal"
    return {p.name: p.read_bytes() for p in wal.iterdir()} if wal.exists() else {}


def test_ships_in_order_once_and_replaces_the_partial_until_the_segment_is_there(
    tmp_path: Path,
) -> None:
    for i in (3, 1, 2):
        store(tmp_path, SEG.format(i), b"segment %d" % i)
    store(tmp_path, "00000002.history", b"history")
    store(tmp_path, SEG.format(4) + ".partial", b"partial v1")
    shipper = Shipper(policy(tmp_path), "t")
    assert shipper.once() == {"nas": {"status": "ok", "shipped": 5}}
    nas = at_nas(tmp_path)
    assert nas[SEG.format(4) + ".partial.zst"] == b"partial v1"
    assert nas[SEG.format(1) + ".zst"] == b"segment 1"
    # segments arrived in LSN order, the partial after them
    wal = tmp_path / "nas" / "t" / "wal"
    order = sorted(wal.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
    segs = [p.name for p in order if p.name.startswith("000000010")]
    assert segs == sorted(segs)
    # nothing new: nothing copied again
    assert shipper.once()["nas"]["shipped"] == 0
    # the partial changed: copied again; then completed: the stale copy goes
    store(tmp_path, SEG.format(4) + ".partial", b"partial v2, longer")
    assert shipper.once()["nas"]["shipped"] == 1
    assert at_nas(tmp_path)[SEG.format(4) + ".partial.zst"] == b"partial v2, longer"
    store(tmp_path, SEG.format(4), b"segment 4")
    os.unlink(tmp_path / "repo" / "t" / "wal" / (SEG.format(4) + ".partial.zst"))
    assert shipper.once()["nas"]["shipped"] == 1
    nas = at_nas(tmp_path)
    assert SEG.format(4) + ".partial.zst" not in nas and nas[SEG.format(4) + ".zst"] == b"segment 4"


def test_a_destination_that_is_down_fails_then_catches_up(tmp_path: Path) -> None:
    store(tmp_path, SEG.format(1), b"segment 1")
    (tmp_path / "nas").write_text("not mounted")  # a file where the directory should be
    shipper = Shipper(policy(tmp_path), "t")
    result = shipper.once()["nas"]
    assert result["status"] == "failed" and result["error"]
    store(tmp_path, SEG.format(2), b"segment 2")
    (tmp_path / "nas").unlink()
    assert shipper.once() == {"nas": {"status": "ok", "shipped": 2}}
    assert set(at_nas(tmp_path)) == {SEG.format(1) + ".zst", SEG.format(2) + ".zst"}


def test_different_content_at_the_destination_is_refused_not_overwritten(tmp_path: Path) -> None:
    store(tmp_path, SEG.format(1), b"segment 1")
    open_storage({"path": str(tmp_path / "nas")}).write_bytes(
        f"t/wal/{SEG.format(1)}.zst", b"another cluster's segment 1"
    )
    result = Shipper(policy(tmp_path), "t").once()["nas"]
    assert result["status"] == "failed" and "refusing to overwrite" in result["error"]
    assert at_nas(tmp_path)[SEG.format(1) + ".zst"] == b"another cluster's segment 1"


def test_files_before_a_refused_one_are_shipped_none_after_it(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        store(tmp_path, SEG.format(i), b"segment %d" % i)
    open_storage({"path": str(tmp_path / "nas")}).write_bytes(
        f"t/wal/{SEG.format(2)}.zst", b"another cluster's segment 2"
    )
    shipper = Shipper(policy(tmp_path), "t")
    result = shipper.once()["nas"]
    assert result["status"] == "failed" and "refusing to overwrite" in result["error"]
    assert set(at_nas(tmp_path)) == {SEG.format(1) + ".zst", SEG.format(2) + ".zst"}
    assert shipper.states["nas"].shipped == 1


def test_after_an_upgrade_the_old_generations_unshipped_tail_is_shipped_and_measured(
    tmp_path: Path,
) -> None:
    """Segments 2-3 of generation 1 were archived after the last round, then the cluster
    was upgraded: the next round ships them into generation 1's namespace there, beside
    the new cluster's WAL in its own, and the lag counts them until then."""
    from pgbackup.engine import generations as g
    from pgbackup.engine.repository import Repository
    from pgbackup.engine.shipper import destination_lag

    repo = open_storage({"path": str(tmp_path / "repo")})
    repo.write_bytes("t/archive.json", b'{"system_identifier": "111"}')
    store(tmp_path, SEG.format(1), b"old 1")
    shipper = Shipper(policy(tmp_path), "t")
    assert shipper.once()["nas"]["shipped"] == 1
    store(tmp_path, SEG.format(2), b"old 2")
    store(tmp_path, SEG.format(3), b"old 3")
    g.write_records(
        repo, "t", g.plan_upgrade([], "111", 15, "222", 16, "t", "2026-12-07T00:00:00Z")
    )
    repo.write_bytes(f"t/gen/2/wal/{SEG.format(1)}.zst", b"new 1")
    lag = destination_lag(policy(tmp_path), Repository(repo), "t", "nas")
    assert lag["missing"] == 3 and lag["lag_seconds"] > 0  # old 2, old 3, new 1
    assert shipper.once() == {"nas": {"status": "ok", "shipped": 3}}
    nas = tmp_path / "nas" / "t"
    assert {p.name: p.read_bytes() for p in (nas / "wal").iterdir()} == {
        f"{SEG.format(i)}.zst": b"old %d" % i for i in (1, 2, 3)
    }
    assert (nas / "gen" / "2" / "wal" / f"{SEG.format(1)}.zst").read_bytes() == b"new 1"
    assert destination_lag(policy(tmp_path), Repository(repo), "t", "nas")["missing"] == 0
    assert shipper.once()["nas"]["shipped"] == 0  # the old generation is not listed again
