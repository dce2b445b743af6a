"""The engine's commands as tasks: validate, plan, backup, list, verify, restore, cleanup,
wal-push/wal-fetch, the sandbox, the demo. Parse flags, call the engine, render.

``invoke <task>`` (through the root ``tasks.py``) and the ``pgbackup`` console script run
these same tasks. Every decision lives in the engine, so it is tested there.
"""

from __future__ import annotations

from typing import Any

from invoke import Collection, task
from invoke.exceptions import Exit

from pgbackup.interface.direct import backup_targets, restore_one
from pgbackup.interface.direct import notify as _notify
from pgbackup.interface.taskkit import (
    CONFIG_HELP,
    command,
    console,
    emit_json,
    load,
    policy_now,
    repository,
    targets,
)

# --- validate & plan ------------------------------------------------------------------


@task(
    help={
        "config": CONFIG_HELP,
        "live": "also compare each target's server settings with the policy",
    }
)
@command
def validate(c: Any, config: str | None = None, live: bool = False) -> None:
    """Check backup.yaml against the schema and the semantic rules; exit 0 only when valid."""
    from pgbackup.policy import find_config, validate_file

    path = find_config(config)
    problems = validate_file(path)
    if problems:
        lines = "\n".join(f"  - {p}: {m}" for p, m in problems)
        raise Exit(f"pgbackup: {path} is invalid ({len(problems)} problem(s)):\n{lines}", code=2)
    print(f"{path}: valid")
    if live:
        from pgbackup.operations.plan import live_disagreements

        policy = load(config)
        issues = live_disagreements(policy)
        for target_name, found in issues.items():
            for item in found:
                print(f"  {target_name}: {item}")
        if any(issues.values()):
            raise Exit("pgbackup: server settings disagree with the policy", code=1)
        print("server settings agree with the policy")


@task(help={"config": CONFIG_HELP, "json": "machine-readable output"})
@command
def plan(c: Any, config: str | None = None, json_: bool = False) -> None:
    """Show what the policy implies now: targets, server settings, retention, cron lines."""
    from pgbackup.operations.plan import build_plan, render_plan

    policy = load(config)
    data = build_plan(policy, repository(policy), policy_now())
    if json_:
        emit_json(data)
    else:
        render_plan(console(), data)


# --- backup ---------------------------------------------------------------------------


@task(
    help={
        "config": CONFIG_HELP,
        "target": "only this target (default: every target)",
        "type": "full (default) or incremental: on the newest backup, PostgreSQL 17+ with "
        "summarize_wal = on",
    }
)
@command
def backup(
    c: Any, config: str | None = None, target: str | None = None, type_: str = "full"
) -> None:
    """Take a base backup of every target (or --target NAME)."""
    code = backup_targets(config, target, type_)  # also run without Invoke: interface/direct
    if code:
        raise Exit(code=code)


# --- list -----------------------------------------------------------------------------


@task(
    name="list",
    help={"config": CONFIG_HELP, "target": "only this target", "json": "machine-readable output"},
)
@command
def list_(
    c: Any, config: str | None = None, target: str | None = None, json_: bool = False
) -> None:
    """Backups with status, sizes, times, LSNs, and the recoverable window per target."""
    from pgbackup.engine.inventory import inventory, render_inventory

    policy = load(config)
    repo = repository(policy)
    data = inventory(policy, repo, targets(policy, target))
    if json_:
        emit_json(data)
    else:
        from pgbackup.operations.recoverability import print_windows

        out = console()
        render_inventory(out, data)
        print_windows(out, policy, repo, data, policy_now())


# --- verify ---------------------------------------------------------------------------


@task(
    help={
        "config": CONFIG_HELP,
        "target": "only this target",
        "backup": "backup id, 'latest' (default) or 'all'",
        "wal": "also check WAL continuity from each backup to the newest archived segment",
        "json": "machine-readable output",
    }
)
@command
def verify(
    c: Any,
    config: str | None = None,
    target: str | None = None,
    backup: str | None = None,
    wal: bool = False,
    json_: bool = False,
) -> None:
    """Check stored checksums and every file against PostgreSQL's backup_manifest."""
    from pgbackup.engine.verify import run_verify

    policy = load(config)
    repo = repository(policy)
    out: dict[str, Any] = {}
    ok = True
    for t in targets(policy, target):
        reports = run_verify(policy, t, backup, repo)
        out[t.name] = {"backups": [r.as_dict() for r in reports]}
        ok = ok and all(r.ok for r in reports)
        if wal:
            from pgbackup.engine.walchain import verify_wal_chain

            chain = verify_wal_chain(policy, repo, t)
            out[t.name]["wal"] = chain
            ok = ok and not chain["gaps"]
        if not json_:
            for r in reports:
                if r.ok:
                    print(
                        f"{t.name}/{r.backup_id}: OK ({r.files_checked} files, {r.bytes_checked} bytes checked)"
                    )
                else:
                    print(f"{t.name}/{r.backup_id}: FAILED")
                    for p in r.problems:
                        print(f"  - {p}")
            if wal:
                chain = out[t.name]["wal"]
                if chain["gaps"]:
                    print(f"{t.name} WAL: {len(chain['gaps'])} problem(s)")
                    for g in chain["gaps"]:
                        print(f"  - {g}")
                else:
                    print(f"{t.name} WAL: continuous ({chain['segments']} segments checked)")
    if json_:
        emit_json(out)
    if not ok:
        for t in targets(policy, target):
            _notify(policy, "verify", t.name, "failed", "verification found problems")
        raise Exit(code=1)


