"""A postmaster that this process cannot see (another PID namespace) still counts as running.

Restore refuses a data directory a server holds, and the sandbox never starts a second
postmaster on one: both ask ``Cluster.is_running``. A server in a container that shares the
directory has a pid that kill(0) cannot find here; the port its lock file names answers.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pgbackup.postgres.cluster import Cluster

UNSEEN_PID = 4_194_305  # above Linux's largest pid_max: no process here has it


def lock_file(data: Path, port: int, sockdir: Path, listen: str) -> None:
    data.mkdir(exist_ok=True)
    lines = [str(UNSEEN_PID), str(data), "1700000000", str(port), str(sockdir), listen, "0 0"]
    (data / "postmaster.pid").write_text("\n".join([*lines, "ready   ", ""]))


def test_a_lock_file_whose_port_answers_is_a_running_server(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        lock_file(tmp_path / "data", port, tmp_path / "nosock", "127.0.0.1")
        cluster = Cluster(tmp_path / "data", port, bin_dir=tmp_path, os_user="")
        assert cluster.postmaster_pid() is None  # the pid is not visible here
        assert cluster.is_running()
    # The server is gone: the same lock file is stale.
    assert not cluster.is_running()


def test_a_unix_socket_in_the_lock_files_directory_counts_too(tmp_path: Path) -> None:
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sockdir / ".s.PGSQL.5999"))
        server.listen()
        lock_file(tmp_path / "data", 5999, sockdir, "")
        cluster = Cluster(tmp_path / "data", 5999, bin_dir=tmp_path, os_user="")
        assert cluster.is_running()


def test_no_lock_file_or_a_garbled_one_is_not_running(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "data", 5432, bin_dir=tmp_path, os_user="")
    assert not cluster.is_running()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "postmaster.pid").write_text("garbage\n")
    assert not cluster.is_running()
