"""Network namespaces for the network-fault features: two namespaces joined by a veth pair
with 10.x addresses that exist only inside them (nothing outside is touched), the link cut
with ``ip link set down`` and healed; and a PostgreSQL server started inside one of them."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgbackup.postgres.cluster import Cluster, SqlAccess, hand_over


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@dataclass
class Net:
    server_ns: str
    client_ns: str
    server_if: str
    client_if: str
    address: str  # the server's end
    client_address: str
    port: int = 5000

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    def client(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *argv]

    def server(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns, *argv]

    def _link(self, side: str, state: str) -> None:
        ns, dev = (
            (self.server_ns, self.server_if)
            if side == "server"
            else (self.client_ns, self.client_if)
        )
        done = ip("-n", ns, "link", "set", dev, state)
        assert done.returncode == 0, done.stderr

    def cut(self, side: str = "server") -> None:
        """The ``side`` end of the veth pair goes down: nothing crosses, no RST, no FIN
        (the other end keeps its address, so its own namespace still reaches it)."""
        self._link(side, "down")

    def heal(self, side: str = "server") -> None:
        self._link(side, "up")


@contextlib.contextmanager
def veth_pair(kind: str = "s3") -> Iterator[Net]:
    """Two fresh namespaces ``pgbk-<kind>-TAG`` and ``pgbk-cl-TAG``, a veth pair between
    them (10.231.N.1 on the server's side, .2 on the client's), loopback up in both;
    deleted on exit. Skips, saying why, where namespaces cannot be made."""
    tag = secrets.token_hex(3)
    server_ns, client_ns = f"pgbk-{kind}-{tag}", f"pgbk-cl-{tag}"
    server_if, client_if = f"pgs{tag}", f"pgc{tag}"
    octet = int(tag[:2], 16)
    created: list[str] = []
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces with")
    try:
        probe = ip("netns", "add", server_ns)
        if probe.returncode != 0:
            pytest.skip(f"ip netns add is not permitted here: {probe.stderr.strip()}")
        created.append(server_ns)
        for step in (
            ("netns", "add", client_ns),
            ("link", "add", server_if, "type", "veth", "peer", "name", client_if),
            ("link", "set", server_if, "netns", server_ns),
            ("link", "set", client_if, "netns", client_ns),
            ("-n", server_ns, "addr", "add", f"10.231.{octet}.1/30", "dev", server_if),
            ("-n", client_ns, "addr", "add", f"10.231.{octet}.2/30", "dev", client_if),
            ("-n", server_ns, "link", "set", "lo", "up"),
            ("-n", client_ns, "link", "set", "lo", "up"),
            ("-n", server_ns, "link", "set", server_if, "up"),
            ("-n", client_ns, "link", "set", client_if, "up"),
        ):
            done = ip(*step)
            assert done.returncode == 0, (step, done.stderr)
            if step[:2] == ("netns", "add"):
                created.append(step[2])
        yield Net(
            server_ns, client_ns, server_if, client_if, f"10.231.{octet}.1", f"10.231.{octet}.2"
        )
    finally:
        for ns in created:  # deleting a namespace deletes its end of the veth pair, and so both
            ip("netns", "del", ns)


class SocketCluster(SqlAccess):
    """SQL to a server through its Unix socket: a path in the file system, so the test
    process reaches a server whose TCP address is in another network namespace."""

    def __init__(self, socket_dir: Path, port: int) -> None:
        self.socket_dir = socket_dir
        self.port = port

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> dict[str, Any]:
        import os
        import pwd

        name = user or ("postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
        return {"host": str(self.socket_dir), "port": self.port, "dbname": dbname, "user": name}


def start_in_namespace(
    cluster: Cluster, ns: str, address: str, socket_dir: Path, settings: dict[str, Any]
) -> SocketCluster:
    """Restart ``cluster`` inside network namespace ``ns``, listening on
    ``address`` (and on ``socket_dir``), trusting connections and replication from the
    namespace pair's /30 (pg_hba.conf: "host DATABASE USER ADDRESS METHOD", where
    ``replication`` matches physical replication connections; PostgreSQL's pg_hba.conf
    documentation)."""
    cluster.stop("fast")
    socket_dir.mkdir(exist_ok=True)
    hand_over(socket_dir, cluster.os_user, 0o755)
    net = address.rsplit(".", 1)[0] + ".0/30"
    hba = cluster.data_dir / "pg_hba.conf"
    with hba.open("a") as f:
        f.write(f"host all all {net} trust\nhost replication all {net} trust\n")
    as_user = []
    if cluster.os_user is not None:
        as_user = ["setpriv", f"--reuid={cluster.os_user}", f"--regid={cluster.os_user}"]
        as_user += ["--init-groups", "--"]
    argv = ["ip", "netns", "exec", ns, *as_user, cluster.program("pg_ctl")]
    argv += ["-D", str(cluster.data_dir), "-l", str(cluster.log_file)]
    # On the command line, not in postgresql.auto.conf: a backup of this server carries
    # that file, and its restore must not try to listen on an address of this namespace.
    options = {"listen_addresses": address, "unix_socket_directories": str(socket_dir), **settings}
    argv += ["-o", " ".join([f"-p {cluster.port}", *(f"-c {k}={v}" for k, v in options.items())])]
    argv += ["-w", "-t", "60", "start"]
    # pg_ctl -w waits for postmaster.pid to say "ready" (pg_ctl.c, wait_for_postmaster_start)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd="/")
    assert proc.returncode == 0, (proc.stdout, proc.stderr, cluster.log_tail(30))
    return SocketCluster(socket_dir, cluster.port)
