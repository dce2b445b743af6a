"""SIGKILL of `pgbackup wal-push` while PostgreSQL itself is archiving.

archive_command is replaced by a wrapper that, on the first attempt for each segment,
starts the real `pgbackup wal-push`, SIGKILLs it after a random delay, asks the archive
what it now serves (`wal-fetch`) and exits 1, so that PostgreSQL retries. After the run:
the archive never served a truncated or wrong segment, every retry succeeded, every
archived segment equals the server's own copy, and a PITR to the last restore point holds
every committed batch.
"""

from __future__ import annotations

import hashlib
import json
import stat
import sys

import counts
from faultlib import SEED, batches, restored
from harness import PGBACKUP, Harness, commit_batches, switch_and_wait_archived

from pgbackup.postgres.cluster import hand_over, server_os_user

KIND = "SIGKILL of `wal-push` (archive_command)"

WRAPPER = """\
import hashlib, json, os, random, subprocess, sys, time
path, name = sys.argv[1], sys.argv[2]
state = {state!r}
cmd = [{pgbackup!r}, "--config", {config!r}, "wal-push", "--target", "platform", path]
marker = os.path.join(state, name + ".attempts")
attempt = int(open(marker).read()) if os.path.exists(marker) else 0
with open(marker, "w") as f:
    f.write(str(attempt + 1))
if attempt == 0 and len(name) == 24:
    delay = random.Random("{seed}-" + name).uniform(0.0, {max_delay})
    proc = subprocess.Popen(cmd)
    time.sleep(delay)
    killed = proc.poll() is None
    proc.kill()
    proc.wait()
    dest = os.path.join(state, name + ".fetched")
    rc = subprocess.run(
        [{pgbackup!r}, "--config", {config!r}, "wal-fetch", "--target", "platform", name, dest]
    ).returncode
    original = open(path, "rb").read()
    served = open(dest, "rb").read() if os.path.exists(dest) else None
    ok = (rc == 1 and served is None) or (rc == 0 and served == original)
    digest = hashlib.sha256(original).hexdigest()
    if served is not None:
        os.unlink(dest)
    with open(os.path.join(state, "kills.jsonl"), "a") as f:
        f.write(json.dumps(dict(name=name, delay=delay, killed=killed, fetch_rc=rc,
                                served=None if served is None else len(served), ok=ok,
                                sha256=digest)) + "\\n")
    sys.exit(1)  # PostgreSQL retries the segment
rc = subprocess.run(cmd).returncode
with open(os.path.join(state, "retries.jsonl"), "a") as f:
    f.write(json.dumps(dict(name=name, attempt=attempt, rc=rc)) + "\\n")
sys.exit(rc)
"""


def test_sigkill_wal_push_at_random_points(h: Harness) -> None:
    segments = counts.pick(12, 80)
    h.run("sandbox.up")
    cluster = h.sandbox()
    switch_and_wait_archived(cluster)
    h.run("backup")
    state = h.root / "walkill"
    state.mkdir()
    script = h.root / "walkill.py"
    script.write_text(
        WRAPPER.format(
            state=str(state),
            pgbackup=PGBACKUP,
            config=str(h.config),
            seed=SEED,
            max_delay=0.15,
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IROTH | stat.S_IRGRP)
    hand_over(state, server_os_user(), 0o755)
    command = f"{sys.executable} {script} %p %f".replace("'", "''")
    cluster.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
    cluster.sql("SELECT pg_reload_conf()")

    points = []
    for batch in range(1, segments + 1):
        points += commit_batches(cluster, batch, batch)
        cluster.sql("SELECT pg_switch_wal()")
    switch_and_wait_archived(cluster, timeout=30 + 5 * segments)

    kills = [json.loads(line) for line in (state / "kills.jsonl").read_text().splitlines()]
    retries = [json.loads(line) for line in (state / "retries.jsonl").read_text().splitlines()]
    problems = []
    for k in kills:
        retried = [r for r in retries if r["name"] == k["name"]]
        ok = k["ok"] and bool(retried) and retried[-1]["rc"] == 0
        if not ok:
            problems.append(f"{k} retries={retried}")
        if k["killed"]:  # a kill that came after the push had finished is no fault
            counts.record(KIND, ok)
    # Every archived segment equals the server's own copy (its sha256 taken at kill time).
    wal_dir = h.repo / "platform" / "wal"
    fetched = h.root / "fetched-segment"
    for k in kills:
        name = k["name"]
        h.run("wal-fetch", "--target", "platform", name, str(fetched))
        if hashlib.sha256(fetched.read_bytes()).hexdigest() != k["sha256"]:
            problems.append(f"{name}: archived copy differs from the server's")
        fetched.unlink()
    visible = [p.name for p in wal_dir.iterdir() if not p.name.startswith(".")]
    assert all(n.endswith(".zst") for n in visible), visible

    with restored(h, "--target-name", points[-1]["name"]) as rc:
        assert rc is not None, h.last.stderr if h.last else None
        got = batches(rc)
    expected = list(range(1, segments + 1))
    lost = len(set(expected) - set(got))
    counts.transactions(KIND, len(expected), lost)
    assert got == expected, (got, expected)
    killed_mid_run = sum(1 for k in kills if k["killed"])
    print(f"{len(kills)} kills, {killed_mid_run} while wal-push was running", file=sys.stderr)
    assert len(kills) >= segments, (len(kills), segments)
    assert not problems, "\n".join(problems)
