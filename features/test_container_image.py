"""Steps for container_image.feature: the pgbackup image run with `docker run`."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from harness import Harness
from providers import docker_image
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("container_image.feature")


@given("the drill checks count the rows added after the backup")
def late_rows_check(h: Harness) -> None:
    h.policy["drill"] = {
        "checks": [
            {
                "name": "late tenants",
                "sql": "SELECT count(*) FROM tenants WHERE id > 700000",
                "expect": "== 5",
            }
        ]
    }
    h.write_policy()


@when(parsers.parse('I run "{command}" in the pgbackup container'))
def run_in_container(h: Harness, ctx: dict[str, Any], command: str) -> None:
    """`docker run` as a CronJob would: host network, policy and repository mounted (the
    scenario's directory, at the same path), the image's own user."""
    argv = ["docker", "run", "--rm", "--network", "host", "-v", f"{h.root}:{h.root}"]
    argv += ["-e", "PGBACKUP_QUIET=1", docker_image(), "--config", str(h.config)]
    proc = subprocess.run([*argv, *command.split()], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (command, proc.returncode, proc.stdout[-3000:], proc.stderr)
    assert "Traceback" not in proc.stderr
    ctx[command.split()[0]] = json.loads(proc.stdout) if "--json" in command else proc.stdout


@then("the container's backup is listed on the host and verifies")
def listed(h: Harness) -> None:
    backups = h.backups()
    assert len(backups) == 1 and backups[0]["status"] == "complete", backups
    out = h.json("verify")["platform"]["backups"]
    assert len(out) == 1 and out[0]["ok"] is True, out


@then("the container's check says OK")
def check_ok(ctx: dict[str, Any]) -> None:
    check = ctx["check"]["platform"]
    assert check["status"] == "OK", [c for c in check["checks"] if c["status"] != "OK"]


@then("the container's drill recovered the rows added after the backup")
def drill_ok(ctx: dict[str, Any]) -> None:
    drill = ctx["drill"]["platform"]
    assert drill["status"] == "ok", drill
    assert drill["provider"] == "local"  # a scratch cluster inside the pgbackup container
    assert drill["checks"][0]["value"] == 5  # only WAL replay brings these rows
    assert drill["recovered_to"]["last_replay_lsn"], drill
