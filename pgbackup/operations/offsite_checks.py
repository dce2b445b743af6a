"""``check``'s view of the upload destinations: is each one within the RPO a lost host allows?

The shipper (:mod:`pgbackup.engine.shipper`) moves WAL off-site and records its progress;
this module only reads that record and each destination's lag and turns them into check
results, which is monitoring, so it lives with ``check``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from pgbackup.engine.repository import Repository
from pgbackup.engine.shipper import HEARTBEAT, PROBE_TIMEOUT, STATUS, destination_lag, probe_within
from pgbackup.operations.checks import CRITICAL, OK, WARNING, human_age


def offsite_checks(
    policy: Any, source: Repository, target: str
) -> list[tuple[str, str, str, float | None]]:
    """(check name, status, summary, lag seconds) per upload destination for ``check``.

    CRITICAL when the destination cannot be read or its lag exceeds ``sla.rpo`` (what a
    lost host would lose, restoring from there), WARNING over half of it.
    """
    rpo = policy.sla.rpo
    out: list[tuple[str, str, str, float | None]] = []
    shipping: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        import json

        status = json.loads(source.storage.read_bytes(f"{target}/{STATUS}"))
        if time.time() - float(status["updated_at"]) < 3 * HEARTBEAT:  # a live shipper's
            shipping = dict(status["destinations"])
    for spec in policy.uploads or []:
        name = str(spec.get("name"))
        check = f"offsite_wal:{name}"
        failing = shipping.get(name) or {}
        if failing.get("error"):
            since = time.time() - float(failing.get("failing_since") or time.time())
            out.append(
                (
                    check,
                    CRITICAL,
                    f"{name} unreachable for wal-ship for {human_age(since)}: {failing['error']}",
                    None,
                )
            )
            continue
        got = probe_within(
            lambda name=name: destination_lag(policy, source, target, name), PROBE_TIMEOUT
        )
        if "error" in got:
            out.append((check, CRITICAL, f"{name} unreachable: {got['error']}", None))
            continue
        lag = got["value"]
        seconds = float(lag["lag_seconds"])
        if not lag["missing"]:
            out.append((check, OK, f"{name} holds every archived WAL file", 0.0))
            continue
        text = (
            f"{name} lacks {lag['missing']} archived WAL file(s) from {lag['oldest_missing']}, "
            f"{human_age(seconds)} behind"
        )
        if rpo is None:
            status = OK
        else:
            status = CRITICAL if seconds > rpo else WARNING if seconds > rpo / 2 else OK
            text += f" (RPO {human_age(rpo)}; run `pgbackup wal-ship`)" if status != OK else ""
        out.append((check, status, text, seconds))
    return out
