"""Steps for timelines.feature."""

from __future__ import annotations

from typing import Any

from harness import Harness, commit_batches, do_restore, switch_and_wait_archived
from pytest_bdd import parsers, scenarios, then, when

scenarios("timelines.feature")


@when(parsers.parse("I commit batch {n:d} on the new timeline and archive it"))
def commit_on_tl2(h: Harness, ctx: dict[str, Any], n: int) -> None:
    directory, port = ctx["tl2"]
    cluster = h.track(directory, port)
    assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] == 2
    commit_batches(cluster, n, n)
    switch_and_wait_archived(cluster)
    cluster.stop()


@then(parsers.parse('the archive holds "{history}" and segments of timelines 1 and 2'))
def both_timelines(h: Harness, history: str) -> None:
    names = [p.name for p in (h.repo / "platform" / "wal").iterdir()]
    assert f"{history}.zst" in names
    assert any(n.startswith("00000001") and len(n) == 28 for n in names)
    assert any(n.startswith("00000002") and len(n) == 28 for n in names)


@when(parsers.parse('I restore to the time after batch {n:d} following timeline "{tli}"'))
def restore_time_tl(h: Harness, ctx: dict[str, Any], n: int, tli: str) -> None:
    do_restore(h, ctx, ["--target-time", ctx["points"][n - 1]["time"], "--target-timeline", tli])
