"""The engine's commands as tasks: validate, plan, backup, list, verify, restore, cleanup,
wal-push/wal-fetch, the sandbox, the demo. Parse flags, call the engine, render.

``invoke <task>`` (through the root ``tasks.py``) and the ``pgbackup`` console script run
these same tasks. Every decision lives in the engine, so it is tested there.
"""

from __future__ import annotations

from typing import Any

from invoke import Collection, task
from invoke.exceptions import Exit

from pgbackup.interface.direct import backup_targets, restore_one, use_as_of
from pgbackup.interface.direct import notify as _notify
from pgbackup.interface.options import AS_OF_HELP, CONFIG_HELP, BackupOptions, RestoreOptions
from pgbackup.interface.taskkit import (
    console,
    emit_json,
    load,
    options_task,
    policy_now,
    policy_task,
    repository,
    targets,
)

# --- validate & plan ------------------------------------------------------------------


@policy_task(
    help={
        "live": "also compare each target's server settings with the policy",
    }
)
def validate(c: Any, live: bool = False) -> None:
    """Check backup.yaml against the schema and the semantic rules; exit 0 only when valid."""
    from pgbackup.policy import find_config, validate_file

    path = find_config(None)
    problems = validate_file(path)
    if problems:
        lines = "\n".join(f"  - {p}: {m}" for p, m in problems)
        raise Exit(f"pgbackup: {path} is invalid ({len(problems)} problem(s)):\n{lines}", code=2)
    print(f"{path}: valid")
    if live:
        from pgbackup.operations.access import protection_problems
        from pgbackup.operations.plan import live_disagreements

        policy = load()
        unprotected = protection_problems(policy)
        for item in unprotected:
            print(f"  {item}")
        if unprotected:
            raise Exit(
                "pgbackup: the policy asks for object lock the storage does not enforce", code=1
            )
        issues = live_disagreements(policy)
        for target_name, found in issues.items():
            for item in found:
                print(f"  {target_name}: {item}")
        if any(issues.values()):
            raise Exit("pgbackup: server settings disagree with the policy", code=1)
        print("server settings agree with the policy")


@policy_task(help={"json": "machine-readable output"})
def plan(c: Any, json_: bool = False) -> None:
    """Show what the policy implies now: targets, server settings, retention, cron lines."""
    from pgbackup.operations.plan import build_plan, render_plan

    policy = load()
    data = build_plan(policy, repository(policy), policy_now())
    if json_:
        emit_json(data)
    else:
        render_plan(console(), data)


# --- backup ---------------------------------------------------------------------------


@options_task(BackupOptions)
def backup(c: Any, options: BackupOptions) -> None:
    """Take a base backup of every target (or --target NAME)."""
    code = backup_targets(options)  # also run without Invoke: interface/direct
    if code:
        raise Exit(code=code)


# --- list -----------------------------------------------------------------------------


@policy_task(
    name="list",
    help={"target": "only this target", "json": "machine-readable output", "as_of": AS_OF_HELP},
)
def list_(c: Any, target: str | None = None, json_: bool = False, as_of: str | None = None) -> None:
    """Backups with status, sizes, times, LSNs, and the recoverable window per target."""
    from pgbackup.engine.inventory import inventory
    from pgbackup.interface.render import render_inventory

    use_as_of(as_of)
    policy = load()
    repo = repository(policy)
    data = inventory(policy, repo, targets(policy, target))
    if json_:
        emit_json(data)
    else:
        from pgbackup.operations.recoverability import print_windows

        out = console()
        render_inventory(out, data)
        print_windows(out, policy, repo, data, policy_now())


# --- upgrade --------------------------------------------------------------------------


@policy_task(
    help={
        "target": "the target whose server is now a new cluster (pg_upgrade, a new initdb)",
        "json": "machine-readable output",
    }
)
def upgrade(c: Any, target: str | None = None, json_: bool = False) -> None:
    """Record that a target's server was replaced (pg_upgrade, initdb): a new generation."""
    from pgbackup.engine.upgrade import run_upgrade

    policy = load()
    chosen = targets(policy, target)
    if len(chosen) != 1:
        raise Exit(
            "pgbackup upgrade: name the target whose server was replaced: --target NAME "
            f"(targets: {', '.join(t.name for t in chosen)})",
            code=2,
        )
    done = run_upgrade(policy, chosen[0])
    if json_:
        emit_json(done)
        return
    prev = done["previous_generation"]
    print(
        f"target {done['target']}: generation {done['generation']} recorded "
        f"(cluster {done['system_identifier']}, PostgreSQL {done['major']}, {done['reason']}); "
        f"generation {prev} (cluster {done['previous_system_identifier']}) stays restorable"
    )
    print(f"  its WAL and backups go under {done['root']}/; now take a full backup:")
    print(f"  pgbackup backup --target {done['target']}")


# --- verify ---------------------------------------------------------------------------


@policy_task(
    help={
        "target": "only this target",
        "backup": "backup id, 'latest' (default) or 'all'",
        "wal": "also check WAL continuity from each backup to the newest archived segment",
        "json": "machine-readable output",
        "as_of": AS_OF_HELP,
    }
)
def verify(
    c: Any,
    target: str | None = None,
    backup: str | None = None,
    wal: bool = False,
    json_: bool = False,
    as_of: str | None = None,
) -> None:
    """Check stored checksums and every file against PostgreSQL's backup_manifest."""
    from pgbackup.engine.verify import run_verify

    use_as_of(as_of)
    policy = load()
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
                for reason in chain["not_checked"]:
                    print(f"  - not checked: {reason}")
    if json_:
        emit_json(out)
    if not ok:
        for t in targets(policy, target):
            _notify(policy, "verify", t.name, "failed", "verification found problems")
        raise Exit(code=1)


