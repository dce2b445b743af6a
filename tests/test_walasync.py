"""``wal-push --async``'s foreground half reports a recorded outcome to PostgreSQL: exit 0
and nothing said for ``NAME.ok``, exit 3 and the message on stderr for ``NAME.error``.

Run as the console script runs it, in a process of its own: the engine logs, and before any
logging is set up the message reaches stderr as it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pgbackup.engine.walasync import spool_dir

NAME = "000000010000000000000003"


def wal_push_async(
    tmp_path: Path, outcome: str, text: str = ""
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "backup.yaml"
    env = {**os.environ, "PGBACKUP_SPOOL": str(tmp_path / "spool")}
    spool = Path(spool_dir(str(config), None, env["PGBACKUP_SPOOL"]))
    spool.mkdir(parents=True)
    (spool / f"{NAME}{outcome}").write_text(text)
    code = (
        "import sys; from pgbackup.interface.console import main; "
        f"main(['wal-push', '--async', '--config', {str(config)!r}, 'pg_wal/{NAME}'])"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )


def test_a_pushed_file_is_exit_0_and_silent(tmp_path: Path) -> None:
    done = wal_push_async(tmp_path, ".ok")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_failed_push_is_exit_3_and_its_message_on_stderr(tmp_path: Path) -> None:
    done = wal_push_async(tmp_path, ".error", "the repository is full\n")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr == "pgbackup wal-push --async: error: the repository is full\n"
