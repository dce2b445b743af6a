"""The suite runs on two workers (.ci/run: pytest -n 2 --dist loadgroup); the tests that
share something of the machine's run on one worker in order (the root conftest.py). This
keeps every test module that touches such a thing in its group."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _groups() -> object:
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_module_that_shares_a_thing_of_the_machine_is_in_its_group() -> None:
    shared_group = _groups().shared_group  # type: ignore[attr-defined]
    uses = {"crontab": "crontab", "veth_pair(": "netns"}
    modules = [*ROOT.glob("tests/test_*.py"), *ROOT.glob("features/test_*.py")]
    checked = 0
    for path in modules:
        text = path.read_text()
        nodeid = f"{path.relative_to(ROOT)}::test"
        for word, group in uses.items():
            if word in text and path.name != Path(__file__).name:
                assert shared_group(nodeid, docker=False) == group, (path.name, word)
                checked += 1
    assert checked >= 3  # test_schedule, test_schedule_cli, test_network_faults
    for path in ROOT.glob("tests/faults/test_*.py"):
        assert shared_group(f"{path.relative_to(ROOT)}::test", docker=False) == "faults"
    assert shared_group("features/test_drill.py::test_x[docker-pg15]", docker=True) == "docker"
    assert shared_group("features/test_pitr.py::test_x[local-pg15]", docker=False) is None
