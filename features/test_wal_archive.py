"""Steps for wal_archive.feature."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import PGBACKUP, Harness, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import Cluster, free_port

scenarios("wal_archive.feature")


def push(h: Harness, path: Path, expect_ok: bool | None = None) -> subprocess.CompletedProcess[str]:
    return h.run("wal-push", "--target", "platform", str(path), expect_ok=expect_ok)


def archive_dir(h: Harness) -> Path:
    return h.repo / "platform" / "wal"


def snapshot(h: Harness) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(archive_dir(h).iterdir())}


@given("the server has archived at least one segment")
def archived_segment(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    closed = switch_and_wait_archived(cluster)
    # Keep a copy of the original segment as the server wrote it (pg_wal may recycle it).
    original = cluster.data_dir / "pg_wal" / closed
    copy = h.root / closed
    copy.write_bytes(original.read_bytes())
    ctx["segment"] = copy
    ctx["before"] = snapshot(h)


@when("I push that segment again")
def push_again(h: Harness, ctx: dict[str, Any]) -> None:
    push(h, ctx["segment"])


@then("the archived copy is unchanged")
def unchanged(h: Harness, ctx: dict[str, Any]) -> None:
    after = snapshot(h)
    for name, data in ctx["before"].items():
        assert after[name] == data, name


@when("I push a different file under that segment's name")
def push_different(h: Harness, ctx: dict[str, Any]) -> None:
    other = h.root / "other"
    other.mkdir()
    data = bytearray(ctx["segment"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = other / ctx["segment"].name
    path.write_bytes(bytes(data))
    push(h, path, expect_ok=False)


@given(parsers.parse('a history file "{name}" was archived'))
def history_archived(h: Harness, ctx: dict[str, Any], name: str) -> None:
    path = h.root / name
    path.write_text("1\t0/3000000\tno recovery target specified\n")
    push(h, path, expect_ok=True)
    ctx["history"] = path


@when(parsers.parse('I push "{name}" again with identical content'))
def history_again(h: Harness, ctx: dict[str, Any], name: str) -> None:
    push(h, ctx["history"])


@when(parsers.parse('I push "{name}" with different content'))
def history_different(h: Harness, name: str) -> None:
    d = h.root / "other-history"
    d.mkdir()
    (d / name).write_text("1\t0/4000000\tno recovery target specified\n")
    push(h, d / name, expect_ok=False)


@given("a second cluster with its own WAL")
def second_cluster(h: Harness, ctx: dict[str, Any]) -> None:
    data_dir = h.root / "other-cluster"
    cluster = Cluster(data_dir, free_port())
    h.track(data_dir, cluster.port)
    cluster.initdb()
    cluster.start()
    closed = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    foreign = h.root / "foreign"
    foreign.mkdir()
    (foreign / closed).write_bytes((data_dir / "pg_wal" / closed).read_bytes())
    ctx["foreign"] = foreign / closed


@when("I push one of its segments into this target")
def push_foreign(h: Harness, ctx: dict[str, Any]) -> None:
    push(h, ctx["foreign"], expect_ok=False)


@then("nothing new appears in the archive")
def nothing_new(h: Harness, ctx: dict[str, Any]) -> None:
    key = f"{ctx['foreign'].name}.zst"
    after = snapshot(h)
    # Either the name was never archived here and still is not, or the copy is the old one.
    assert after.get(key) == ctx["before"].get(key)


@when("I fetch that segment into a scratch file")
def fetch_segment(h: Harness, ctx: dict[str, Any]) -> None:
    dest = h.root / "fetched"
    h.run("wal-fetch", "--target", "platform", ctx["segment"].name, str(dest))
    ctx["fetched"] = dest


@then("the fetched file equals the server's original")
def fetched_equal(ctx: dict[str, Any]) -> None:
    assert ctx["fetched"].read_bytes() == ctx["segment"].read_bytes()


@when(parsers.parse('I fetch "{name}"'))
def fetch_missing(h: Harness, name: str) -> None:
    h.run("wal-fetch", "--target", "platform", name, str(h.root / "nothing"), expect_ok=None)


@then("the fetch exits 1 and prints nothing")
def fetch_quiet(h: Harness) -> None:
    assert h.last is not None
    assert h.last.returncode == 1
    assert h.last.stdout == "" and h.last.stderr == ""
    assert not (h.root / "nothing").exists()


@when(
    parsers.parse("I push a fresh segment-sized file and kill the push at {n:d} different moments")
)
def kill_pushes(h: Harness, ctx: dict[str, Any], n: int) -> None:
    # A segment-shaped name far beyond anything the server writes, with the sandbox's
    # system identifier in a long page header copied from a real segment.
    real = ctx["segment"].read_bytes()
    data = real[:40] + os.urandom(16 * 1024 * 1024 - 40)
    name = "0000000100000000000000F0"
    path = h.root / "kill" / name
    path.parent.mkdir()
    path.write_bytes(data)
    ctx["kill_file"] = path
    observations = []
    for i in range(n):
        proc = subprocess.Popen(
            [PGBACKUP, "--config", str(h.config), "wal-push", "--target", "platform", str(path)],
            env=h.env,
            cwd=h.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.02 + 0.03 * i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        dest = h.root / "kill" / f"fetched-{i}"
        fetched = h.run("wal-fetch", "--target", "platform", name, str(dest), expect_ok=None)
        observations.append((fetched.returncode, dest.read_bytes() if dest.exists() else None))
        # Reset for the next round if this push completed before the kill.
        stored = h.repo / "platform" / "wal" / f"{name}.zst"
        if stored.exists():
            stored.unlink()
    ctx["observations"] = observations


@then("wal-fetch serves nothing or the whole file after every kill")
def fetch_whole_or_nothing(ctx: dict[str, Any]) -> None:
    data = ctx["kill_file"].read_bytes()
    for rc, got in ctx["observations"]:
        assert (rc == 1 and got is None) or (rc == 0 and got == data), (
            rc,
            None if got is None else len(got),
        )


@then("a final push of that file succeeds and wal-fetch serves it whole")
def final_push(h: Harness, ctx: dict[str, Any]) -> None:
    push(h, ctx["kill_file"], expect_ok=True)
    dest = h.root / "kill" / "final"
    h.run("wal-fetch", "--target", "platform", ctx["kill_file"].name, str(dest))
    assert dest.read_bytes() == ctx["kill_file"].read_bytes()
    leftovers = [p.name for p in (h.repo / "platform" / "wal").iterdir() if p.name.startswith(".")]
    # Temp files of killed pushes are invisible to fetch; cleanup removes them once old.
    assert all(p.endswith(".pgbackup-tmp") for p in leftovers), leftovers


@then(parsers.parse("a wal-push imports none of {modules}"))
def no_heavy_imports(h: Harness, ctx: dict[str, Any], modules: str) -> None:
    forbidden = [m.strip() for m in modules.split(",")]
    argv = [PGBACKUP, "--config", str(h.config), "wal-push", "--target", "platform"]
    # The console script itself, as archive_command runs it; -X importtime names every
    # module it imports. Twice: the first run may fill the validation cache; the second
    # is the steady state.
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", *argv, str(ctx["segment"])],
            capture_output=True,
            text=True,
            env=h.env,
            cwd=h.root,
        )
        assert proc.returncode == 0, proc.stderr
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "pgbackup.engine.wal" in loaded, proc.stderr[-2000:]
    bad = [m for m in forbidden if m in loaded]
    assert bad == [], bad
