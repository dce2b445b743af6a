"""Where alerts arrive in tests: a real SMTP server (aiosmtpd) and a real HTTP webhook
receiver, both on 127.0.0.1, started per test and stopped after it.

``alert_receivers`` is the fixture: tests/test_alerts.py and features/test_sla_compliance.py
both use it (tests/conftest.py and features/conftest.py import it from here).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pgbackup.postgres.cluster import free_port


class AlertReceivers:
    """``mails``: the messages the SMTP server received; ``posts``: each webhook request as
    ``{"path": ..., "body": <its JSON>}``. ``fail_http`` makes the webhook answer 500."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message

        self.mails: list[Any] = []
        self.posts: list[dict[str, Any]] = []
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
                outer.posts.append({"path": self.path, "body": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.http_port = self.http.server_address[1]
        self.url = f"http://127.0.0.1:{self.http_port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.smtp.stop()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def alert_receivers() -> Iterator[AlertReceivers]:
    r = AlertReceivers()
    yield r
    r.stop()
