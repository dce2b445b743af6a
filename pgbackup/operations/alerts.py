"""Alerts: e-mail (SMTP) and webhooks (Slack, Discord, generic JSON), on state change only.

Every alert has a key (``<event>:<target>``) and a status (``ok``, ``warning``,
``critical``, ``failed``, ``unknown``). A small state file remembers, per key and per
channel, the last status that channel was told about; a channel is notified only when the
status differs from what it last heard. So a check that stays CRITICAL alerts once, its
recovery alerts once more, and a channel that could not be reached is retried on the next
run without repeating the others.

Events that only ever report failures (a backup, wal-push or wal-fetch that fails) repeat after
``REPEAT_AFTER`` seconds at the earliest: PostgreSQL retries a failing archive_command every
minute, and one mail per minute helps nobody.

Secrets (webhook URLs, the SMTP password) come from the environment through the policy's
``${VAR}`` interpolation or ``password_env``; they are never logged nor written to the state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import smtplib
import socket
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

LOG = logging.getLogger("pgbackup")

OK_STATES = ("ok",)
REPEAT_AFTER = 6 * 3600
TIMEOUT = 10.0
# Events whose recovery is never reported by the event itself (only failures are sent).
FAILURE_ONLY = ("backup", "verify", "cleanup", "wal-push", "wal-fetch", "restore")


@dataclass(frozen=True)
class Alert:
    event: str
    target: str
    status: str
    message: str
    previous: str | None
    policy: str
    host: str
    time: str

    @property
    def subject(self) -> str:
        word = "RECOVERED" if self.status in OK_STATES else self.status.upper()
        return f"[pgbackup] {word}: {self.event} of {self.target} on {self.host}"

    @property
    def text(self) -> str:
        was = f" (was {self.previous})" if self.previous else ""
        return (
            f"{self.subject}{was}\n\n{self.message}\n\npolicy: {self.policy}\n"
            f"host: {self.host}\ntime: {self.time}\n"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "target": self.target,
            "status": self.status,
            "previous": self.previous,
            "message": self.message,
            "policy": self.policy,
            "host": self.host,
            "time": self.time,
        }


# --------------------------------------------------------------------------- state


def state_path(policy: Any) -> Path:
    """``$XDG_STATE_HOME/pgbackup/alerts-<hash of the policy path>.json`` (per OS user)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    digest = hashlib.sha256(str(Path(policy.path).absolute()).encode()).hexdigest()[:12]
    return Path(base) / "pgbackup" / f"alerts-{digest}.json"


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically (temp file + rename), mode 0600; never fails the caller."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".alerts-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        LOG.warning("could not save the alert state %s: %s", path, exc)


# --------------------------------------------------------------------------- channels


def channels(policy: Any) -> list[tuple[str, dict[str, Any]]]:
    """(channel id, spec) for every declared destination."""
    alerts = policy.alerts or {}
    out: list[tuple[str, dict[str, Any]]] = []
    if alerts.get("smtp"):
        out.append(("smtp", alerts["smtp"]))
    for i, hook in enumerate(alerts.get("webhooks") or []):
        out.append((f"webhook:{hook.get('name') or i}", hook))
    return out


def wanted(policy: Any, event: str) -> bool:
    kinds = (policy.alerts or {}).get("on")
    return not kinds or event in kinds


def send_smtp(spec: dict[str, Any], alert: Alert) -> None:
    to = spec["to"] if isinstance(spec["to"], list) else [spec["to"]]
    msg = EmailMessage()
    msg["Subject"] = alert.subject
    msg["From"] = spec["from"]
    msg["To"] = ", ".join(to)
    msg["X-Pgbackup-Event"] = alert.event
    msg["X-Pgbackup-Status"] = alert.status
    msg.set_content(alert.text)
    password = None
    if spec.get("password_env"):
        password = os.environ.get(spec["password_env"])
        if password is None:
            raise RuntimeError(
                f"the SMTP password variable {spec['password_env']} is not set in the environment"
            )
    with smtplib.SMTP(spec["host"], int(spec.get("port", 25)), timeout=TIMEOUT) as smtp:
        if spec.get("starttls"):
            smtp.starttls()
        if spec.get("username"):
            smtp.login(spec["username"], password or "")
        smtp.send_message(msg, from_addr=spec["from"], to_addrs=to)


def webhook_payload(fmt: str, alert: Alert) -> dict[str, Any]:
    if fmt == "slack":
        return {"text": f"*{alert.subject}*\n{alert.message}"}
    if fmt == "discord":
        return {"content": f"**{alert.subject}**\n{alert.message}"[:2000]}
    return alert.as_dict()


def send_webhook(spec: dict[str, Any], alert: Alert) -> None:
    body = json.dumps(webhook_payload(spec.get("format", "json"), alert)).encode()
    request = urllib.request.Request(
        spec["url"],
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "pgbackup-alerts"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")


def _describe_failure(exc: BaseException) -> str:
    """An error message that cannot leak a webhook URL (urllib puts it in some errors)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({type(exc.reason).__name__}: {getattr(exc.reason, 'strerror', None) or 'error'})"
    if isinstance(exc, smtplib.SMTPException | OSError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def deliver(kind: str, spec: dict[str, Any], alert: Alert) -> str | None:
    """Send one alert through one channel; the problem as text, or None when delivered."""
    try:
        if kind == "smtp":
            send_smtp(spec, alert)
        else:
            send_webhook(spec, alert)
    except Exception as exc:
        return _describe_failure(exc)
    return None


# --------------------------------------------------------------------------- entry point


def notify_event(
    policy: Any,
    event: str,
    target: str,
    status: str,
    message: str,
    *,
    now: float | None = None,
) -> list[str]:
    """Tell every channel about ``event`` of ``target`` when its status changed.

    Returns the channels that were notified now. Never raises: an alert that cannot be
    sent is logged (without secrets) and retried on the next call.
    """
    status = status.lower()
    if not wanted(policy, event):
        return []
    now = time.time() if now is None else now
    path = state_path(policy)
    state = load_state(path)
    key = f"{event}:{target}"
    entry = state.get(key) or {}
    previous = entry.get("status")
    if previous != status:
        entry = {"status": status, "since": now, "delivered": dict(entry.get("delivered") or {})}
    sent: list[str] = []
    alert = Alert(
        event=event,
        target=target,
        status=status,
        message=message,
        previous=previous,
        policy=str(policy.path),
        host=socket.gethostname(),
        time=datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
    )
    delivered: dict[str, Any] = entry.get("delivered", {})
    for name, spec in channels(policy):
        last = delivered.get(name) or {}
        heard = last.get("status")
        if heard == status:
            repeat = (
                event in FAILURE_ONLY
                and status not in OK_STATES
                and now - float(last.get("at", now)) >= REPEAT_AFTER
            )
            if not repeat:
                continue
        if heard is None and status in OK_STATES:
            delivered[name] = {"status": status, "at": now}  # nothing to recover from
            continue
        problem = deliver(name.split(":", 1)[0], spec, alert)
        if problem:
            LOG.warning("alert %s (%s) not delivered through %s: %s", key, status, name, problem)
            continue
        LOG.info("alert %s (%s) sent through %s", key, status, name)
        delivered[name] = {"status": status, "at": now}
        sent.append(name)
    entry["status"] = status
    entry.setdefault("since", now)
    entry["delivered"] = delivered
    state[key] = entry
    with contextlib.suppress(Exception):
        save_state(path, state)
    return sent
