"""Alerts through a real SMTP server (aiosmtpd) and a real HTTP receiver on loopback
(tests/receivers.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from receivers import AlertReceivers

from pgbackup.operations import alerts


@dataclass
class FakePolicy:
    path: Path
    alerts: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def policy(
    tmp_path: Path, alert_receivers: AlertReceivers, monkeypatch: pytest.MonkeyPatch
) -> FakePolicy:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return FakePolicy(
        tmp_path / "backup.yaml",
        {
            "smtp": {
                "host": "127.0.0.1",
                "port": alert_receivers.smtp_port,
                "from": "a@example.com",
                "to": ["b@example.com"],
            },
            "webhooks": [
                {
                    "name": "slack",
                    "url": f"{alert_receivers.url}/slack/T0SECRET",
                    "format": "slack",
                },
                {
                    "name": "discord",
                    "url": f"{alert_receivers.url}/discord/D0SECRET",
                    "format": "discord",
                },
                {"name": "generic", "url": f"{alert_receivers.url}/json", "format": "json"},
            ],
        },
    )


def test_alerts_fire_on_state_change_only(
    policy: FakePolicy, alert_receivers: AlertReceivers
) -> None:
    assert alerts.notify_event(policy, "check", "db", "ok", "fine") == []  # nothing to recover from
    sent = alerts.notify_event(policy, "check", "db", "critical", "archiving is failing")
    assert sorted(sent) == ["smtp", "webhook:discord", "webhook:generic", "webhook:slack"]
    assert alerts.notify_event(policy, "check", "db", "critical", "still failing") == []
    assert len(alert_receivers.mails) == 1 and len(alert_receivers.posts) == 3
    sent = alerts.notify_event(policy, "check", "db", "ok", "every check is OK again")
    assert len(sent) == 4
    assert "RECOVERED" in alert_receivers.mails[1]["Subject"]
    by_path = {p["path"]: p["body"] for p in alert_receivers.posts}
    assert by_path["/slack/T0SECRET"]["text"].startswith("*[pgbackup] RECOVERED")
    assert "content" in by_path["/discord/D0SECRET"]
    generic = [p["body"] for p in alert_receivers.posts if p["path"] == "/json"]
    assert [g["status"] for g in generic] == ["critical", "ok"]
    assert generic[1]["previous"] == "critical"


def test_targets_and_events_are_separate_states(
    policy: FakePolicy, alert_receivers: AlertReceivers
) -> None:
    alerts.notify_event(policy, "check", "a", "critical", "x")
    alerts.notify_event(policy, "check", "b", "critical", "x")
    alerts.notify_event(policy, "drill", "a", "failed", "x")
    assert len(alert_receivers.mails) == 3


def test_on_filters_event_kinds(policy: FakePolicy, alert_receivers: AlertReceivers) -> None:
    policy.alerts["on"] = ["check"]
    assert alerts.notify_event(policy, "backup", "db", "failed", "boom") == []
    assert alert_receivers.mails == []


def test_an_unreachable_channel_is_retried_without_repeating_the_others(
    policy: FakePolicy, alert_receivers: AlertReceivers, caplog: pytest.LogCaptureFixture
) -> None:
    alert_receivers.fail_http = True
    with caplog.at_level(logging.WARNING, logger="pgbackup"):
        sent = alerts.notify_event(policy, "check", "db", "critical", "x")
    assert sent == ["smtp"]
    assert "SECRET" not in caplog.text  # webhook URLs are secrets: only names are logged
    assert "HTTP 500" in caplog.text
    alert_receivers.fail_http = False
    sent = alerts.notify_event(policy, "check", "db", "critical", "x")
    assert sorted(sent) == ["webhook:discord", "webhook:generic", "webhook:slack"]
    assert len(alert_receivers.mails) == 1


def test_failure_only_events_repeat_after_a_quiet_period(
    policy: FakePolicy, alert_receivers: AlertReceivers
) -> None:
    policy.alerts.pop("webhooks")
    alerts.notify_event(policy, "wal-push", "db", "failed", "x", now=1000.0)
    alerts.notify_event(policy, "wal-push", "db", "failed", "x", now=1060.0)
    assert len(alert_receivers.mails) == 1
    alerts.notify_event(policy, "wal-push", "db", "failed", "x", now=1000.0 + alerts.REPEAT_AFTER)
    assert len(alert_receivers.mails) == 2


def test_smtp_password_comes_from_the_environment_only(
    policy: FakePolicy, monkeypatch: pytest.MonkeyPatch, alert_receivers: AlertReceivers
) -> None:
    policy.alerts.pop("webhooks")
    policy.alerts["smtp"].update(username="u", password_env="PGBACKUP_TEST_SMTP_PW")
    monkeypatch.delenv("PGBACKUP_TEST_SMTP_PW", raising=False)
    assert alerts.notify_event(policy, "check", "db", "critical", "x") == []
    state = alerts.state_path(policy).read_text()
    assert "PGBACKUP_TEST_SMTP_PW" not in state
    assert oct(alerts.state_path(policy).stat().st_mode & 0o777) == "0o600"
