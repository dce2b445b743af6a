"""Schedules in a real crontab (``crontab -u pgbackup-crontest``), never touching foreign lines."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pgbackup.engine.repository import Repository
from pgbackup.operations import schedule
from pgbackup.policy import load_policy
from pgbackup.storage import open_storage

USER = "pgbackup-crontest"
FOREIGN = "17 3 * * * /usr/bin/true # someone else's job"

pytestmark = pytest.mark.skipif(
    shutil.which("crontab") is None, reason="crontab is not installed (apt-get install -y cron)"
)


@pytest.fixture
def cron_user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("creating a test OS user and editing its crontab needs root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", USER], check=True)
    subprocess.run(["crontab", "-u", USER, "-"], input=FOREIGN + "\n", text=True, check=True)
    yield USER
    subprocess.run(["crontab", "-u", USER, "-r"], capture_output=True)


def make_policy(tmp_path: Path, schedules: dict[str, str], name: str = "backup.yaml"):  # type: ignore[no-untyped-def]
    doc = {
        "version": 1,
        "repository": {"path": str(tmp_path / "repo")},
        "targets": {"db": {"connection": {"host": "127.0.0.1", "dbname": "app"}}},
        "schedules": schedules,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return load_policy(path)


def crontab(user: str) -> list[str]:
    return subprocess.run(
        ["crontab", "-u", user, "-l"], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_install_is_idempotent_and_keeps_foreign_lines(tmp_path: Path, cron_user: str) -> None:
    policy = make_policy(tmp_path, {"backup": "0 2 * * *", "check": "*/15 * * * *"})
    first = schedule.install(policy, cron_user)
    assert first["changed"]
    lines = crontab(cron_user)
    assert FOREIGN in lines
    ours = [line for line in lines if schedule.policy_tag(policy) in line]
    assert len(ours) == 2
    backup_line = next(line for line in ours if line.endswith(":backup"))
    assert backup_line.startswith("0 2 * * * umask 027; ")
    assert f"--config {policy.path} backup >> " in backup_line
    assert os.path.isabs(str(policy.path))
    assert not schedule.install(policy, cron_user)["changed"]
    assert crontab(cron_user) == lines
    log = Path(first["log"])
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert log.stat().st_uid == pwd.getpwnam(cron_user).pw_uid


def test_install_replaces_a_changed_schedule_and_leaves_other_policies(
    tmp_path: Path, cron_user: str
) -> None:
    one = make_policy(tmp_path, {"backup": "0 2 * * *"})
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = make_policy(other_dir, {"backup": "0 3 * * *"})
    schedule.install(one, cron_user)
    schedule.install(other, cron_user)
    changed = make_policy(tmp_path, {"backup": "30 1 * * *", "verify": "0 4 * * *"})
    schedule.install(changed, cron_user)
    lines = crontab(cron_user)
    mine = [line for line in lines if schedule.policy_tag(one) in line]
    assert [line.split(" umask")[0] for line in mine] == ["30 1 * * *", "0 4 * * *"]
    assert any(schedule.policy_tag(other) in line for line in lines)
    assert schedule.remove(changed, cron_user)["removed"] == 2
    lines = crontab(cron_user)
    assert FOREIGN in lines
    assert not any(schedule.policy_tag(one) in line for line in lines)
    assert any(schedule.policy_tag(other) in line for line in lines)
    assert schedule.remove(changed, cron_user)["removed"] == 0


def test_status_shows_next_and_last_runs(tmp_path: Path, cron_user: str) -> None:
    policy = make_policy(tmp_path, {"backup": "0 2 * * *", "verify": "30 3 * * *"})
    repo = Repository(open_storage(policy.repository))
    repo.record_run("db", "backup", {"status": "failed", "error": "boom"})
    rows = {r["name"]: r for r in schedule.status(policy, repo, cron_user)}
    assert not rows["backup"]["installed"]
    schedule.install(policy, cron_user)
    rows = {r["name"]: r for r in schedule.status(policy, repo, cron_user)}
    assert rows["backup"]["installed"] and rows["verify"]["installed"]
    assert rows["backup"]["last_status"] == "failed"
    assert rows["verify"]["last_run"] is None
    assert "T02:00:00" in rows["backup"]["next_run"] or rows["backup"]["next_run"].endswith(
        "02:00:00"
    )


def test_missing_user_is_one_clear_error(tmp_path: Path) -> None:
    from pgbackup.errors import PgBackupError

    if os.geteuid() != 0:
        pytest.skip("needs root")
    policy = make_policy(tmp_path, {"backup": "0 2 * * *"})
    with pytest.raises(PgBackupError, match="crontab -l -u no-such-user-pgb failed"):
        schedule.install(policy, "no-such-user-pgb")
