"""Steps for server_settings.feature."""

from __future__ import annotations

import json
from typing import Any

from harness import Harness
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("server_settings.feature")


@when("I run plan as JSON")
def plan_json(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["plan"] = json.loads(h.run("plan", "--json").stdout)


@then("the plan asks for wal_level replica, archive_mode on and wal-push through this policy")
def plan_settings(h: Harness, ctx: dict[str, Any]) -> None:
    conf = ctx["plan"]["targets"][0]["postgresql_conf"]
    assert conf["wal_level"] == "replica"
    assert conf["archive_mode"] == "on"
    assert "wal-push --target platform %p" in conf["archive_command"]
    assert str(h.config) in conf["archive_command"]


@then(parsers.parse("the planned archive_timeout is below the RPO of {minutes:d} minutes"))
def plan_timeout(ctx: dict[str, Any], minutes: int) -> None:
    timeout = ctx["plan"]["targets"][0]["postgresql_conf"]["archive_timeout"]
    assert timeout.endswith("s") and 0 < int(timeout[:-1]) < minutes * 60


@then(parsers.parse('the plan lists a cron line for the backup schedule "{expr}"'))
def plan_cron(h: Harness, ctx: dict[str, Any], expr: str) -> None:
    lines = [c["line"] for c in ctx["plan"]["cron"] if c["name"] == "backup"]
    assert len(lines) == 1 and lines[0].startswith(expr + " ")
    assert f"--config {h.config} backup" in lines[0]


@then(parsers.parse('the output says "{text}"'))
def output_says(h: Harness, text: str) -> None:
    assert h.last is not None and text in h.last.stdout + h.last.stderr


@then(parsers.parse('the output also says "{text}"'))
def output_also(h: Harness, text: str) -> None:
    output_says(h, text)


@given("the server's archive_timeout is set to 10min and archiving is switched off")
def misconfigure(h: Harness) -> None:
    cluster = h.sandbox()
    cluster.sql("ALTER SYSTEM SET archive_timeout = '10min'")
    cluster.sql("ALTER SYSTEM SET archive_mode = off")
    cluster.stop()
    cluster.start()
