"""What the policy implies right now (``invoke plan``) and whether servers agree (``validate --live``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pgbackup.postgres.connection import describe


def required_settings(policy: Any, target: Any) -> dict[str, str]:
    """postgresql.conf settings a target needs for this policy."""
    from pgbackup.postgres.sandbox import archive_command, archive_timeout

    settings = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": archive_command(policy, target),
        "archive_timeout": f"{archive_timeout(policy)}s",
        "max_wal_senders": ">= 2",
    }
    if "incremental" in policy.schedules:
        settings["summarize_wal"] = "on  # incremental backups (PostgreSQL 17+)"
    return settings


def backup_types_plan(policy: Any) -> dict[str, Any]:
    """How full and incremental backups alternate (schedules.backup, schedules.incremental)."""
    full = policy.schedules.get("backup")
    incremental = policy.schedules.get("incremental")
    if not incremental:
        text = "every backup is full" + (f" ({full})" if full else "")
    else:
        text = (
            f"full backups at '{full}', incremental backups at '{incremental}', each on the "
            "newest backup (PostgreSQL 17+ with summarize_wal = on): a chain runs from one "
            "full backup to the next, and a restore combines it (pg_combinebackup)"
        )
    return {"full": full, "incremental": incremental, "explained": text}


def compression_plan(policy: Any, target: Any) -> dict[str, str]:
    """Which side compresses this target's base backups, and why (pgbackup/engine/streamcompress.py).

    Asks a running server (a sandbox is never started for it); an unreachable one is
    decided at each backup."""
    from pgbackup.engine.streamcompress import probe
    from pgbackup.errors import PgBackupError
    from pgbackup.postgres.sandbox import Sandbox

    method = policy.compression.method
    if target.sandbox is not None:
        sandbox = Sandbox(policy, target)
        cluster = sandbox.cluster()
        conninfo = sandbox.conninfo(cluster) if cluster.is_running() else None
    else:
        conninfo = {**target.connection, "connect_timeout": 5}
    if conninfo is not None:
        try:
            return probe(conninfo, method).as_dict()
        except PgBackupError as exc:
            why = f"the server cannot be asked now ({exc.message})"
    else:
        why = "the sandbox is not running"
    return {
        "method": method,
        "side": "decided at each backup",
        "reason": f"{why}: the server compresses when it was built with {method}, "
        "else pgbackup compresses the stream itself",
    }


def shipping_plan(policy: Any, target: Any) -> dict[str, Any] | None:
    """How a target's WAL reaches the upload destinations, and within what bound (None
    without ``uploads``).

    A target with ``wal_receiver`` needs nothing more: ``wal-receive`` runs a shipper
    round every receiver interval over everything stored in ``<target>/wal/`` (what it
    streams, its ``.partial`` included, and anything wal-push archived) and a last round
    before it exits (``receive`` in pgbackup/engine/receiver.py). Any other target needs
    ``wal-ship`` running beside PostgreSQL (pgbackup/engine/shipper.py); without it WAL
    reaches the destinations only with each backup's upload."""
    if not policy.uploads:
        return None
    from pgbackup.engine import receiver, shipper
    from pgbackup.postgres.sandbox import archive_timeout

    names = [str(u["name"]) for u in policy.uploads]
    where = ", ".join(names)
    if getattr(target, "wal_receiver", None):
        interval = receiver.INTERVAL
        return {
            "by": "wal-receive",
            "command": f"pgbackup --config {policy.path} wal-receive --target {target.name}",
            "unit": "examples/pgbackup-wal-receive@.service",
            "destinations": names,
            "interval_seconds": interval,
            "explained": (
                f"wal-receive ships what it streams (its .partial included) to {where} itself, "
                f"a round every {interval:g}s: WAL is there about {interval:g}s plus the copy "
                "time after the receiver stores it; no wal-ship needed for this target"
            ),
        }
    interval = shipper.INTERVAL
    timeout = archive_timeout(policy)
    return {
        "by": "wal-ship",
        "command": f"pgbackup --config {policy.path} wal-ship --target {target.name}",
        "unit": "examples/pgbackup-wal-ship@.service",
        "destinations": names,
        "interval_seconds": interval,
        "archive_timeout_seconds": timeout,
        "explained": (
            f"run `pgbackup --config {policy.path} wal-ship --target {target.name}` as a "
            f"service (examples/pgbackup-wal-ship@.service): each archived WAL file is at "
            f"{where} about {interval:g}s plus the copy time after it is archived, and "
            f"archive_timeout ({timeout}s) bounds when a segment is archived, so off-site "
            f"RPO is about {timeout + interval:g}s; without it, WAL reaches them only with "
            "each backup's upload"
        ),
    }


