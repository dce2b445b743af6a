"""Steps for policy.feature."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import PGBACKUP, Harness
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("policy.feature")

REPO_ROOT = Path(__file__).resolve().parent.parent


@when("I validate the shipped backup.yaml")
def validate_shipped(h: Harness) -> None:
    h.last = subprocess.run(
        [PGBACKUP, "validate", "--config", str(REPO_ROOT / "backup.yaml")],
        capture_output=True,
        text=True,
        env=h.env,
    )


@then("validation succeeds")
def validation_ok(h: Harness) -> None:
    assert h.last is not None and h.last.returncode == 0, h.last.stderr if h.last else None
    assert "valid" in h.last.stdout


@given(parsers.parse('the policy has an unknown key "{key}" at the top'))
def unknown_key(h: Harness, key: str) -> None:
    h.policy[key] = {"days": 3}
    h.write_policy()


@given(parsers.parse('the policy has {dotted} set to "{value}"'))
def set_value(h: Harness, dotted: str, value: str) -> None:
    node = h.policy
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    h.write_policy()


@given(parsers.parse('the policy has targets.platform.connection.port "{value}"'))
def bad_port(h: Harness, value: str) -> None:
    target = h.policy["targets"]["platform"]
    target.pop("sandbox", None)
    target["connection"] = {"host": "127.0.0.1", "port": value, "user": "u", "dbname": "d"}
    h.write_policy()


@given("the policy has a literal password in the connection")
def literal_password(h: Harness) -> None:
    h.policy["targets"]["platform"]["connection"]["password"] = "hunter2"
    h.write_policy()


@then("nothing was written to the repository")
def repo_untouched(h: Harness) -> None:
    assert not h.repo.exists() or not any(h.repo.rglob("*")), list(h.repo.rglob("*"))
    assert h.last is not None and "hunter2" not in h.last.stdout + h.last.stderr


@when("I run pgbackup without a policy anywhere")
def no_policy(h: Harness) -> None:
    empty = h.root / "empty"
    empty.mkdir()
    env = {k: v for k, v in h.env.items() if k != "PGBACKUP_CONFIG"}
    h.last = subprocess.run([PGBACKUP, "list"], capture_output=True, text=True, env=env, cwd=empty)
    assert not os.path.exists("/etc/pgbackup/backup.yaml")
