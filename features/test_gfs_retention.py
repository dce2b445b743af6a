"""Steps for gfs_retention.feature: real backup objects, cloned under dated ids."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import Harness
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("gfs_retention.feature")


def base_dir(h: Harness) -> Path:
    return h.repo / "platform" / "base"


@given(
    parsers.parse("the repository holds copies of it taken daily at 02:00 from {first} to {last}")
)
def dated_copies(h: Harness, ctx: dict[str, Any], first: str, last: str) -> None:
    real_id = h.backups()[-1]["backup_id"]
    real = base_dir(h) / real_id
    meta = json.loads((real / "metadata.json").read_text())
    day = date.fromisoformat(first)
    ids = []
    while day <= date.fromisoformat(last):
        stamp = datetime(day.year, day.month, day.day, 2, 0, tzinfo=UTC)
        backup_id = stamp.strftime("%Y%m%dT%H%M%SZ")
        d = base_dir(h) / backup_id
        d.mkdir()
        for f in real.iterdir():
            if f.name != "metadata.json":
                os.link(f, d / f.name)  # same bytes, no copy
        m = dict(
            meta,
            backup_id=backup_id,
            start_time=stamp.isoformat().replace("+00:00", "Z"),
            stop_time=(stamp + timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        )
        (d / "metadata.json").write_text(json.dumps(m))
        ids.append(backup_id)
        day += timedelta(days=1)
    shutil.rmtree(real)  # only the dated copies remain
    ctx["ids"] = ids


@given(parsers.parse("an incomplete backup left by a crash on {day}"))
def incomplete(h: Harness, ctx: dict[str, Any], day: str) -> None:
    d = base_dir(h) / (date.fromisoformat(day).strftime("%Y%m%d") + "T030000Z")
    d.mkdir()
    (d / "base.tar.zst").write_bytes(b"partial")
    ctx["incomplete"] = d


@given(parsers.parse("the retention is {days:d} days, {weekly:d} weekly, {monthly:d} monthly"))
def retention(h: Harness, days: int, weekly: int, monthly: int) -> None:
    h.policy["retention"] = {"days": days, "weekly": weekly, "monthly": monthly}
    h.write_policy()


@given(parsers.parse("it is {when}"))
def it_is(h: Harness, when: str) -> None:
    h.env["PGBACKUP_NOW"] = when


@when("I run cleanup with --dry-run")
def run_dry(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["plan"] = json.loads(h.run("cleanup", "--dry-run", "--json").stdout)


@then(parsers.parse("exactly these backups remain: {days}"))
def remaining(h: Harness, days: str) -> None:
    expected = sorted(
        date.fromisoformat(d.strip()).strftime("%Y%m%d") + "T020000Z" for d in days.split(",")
    )
    assert sorted(p.name for p in base_dir(h).iterdir()) == expected


@then("the incomplete backup is gone")
def incomplete_gone(ctx: dict[str, Any]) -> None:
    assert not ctx["incomplete"].exists()


@then("every remaining backup is listed as complete")
def all_complete(h: Harness) -> None:
    rows = h.backups()
    assert rows and all(r["status"] == "complete" for r in rows)
    h.run("verify", "--backup", "latest")


@then(parsers.parse("the dry run would remove {n:d} backups and {m:d} incomplete"))
def dry_counts(ctx: dict[str, Any], n: int, m: int) -> None:
    plan = ctx["plan"][0]
    assert len(plan["expire_backups"]) == n
    assert len(plan["remove_incomplete"]) == m


@then(parsers.parse("all {n:d} copies and the incomplete backup are still there"))
def nothing_removed(h: Harness, ctx: dict[str, Any], n: int) -> None:
    assert len(ctx["ids"]) == n
    assert all((base_dir(h) / i / "metadata.json").exists() for i in ctx["ids"])
    assert ctx["incomplete"].exists()