def iam_plan(policy: Any) -> list[dict[str, Any]]:
    from pgbackup.operations.access import iam_plan as plan_of

    return plan_of(policy)


def upgrade_plan(policy: Any, repo: Any, target: Any) -> dict[str, Any]:
    """What a major upgrade (or a new initdb) of the target's server takes, in order, and
    the generations the repository holds (docs/upgrades.md)."""
    from pgbackup.engine.generations import generations, upgrade_command

    gens = generations(repo.storage, target.name)
    config = f"--config {policy.path} "
    steps = [
        "stop the server (pg_ctl stop -m fast): its last WAL is archived as it stops",
        "pg_upgrade --link or --copy into a new data directory (or initdb and restore a "
        "dump), archive_mode, archive_command and archive_timeout kept: the new cluster has "
        "a new system identifier",
        "start the new server: its WAL is refused (check goes CRITICAL) and PostgreSQL keeps "
        "it in pg_wal until the next step",
        f"`{upgrade_command(target.name, str(policy.path))}`, which asks the new server who "
        "it is: the repository's history gains it as the next generation, whose WAL and "
        f"backups go under {target.name}/gen/<n>/; the refused WAL is archived on the "
        "archiver's next try",
        f"`pgbackup {config}backup --target {target.name}`: a new full backup; until it "
        "ends nothing after the upgrade can be restored (the gap `list` shows), and "
        "incremental backups never build on the old generation",
    ]
    return {
        "steps": steps,
        "generations": [
            {
                "generation": g["generation"],
                "system_identifier": g.get("system_identifier"),
                "major": g.get("major"),
                "reason": g.get("reason"),
            }
            for g in gens
        ],
    }


def build_plan(policy: Any, repo: Any, now: datetime) -> dict[str, Any]:
    from pgbackup.engine.cleanup import plan_cleanup
    from pgbackup.engine.receiver import receiver_plan
    from pgbackup.operations.schedule import cron_entries, schedule_log

    targets = []
    for t in policy.targets.values():
        cleanup = plan_cleanup(policy, repo, t, now, backup_running=False)
        targets.append(
            {
                "name": t.name,
                "server": f"sandbox in {t.sandbox.path}" if t.sandbox else describe(t.connection),
                "postgresql_conf": required_settings(policy, t),
                "compression": compression_plan(policy, t),
                "cleanup": cleanup.as_dict(),
                "wal_receiver": receiver_plan(policy, t),
                "wal_shipping": shipping_plan(policy, t),
                "upgrade": upgrade_plan(policy, repo, t),
            }
        )
    return {
        "policy": str(policy.path),
        "repository": repo.storage.describe(),
        "compression": f"{policy.compression.method} level {policy.compression.level}",
        "encryption": "age" if policy.encryption else "none",
        "retention": {
            "days": policy.retention.days,
            "weekly": policy.retention.weekly,
            "monthly": policy.retention.monthly,
            "min_backups": policy.retention.min_backups,
        },
        "sla": {"rto_seconds": policy.sla.rto, "rpo_seconds": policy.sla.rpo},
        "targets": targets,
        "backup_types": backup_types_plan(policy),
        "cron": [
            {"name": e.name, "line": f"{e.expression} {e.command}"} for e in cron_entries(policy)
        ],
        "schedule_log": str(schedule_log(policy)),
        "uploads": [
            {"name": u["name"], "kind": u["kind"], "retention_days": u.get("retention_days", 30)}
            for u in policy.uploads
        ],
        "iam": iam_plan(policy),
    }


