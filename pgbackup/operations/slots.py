"""Slot health for ``check``: the receiver's slot, its lag, and slots nobody uses.

A physical slot makes the server keep every WAL file its consumer has not confirmed; with
``max_slot_wal_keep_size`` set, PostgreSQL invalidates a slot that falls further behind
(``wal_status`` goes ``extended`` -> ``unreserved`` -> ``lost``; ``safe_wal_size`` is
"the number of bytes that can be written to WAL such that this slot is not in danger of
getting in state lost", PostgreSQL's pg_replication_slots documentation). Without it, a
stalled receiver fills the server's disk instead. Lag is measured against
``pg_current_wal_lsn()`` (how much WAL the repository lacks), not from whether the slot
moved, which looks stalled on an idle server.
"""

from __future__ import annotations

from typing import Any

from pgbackup.operations.checks import CRITICAL, OK, WARNING, Check, human_age

SLOT_SQL = (
    "SELECT s.slot_name, s.slot_type, s.active, s.wal_status, s.safe_wal_size, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(r.write_lsn, s.restart_lsn))::bigint, "
    "extract(epoch FROM r.write_lag), extract(epoch FROM now() - r.reply_time), "
    "r.sync_state, r.pid IS NOT NULL AND r.state IS NULL "
    "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid "
    "WHERE NOT s.temporary"
)


