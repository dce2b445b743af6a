"""Corruption of stored data: a flipped byte in a base backup and in an archived WAL
segment, a WAL segment missing in the middle of the chain, a truncated metadata.json.

`verify` (and `verify --wal`) must report each one, `restore` must refuse what it cannot
restore correctly (or, if it restores, hold every committed batch up to the target), and
`list` must show the reduced window. Each case puts the original bytes back afterwards.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import counts
import pytest
from faultlib import batches, clean_output, listed, restored
from harness import Harness, commit_batches, module_harness, switch_and_wait_archived

WAL_BATCHES = range(5, 11)  # each in its own segment, after the second backup


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    with module_harness() as h:
        h.run("sandbox.up")
        cluster = h.sandbox()
        commit_batches(cluster, 1, 2)
        switch_and_wait_archived(cluster)
        h.run("backup")
        commit_batches(cluster, 3, 4)
        switch_and_wait_archived(cluster)
        h.run("backup")
        points: dict[int, dict[str, Any]] = {}
        segment_of: dict[int, str] = {}
        for b in WAL_BATCHES:
            points[b] = commit_batches(cluster, b, b)[0]
            segment_of[b] = cluster.sql(f"SELECT pg_walfile_name('{points[b]['lsn']}')")[0][0]
            switch_and_wait_archived(cluster)
        ids = [b["backup_id"] for b in listed(h)["backups"]]
        assert len(ids) == 2
        yield {"h": h, "ids": ids, "points": points, "segment_of": segment_of}


@contextlib.contextmanager
def damaged(path: Path) -> Iterator[Path]:
    """Keep a copy of ``path``; put it back afterwards whatever happened."""
    saved = path.with_name(path.name + ".saved-by-test")
    shutil.copy2(path, saved)
    try:
        yield path
    finally:
        shutil.copy2(saved, path)
        saved.unlink()


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def out(h: Harness) -> str:
    assert h.last is not None
    return h.last.stdout + h.last.stderr


def restore_outcome(h: Harness, expected: list[int], *args: str) -> tuple[bool, str]:
    """(acceptable, description): refused cleanly, or restored with exactly ``expected``."""
    with restored(h, *args, name="corrupt") as cluster:
        proc = h.last
        assert proc is not None
        bad = clean_output(proc)
        if bad:
            return False, "; ".join(bad)
        if cluster is None:
            return True, f"refused: {proc.stderr.strip()[:300]}"
        if not cluster.is_running():
            return False, (
                f"restore exited 0 but the restored server is not running: {proc.stdout.strip()}"
                f" | server log: {cluster.log_tail(4)}"
            )
        got = batches(cluster)
        if got == expected:
            return True, "restored exactly"
        return False, f"restore exited 0 but holds batches {got}, expected {expected}"


def test_flipped_byte_in_base_backup(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    first, second = env["ids"]
    base = h.repo / "platform" / "base" / first / "base.tar.zst"
    problems = []
    with damaged(base):
        flip(base)
        v = h.run("verify", "--backup", first, expect_ok=None)
        if v.returncode == 0 or "base.tar.zst" not in out(h):
            problems.append(f"verify did not report the flipped byte: {out(h)}")
        problems += clean_output(v)
        h.run("verify", "--backup", "all", expect_ok=None)
        if f"{first}: FAILED" not in h.last.stdout or f"{second}: OK" not in h.last.stdout:
            problems.append(f"verify --backup all: {out(h)}")
        ok, what = restore_outcome(h, [1, 2], "--backup", first)
        if not ok or not what.startswith("refused"):
            problems.append(f"restore of the damaged backup: {what}")
        leftovers = [p for p in h.root.glob("corrupt-*") if any(p.iterdir())]
        if leftovers:
            problems.append(f"a refused restore left files behind: {leftovers}")
    counts.record("corruption: flipped byte in a base backup", not problems)
    assert not problems, "\n".join(problems)


def test_truncated_metadata(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    first, second = env["ids"]
    meta = h.repo / "platform" / "base" / first / "metadata.json"
    before = listed(h)["window"]
    problems = []
    with damaged(meta):
        meta.write_bytes(meta.read_bytes()[:100])
        state = listed(h)
        row = next(b for b in state["backups"] if b["backup_id"] == first)
        if row["status"] == "complete" or not row.get("problem"):
            problems.append(f"list shows the truncated backup as {row}")
        if state["window"]["earliest_lsn"] == before["earliest_lsn"]:
            problems.append(f"list window did not shrink: {before} -> {state['window']}")
        v = h.run("verify", "--backup", "all", expect_ok=None)
        if v.returncode == 0 or first not in v.stdout:
            problems.append(f"verify --backup all did not report it: {out(h)}")
        problems += clean_output(v)
        r = h.run(
            "restore", "--backup", first, "--to", str(h.root / "meta-restore"), expect_ok=None
        )
        if r.returncode == 0 or "damaged" not in r.stderr:
            problems.append(f"restore of the damaged backup: {out(h)}")
        problems += clean_output(r)
    counts.record("corruption: truncated metadata.json", not problems)
    assert not problems, "\n".join(problems)


def test_missing_wal_segment(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    points, segment_of = env["points"], env["segment_of"]
    gap = segment_of[7]
    key = h.repo / "platform" / "wal" / f"{gap}.zst"
    before = listed(h)["window"]
    problems = []
    with damaged(key):
        key.unlink()
        v = h.run("verify", "--wal", expect_ok=None)
        if v.returncode == 0 or gap not in v.stdout:
            problems.append(f"verify --wal did not name the gap {gap}: {out(h)}")
        problems += clean_output(v)
        window = listed(h)["window"]
        if not window["latest_lsn"] or _lsn(window["latest_lsn"]) >= _lsn(before["latest_lsn"]):
            problems.append(f"list window did not shrink: {before} -> {window}")
        if not any(gap in g for g in window.get("wal_gaps", [])):
            problems.append(f"list does not show the gap: {window}")
        # Past the gap by LSN: refused up front, naming the gap; nothing written.
        ok, what = restore_outcome(h, list(range(1, 11)), "--target-lsn", points[10]["lsn"])
        if not ok or not what.startswith("refused") or f"{gap} is missing" not in what:
            problems.append(f"restore past the gap: {what}")
        # Before the gap: still exact.
        ok, what = restore_outcome(h, list(range(1, 7)), "--target-name", points[6]["name"])
        if not ok or what != "restored exactly":
            problems.append(f"restore before the gap: {what}")
    counts.record("corruption: WAL segment missing mid-chain", not problems)
    assert not problems, "\n".join(problems)


def test_missing_wal_segment_restore_to_name_past_the_gap(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    points, segment_of = env["points"], env["segment_of"]
    key = h.repo / "platform" / "wal" / f"{segment_of[7]}.zst"
    with damaged(key):
        key.unlink()
        ok, what = restore_outcome(h, list(range(1, 11)), "--target-name", points[10]["name"])
    counts.record("corruption: WAL segment missing mid-chain (restore to a name past it)", ok)
    assert ok, what


def test_flipped_byte_in_archived_wal_is_never_served(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    name = env["segment_of"][8]
    key = h.repo / "platform" / "wal" / f"{name}.zst"
    problems = []
    with damaged(key):
        flip(key, 0.3)
        fetched = h.root / "flipped-fetch"
        f = h.run("wal-fetch", "--target", "platform", name, str(fetched), expect_ok=None)
        if f.returncode == 0 or fetched.exists():
            problems.append("wal-fetch served a damaged segment")
        problems += clean_output(f)
    counts.record("corruption: flipped byte in an archived WAL file (wal-fetch)", not problems)
    assert not problems, "\n".join(problems)


def test_flipped_byte_in_archived_wal_is_reported_by_verify(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    name = env["segment_of"][8]
    key = h.repo / "platform" / "wal" / f"{name}.zst"
    with damaged(key):
        flip(key, 0.3)
        v = h.run("verify", "--wal", expect_ok=None)
    reported = v.returncode != 0 and name in v.stdout and not clean_output(v)
    counts.record("corruption: flipped byte in an archived WAL file (verify --wal)", reported)
    assert reported, out(h)


def test_flipped_byte_in_archived_wal_restore_refused(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    points, segment_of = env["points"], env["segment_of"]
    key = h.repo / "platform" / "wal" / f"{segment_of[8]}.zst"
    with damaged(key):
        flip(key, 0.3)
        ok, what = restore_outcome(h, list(range(1, 11)), "--target-name", points[10]["name"])
    counts.record("corruption: flipped byte in an archived WAL file (restore)", ok)
    assert ok, what


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def test_everything_verifies_again_afterwards(env: dict[str, Any]) -> None:
    """After every case put its bytes back, both backups verify again."""
    h: Harness = env["h"]
    v = h.run("verify", "--backup", "all", "--wal", "--json")
    assert json.loads(v.stdout)["platform"]["wal"]["gaps"] == []