# --- restore --------------------------------------------------------------------------


@options_task(RestoreOptions)
def restore(c: Any, options: RestoreOptions) -> None:
    """Restore a backup into --to DIR, optionally to a point in time (PITR)."""
    restore_one(options)  # also run without Invoke: interface/direct


# --- cleanup --------------------------------------------------------------------------


@policy_task(
    help={
        "target": "only this target",
        "dry_run": "only show what would be removed",
        "json": "machine-readable output",
    }
)
def cleanup(
    c: Any,
    target: str | None = None,
    dry_run: bool = False,
    json_: bool = False,
) -> None:
    """Apply retention (days + weekly/monthly) to base backups and WAL, locally and remotely."""
    from pgbackup.engine.cleanup import run_cleanup

    policy = load()
    # The maintenance role's credentials (repository.maintenance_profile): the one
    # command that deletes (docs/security.md).
    repo = repository(policy, role="maintenance")
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
            held = p.held.get(d.backup_id)
            if held:  # expired, but its object lock has not ended: nothing removed
                mark, d_reasons = "locked", [*d.reasons, f"locked until {held}"]
            else:
                d_reasons = list(d.reasons)
            print(f"{t.name}/{d.backup_id}: {mark} ({', '.join(d_reasons)})")
        gone = [b for b in p.expire_backups if b not in p.held]
        left = [b for b in p.leftovers if b not in p.held]
        wal = [k for k in p.expire_wal if k not in p.held]
        print(
            f"{t.name}: {verb} {len(gone)} backup(s), {len(left)} incomplete, "
            f"{len(wal)} WAL file(s)"
        )
        if p.locks_extended:
            print(
                f"{t.name}: {p.locks_extended} object lock(s) extended to what retention promises"
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
    auto_shortflags=False,
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


@task(
    name="wal-fetch",
    auto_shortflags=False,
    help={
        "config": CONFIG_HELP,
        "target": "policy target",
        "from": "fetch from this upload destination instead of the repository",
        "until": "the last segment recovery needs (nothing after it is fetched ahead)",
        "as_of": AS_OF_HELP,
    },
)
def wal_fetch(
    c: Any,
    name: str,
    path: str,
    config: str | None = None,
    target: str | None = None,
    from_: str | None = None,
    until: str | None = None,
    as_of: str | None = None,
) -> None:
    """Fetch one WAL file (restore_command = 'pgbackup wal-fetch --config ... %f %p').

    A parameter per flag of wal_commands.WAL_FLAGS for wal-fetch (a test checks it)."""
    from pgbackup.interface.wal_commands import wal_argv, wal_main

    code = wal_main(
        wal_argv(
            "wal-fetch",
            [name, path],
            config=config,
            target=target,
            **{"from": from_, "until": until, "as-of": as_of},
        )
    )
    if code:
        raise Exit(code=code)


# --- sandbox --------------------------------------------------------------------------


@policy_task(name="up", help={"target": "sandbox target (default: every sandbox)"})
def sandbox_up(c: Any, target: str | None = None) -> None:
    """Provision (first time) and start the local sandbox cluster(s)."""
    from pgbackup.postgres.sandbox import Sandbox

    policy = load()
    for t in targets(policy, target):
        if t.sandbox is None:
            continue
        sb = Sandbox(policy, t)
        cluster = sb.up()
        print(f"sandbox {t.name}: running on 127.0.0.1:{cluster.port}, data in {cluster.data_dir}")


@policy_task(
    name="down",
    help={"target": "sandbox target", "destroy": "also delete its data"},
)
def sandbox_down(c: Any, target: str | None = None, destroy: bool = False) -> None:
    """Stop the sandbox cluster(s); --destroy also removes their data."""
    from pgbackup.postgres.sandbox import Sandbox

    policy = load()
    for t in targets(policy, target):
        if t.sandbox is None:
            continue
        Sandbox(policy, t).down(destroy=destroy)
        print(f"sandbox {t.name}: {'destroyed' if destroy else 'stopped'}")


@policy_task(name="status", help={"json": "machine-readable output"})
def sandbox_status(c: Any, json_: bool = False) -> None:
    """Show whether each sandbox exists and runs."""
    from pgbackup.postgres.sandbox import Sandbox

    policy = load()
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


@policy_task()
def demo(c: Any) -> None:
    """The main job end to end on the sandbox: back up, change data, restore, verify, report."""
    from pgbackup.interface.render import render_inventory
    from pgbackup.operations.demo import run_demo

    policy = load()
    run_demo(policy, console(), render_inventory)


def register(ns: Collection) -> None:
    for t in (
        validate,
        plan,
        backup,
        list_,
        upgrade,
        verify,
        restore,
        cleanup,
        wal_push,
        wal_fetch,
        demo,
    ):
        ns.add_task(t)
    sandbox = Collection("sandbox")
    sandbox.add_task(sandbox_up)
    sandbox.add_task(sandbox_down)
    sandbox.add_task(sandbox_status)
    ns.add_collection(sandbox)