def slot_facts(conninfo: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    """Every permanent slot of the server and ``max_slot_wal_keep_size`` in bytes (None: -1)."""
    from pgbackup.postgres.connection import connect

    keys = (
        "slot",
        "type",
        "active",
        "wal_status",
        "safe_wal_size",
        "retained_bytes",
        "lag_bytes",
        "write_lag",
        "reply_age",
        "sync_state",
        "details_hidden",
    )
    with connect(conninfo) as conn:
        rows = conn.execute(SLOT_SQL).fetchall()
        keep = conn.execute(
            "SELECT setting::bigint * 1024 * 1024 FROM pg_settings "
            "WHERE name = 'max_slot_wal_keep_size' AND setting <> '-1'"
        ).fetchone()
    return [dict(zip(keys, r, strict=True)) for r in rows], int(keep[0]) if keep else None


def lag_seconds(slot: dict[str, Any]) -> float:
    """How far behind the receiver is, as the server sees it: 0 when caught up.

    ``write_lag`` is measured from the receiver's replies, so it freezes when they stop (a
    cut link): the walsender keeps the connection until ``wal_sender_timeout`` (60 s by
    default) and the slot stays active meanwhile. pg_receivewal replies every
    ``--status-interval`` (1 s here), so the age of its last reply (``now() -
    reply_time``, pg_stat_replication) is the other bound: behind by WAL, the receiver is
    at least as late as its silence is long.
    """
    if not slot.get("active"):
        return float("inf")
    if not slot.get("lag_bytes"):
        return 0.0
    known = [float(slot[k]) for k in ("write_lag", "reply_age") if slot.get(k) is not None]
    return max(known, default=0.0)


def receiver_checks(
    policy: Any, target: Any, slots: list[dict[str, Any]], keep: int | None
) -> tuple[list[Check], dict[str, float]]:
    """The receiver's slot: present, streaming, how far behind, how close to invalidation."""
    name = target.wal_receiver["slot"]
    slot = next((s for s in slots if s["slot"] == name), None)
    if slot is None:
        return [
            Check(
                "wal_receiver",
                CRITICAL,
                f"replication slot {name!r} does not exist (dropped?): WAL written since is not "
                "streamed; start `pgbackup wal-receive` (it creates the slot) and take a backup",
            )
        ], {"receiver_running": 0.0}
    retained = int(slot.get("retained_bytes") or 0)
    metrics: dict[str, float] = {
        "slot_retained_bytes": float(retained),
        "receiver_running": 1.0 if slot["active"] else 0.0,
    }
    checks = [slot_state_check(name, slot, keep)]
    if slot.get("safe_wal_size") is not None:
        metrics["slot_safe_wal_bytes"] = float(slot["safe_wal_size"])
    checks.append(streaming_check(policy, name, slot, metrics))
    return checks, metrics


def slot_state_check(name: str, slot: dict[str, Any], keep: int | None) -> Check:
    """How close the slot is to invalidation: lost, unreserved or near the limit
    (CRITICAL), extended or half way (WARNING), else how much it holds."""
    from pgbackup.ui import human_bytes

    status = slot.get("wal_status")
    retained = int(slot.get("retained_bytes") or 0)
    safe = slot.get("safe_wal_size")
    if status == "lost":
        return Check(
            "wal_receiver_slot",
            CRITICAL,
            f"slot {name!r} is lost: the server removed WAL it had not streamed "
            f"(max_slot_wal_keep_size); drop and recreate it and take a backup",
        )
    if status == "unreserved" or (keep and safe is not None and safe < keep // 4):
        return Check(
            "wal_receiver_slot",
            CRITICAL,
            f"slot {name!r} is {status}: {human_bytes(max(0, int(safe or 0)))} of WAL "
            "left before PostgreSQL invalidates it (and drops the WAL it holds)",
            float(safe or 0),
        )
    if status == "extended" or (keep and safe is not None and safe < keep // 2):
        return Check(
            "wal_receiver_slot",
            WARNING,
            f"slot {name!r} holds {human_bytes(retained)} of WAL ({status}); "
            f"{human_bytes(int(safe or 0))} left before PostgreSQL "
            "invalidates it"
            if keep
            else f"slot {name!r} holds {human_bytes(retained)} of WAL beyond max_wal_size",
            float(retained),
        )
    limit = (
        f"{human_bytes(int(safe))} left before invalidation"
        if keep and safe is not None
        else "no max_slot_wal_keep_size: a stalled receiver fills the server's disk"
    )
    return Check(
        "wal_receiver_slot",
        OK,
        f"slot {name!r} {status}, holds {human_bytes(retained)}; {limit}",
        float(retained),
    )


def streaming_check(
    policy: Any, name: str, slot: dict[str, Any], metrics: dict[str, float]
) -> Check:
    """wal-receive on the slot: not running (CRITICAL), its lag hidden from this role
    (WARNING), or how far behind against the RPO; the lag into ``metrics``."""
    from pgbackup.ui import human_bytes

    retained = int(slot.get("retained_bytes") or 0)
    if not slot["active"]:
        metrics["receiver_lag_bytes"] = float(retained)
        return Check(
            "wal_receiver",
            CRITICAL,
            f"wal-receive is not running: slot {name!r} is inactive, "
            f"{human_bytes(retained)} of WAL not streamed",
            float(retained),
        )
    if slot.get("details_hidden"):
        # pg_stat_get_wal_senders (walsender.c) shows a role without the privileges of
        # pg_read_all_stats only the walsender's pid: no write position, no reply time.
        return Check(
            "wal_receiver",
            WARNING,
            f"wal-receive is connected on {name!r}, but this role cannot see how far "
            "behind it is (pg_stat_replication shows it no details): "
            "GRANT pg_read_all_stats TO the policy's role",
        )
    lag = int(slot.get("lag_bytes") or 0)
    seconds = lag_seconds(slot)
    metrics["receiver_lag_bytes"] = float(lag)
    metrics["receiver_lag_seconds"] = seconds
    rpo = policy.sla.rpo
    state = OK
    if rpo is not None and seconds > rpo:
        state = CRITICAL
    elif rpo is not None and seconds > rpo / 2:
        state = WARNING
    mode = f", {slot.get('sync_state')}" if slot.get("sync_state") else ""
    return Check(
        "wal_receiver",
        state,
        f"wal-receive streaming on {name!r}{mode}: {human_bytes(lag)} / "
        f"{human_age(seconds)} behind pg_current_wal_lsn()",
        seconds,
    )


def stray_slot_checks(policy: Any, slots: list[dict[str, Any]]) -> list[Check]:
    """Inactive slots no target of the policy streams from: each keeps WAL on the server
    for nobody (a removed target's receiver, an abandoned standby)."""
    from pgbackup.ui import human_bytes

    ours = {t.wal_receiver["slot"] for t in policy.targets.values() if t.wal_receiver}
    stray = [s for s in slots if not s["active"] and s["slot"] not in ours]
    if not stray:
        return []
    text = "; ".join(
        f"{s['slot']} holds {human_bytes(int(s.get('retained_bytes') or 0))}" for s in stray
    )
    return [
        Check(
            "stray_slots",
            WARNING,
            f"inactive replication slot(s) no target uses: {text} "
            "(if nothing needs one: SELECT pg_drop_replication_slot('NAME'))",
            float(len(stray)),
        )
    ]


def slot_checks(
    policy: Any, target: Any, conninfo: dict[str, Any]
) -> tuple[list[Check], dict[str, float]]:
    """All slot checks of one target's server."""
    slots, keep = slot_facts(conninfo)
    checks: list[Check] = []
    metrics: dict[str, float] = {}
    if target.wal_receiver:
        checks, metrics = receiver_checks(policy, target, slots, keep)
    return checks + stray_slot_checks(policy, slots), metrics
