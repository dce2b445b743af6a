"""``invoke demo``: the main job end to end on the sandbox, with its evidence shown.

Provision the sandbox, back it up, change data, restore the backup into a scratch
directory and prove the restored rows equal the rows at backup time (table checksums),
recover to a point in time between two batches, verify the backup, list the
repository, run a restore drill and a check, and end with the SLA report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgbackup.errors import PgBackupError
from pgbackup.postgres.cluster import Cluster
from pgbackup.postgres.connection import connect, table_checksums

TABLES = ["public.tenants", "public.users", "public.sessions"]


def run_demo(
    policy: Any, console: Any, render_inventory: Callable[[Any, dict[str, Any]], None]
) -> None:
    """The demo's steps, told on ``console``; ``render_inventory`` draws the repository's
    contents (the interface's, as ``list`` does)."""
    demo = Demo(policy, console)
    demo.start_sandbox()
    demo.back_up()
    demo.change_data()
    same = demo.restore_backup()
    pitr_ok = demo.restore_to_time()
    verified = demo.verify_backup()
    demo.step("[bold]7. repository[/]")
    render_inventory(console, demo.inventory())
    drill = demo.drill()
    demo.check()
    demo.sla_report()
    if drill.status != "ok":
        raise PgBackupError(f"the restore drill failed: {drill.error or 'a check failed'}")
    if not (same and pitr_ok and verified):
        raise PgBackupError("the demo found a problem (see above)")
    demo.step(
        "[bold green]demo complete:[/] backup, restore, point-in-time recovery and verification all proven"
    )


class Demo:
    """The demo's sandbox and what each step leaves for the next: the backup, the rows at
    backup time and after the changes, the point in time between the two batches."""

    def __init__(self, policy: Any, console: Any) -> None:
        from pgbackup.engine.repository import Repository
        from pgbackup.postgres.sandbox import Sandbox
        from pgbackup.storage import open_storage

        target = next((t for t in policy.targets.values() if t.sandbox is not None), None)
        if target is None:
            raise PgBackupError(
                "invoke demo needs a sandbox target in the policy (see the shipped backup.yaml)"
            )
        self.policy = policy
        self.target = target
        self.sandbox = Sandbox(policy, target)
        self.console = console
        self.step = console.print
        self.work = Path(self.sandbox.root).parent / "demo"
        self.repo = Repository(open_storage(policy.repository))

    def start_sandbox(self) -> None:
        self.step(f"[bold]1. sandbox[/] {self.target.name}: provisioning/starting a local cluster")
        self.cluster = self.sandbox.up()
        self.conninfo = self.sandbox.conninfo(self.cluster)
        self.step(f"   running on 127.0.0.1:{self.cluster.port}")

    def back_up(self) -> None:
        from pgbackup.engine.backup import run_backup

        self.step("[bold]2. backup[/]")
        self.meta = meta = run_backup(self.policy, self.target)
        self.step(
            f"   backup {meta['backup_id']}: {meta['raw_bytes']} bytes -> {meta['stored_bytes']} stored, LSN {meta['start_lsn']}..{meta['stop_lsn']}"
        )
        with connect(self.conninfo) as conn:
            self.at_backup = table_checksums(conn, TABLES)

    def change_data(self) -> None:
        """Batch A, the point in time, batch B; then the WAL archived."""
        self.step("[bold]3. change data[/]: batch A, (PITR target), batch B")
        with connect(self.conninfo) as conn:
            tag = self.meta["backup_id"]
            insert = (
                "INSERT INTO tenants SELECT (SELECT coalesce(max(id), 0) FROM tenants) + g, %s || g "
                "FROM generate_series(1, 5) g"
            )
            conn.execute(insert, (f"demo-A-{tag}-",))
            time.sleep(1.1)
            self.pitr_time = conn.execute("SELECT now()").fetchone()[0]
            time.sleep(1.1)
            conn.execute(insert, (f"demo-B-{tag}-",))
            conn.execute("DELETE FROM sessions WHERE id % 7 = 0")
            self.after_changes = table_checksums(conn, TABLES)
        _switch_and_wait_archived(self.cluster)

    def restore(self, to: Path, backup: str | None, target_time: str | None) -> Any:
        from pgbackup.engine.restore_command import restore_command

        return restore_command(
            self.policy,
            to=to,
            backup=backup,
            target_time=target_time,
            force=True,
            start=True,
            port=None,
            target=None,
            target_lsn=None,
            target_xid=None,
            target_name=None,
            target_action=None,
            target_timeline=None,
            exclusive=False,
            archive=False,
            from_upload=None,
        )

    def restore_backup(self) -> bool:
        """The backup restored: are its rows the rows at backup time?"""
        backup_id = self.meta["backup_id"]
        self.step(f"[bold]4. restore[/] backup {backup_id} into {self.work / 'restore'}")
        result = self.restore(self.work / "restore", backup_id, None)
        restored = Cluster(result.directory, result.port or 0)
        try:
            with connect({**self.conninfo, "port": result.port}) as conn:
                got = table_checksums(conn, TABLES)
        finally:
            restored.stop()
        same = got == self.at_backup
        self.step(
            f"   restored rows equal the rows at backup time: {'[green]yes[/]' if same else '[red]NO[/]'}"
        )
        self.step(
            f"   (and differ from the changed source: {'yes' if got != self.after_changes else 'NO'})"
        )
        return same

    def restore_to_time(self) -> bool:
        """Recovery to the point between the batches: batch A there, batch B not?"""
        pitr_time, tag = self.pitr_time, self.meta["backup_id"]
        self.step(
            f"[bold]5. point-in-time restore[/] to {pitr_time.isoformat()} (after batch A, before batch B)"
        )
        result = self.restore(self.work / "pitr", None, pitr_time.isoformat())
        restored = Cluster(result.directory, result.port or 0)
        try:
            with connect({**self.conninfo, "port": result.port}) as conn:
                count = "SELECT count(*) FROM tenants WHERE name LIKE %s"
                a = conn.execute(count, (f"demo-A-{tag}-%",)).fetchone()[0]
                b = conn.execute(count, (f"demo-B-{tag}-%",)).fetchone()[0]
        finally:
            restored.stop()
        pitr_ok = a == 5 and b == 0
        self.step(
            f"   batch A rows: {a} (expect 5), batch B rows: {b} (expect 0): {'[green]ok[/]' if pitr_ok else '[red]WRONG[/]'}"
        )
        self.step(
            f"   recovered to {result.recovery.get('last_replay_time')} (LSN {result.recovery.get('last_replay_lsn')})"
        )
        return pitr_ok

    def verify_backup(self) -> bool:
        from pgbackup.engine.verify import run_verify

        self.step("[bold]6. verify[/] the backup against its manifest")
        reports = run_verify(self.policy, self.target, self.meta["backup_id"], self.repo)
        verified = all(r.ok for r in reports)
        self.step(
            f"   {reports[0].files_checked} files checked: {'[green]OK[/]' if verified else '[red]FAILED[/] ' + '; '.join(reports[0].problems)}"
        )
        return verified

    def inventory(self) -> dict[str, Any]:
        from pgbackup.engine.inventory import inventory

        return inventory(self.policy, self.repo, [self.target])

    def drill(self) -> Any:
        from pgbackup.operations.drill import run_drill

        self.step(
            "[bold]8. restore drill[/]: scratch cluster, WAL replay to the newest archived point, declared checks"
        )
        drill = run_drill(self.policy, self.target)
        for c in drill.checks:
            self.step(
                f"   {c.get('name')}: {c.get('value')} (expect {c.get('expect')}): {'ok' if c.get('ok') else 'FAILED'}"
            )
        self.step(
            f"   drill {drill.status}: measured RTO {drill.rto_seconds}s (objective {drill.rto_objective_seconds}s)"
        )
        return drill

    def check(self) -> None:
        from pgbackup.operations.monitor import run_check

        self.step("[bold]9. check[/]")
        for report in run_check(self.policy, self.repo, [self.target], alert=False):
            self.step(f"   {report.target}: {report.status}")

    def sla_report(self) -> None:
        from pgbackup.operations.sla_report import render_sla_for_demo

        self.step("[bold]10. SLA report[/]")
        html = Path(self.sandbox.root).parent / "sla-report.html"
        render_sla_for_demo(self.policy, self.console, html=html)


def _switch_and_wait_archived(cluster: Cluster, timeout: float = 60) -> None:
    """Close the current WAL segment and wait until the server has archived it."""
    closed = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = cluster.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= closed:
            return
        time.sleep(0.3)
    raise PgBackupError(
        "WAL archiving did not keep up in the sandbox", hint=f"see {cluster.log_file}"
    )
