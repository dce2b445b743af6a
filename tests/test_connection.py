"""How a refused replication connection is explained (postgres/connection.py)."""

from __future__ import annotations

from pgbackup.postgres.connection import replication_refused

CONNINFO = {"host": "127.0.0.1", "port": 5432, "user": "platform_service", "dbname": "app"}


def test_pg_basebackup_refused_by_pg_hba_names_the_line_to_add() -> None:
    text = (
        'pg_basebackup failed: error: connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  no pg_hba.conf entry for replication connection from host "127.0.0.1", '
        'user "platform_service", no encryption'
    )
    err = replication_refused(CONNINFO, text)
    assert err is not None
    assert "replication connection refused for platform_service@127.0.0.1:5432/app" in err.message
    assert "no pg_hba.conf entry for replication connection" in err.message
    assert err.hint is not None
    assert err.hint.startswith("add to pg_hba.conf: host replication platform_service ")


def test_other_failures_are_left_as_they_are() -> None:
    assert replication_refused(CONNINFO, "pg_basebackup failed: could not write to file") is None
