"""Deferred logging (pgbackup.ui): configured at the first message, never lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, types
from pgbackup import ui
policy = types.SimpleNamespace(log_file=sys.argv[1], log_level="info", repository={})
ui.setup_logging(policy, deferred=True)
assert "logging" not in sys.modules, "logging imported before the first message"
ui.LOG.info("first message %s", 1)
ui.LOG.warning("second message")
"""


def test_deferred_setup_applies_at_the_first_message(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "backup.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert " INFO " in text and "first message 1" in text
    assert "second message" in text
    assert done.stderr.strip() == "second message"  # not a terminal: warnings only
