"""The embedded default target: a local cluster pgbackup provisions itself.

It lets the shipped ``backup.yaml`` run end to end on a fresh machine: initdb under
``./var/sandbox``, a free loopback port (remembered in ``sandbox.json``),
``wal_level=replica``, archiving through ``pgbackup wal-push``, and sample tables
``tenants``, ``users`` and ``sessions`` owned by the guide's ``platform_service`` role.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
from pathlib import Path
from typing import Any

from pgbackup.errors import PostgresError
from pgbackup.policy import Policy, Target
from pgbackup.postgres.cluster import Cluster, free_port, hand_over, run_as, server_os_user

STATE_FILE = "sandbox.json"

SAMPLE_SCHEMA = """
CREATE TABLE tenants (id bigint PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE users (id bigint PRIMARY KEY, tenant_id bigint NOT NULL REFERENCES tenants,
                    email text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE sessions (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users,
                       token text NOT NULL, started_at timestamptz NOT NULL DEFAULT now());
"""


def sample_data_sql(scale: int) -> str:
    tenants, users, sessions = 10 * scale, 100 * scale, 1000 * scale
    return f"""
INSERT INTO tenants SELECT g, 'tenant-' || g FROM generate_series(1, {tenants}) g;
INSERT INTO users SELECT g, 1 + g % {tenants}, 'user' || g || '@example.com' FROM generate_series(1, {users}) g;
INSERT INTO sessions SELECT g, 1 + g % {users}, md5(g::text) FROM generate_series(1, {sessions}) g;
"""


def pgbackup_program() -> str:
    """Absolute path of the ``pgbackup`` console script of this installation."""
    candidate = Path(sys.executable).parent / "pgbackup"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("pgbackup")
    if found:
        return found
    raise PostgresError(
        "the pgbackup console script was not found next to this Python",
        hint="install pgbackup (pip install -e .) into the environment you run it from",
    )


def archive_command(policy: Policy, target: Target) -> str:
    """The archive_command that sends WAL through this policy's wal-push."""
    return f"'{pgbackup_program()}' --config '{policy.path}' wal-push --target {target.name} %p"


def archive_timeout(policy: Policy) -> int:
    """Half the RPO objective (so a quiet server still ships WAL in time), at least 10 s."""
    rpo = policy.sla.rpo or 600
    return max(10, rpo // 2)


class Sandbox:
    def __init__(self, policy: Policy, target: Target):
        if target.sandbox is None:
            raise PostgresError(f"target {target.name!r} is not a sandbox")
        self.policy = policy
        self.target = target
        self.root = target.sandbox.path
        self.state_path = self.root / STATE_FILE

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return {}

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def cluster(self) -> Cluster:
        state = self.state()
        port = int(state.get("port") or self.target.sandbox.port or 0)  # type: ignore[union-attr]
        return Cluster(self.data_dir, port or free_port(), pg_bin_dir=self.target.pg_bin_dir)

    @property
    def user(self) -> str:
        return str(self.target.connection.get("user") or "platform_service")

    @property
    def dbname(self) -> str:
        return str(self.target.connection.get("dbname") or "platform")

    def conninfo(self, cluster: Cluster) -> dict[str, Any]:
        info = {k: v for k, v in self.target.connection.items() if k not in ("host", "port")}
        info.update(host="127.0.0.1", port=cluster.port, user=self.user, dbname=self.dbname)
        return info

    def up(self, log: Any = None) -> Cluster:
        """Provision on first use, start when stopped; returns the running cluster."""
        cluster = self.cluster()
        self._prepare_repository()
        if not cluster.exists():
            self._provision(cluster, log)
        elif not cluster.is_running():
            # The remembered port may have been taken meanwhile.
            cluster.start()
        return cluster

    def _provision(self, cluster: Cluster, log: Any) -> None:
        if log:
            log.info(
                "provisioning sandbox cluster in %s on port %d", cluster.data_dir, cluster.port
            )
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._check_server_can_run_pgbackup(cluster)
        cluster.initdb(
            {
                "archive_mode": "on",
                "archive_command": archive_command(self.policy, self.target),
                "archive_timeout": archive_timeout(self.policy),
                "wal_keep_size": "512MB",
                "max_wal_size": "1GB",
                "shared_buffers": "128MB",
            }
        )
        self.state_path.write_text(json.dumps({"port": cluster.port}) + "\n")
        cluster.start()
        cluster.sql(f"CREATE ROLE {self.user} LOGIN REPLICATION")
        # As Barman asks of its role: check reads the receiver's lag in pg_stat_replication,
        # whose details only roles with pg_read_all_stats' privileges see.
        cluster.sql(f"GRANT pg_read_all_stats TO {self.user}")
        cluster.sql(f"CREATE DATABASE {self.dbname} OWNER {self.user}")
        scale = self.target.sandbox.scale if self.target.sandbox else 1
        cluster.sql(SAMPLE_SCHEMA + sample_data_sql(scale), dbname=self.dbname, user=self.user)
        cluster.sql("CHECKPOINT")

    def _prepare_repository(self) -> None:
        """The server's archive_command runs as the server user: let it write the repository."""
        repo = self.policy.repository
        if repo.get("kind", "posix") != "posix":
            return
        path = Path(repo["path"])
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
        user = server_os_user()
        if user is not None and path.stat().st_uid != pwd.getpwnam(user).pw_uid:
            hand_over(path, user, 0o750)

    def _check_server_can_run_pgbackup(self, cluster: Cluster) -> None:
        """archive_command runs as the server's user: make sure that user can run us."""
        if cluster.os_user is None:
            return
        program = pgbackup_program()
        proc = run_as([program, "--version"], cluster.os_user, check=False, timeout=60)
        if proc.returncode != 0:
            raise PostgresError(
                f"the server's OS user {cluster.os_user!r} cannot run {program}: "
                f"{(proc.stdout or '').strip()[-300:]}",
                hint="install pgbackup where that user can reach it, e.g. a virtualenv made with "
                "/usr/bin/python3 (.ci/install does this); a Python under /root is not reachable",
            )

    def down(self, destroy: bool = False) -> None:
        cluster = self.cluster()
        if destroy:
            cluster.destroy()
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            cluster.stop()


def resolve_conninfo(
    policy: Policy, target: Target, log: Any = None, *, start: bool = True
) -> dict[str, Any]:
    """Connection keywords for a target; a sandbox is provisioned/started on first use
    (``start=False``: its keywords as it is, up or not)."""
    if target.sandbox is not None:
        sandbox = Sandbox(policy, target)
        return sandbox.conninfo(sandbox.up(log) if start else sandbox.cluster())
    return dict(target.connection)
