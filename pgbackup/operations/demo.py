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
    from pgbackup.engine.backup import run_backup
    from pgbackup.engine.inventory import inventory
    from pgbackup.engine.repository import Repository
    from pgbackup.engine.restore_command import restore_command
    from pgbackup.engine.verify import run_verify
    from pgbackup.postgres.sandbox import Sandbox
    from pgbackup.storage import open_storage

    target = next((t for t in policy.targets.values() if t.sandbox is not None), None)
    if target is None:
        raise PgBackupError(
            "invoke demo needs a sandbox target in the policy (see the shipped backup.yaml)"
        )
    sandbox = Sandbox(policy, target)
    step = console.print
    step(f"[bold]1. sandbox[/] {target.name}: provisioning/starting a local cluster")
    cluster = sandbox.up()
    conninfo = sandbox.conninfo(cluster)
    step(f"   running on 127.0.0.1:{cluster.port}")

    step("[bold]2. backup[/]")
    meta = run_backup(policy, target)
    step(
        f"   backup {meta['backup_id']}: {meta['raw_bytes']} bytes -> {meta['stored_bytes']} stored, LSN {meta['start_lsn']}..{meta['stop_lsn']}"
    )
    with connect(conninfo) as conn:
        at_backup = table_checksums(conn, TABLES)

    step("[bold]3. change data[/]: batch A, (PITR target), batch B")
    with connect(conninfo) as conn:
        tag = meta["backup_id"]
        insert = (
            "INSERT INTO tenants SELECT (SELECT coalesce(max(id), 0) FROM tenants) + g, %s || g "
            "FROM generate_series(1, 5) g"
        )
        conn.execute(insert, (f"demo-A-{tag}-",))
        time.sleep(1.1)
        pitr_time = conn.execute("SELECT now()").fetchone()[0]
        time.sleep(1.1)
        conn.execute(insert, (f"demo-B-{tag}-",))
        conn.execute("DELETE FROM sessions WHERE id % 7 = 0")
        after_changes = table_checksums(conn, TABLES)
    _switch_and_wait_archived(cluster)

    work = Path(sandbox.root).parent / "demo"
    common: dict[str, Any] = dict(
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
    step(f"[bold]4. restore[/] backup {meta['backup_id']} into {work / 'restore'}")
    result = restore_command(
        policy, to=work / "restore", backup=meta["backup_id"], target_time=None, **common
    )
    restored = Cluster(result.directory, result.port or 0)
    try:
        with connect({**conninfo, "port": result.port}) as conn:
            got = table_checksums(conn, TABLES)
    finally:
        restored.stop()
    same = got == at_backup
    step(
        f"   restored rows equal the rows at backup time: {'[green]yes[/]' if same else '[red]NO[/]'}"
    )
    step(f"   (and differ from the changed source: {'yes' if got != after_changes else 'NO'})")

    step(
        f"[bold]5. point-in-time restore[/] to {pitr_time.isoformat()} (after batch A, before batch B)"
    )
    result = restore_command(
        policy, to=work / "pitr", backup=None, target_time=pitr_time.isoformat(), **common
    )
    restored = Cluster(result.directory, result.port or 0)
    try:
        with connect({**conninfo, "port": result.port}) as conn:
            count = "SELECT count(*) FROM tenants WHERE name LIKE %s"
            a = conn.execute(count, (f"demo-A-{tag}-%",)).fetchone()[0]
            b = conn.execute(count, (f"demo-B-{tag}-%",)).fetchone()[0]
    finally:
        restored.stop()
    pitr_ok = a == 5 and b == 0
    step(
        f"   batch A rows: {a} (expect 5), batch B rows: {b} (expect 0): {'[green]ok[/]' if pitr_ok else '[red]WRONG[/]'}"
    )
    step(
        f"   recovered to {result.recovery.get('last_replay_time')} (LSN {result.recovery.get('last_replay_lsn')})"
    )

    step("[bold]6. verify[/] the backup against its manifest")
    repo = Repository(open_storage(policy.repository))
    reports = run_verify(policy, target, meta["backup_id"], repo)
    verified = all(r.ok for r in reports)
    step(
        f"   {reports[0].files_checked} files checked: {'[green]OK[/]' if verified else '[red]FAILED[/] ' + '; '.join(reports[0].problems)}"
    )

    step("[bold]7. repository[/]")
    render_inventory(console, inventory(policy, repo, [target]))
    from pgbackup.operations.drill import run_drill
    from pgbackup.operations.monitor import run_check
    from pgbackup.operations.sla_report import render_sla_for_demo

    step(
        "[bold]8. restore drill[/]: scratch cluster, WAL replay to the newest archived point, declared checks"
    )
    drill = run_drill(policy, target)
    for c in drill.checks:
        step(
            f"   {c.get('name')}: {c.get('value')} (expect {c.get('expect')}): {'ok' if c.get('ok') else 'FAILED'}"
        )
    step(
        f"   drill {drill.status}: measured RTO {drill.rto_seconds}s (objective {drill.rto_objective_seconds}s)"
    )

    step("[bold]9. check[/]")
    for report in run_check(policy, repo, [target], alert=False):
        step(f"   {report.target}: {report.status}")

    step("[bold]10. SLA report[/]")
    render_sla_for_demo(policy, console, html=Path(sandbox.root).parent / "sla-report.html")
    if drill.status != "ok":
        raise PgBackupError(f"the restore drill failed: {drill.error or 'a check failed'}")
    if not (same and pitr_ok and verified):
        raise PgBackupError("the demo found a problem (see above)")
    step(
        "[bold green]demo complete:[/] backup, restore, point-in-time recovery and verification all proven"
    )


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
