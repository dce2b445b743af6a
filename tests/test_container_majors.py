"""PostgreSQL 17, which this machine's Debian 12 cannot run, proven inside Debian 13's
test-runner image (``python containers/images.py test --suite trixie``): every
``@core_versions`` scenario and the incremental, drill and extract features on 17, their
outcomes recorded in var/version-results.json like every run's. Fails when any fails.

In the ``docker`` group (the root conftest.py): it builds and tags images. About 4.5 min
with the images cached, 1.5 min more to build them (docs/containers.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sourcefile import load_file  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "containers" / "images.py"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]


def _images() -> Any:
    return load_file("pgbackup_images", IMAGES)


def test_postgresql_17_passes_its_scenarios_in_debian_13s_image() -> None:
    images = _images()
    why = images.engine_answers()
    if why and os.geteuid() == 0:  # after a reboot nothing runs: start the project's engine
        subprocess.run(["bash", str(ROOT / ".ci" / "docker-engine")], capture_output=True)
        why = images.engine_answers()
    if why:
        pytest.skip(f"PostgreSQL 17 runs in a container: {why}")
    if os.geteuid() != 0:
        pytest.skip("building the trixie image takes debootstrap, hence root")
    proc = subprocess.run(
        [sys.executable, str(IMAGES), "test", "--suite", "trixie"],
        capture_output=True,
        text=True,
        timeout=2300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", out))
    assert passed > 0 and " failed" not in out, out[-3000:]
