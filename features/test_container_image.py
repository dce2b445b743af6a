"""Steps for container_image.feature: the pgbackup image run with `docker run`."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from harness import Harness, commit_batches
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


# --- wal-receive in the container -------------------------------------------------------


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Containers a scenario started; removed at the end whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


@when(parsers.parse('wal-receive runs in a pgbackup container on slot "{slot}"'))
def receiver_container(h: Harness, ctx: dict[str, Any], containers: list[str], slot: str) -> None:
    """As the unit in docs/containers.md runs it: host network, the policy and the posix
    repository mounted, the image's own spool. The container's policy names the server by
    address (a sandbox target would make pgbackup in the container manage the cluster,
    whose postmaster it cannot see from its own pid namespace)."""
    h.policy["targets"]["platform"]["wal_receiver"] = {"slot": slot}
    h.write_policy()
    policy = json.loads(json.dumps(h.policy))
    policy["targets"]["platform"].pop("sandbox")
    policy["targets"]["platform"]["connection"] = {
        "host": "127.0.0.1",
        "port": h.sandbox_port(),
        "user": "platform_service",
        "dbname": "platform",
    }
    config = h.root / "container.yaml"
    config.write_text(yaml.safe_dump(policy, sort_keys=False))
    config.chmod(0o644)
    name = f"pgbackup-receiver-{secrets.token_hex(4)}"
    containers.append(name)
    argv = ["docker", "run", "-d", "--name", name, "--network", "host", "--stop-timeout", "60"]
    argv += ["-v", f"{h.root}:{h.root}", "-e", "PGBACKUP_QUIET=1", docker_image()]
    argv += ["--config", str(config), "wal-receive", "--target", "platform"]
    started = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    ctx["container"], ctx["slot"] = name, slot
    cluster = h.sandbox()
    deadline = time.monotonic() + 60
    while cluster.sql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'") != [
        (True,)
    ]:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True
        ).stdout.strip()
        assert state == "true" and time.monotonic() < deadline, (state, logs.stdout, logs.stderr)
        time.sleep(0.3)
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    assert "streaming platform on slot pgbackup_platform" in logs.stdout, logs


@when(parsers.parse("{n:d} batches are committed and their segment is closed"))
def batches_closed(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    commit_batches(cluster, 1, n)
    ctx["closed"] = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    ctx["batches"] = n


@when(parsers.parse("{n:d} more batches are committed"))
def more_batches(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    commit_batches(cluster, ctx["batches"] + 1, ctx["batches"] + n)
    ctx["batches"] += n
    ctx["open"] = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]


@then("the container's receiver stored the closed segment and the open one's .partial")
def stored(h: Harness, ctx: dict[str, Any]) -> None:
    wal = h.repo / "platform" / "wal"
    wanted = {f"{ctx['closed']}.zst", f"{ctx['open']}.partial.zst"}
    deadline = time.monotonic() + 30
    while not wanted <= {p.name for p in wal.iterdir()}:
        assert time.monotonic() < deadline, (wanted, sorted(p.name for p in wal.iterdir()))
        time.sleep(0.3)
    import pwd

    # written by the container's postgres (the host's server user's uid), not the host
    assert (wal / f"{ctx['closed']}.zst").stat().st_uid == pwd.getpwnam("postgres").pw_uid


@then("the receiver's container stops on SIGTERM with exit status 0")
def container_stops(ctx: dict[str, Any]) -> None:
    name = ctx["container"]
    stop = subprocess.run(["docker", "stop", name], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    code = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True
    ).stdout.strip()
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    assert code == "0", (code, logs.stdout, logs.stderr)
    assert "stopped:" in logs.stdout and "Traceback" not in logs.stderr, logs
