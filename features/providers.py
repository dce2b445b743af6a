"""Cluster providers for the features: local processes (default) or PostgreSQL containers.

The same Gherkin scenarios run against either. Choose with ``pytest --provider docker``
or ``PGBACKUP_TEST_PROVIDER=docker``; with the default (local), scenarios tagged
``@both_providers`` run a second time against containers, and those runs carry the
``docker`` marker, so ``pytest -m docker`` runs exactly the Docker runs.

The Docker provider's source cluster is a container of the locally built pgbackup image
(``containers/images.py``: debootstrap'd Debian, PostgreSQL 15 and pgbackup, cached by
content; on 16 and 18 the host's relocatable build of that major, mounted read-only,
serves instead of the image's 15) on the host's network, listening on 127.0.0.1: its ``archive_command`` is the
pgbackup *inside* the container, writing to the scenario's repository, mounted at the
same path. Backups, restores and drills run from the host, as a DBA's would.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness import Harness

PROVIDERS = ("local", "docker")
REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--provider",
        choices=PROVIDERS,
        default=os.environ.get("PGBACKUP_TEST_PROVIDER", "local"),
        help="where the features' PostgreSQL runs: local processes or Docker containers "
        "(default: $PGBACKUP_TEST_PROVIDER, else local)",
    )


def chosen_provider(config: Any) -> str:
    try:
        return str(config.getoption("provider"))
    except ValueError:  # the option is not registered (a run that did not load features/)
        return os.environ.get("PGBACKUP_TEST_PROVIDER", "local")


def pytest_generate_tests(metafunc: Any) -> None:
    """Every scenario under the chosen provider; @both_providers ones also under Docker.

    pytest-bdd requests step fixtures (``h``, hence ``provider``) only while the scenario
    runs, so the parameter is declared here for every scenario that gets one."""
    docker = pytest.param("docker", marks=pytest.mark.docker, id="docker")
    if chosen_provider(metafunc.config) == "docker":
        params = [docker]
    elif metafunc.definition.get_closest_marker("both_providers"):
        params = [pytest.param("local", id="local"), docker]
    else:
        return
    if "provider" not in metafunc.fixturenames:
        metafunc.fixturenames.append("provider")
    metafunc.parametrize("provider", params, indirect=True)


@pytest.fixture
def provider(request: Any) -> str:
    """The provider of this test's clusters (a parameter, else the chosen one)."""
    return str(getattr(request, "param", None) or chosen_provider(request.config))


# --- images ---------------------------------------------------------------------------


def _images_module() -> Any:
    from sourcefile import load_file  # tests/, on sys.path once conftest.py has run

    return load_file("pgbackup_images", REPO / "containers" / "images.py")


_image: str | None = None
_why_not: str | None = None
_failed: str | None = None


def docker_image() -> str:
    """The pgbackup image for this run (built once per session, reused across runs when
    its sources are unchanged); skips the test when no Docker engine can be had."""
    global _image, _why_not, _failed
    if _failed is not None:
        pytest.fail(_failed, pytrace=False)
    if _image is None and _why_not is None:
        images = _images_module()
        why = images.engine_answers()
        if why and os.geteuid() == 0:
            # After a reboot nothing runs: start the project's engine (idempotent).
            subprocess.run(["bash", str(REPO / ".ci" / "docker-engine")], capture_output=True)
            why = images.engine_answers()
        if why:
            _why_not = why
        else:
            from pgbackup.postgres.cluster import server_os_user

            ids = (os.getuid(), os.getgid())
            user = server_os_user()
            if user is not None:
                import pwd

                pw = pwd.getpwnam(user)
                ids = (pw.pw_uid, pw.pw_gid)
            try:
                # The image's postgres owns what the host's server user owns: the
                # repository and data directories are shared with host-side clusters.
                _image = str(images.build_pgbackup(uid=ids[0], gid=ids[1]))
            except images.ImageError as exc:
                _failed = f"building the pgbackup image failed: {exc}"
                pytest.fail(_failed, pytrace=False)
    if _why_not is not None:
        pytest.skip(f"Docker provider: {_why_not}")
    assert _image is not None
    return _image


# --- the source cluster ---------------------------------------------------------------


def docker_source_up(h: Harness) -> Any:
    """The scenario's source cluster in a container, with the sandbox's sample data; the
    policy's target becomes an ordinary connection to it."""
    from harness import PGBACKUP
    from versions import DEFAULT, bin_dir

    from pgbackup.policy import parse_duration
    from pgbackup.postgres.cluster import free_port, hand_over, server_os_user
    from pgbackup.postgres.docker import DockerCluster
    from pgbackup.postgres.sandbox import SAMPLE_SCHEMA, sample_data_sql

    image = docker_image()
    programs = None  # the image's own PostgreSQL (Debian's 15)
    if h.major is not None and h.major != DEFAULT:
        # Another major's relocatable build (features/versions.py), mounted read-only and
        # run inside the container, as the host's tests run it.
        programs, why = bin_dir(h.major)
        if programs is None:
            pytest.fail(why, pytrace=False)
    target = h.policy["targets"]["platform"]
    user = target["connection"]["user"]
    dbname = target["connection"]["dbname"]
    (h.root / "sandbox").mkdir(exist_ok=True)
    h.repo.mkdir(parents=True, exist_ok=True)
    hand_over(h.repo, server_os_user(), 0o750)  # archive_command writes as postgres
    port = free_port()
    cluster = DockerCluster(
        h.root / "sandbox" / "data",
        port,
        image=image,
        mounts=[h.root],
        name=f"pgbackup-test-{port}",
        label="test",
        bin_dir=programs,
        # What the policy reads from the environment, and where alert state is kept:
        # the server's wal-push sees them, as a local sandbox's inherits them.
        environment={
            k: v for k, v in h.env.items() if k.startswith("PGBACKUP_") or k == "XDG_STATE_HOME"
        },
    )
    h.source = cluster
    archive = f"pgbackup --config '{h.config}' wal-push --target platform %p"
    cluster.initdb(
        {
            "archive_mode": "on",
            "archive_command": archive,
            # as the sandbox's: half the RPO objective, at least 10 s
            "archive_timeout": max(10, parse_duration(h.policy["sla"].get("rpo", "10m")) // 2),
            "wal_keep_size": "512MB",
            "max_wal_size": "1GB",
            "shared_buffers": "128MB",
        }
    )
    cluster.start()
    served = int(cluster.sql("SHOW server_version_num")[0][0]) // 10000
    assert served == (h.major or DEFAULT), f"the container serves PostgreSQL {served}"
    cluster.sql(f"CREATE ROLE {user} LOGIN REPLICATION")
    cluster.sql(f"CREATE DATABASE {dbname} OWNER {user}")
    cluster.sql(SAMPLE_SCHEMA + sample_data_sql(1), dbname=dbname, user=user)
    cluster.sql("CHECKPOINT")
    h.policy["targets"]["platform"] = {
        "connection": {"host": "127.0.0.1", "port": port, "user": user, "dbname": dbname}
    }
    h.write_policy()
    # archive_command names `pgbackup`, as an installed one is named: a cluster restored
    # on the host with archiving on (timelines) archives through the host's pgbackup.
    h.env["PATH"] = f"{Path(PGBACKUP).parent}{os.pathsep}{h.env.get('PATH', '')}"
    return cluster


def teardown_source(source: Any) -> None:
    """Stop and remove the source container (its log is kept beside its data)."""
    try:
        source.stop("immediate")
    finally:
        source.remove()
