"""Concurrency: two backups of one target at once, a backup while cleanup runs, and
wal-push of the same segment from two processes at once."""

from __future__ import annotations

import os
import threading
import time

import counts
from faultlib import add_bulk, clean_output, listed, popen, rng
from harness import Harness, switch_and_wait_archived


def test_concurrent_runs(h: Harness) -> None:
    h.run("sandbox.up")
    cluster = h.sandbox()
    add_bulk(cluster, counts.pick(150_000, 300_000))
    switch_and_wait_archived(cluster)
    problems: list[str] = []

    # 1. Two backups at once: one completes, the other refuses at once (target busy).
    for i in range(counts.pick(3, 10)):
        a = popen(h, "backup")
        time.sleep(0.05 * (i % 3))
        b = popen(h, "backup")
        results = [(p.wait(timeout=300), *p.communicate()) for p in (a, b)]
        round_problems = []
        codes = sorted(rc for rc, _o, _e in results)
        for rc, out, err in results:
            if rc != 0 and "busy" not in err:
                round_problems.append(f"round {i}: exit {rc} without saying busy: {err}")
            if "Traceback" in out + err or rc == 70:
                round_problems.append(f"round {i}: traceback / internal error: {err}")
        if codes[0] != 0:
            round_problems.append(f"round {i}: neither backup completed: {results}")
        newest = listed(h)["backups"][-1]
        v = h.run("verify", "--backup", newest["backup_id"], expect_ok=None)
        if newest["status"] != "complete" or v.returncode != 0:
            round_problems.append(f"round {i}: newest backup {newest} does not verify")
        counts.record("two backups of one target at once", not round_problems)
        problems += round_problems

    # 2. A backup while cleanup runs again and again (retention expires all but the newest).
    policy = h.policy
    policy["retention"] = {"days": 0, "weekly": 0, "monthly": 0, "min_backups": 1}
    h.write_policy(policy)
    for i in range(counts.pick(2, 6)):
        stop = threading.Event()
        cleanups: list[tuple[int, str]] = []

        def loop(stop: threading.Event = stop, cleanups: list[tuple[int, str]] = cleanups) -> None:
            while not stop.is_set():
                p = popen(h, "cleanup")
                out, err = p.communicate(timeout=300)
                cleanups.append((p.returncode, out + err))

        t = threading.Thread(target=loop)
        t.start()
        time.sleep(0.1 * i)
        # A backup that starts while cleanup holds the target lock refuses ("busy"), as a
        # scheduled run would; the next attempt (cron's next run) must then complete.
        for _attempt in range(10):
            proc = h.run("backup", expect_ok=None)
            if proc.returncode == 0 or "busy: cleanup" not in proc.stderr:
                break
            print(f"backup refused while cleanup held the lock: {proc.stderr[:120]}")
        stop.set()
        t.join()
        round_problems = clean_output(proc)
        if proc.returncode != 0:
            round_problems.append(f"backup during cleanup {i} failed: {proc.stderr}")
        for rc, out in cleanups:
            if rc != 0 or "Traceback" in out:
                round_problems.append(f"cleanup during backup: exit {rc}: {out[-400:]}")
        state = listed(h)["backups"]
        newest = state[-1]
        v = h.run("verify", "--backup", newest["backup_id"], expect_ok=None)
        if newest["status"] != "complete" or v.returncode != 0:
            round_problems.append(f"backup during cleanup {i}: {newest} does not verify")
        counts.record("backup while cleanup runs", not round_problems)
        problems += round_problems

    # 3. wal-push of one segment from two processes at once.
    r = rng("concurrent-wal-push")
    real = sorted((cluster.data_dir / "pg_wal").glob("0000000100000000000000*"))[0]
    header = real.read_bytes()[:40]
    d = h.root / "dup"
    d.mkdir()
    for i in range(counts.pick(10, 50)):
        name = f"00000001000000000000{0xC0 + i:04X}"
        data = header + os.urandom(r.choice([1, 4, 16]) * 1024 * 1024 - 40)
        (d / name).write_bytes(data)
        pair = [popen(h, "wal-push", "--target", "platform", str(d / name)) for _ in range(2)]
        results = [(p.wait(timeout=120), *p.communicate()) for p in pair]
        round_problems = []
        for rc, out, err in results:
            if rc != 0:
                round_problems.append(f"{name}: concurrent push exited {rc}: {err}")
            if "Traceback" in out + err:
                round_problems.append(f"{name}: traceback: {err}")
        fetched = d / f"{name}.fetched"
        f = h.run("wal-fetch", "--target", "platform", name, str(fetched), expect_ok=None)
        if f.returncode != 0 or fetched.read_bytes() != data:
            round_problems.append(f"{name}: archived copy is not the pushed data")
        stored = [p.name for p in (h.repo / "platform" / "wal").iterdir() if name in p.name]
        if stored != [f"{name}.zst"]:
            round_problems.append(f"{name}: archive holds {stored}")
        counts.record("wal-push of one segment from two processes at once", not round_problems)
        problems += round_problems
    assert not problems, "\n".join(problems)
