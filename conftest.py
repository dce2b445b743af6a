"""Which tests may run side by side (pytest-xdist, ``.ci/run``'s ``-n 2 --dist loadgroup``).

Every test makes its own servers on free ports, its own directories and its own emulators,
so two of them can run at once. Some share a thing of the machine's, and the tests that
share one run on one worker, one after another (an ``xdist_group``):

- ``docker``: the Docker engine's images (a build untags the older ``pgbackup:src-*``
  images, which a run on another worker may be using; tests/test_container_majors.py
  builds and runs the trixie test-runner image);
- ``faults``: tests/faults/, which count what they inject into one file per session and
  kill processes by pattern;
- ``crontab``: the real crontab of the test user;
- ``netns``: network namespaces and their addresses (features/network_faults).

Without xdist (``pytest`` alone) the groups mean nothing and everything runs in order.
"""

from __future__ import annotations

from typing import Any

import pytest

#: Test files (relative to the repository) whose tests all share one thing of the machine.
GROUPS_BY_PATH = {
    "tests/faults/": "faults",
    "tests/test_schedule.py": "crontab",
    "features/test_schedule_cli.py": "crontab",
    "features/test_network_faults.py": "netns",
    "features/test_container_image.py": "docker",
    "tests/test_docker_programs.py": "docker",
    "tests/test_container_majors.py": "docker",
}


def shared_group(nodeid: str, docker: bool) -> str | None:
    """The group of a test that shares something of the machine's, else None."""
    if docker:
        return "docker"
    for prefix, group in GROUPS_BY_PATH.items():
        if nodeid.startswith(prefix):
            return group
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    # First: xdist's own hook (in each worker) reads the xdist_group marks to name each
    # test's group; a mark added after it has run is ignored and the groups split.
    for item in items:
        group = shared_group(item.nodeid, item.get_closest_marker("docker") is not None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
