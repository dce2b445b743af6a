"""Steps for drill.feature."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from harness import Harness
from providers import docker_image
from pytest_bdd import given, parsers, scenarios, then, when
from versions import DEFAULT

scenarios("drill.feature")


def late_rows_checks(h: Harness) -> None:
    h.policy["drill"] = {
        **h.policy.get("drill", {}),
        "checks": [
            {
                "name": "late tenants",
                "sql": "SELECT count(*) FROM tenants WHERE id > 700000",
                "expect": "== 5",
            },
            {"name": "users", "sql": "SELECT count(*) FROM users", "expect": ">= 1"},
        ],
    }
    h.write_policy()


@when("I run a drill that checks the late rows")
def run_drill(h: Harness, ctx: dict[str, Any]) -> None:
    late_rows_checks(h)
    ctx["drill"] = h.json("drill")["platform"]


@when("I run a drill with --docker")
def run_docker_drill(h: Harness, ctx: dict[str, Any], pg_major: int) -> None:
    if pg_major != DEFAULT:  # the drill would refuse it, as the next scenario proves
        pytest.skip(f"PostgreSQL {pg_major}: pgbackup's image carries PostgreSQL {DEFAULT} only")
    late_rows_checks(h)
    ctx["drill"] = h.json("drill", "--docker")["platform"]


@given(parsers.parse('the policy\'s drill image is "{image}"'))
def drill_image(h: Harness, image: str) -> None:
    h.policy.setdefault("drill", {})["image"] = image
    h.write_policy()


@given(parsers.parse("the policy's drill image carries PostgreSQL {major:d}"))
def drill_image_of_major(h: Harness, major: int) -> None:
    """pgbackup's image, labelled as a server of ``major`` (a build of labels only)."""
    tag = f"pgbackup:test-postgres-{major}"
    subprocess.run(
        ["docker", "build", "-q", "--network", "none", "-t", tag, "-"],
        input=f"FROM {docker_image()}\nLABEL org.pgbackup.postgres-major={major}\n",
        text=True,
        check=True,
        capture_output=True,
    )
    h.policy.setdefault("drill", {})["image"] = tag
    h.write_policy()


@when("I run a drill with --docker expecting failure")
def run_docker_drill_failing(h: Harness) -> None:
    h.run("drill", "--docker", expect_ok=False)


@then("the drill ran in a container")
def ran_in_container(ctx: dict[str, Any]) -> None:
    assert ctx["drill"]["provider"] == "docker", ctx["drill"]


@then("the drill recovered past the backup and its checks passed")
def recovered(h: Harness, ctx: dict[str, Any]) -> None:
    d = ctx["drill"]
    assert d["status"] == "ok", d
    assert [c["value"] for c in d["checks"]][0] == 5  # only WAL replay brings these rows
    assert d["recovered_to"]["last_replay_time"] > d["backup_stop_time"].replace("Z", "+00:00")[:19]
    assert d["rto_seconds"] >= d["timings"]["restore"] + d["timings"]["recovery"]
    # the source still runs and was not touched
    assert h.sql(h.sandbox(), "SELECT count(*) FROM tenants WHERE id > 700000")[0][0] == 5


@then("the drill is recorded with its timings under the repository")
def recorded(h: Harness, ctx: dict[str, Any]) -> None:
    files = list((h.repo / "platform" / "drills").glob("*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    assert rec["drill_id"] == ctx["drill"]["drill_id"] and rec["status"] == "ok"
    assert set(rec["timings"]) == {"fetch", "restore", "recovery", "checks", "total"}
    assert rec["restore_throughput_bytes_per_second"] > 0
    # where the time went (engine/phases): each phase measured, replay timed as recovery
    for name in ("transfer", "decode", "write", "sync", "wal_replay"):
        assert rec["phases"][name]["seconds"] > 0 and rec["phases"][name]["bytes"] > 0, rec
    assert rec["phases"]["wal_replay"]["seconds"] == rec["timings"]["recovery"]
    if rec["provider"] == "local":  # wal-fetch's read-ahead started first, as restore --start
        read_ahead = rec["phases"]["wal_replay"]["read_ahead"]
        assert read_ahead["started_before_server"] and read_ahead["spooled"] >= 1, rec
        assert read_ahead["refused"] == 0, rec


@then("the drill's checks passed")
def checks_passed(ctx: dict[str, Any]) -> None:
    assert ctx["drill"]["status"] == "ok", ctx["drill"]
