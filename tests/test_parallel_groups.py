"""The suite runs on two workers (.ci/run: pytest -n 2 --dist loadgroup); the tests that
share something of the machine's run on one worker in order (the root conftest.py). This
keeps every test module that touches such a thing in its group."""

from __future__ import annotations

from pathlib import Path

from sourcefile import load_file  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parent.parent


def _groups() -> object:
    return load_file("root_conftest", ROOT / "conftest.py")


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


#: A probe test file: six tests, each writing which worker ran it, named group-file-n.
PROBE = """
import os, time
from pathlib import Path
import pytest

{mark}
@pytest.mark.parametrize("n", range(6))
def test_probe(n):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
    (Path(os.environ["PROBE_OUT"]) / f"{name}-{{n}}").write_text(worker)
    time.sleep(0.2)
"""


def test_the_scheduler_keeps_each_group_on_one_worker(tmp_path: Path) -> None:
    """Run pytest-xdist itself (-n 2 --dist loadgroup, as .ci/run does) with our root
    conftest.py over probe files laid out like ours: each group's tests must all run on one
    worker, and the ungrouped ones on both (else the probe would prove nothing)."""
    import os
    import shutil
    import subprocess
    import sys

    project = tmp_path / "project"
    files = {
        "tests/test_schedule.py": ("crontab-a", ""),
        "features/test_schedule_cli.py": ("crontab-b", ""),
        "tests/test_docker_programs.py": ("docker-a", ""),
        "features/test_drill.py": ("docker-b", "@pytest.mark.docker"),
        "tests/test_free.py": ("free-a", ""),
        "features/test_more.py": ("free-b", ""),
    }
    for relative, (name, mark) in files.items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PROBE.format(name=name, mark=mark))
    shutil.copy(ROOT / "conftest.py", project / "conftest.py")
    (project / "pytest.ini").write_text("[pytest]\nmarkers =\n  docker: probe\n")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "tests",
            "features",
        ],
        cwd=project,
        env={**os.environ, "PROBE_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = {f.name: f.read_text() for f in out.iterdir()}
    assert len(ran) == 6 * len(files), sorted(ran)
    workers: dict[str, set[str]] = {}
    for name, worker in ran.items():
        workers.setdefault(name.split("-")[0], set()).add(worker)
    assert workers["free"] == {"gw0", "gw1"}, workers
    assert len(workers["crontab"]) == 1, workers
    assert len(workers["docker"]) == 1, workers
