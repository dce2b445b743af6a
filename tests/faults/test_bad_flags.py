"""Bad flags and values for every task: one clear message, non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import counts
import pytest
from faultlib import clean_output, restored
from harness import PGBACKUP, Harness, commit_batches, module_harness, switch_and_wait_archived

from pgbackup.postgres.cluster import free_port

TASKS = ["validate", "plan", "backup", "list", "verify", "restore", "cleanup", "sandbox.up"]


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    with module_harness() as h:
        h.run("sandbox.up")
        cluster = h.sandbox()
        switch_and_wait_archived(cluster)
        h.run("backup")
        points = []
        for b in range(1, 7):  # several segments: recovery runs a while after start-up
            points += commit_batches(cluster, b, b)
            switch_and_wait_archived(cluster)
        (h.root / "full").mkdir()
        (h.root / "full" / "something").write_text("keep me")
        yield {"h": h, "points": points, "cluster": cluster}


def cases(h: Harness, cluster: Any) -> list[tuple[list[str], str | None]]:
    to = str(h.root / "never-written")
    r = ["restore", "--to", to]
    out: list[tuple[list[str], str | None]] = [
        ([*r, "--backup", "20000101T000000Z"], "no backup"),
        ([*r, "--backup", "../../etc"], None),
        ([*r, "--target-time", "yesterday"], "not a timestamp"),
        ([*r, "--target-time", "2026-13-45 25:61:00"], "not a timestamp"),
        ([*r, "--target-lsn", "zz/12"], "not an LSN"),
        ([*r, "--target-lsn", "0/"], "not an LSN"),
        ([*r, "--target-lsn", "-1/0"], "not an LSN"),
        ([*r, "--target-xid", "abc"], "transaction id"),
        ([*r, "--target-xid", "-5"], "transaction id"),
        ([*r, "--target-xid", "1e9"], "transaction id"),
        ([*r, "--target-time", "1999-01-01 00:00:00"], "window"),
        ([*r, "--target-time", "2099-01-01 00:00:00+00"], "window"),
        ([*r, "--target-lsn", "FFFF/0"], "window"),
        ([*r, "--target-lsn", "0/1"], "window"),
        ([*r, "--target-time", "2026-01-01", "--target-lsn", "0/1"], "at most one"),
        ([*r, "--target", "immediate", "--target-action", "explode"], "target-action"),
        ([*r, "--target", "latest", "--target-timeline", "abc"], "target-timeline"),
        ([*r, "--target-action", "pause"], "need a recovery target"),
        ([*r, "--target", "no-such-target"], "no-such-target"),
        (["restore", "--to", str(h.root / "full")], "not empty"),
        (["restore", "--to", str(cluster.data_dir)], "running"),
        (["restore"], "--to"),
        (["verify", "--backup", "20000101T000000Z"], "no backup"),
        (["verify", "--target", "nope"], "nope"),
        (["list", "--target", "nope"], "nope"),
        (["backup", "--target", "nope"], "nope"),
        (["cleanup", "--target", "nope"], "nope"),
        (["sandbox.up", "--target", "nope"], "nope"),
        (["no-such-task"], None),
        (["wal-push"], "usage"),
        (["wal-push", "/nonexistent/000000010000000000000001"], "no such file"),
        (["wal-push", "/etc/passwd"], "not a WAL file name"),
        (["wal-push", "--target", "nope", str(h.config)], None),
        (["wal-fetch", "000000010000000000000001"], "usage"),
        (["wal-fetch", "--target", "nope", "000000010000000000000001", to], "nope"),
        (["wal-fetch", "000000010000000000000001", "/nonexistent-dir/x"], "cannot write"),
    ]
    out += [([t, "--no-such-flag"], "no-such-flag") for t in TASKS]
    return out


def test_bad_flags(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    problems = []
    all_cases = cases(h, env["cluster"])
    for args, expected in all_cases:
        proc = h.run(*args, expect_ok=None)
        out = proc.stdout + proc.stderr
        bad = clean_output(proc)
        if proc.returncode == 0:
            bad.append("exit 0")
        if not out.strip():
            bad.append("no message")
        if expected and expected.lower() not in out.lower():
            bad.append(f"message does not mention {expected!r}")
        if out.lower().count("error:") > 1:
            bad.append("more than one error message")
        tb = int(any("traceback" in b or "internal error" in b for b in bad))
        counts.inputs("bad flags and values", 1, rejected=int(not bad), tracebacks=tb)
        if bad:
            problems.append(f"{args}: {bad}: exit {proc.returncode}: {out[-400:]}")
    assert not problems, "\n".join(problems)
    written = h.root / "never-written"
    assert not written.exists() or not any(written.iterdir()), "a refused restore wrote files"
    assert (h.root / "full" / "something").read_text() == "keep me"
    assert env["cluster"].sql("SELECT 1")[0][0] == 1
    assert not problems, "\n".join(problems)


def test_missing_policy_file(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    proc = subprocess.run(
        [PGBACKUP, "--config", str(h.root / "nope.yaml"), "list"],
        capture_output=True,
        text=True,
        env=h.env,
    )
    ok = proc.returncode == 2 and not clean_output(proc) and "nope.yaml" in proc.stderr
    counts.inputs("bad flags and values", 1, rejected=int(ok), tracebacks=len(clean_output(proc)))
    assert ok, (proc.returncode, proc.stderr)


def test_unknown_restore_point_is_refused(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    with restored(h, "--target-name", f"no-such-point-{free_port()}") as cluster:
        proc = h.last
        assert proc is not None
        ok = cluster is None and not clean_output(proc)
        counts.inputs("bad flags and values", 1, rejected=int(ok), tracebacks=0)
        assert ok, proc.stdout + proc.stderr


@pytest.mark.parametrize("flag", ["--target-time", "--target-lsn", "--target-xid", "--target-name"])
def test_empty_recovery_target_is_refused(env: dict[str, Any], flag: str) -> None:
    h: Harness = env["h"]
    to = h.root / f"empty-{flag.strip('-')}"
    proc = h.run("restore", "--to", str(to), flag, "", expect_ok=None)
    ok = proc.returncode != 0 and not clean_output(proc)
    counts.inputs("bad flags and values", 1, rejected=int(ok), tracebacks=len(clean_output(proc)))
    assert ok, proc.stdout + proc.stderr


def test_non_numeric_port_is_refused(env: dict[str, Any]) -> None:
    h: Harness = env["h"]
    to = h.root / "bad-port"
    proc = h.run("restore", "--to", str(to), "--port", "notaport", expect_ok=None)
    ok = proc.returncode != 0 and not clean_output(proc)
    counts.inputs("bad flags and values", 1, rejected=int(ok), tracebacks=len(clean_output(proc)))
    assert ok, proc.stdout + proc.stderr
