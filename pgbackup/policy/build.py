"""Building the typed :class:`Policy` from a validated, interpolated document.

Defaults that the schema leaves out are filled in here (compression zstd level 3,
retention 7 days, SMTP port 25, ...), and relative paths are made relative to the
policy file's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgbackup.policy.parsers import parse_duration
from pgbackup.policy.records import (
    Compression,
    DrillCheck,
    Encryption,
    Policy,
    Retention,
    Sandbox,
    Sla,
    Target,
    WalFetch,
)
from pgbackup.policyrules import (
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_COMPRESSION_METHOD,
    DEFAULT_REPOSITORY_KIND,
)


def _abs(base: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _storage(base: Path, spec: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    out.setdefault("kind", DEFAULT_REPOSITORY_KIND)
    if out["kind"] == "posix" and "path" in out:
        out["path"] = _abs(base, out["path"])
    return out


def _with_lock(spec: dict[str, Any], retention: Retention) -> dict[str, Any]:
    """``object_lock`` with what its dates derive from (policy/immutability.py): the
    margin in seconds and the retention horizons, so that the storage needs no policy."""
    lock = spec.get("object_lock")
    if not lock:
        return spec
    from pgbackup.policy.immutability import DEFAULT_MARGIN
    from pgbackup.policy.parsers import parse_duration

    margin = lock.get("margin")
    spec["object_lock"] = {
        "mode": lock["mode"],
        "margin": parse_duration(margin) if margin else DEFAULT_MARGIN,
        "days": retention.days,
        "weekly": retention.weekly,
        "monthly": retention.monthly,
    }
    return spec


def _wal_receiver(base: Path, spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A target's ``wal_receiver`` block with its defaults (None: no receiver)."""
    if spec is None:
        return None
    out = {"slot": str(spec["slot"]), "synchronous": bool(spec.get("synchronous", False))}
    if spec.get("directory"):
        out["directory"] = str(_abs(base, spec["directory"]))
    return out


def _wal_fetch(spec: dict[str, Any] | None) -> WalFetch:
    """A target's ``wal_fetch`` block with its defaults (records.WalFetch's)."""
    spec = spec or {}
    default = WalFetch()
    return WalFetch(
        read_ahead=int(spec.get("read_ahead", default.read_ahead)),
        streams=int(spec.get("streams", default.streams)),
    )


def _build(path: Path, doc: dict[str, Any]) -> Policy:
    base = path.parent
    comp = doc.get("compression") or {}
    enc = doc.get("encryption")
    encryption = None
    if enc is not None:
        identity = enc.get("identity_file")
        encryption = Encryption(
            method=enc.get("method", "age"),
            recipients_file=_abs(base, enc["recipients_file"]),
            identity_file=_abs(base, identity) if identity else None,
        )
    targets: dict[str, Target] = {}
    for name, spec in (doc.get("targets") or {}).items():
        spec = spec or {}
        conn = dict(spec.get("connection") or {})
        if "passfile" in conn:
            conn["passfile"] = str(_abs(base, conn["passfile"]))
        sb = spec.get("sandbox")
        sandbox = (
            Sandbox(
                path=_abs(base, sb["path"]),
                port=int(sb.get("port", 0)),
                scale=int(sb.get("scale", 1)),
            )
            if sb is not None
            else None
        )
        bindir = spec.get("pg_bin_dir")
        targets[name] = Target(
            name=name,
            connection=conn,
            sandbox=sandbox,
            pg_bin_dir=_abs(base, bindir) if bindir else None,
            max_rate=str(spec["max_rate"]) if spec.get("max_rate") else None,
            wal_receiver=_wal_receiver(base, spec.get("wal_receiver")),
            wal_fetch=_wal_fetch(spec.get("wal_fetch")),
        )
    ret = doc.get("retention") or {}
    sla = doc.get("sla") or {}
    retention = Retention(
        days=int(ret.get("days", 7)),
        weekly=int(ret.get("weekly", 0)),
        monthly=int(ret.get("monthly", 0)),
        min_backups=int(ret.get("min_backups", 1)),
    )
    repository = _with_lock(_storage(base, doc.get("repository") or {}), retention)
    uploads = []
    for up in doc.get("uploads") or []:
        item = _storage(base, up)
        item.setdefault("retention_days", 30)
        # A copy is kept retention_days: that is the horizon of its locks.
        days = int(item["retention_days"])
        uploads.append(_with_lock(item, Retention(days, 0, 0, 1)))
    alerts = dict(doc.get("alerts") or {})
    if "smtp" in alerts:
        smtp = dict(alerts["smtp"])
        smtp.setdefault("port", 25)
        smtp.setdefault("starttls", False)
        if isinstance(smtp.get("to"), str):
            smtp["to"] = [smtp["to"]]
        alerts["smtp"] = smtp
    if "webhooks" in alerts:
        alerts["webhooks"] = [{"format": "json", **hook} for hook in alerts["webhooks"]]
    drill = doc.get("drill") or {}
    checks = [
        DrillCheck(
            name=str(c["name"]),
            sql=str(c["sql"]),
            expect=_expect_text(c["expect"]),
            dbname=c.get("dbname"),
        )
        for c in drill.get("checks") or []
    ]
    log = doc.get("log") or {}
    return Policy(
        path=path,
        repository=repository,
        compression=Compression(
            method=comp.get("method", DEFAULT_COMPRESSION_METHOD),
            level=int(comp.get("level", DEFAULT_COMPRESSION_LEVEL)),
            workers=int(comp.get("workers", 0)),
        ),
        encryption=encryption,
        targets=targets,
        retention=retention,
        schedules=dict(doc.get("schedules") or {}),
        sla=Sla(
            rto=parse_duration(sla["rto"]) if "rto" in sla else None,
            rpo=parse_duration(sla["rpo"]) if "rpo" in sla else None,
        ),
        uploads=uploads,
        alerts=alerts,
        drill_checks=checks,
        drill_port=int(drill.get("port", 0)),
        drill_image=drill.get("image"),
        log_file=_abs(base, log["file"]) if log.get("file") else None,
        log_level=log.get("level", "info"),
    )


def _expect_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