# --- restore --------------------------------------------------------------------------

RESTORE_HELP = {
    "config": CONFIG_HELP,
    "backup": "backup id or 'latest' (default: newest, or the newest before the recovery target)",
    "to": "data directory to restore into (must be empty or absent unless --force)",
    "force": "replace a non-empty directory (stopping a server running on it)",
    "start": "start the restored server and wait until it accepts connections",
    "port": "port for the restored server (default: a free one with --start)",
    "target": "policy target name; or a recovery target: 'immediate' (backup end) or 'latest' (end of archive)",
    "db": "policy target name, when --target names a recovery target (immediate|latest)",
    "target_time": "recover to this time (ISO 8601, e.g. '2026-11-23 14:30:00+00')",
    "target_lsn": "recover to this LSN (e.g. 0/3000060)",
    "target_xid": "recover to this transaction id",
    "target_name": "recover to this restore point (pg_create_restore_point)",
    "target_action": "promote (default), pause or shutdown when the target is reached",
    "target_timeline": "timeline to follow: 'latest', 'current' or a number",
    "exclusive": "stop just before the target instead of just after it",
    "no_archive": "turn archive_mode off in the restored cluster (scratch copies)",
    "from": "restore from this upload destination instead of the repository",
    "json": "machine-readable output",
    "tablespace_map": "NAME=DIR (repeatable; NAME or OID): restore that tablespace into DIR",
    "tablespace_map_all": "restore every tablespace into DIR/<name>",
    "standby": "build a standby: standby.signal, WAL from the repository (and --primary-conninfo)",
    "primary_conninfo": "with --standby: the primary to stream from (libpq conninfo)",
    "delta": "restore over an existing stopped copy: rewrite only the files that differ",
}


@task(help=RESTORE_HELP, iterable=["tablespace_map"])
@command
def restore(
    c: Any,
    to: str | None = None,
    config: str | None = None,
    backup: str | None = None,
    force: bool = False,
    start: bool = False,
    port: int | None = None,
    target: str | None = None,
    db: str | None = None,
    target_time: str | None = None,
    target_lsn: str | None = None,
    target_xid: str | None = None,
    target_name: str | None = None,
    target_action: str | None = None,
    target_timeline: str | None = None,
    exclusive: bool = False,
    no_archive: bool = False,
    from_: str | None = None,
    json_: bool = False,
    tablespace_map: list[str] | None = None,
    tablespace_map_all: str | None = None,
    standby: bool = False,
    primary_conninfo: str | None = None,
    delta: bool = False,
) -> None:
    """Restore a backup into --to DIR, optionally to a point in time (PITR)."""
    options = dict(locals())  # every option, by the name the signature above gives it
    del options["c"]
    restore_one(**options)  # also run without Invoke: interface/direct


# --- cleanup --------------------------------------------------------------------------


@task(
    help={
        "config": CONFIG_HELP,
        "target": "only this target",
        "dry_run": "only show what would be removed",
        "json": "machine-readable output",
    }
)
@command
def cleanup(
    c: Any,
    config: str | None = None,
    target: str | None = None,
    dry_run: bool = False,
    json_: bool = False,
) -> None:
    """Apply retention (days + weekly/monthly) to base backups and WAL, locally and remotely."""
    from pgbackup.engine.cleanup import run_cleanup

    policy = load(config)
    repo = repository(policy)
    now = policy_now()
    out: list[dict[str, Any]] = []
    for t in targets(policy, target):
        p = run_cleanup(policy, repo, t, dry_run=dry_run, now=now)
        out.append(p.as_dict())
        if json_:
            continue
        verb = "would remove" if dry_run else "removed"
        for d in p.decisions:
            mark = "keep  " if d.keep else ("expire" if dry_run else "gone  ")
            print(f"{t.name}/{d.backup_id}: {mark} ({', '.join(d.reasons)})")
        print(
            f"{t.name}: {verb} {len(p.expire_backups)} backup(s), {len(p.leftovers)} incomplete, "
            f"{len(p.expire_wal)} WAL file(s)"
        )
        for note in p.notes:
            print(f"  note: {note}")
    if policy.uploads:
        from pgbackup.engine.uploads import cleanup_uploads

        removed = cleanup_uploads(policy, now, dry_run=dry_run)
        for plan in out:  # each target's copies, per destination
            plan["uploads"] = {
                dest: by_target.get(plan["target"], []) for dest, by_target in removed.items()
            }
        if not json_:
            for dest, by_target in removed.items():
                count = sum(len(ids) for ids in by_target.values())
                print(
                    f"upload {dest}: {'would remove' if dry_run else 'removed'} {count} copy(ies)"
                )
    if json_:
        emit_json(out)