def render_plan(console: Any, data: dict[str, Any]) -> None:
    console.print(f"[bold]policy[/] {data['policy']}")
    console.print(
        f"repository: {data['repository']}  compression: {data['compression']}  encryption: {data['encryption']}"
    )
    r = data["retention"]
    console.print(
        f"retention: {r['days']} days, {r['weekly']} weekly, {r['monthly']} monthly (at least {r['min_backups']})"
    )
    console.print(f"backups: {data['backup_types']['explained']}", markup=False)
    for t in data["targets"]:
        console.print(f"\n[bold]target {t['name']}[/]: {t['server']}")
        comp = t["compression"]
        console.print(
            f"  base backups compressed ({comp['method']}) by: {comp['side']}: {comp['reason']}",
            markup=False,
        )
        console.print("  postgresql.conf:")
        for k, v in t["postgresql_conf"].items():
            console.print(f"    {k} = {v}")
        rx = t.get("wal_receiver")
        if rx:
            console.print(f"  WAL receiver ({rx['mode']}, slot {rx['slot']}): {rx['command']}")
            console.print(f"    runs as a service: {rx['unit']}; spool {rx['spool']}")
            for k, v in rx["postgresql_conf"].items():
                console.print(f"    {k} = {v}", markup=False)
        ship = t.get("wal_shipping")
        if ship:
            console.print(f"  WAL to upload destinations: {ship['explained']}", markup=False)
        up = t.get("upgrade")
        if up:
            gens = up["generations"]
            if len(gens) > 1:
                console.print(
                    "  generations: "
                    + "; ".join(
                        f"{g['generation']}: cluster {g['system_identifier']} "
                        f"(PostgreSQL {g['major']}, {g['reason']})"
                        for g in gens
                    ),
                    markup=False,
                )
            console.print("  a major upgrade (or a new initdb) of this server, in order:")
            for n, step in enumerate(up["steps"], 1):
                console.print(f"    {n}. {step}", markup=False)
        c = t["cleanup"]
        kept = [b for b in c["backups"] if b["keep"]]
        console.print(
            f"  retention now: keep {len(kept)} backup(s); cleanup would remove {len(c['expire_backups'])} "
            f"backup(s), {len(c['remove_incomplete'])} incomplete, {len(c['expire_wal'])} WAL file(s)"
        )
        for b in c["backups"]:
            console.print(
                f"    {b['backup_id']}: {'keep' if b['keep'] else 'expire'} ({', '.join(b['reasons'])})"
            )
    console.print("\n[bold]crontab[/] (invoke schedule.install writes these):")
    for e in data["cron"]:
        console.print(f"  {e['line']}", markup=False)
    for u in data["uploads"]:
        console.print(f"upload {u['name']} ({u['kind']}): copies kept {u['retention_days']} days")
    for item in data.get("iam", []):
        lock = f", object lock {item['object_lock']}" if item["object_lock"] else ", no object lock"
        console.print(
            f"\n[bold]IAM[/] for the {item['storage']} (s3://{item['bucket']}{lock}); "
            "docs/security.md says why each line is there"
        )
        for role, words in (
            ("host", "the database host's jobs: read, create, never delete or overwrite"),
            ("maintenance", "cleanup, run elsewhere with maintenance_profile"),
        ):
            console.print(f"  role {role} ({words}):", markup=False)
            console.print(json.dumps(item[role], indent=2), markup=False, soft_wrap=True)


def live_disagreements(policy: Any) -> dict[str, list[str]]:
    """Compare each target's running settings with what the policy needs."""
    from pgbackup.errors import PgBackupError
    from pgbackup.postgres.connection import server_facts
    from pgbackup.postgres.sandbox import archive_command, resolve_conninfo

    result: dict[str, list[str]] = {}
    for t in policy.targets.values():
        found: list[str] = []
        try:
            facts = server_facts(resolve_conninfo(policy, t), t.pg_bin_dir)
        except PgBackupError as exc:
            result[t.name] = [f"cannot check: {exc.message}"]
            continue
        if facts.wal_level not in ("replica", "logical"):
            found.append(f"wal_level is {facts.wal_level}, needs replica")
        if facts.archive_mode not in ("on", "always"):
            found.append(f"archive_mode is {facts.archive_mode}: WAL archiving is off")
        wanted = archive_command(policy, t)
        if facts.archive_command.strip() != wanted and (
            "wal-push" not in facts.archive_command or str(policy.path) not in facts.archive_command
        ):
            found.append(
                f"archive_command is {facts.archive_command!r}, not this policy's wal-push ({wanted})"
            )
        if policy.sla.rpo:
            if facts.archive_timeout == 0:
                found.append(
                    f"archive_timeout is 0 (off): a quiet server may keep WAL longer than the RPO of {policy.sla.rpo}s"
                )
            elif facts.archive_timeout >= policy.sla.rpo:
                found.append(
                    f"archive_timeout {facts.archive_timeout}s is not below the RPO objective of {policy.sla.rpo}s"
                )
        if "incremental" in policy.schedules:
            if facts.major < 17:
                found.append(
                    f"PostgreSQL {facts.version} cannot take the incremental backups "
                    "schedules.incremental asks for (PostgreSQL 17+)"
                )
            elif facts.summarize_wal != "on":
                found.append(
                    f"summarize_wal is {facts.summarize_wal or 'off'}: incremental backups "
                    "(schedules.incremental) need it on"
                )
        if facts.max_wal_senders < 2:
            found.append(
                f"max_wal_senders is {facts.max_wal_senders}; backups need at least 1 free (2 recommended)"
            )
        result[t.name] = found
    return result
