"""Steps for schedule_cli.feature: the CLI against the real `crontab` command."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import Harness
from pytest_bdd import given, parsers, scenarios, then, when

pytestmark = pytest.mark.skipif(
    shutil.which("crontab") is None or os.geteuid() != 0,
    reason="needs the crontab command (apt-get install cron) and root to edit a test user's crontab",
)

scenarios("schedule_cli.feature")

FOREIGN = "17 3 * * * /usr/bin/true # someone else's job"


def crontab(user: str) -> list[str]:
    proc = subprocess.run(["crontab", "-u", user, "-l"], capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


@given(parsers.parse('the crontab of the OS user "{user}" holds a line of someone else\'s'))
def foreign_line(h: Harness, ctx: dict[str, Any], user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", user], check=True)
    subprocess.run(["crontab", "-u", user, "-"], input=FOREIGN + "\n", text=True, check=True)
    ctx["user"] = user
    h.policy["schedules"] = {"backup": "0 2 * * *", "verify": "30 3 * * *", "cleanup": "0 4 * * *"}
    h.policy["log"] = {"file": str(h.root / "logs" / "pgbackup.log")}
    bin_dirs = os.environ.get("PGBACKUP_PG_BIN_DIRS")
    if bin_dirs:
        # A run on 16 or 18 finds that major's programs through the environment, which
        # cron does not pass on: the policy names them, as it must in production for a
        # major whose client programs are not installed system-wide.
        h.policy["targets"]["platform"]["pg_bin_dir"] = bin_dirs.split(os.pathsep)[0]
    h.write_policy()


@then("the crontab holds one tagged pgbackup line per schedule and the foreign line")
def tagged_lines(h: Harness, ctx: dict[str, Any]) -> None:
    lines = crontab(ctx["user"])
    assert FOREIGN in lines
    ours = [ln for ln in lines if "pgbackup" in ln and ln != FOREIGN]
    assert len(ours) == 3, lines
    for name, expr in h.policy["schedules"].items():
        line = next(ln for ln in ours if ln.endswith(f":{name}"))
        assert line.startswith(expr + " ")
        assert f"--config {h.config} {name}" in line
    ctx["lines"] = lines


@then("the crontab is unchanged")
def unchanged(ctx: dict[str, Any]) -> None:
    assert crontab(ctx["user"]) == ctx["lines"]


@then("schedule.status lists every schedule with its next run")
def status(h: Harness, ctx: dict[str, Any]) -> None:
    out = json.loads(h.run("schedule.status", "--user", ctx["user"], "--json").stdout)
    text = json.dumps(out)
    for name in h.policy["schedules"]:
        assert name in text
    assert "next" in text


@when("I run the installed backup line's command as cron would")
def run_line(h: Harness, ctx: dict[str, Any]) -> None:
    line = next(ln for ln in crontab(ctx["user"]) if ln.endswith(":backup"))
    command = line.split(" ", 5)[5].rsplit(" #", 1)[0]  # drop the 5 time fields and the tag
    ctx["backups_before"] = len(h.backups())
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "XDG_CACHE_HOME": h.env["XDG_CACHE_HOME"]}
    proc = subprocess.run(
        ["/bin/sh", "-c", command], env=env, cwd="/", capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ctx["command"] = command


@then("a new complete backup exists")
def new_backup(h: Harness, ctx: dict[str, Any]) -> None:
    rows = h.backups()
    assert len(rows) == ctx["backups_before"] + 1 and rows[-1]["status"] == "complete"


@then("the schedule log received the backup's summary and has mode 0640")
def schedule_log(ctx: dict[str, Any]) -> None:
    log = Path(ctx["command"].split(">>", 1)[1].split()[0].strip("'\""))
    text = log.read_text()
    assert "backup" in text and "stored" in text, text
    assert stat.S_IMODE(log.stat().st_mode) & 0o037 == 0


@then("only the foreign line is left in the crontab")
def removed(ctx: dict[str, Any]) -> None:
    assert [ln for ln in crontab(ctx["user"]) if ln.strip()] == [FOREIGN]