# --- WAL (PostgreSQL's archive_command / restore_command) ------------------------------


@task(
    name="wal-push",
    help={
        "config": CONFIG_HELP,
        "target": "policy target (default: found from the cluster)",
        "async_": "hand the file to the background pusher and return (engine/walasync)",
    },
)
def wal_push(
    c: Any, path: str, config: str | None = None, target: str | None = None, async_: bool = False
) -> None:
    """Archive one WAL file (archive_command = 'pgbackup wal-push --config ... %p').

    A parameter per flag of wal_commands.WAL_FLAGS for wal-push (a test checks it)."""
    from pgbackup.interface.wal_commands import wal_argv, wal_main

    code = wal_main(wal_argv("wal-push", [path], config=config, target=target, **{"async": async_}))
    if code:
        raise Exit(code=code)


@task(name="wal-fetch", help={"config": CONFIG_HELP, "target": "policy target"})
def wal_fetch(
    c: Any, name: str, path: str, config: str | None = None, target: str | None = None
) -> None:
    """Fetch one WAL file (restore_command = 'pgbackup wal-fetch --config ... %f %p')."""
    from pgbackup.interface.wal_commands import wal_main

    code = wal_main(
        ["wal-fetch", name, path]
        + (["--config", config] if config else [])
        + (["--target", target] if target else [])
    )
    if code:
        raise Exit(code=code)


# --- sandbox --------------------------------------------------------------------------


@task(name="up", help={"config": CONFIG_HELP, "target": "sandbox target (default: every sandbox)"})
@command
def sandbox_up(c: Any, config: str | None = None, target: str | None = None) -> None:
    """Provision (first time) and start the local sandbox cluster(s)."""
    from pgbackup.postgres.sandbox import Sandbox

    policy = load(config)
    for t in targets(policy, target):
        if t.sandbox is None:
            continue
        sb = Sandbox(policy, t)
        cluster = sb.up()
        print(f"sandbox {t.name}: running on 127.0.0.1:{cluster.port}, data in {cluster.data_dir}")


@task(
    name="down",
    help={"config": CONFIG_HELP, "target": "sandbox target", "destroy": "also delete its data"},
)
@command
def sandbox_down(
    c: Any, config: str | None = None, target: str | None = None, destroy: bool = False
) -> None:
    """Stop the sandbox cluster(s); --destroy also removes their data."""
    from pgbackup.postgres.sandbox import Sandbox

    policy = load(config)
    for t in targets(policy, target):
        if t.sandbox is None:
            continue
        Sandbox(policy, t).down(destroy=destroy)
        print(f"sandbox {t.name}: {'destroyed' if destroy else 'stopped'}")


@task(name="status", help={"config": CONFIG_HELP, "json": "machine-readable output"})
@command
def sandbox_status(c: Any, config: str | None = None, json_: bool = False) -> None:
    """Show whether each sandbox exists and runs."""
    from pgbackup.postgres.sandbox import Sandbox

    policy = load(config)
    rows = []
    for t in policy.targets.values():
        if t.sandbox is None:
            continue
        cl = Sandbox(policy, t).cluster()
        rows.append(
            {"target": t.name, "exists": cl.exists(), "running": cl.is_running(), "port": cl.port}
        )
    if json_:
        emit_json(rows)
    else:
        for r in rows:
            print(
                f"{r['target']}: {'running' if r['running'] else 'stopped'}{'' if r['exists'] else ' (not provisioned)'}, port {r['port']}"
            )


# --- demo -----------------------------------------------------------------------------


@task(help={"config": CONFIG_HELP})
@command
def demo(c: Any, config: str | None = None) -> None:
    """The main job end to end on the sandbox: back up, change data, restore, verify, report."""
    from pgbackup.operations.demo import run_demo

    policy = load(config)
    run_demo(policy, console())


def register(ns: Collection) -> None:
    for t in (validate, plan, backup, list_, verify, restore, cleanup, wal_push, wal_fetch, demo):
        ns.add_task(t)
    sandbox = Collection("sandbox")
    sandbox.add_task(sandbox_up)
    sandbox.add_task(sandbox_down)
    sandbox.add_task(sandbox_status)
    ns.add_collection(sandbox)
