"""Refusing secrets in the policy file: password keys, passwords in values, webhook URLs.

A password never belongs in ``backup.yaml``: keys that look like secrets, connection
strings with a password (written or expanded from ``${VAR}``) and literal webhook URLs
are reported, and the value is never echoed back. The problems join validation's list.
"""

from __future__ import annotations

import re
from typing import Any

from pgbackup.policy.parsers import _Pattern
from pgbackup.policy.schema import _walk

_SECRET_KEYS = frozenset(
    {"password", "passwd", "pass", "secret", "token", "api_key", "access_key", "secret_access_key"}
)
_SECRET_HINT = (
    "never write passwords in the policy file: use the PGPASSWORD environment variable, "
    "a passfile (connection.passfile) or ~/.pgpass; for SMTP name the variable holding "
    "the password with password_env; cloud credentials come from the SDK's own chain"
)


_URI_WITH_PASSWORD = _Pattern(r"postgres(?:ql)?://[^/@\s:?#]*:[^@\s/?#]*@", re.IGNORECASE)
_PASSWORD_PARAM = _Pattern(r"(?:^|[\s?&;])password\s*=", re.IGNORECASE)
_SECRET_SUFFIXES = ("_password", "_passwd", "_secret", "_token", "_key", "connection_string")
_ACCOUNT_KEY = _Pattern(r"(?:AccountKey|SharedAccessSignature)\s*=", re.IGNORECASE)
_LOCAL_HTTP = _Pattern(r"^http://(?:localhost|127\.[0-9.]+|\[::1\])(?::[0-9]+)?(?:/|$)", re.I)


def _secret_problems(raw: Any, doc: Any) -> list[tuple[str, str]]:
    """Passwords in the file (raw) or in values it expands to (doc). Never echo them."""
    problems: list[tuple[str, str]] = []
    for path, key, value in _walk(raw):
        if isinstance(key, str) and _is_secret_key(key):
            problems.append(
                (path, f"a secret ({key!r}) must not be written in the policy file; {_SECRET_HINT}")
            )
            continue
        if isinstance(value, str):
            if _has_password(path, value):
                problems.append(
                    (
                        path,
                        f"this value contains a password (a connection URI with a password, password= or AccountKey=); {_SECRET_HINT}",
                    )
                )
            elif _is_webhook_url(path) and _is_literal_remote_url(value):
                problems.append(
                    (
                        path,
                        "a webhook URL is a secret and must not be written in the policy file: "
                        "put it in an environment variable and write url: ${SLACK_WEBHOOK_URL} (any name)",
                    )
                )
    seen = {p for p, _ in problems}
    for path, _key, value in _walk(doc):
        if path in seen or not isinstance(value, str):
            continue
        if _has_password(path, value):
            problems.append(
                (
                    path,
                    "this value expands to a connection string with a password; "
                    "give host, port, user and dbname separately and the password through "
                    "PGPASSWORD, a passfile or ~/.pgpass",
                )
            )
    return problems


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def _has_password(path: str, value: str) -> bool:
    if _URI_WITH_PASSWORD.search(value) or _ACCOUNT_KEY.search(value):
        return True
    # "password = ..." is a libpq keyword, but also plain SQL in a drill check
    is_sql = bool(re.fullmatch(r"drill\.checks\[[0-9]+\]\.sql", path))
    return not is_sql and bool(_PASSWORD_PARAM.search(value))


def _is_literal_remote_url(value: str) -> bool:
    if "${" in value:
        return False
    lower = value.lower()
    return lower.startswith("https://") or (
        lower.startswith("http://") and not _LOCAL_HTTP.match(value)
    )


def _is_webhook_url(path: str) -> bool:
    return bool(re.fullmatch(r"alerts\.webhooks\[[0-9]+\]\.url", path))
