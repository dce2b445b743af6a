"""The scratch-cluster lifecycle through the Docker engine (docker SDK).

For drill hosts without PostgreSQL binaries: a restored data directory is served by a
``postgres:<major>`` container, bind-mounted, published on ``127.0.0.1:<port>``. The same
methods as :class:`pgbackup.postgres.cluster.Cluster` that drills use: ``start``,
``stop``, ``is_running``, ``sql``, ``connect``, ``remove``.

The official image runs the server as uid 999; the data directory is handed to it.
``restore_command`` runs inside the container, where pgbackup is absent: WAL replay in a
container therefore needs the WAL the backup carries, or a pgbackup-enabled image
(``image=``); the drill records what recovery reached either way.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from pgbackup.errors import PostgresError
from pgbackup.postgres.cluster import SqlAccess

IMAGE_UID = 999
START_TIMEOUT = 120.0


def docker_client() -> Any:
    """A client whose engine answers, or PostgresError saying why not."""
    try:
        import docker
    except ImportError:
        raise PostgresError("the docker SDK is not installed", hint="pip install docker") from None
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:
        raise PostgresError(
            f"no Docker engine answers on this machine ({type(exc).__name__})",
            hint="start dockerd or set DOCKER_HOST; or drill without --docker",
        ) from None
    return client


class DockerCluster(SqlAccess):
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int,
        *,
        major: int,
        image: str | None = None,
        client: Any = None,
    ):
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.major = major
        self.image = image or f"postgres:{major}"
        self.client = client
        self.container: Any = None
        self.os_user = "postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _client(self) -> Any:
        if self.client is None:
            self.client = docker_client()
        return self.client

    def _hand_over(self) -> None:
        for root, dirs, files in os.walk(self.data_dir):
            for name in [*dirs, *files]:
                with contextlib.suppress(OSError):
                    os.lchown(os.path.join(root, name), IMAGE_UID, IMAGE_UID)
        os.chown(self.data_dir, IMAGE_UID, IMAGE_UID)
        os.chmod(self.data_dir, 0o700)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        client = self._client()
        self._hand_over()
        self.container = client.containers.run(
            self.image,
            command=["postgres", "-D", "/pgdata", "-c", "listen_addresses=*", "-c", "port=5432"],
            user=f"{IMAGE_UID}:{IMAGE_UID}",
            volumes={str(self.data_dir): {"bind": "/pgdata", "mode": "rw"}},
            ports={"5432/tcp": ("127.0.0.1", self.port)},
            detach=True,
            labels={"pgbackup": "drill"},
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status == "exited":
                raise PostgresError(f"the {self.image} container exited: {self.logs()[-500:]}")
            code, _ = self.container.exec_run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"])
            if code == 0:
                return
            time.sleep(0.5)
        raise PostgresError(
            f"the {self.image} container did not accept connections in {timeout:.0f}s"
        )

    def logs(self) -> str:
        if self.container is None:
            return ""
        return str(self.container.logs(tail=50).decode(errors="replace"))

    def is_running(self) -> bool:
        if self.container is None:
            return False
        with contextlib.suppress(Exception):
            self.container.reload()
            return bool(self.container.status == "running")
        return False

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.log_file.write_text(self.logs())
            self.container.stop(timeout=1 if mode == "immediate" else int(timeout))

    def remove(self) -> None:
        if self.container is not None:
            self.container.remove(force=True)
            self.container = None

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "dbname": dbname,
            "user": user or "postgres",
        }
