"""Alerts through a real SMTP server (aiosmtpd) and a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pgbackup.operations import alerts
from pgbackup.postgres.cluster import free_port


@dataclass
class FakePolicy:
    path: Path
    alerts: dict[str, Any] = field(default_factory=dict)


class Receivers:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message

        self.mails: list[Any] = []
        self.posts: list[Any] = []
        self.fail_http = False
        outer = self

        class Keep(Message):  # type: ignore[misc]
            def handle_message(self, message: Any) -> None:
                outer.mails.append(message)

        self.smtp_port = free_port()
        self.smtp = Controller(Keep(), hostname="127.0.0.1", port=self.smtp_port)
        self.smtp.start()

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.fail_http:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.smtp.stop()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def rx() -> Iterator[Receivers]:
    r = Receivers()
    yield r
    r.stop()


@pytest.fixture
def policy(tmp_path: Path, rx: Receivers, monkeypatch: pytest.MonkeyPatch) -> FakePolicy:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return FakePolicy(
        tmp_path / "backup.yaml",
        {
            "smtp": {
                "host": "127.0.0.1",
                "port": rx.smtp_port,
                "from": "a@example.com",
                "to": ["b@example.com"],
            },
            "webhooks": [
                {"name": "slack", "url": f"{rx.url}/slack/T0SECRET", "format": "slack"},
                {"name": "discord", "url": f"{rx.url}/discord/D0SECRET", "format": "discord"},
                {"name": "generic", "url": f"{rx.url}/json", "format": "json"},
            ],
        },
    )


def test_alerts_fire_on_state_change_only(policy: FakePolicy, rx: Receivers) -> None:
    assert alerts.notify_event(policy, "check", "db", "ok", "fine") == []  # nothing to recover from
    sent = alerts.notify_event(policy, "check", "db", "critical", "archiving is failing")
    assert sorted(sent) == ["smtp", "webhook:discord", "webhook:generic", "webhook:slack"]
    assert alerts.notify_event(policy, "check", "db", "critical", "still failing") == []
    assert len(rx.mails) == 1 and len(rx.posts) == 3
    sent = alerts.notify_event(policy, "check", "db", "ok", "every check is OK again")
    assert len(sent) == 4
    assert "RECOVERED" in rx.mails[1]["Subject"]
    by_path = {p: b for p, b in rx.posts}
    assert by_path["/slack/T0SECRET"]["text"].startswith("*[pgbackup] RECOVERED")
    assert "content" in by_path["/discord/D0SECRET"]
    generic = [b for p, b in rx.posts if p == "/json"]
    assert [g["status"] for g in generic] == ["critical", "ok"]
    assert generic[1]["previous"] == "critical"


def test_targets_and_events_are_separate_states(policy: FakePolicy, rx: Receivers) -> None:
    alerts.notify_event(policy, "check", "a", "critical", "x")
    alerts.notify_event(policy, "check", "b", "critical", "x")
    alerts.notify_event(policy, "drill", "a", "failed", "x")
    assert len(rx.mails) == 3


def test_on_filters_event_kinds(policy: FakePolicy, rx: Receivers) -> None:
    policy.alerts["on"] = ["check"]
    assert alerts.notify_event(policy, "backup", "db", "failed", "boom") == []
    assert rx.mails == []


def test_an_unreachable_channel_is_retried_without_repeating_the_others(
    policy: FakePolicy, rx: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    rx.fail_http = True
    with caplog.at_level(logging.WARNING, logger="pgbackup"):
        sent = alerts.notify_event(policy, "check", "db", "critical", "x")
    assert sent == ["smtp"]
    assert "SECRET" not in caplog.text  # webhook URLs are secrets: only names are logged
    assert "HTTP 500" in caplog.text
    rx.fail_http = False
    sent = alerts.notify_event(policy, "check", "db", "critical", "x")
    assert sorted(sent) == ["webhook:discord", "webhook:generic", "webhook:slack"]
    assert len(rx.mails) == 1


def test_failure_only_events_repeat_after_a_quiet_period(policy: FakePolicy, rx: Receivers) -> None:
    policy.alerts.pop("webhooks")
    alerts.notify_event(policy, "wal-push", "db", "failed", "x", now=1000.0)
    alerts.notify_event(policy, "wal-push", "db", "failed", "x", now=1060.0)
    assert len(rx.mails) == 1
    alerts.notify_event(policy, "wal-push", "db", "failed", "x", now=1000.0 + alerts.REPEAT_AFTER)
    assert len(rx.mails) == 2


def test_smtp_password_comes_from_the_environment_only(
    policy: FakePolicy, monkeypatch: pytest.MonkeyPatch, rx: Receivers
) -> None:
    policy.alerts.pop("webhooks")
    policy.alerts["smtp"].update(username="u", password_env="PGBACKUP_TEST_SMTP_PW")
    monkeypatch.delenv("PGBACKUP_TEST_SMTP_PW", raising=False)
    assert alerts.notify_event(policy, "check", "db", "critical", "x") == []
    state = alerts.state_path(policy).read_text()
    assert "PGBACKUP_TEST_SMTP_PW" not in state
    assert oct(alerts.state_path(policy).stat().st_mode & 0o777) == "0o600"
