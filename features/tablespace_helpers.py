"""Tablespaces in the features: make one holding a table, sum its rows, check where a
restore put it. Shared by test_tablespaces.py and test_incremental.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness import Harness

from pgbackup.postgres.cluster import Cluster, hand_over


def make_tablespace(h: Harness, cluster: Cluster, name: str, rows: int) -> Path:
    """Tablespace ``name`` at a new directory under the scenario's root, with table
    ``in_<name>`` (id, payload) of ``rows`` rows in it; returns its location."""
    location = h.root / f"ts-{name}"
    location.mkdir()
    hand_over(location, cluster.os_user, 0o700)
    cluster.sql(f"CREATE TABLESPACE {name} LOCATION '{location}'")
    cluster.sql(
        f"CREATE TABLE in_{name} (id int, payload text) TABLESPACE {name}", dbname="platform"
    )
    add_rows(cluster, name, 1, rows)
    return location


def add_rows(cluster: Cluster, name: str, first: int, last: int) -> None:
    """Rows ``first``..``last`` into the table in tablespace ``name``."""
    cluster.sql(
        f"INSERT INTO in_{name} SELECT g, md5(g::text) FROM generate_series({first}, {last}) g",
        dbname="platform",
    )


def table_sum(cluster: Cluster, name: str) -> tuple[int, str]:
    """(row count, md5 of every payload in id order) of the table in tablespace ``name``."""
    row = cluster.sql(
        f"SELECT count(*), md5(string_agg(payload, ',' ORDER BY id)) FROM in_{name}",
        dbname="platform",
    )[0]
    return int(row[0]), str(row[1])


def restored(ctx: dict[str, Any]) -> Cluster:
    """The cluster the scenario's last restore started (``ctx["restored"]``)."""
    directory, port = ctx["restored"]
    return Cluster(directory, port)


def assert_linked_to(directory: Path, mapped: Path) -> None:
    """The restored data directory's only tablespace link points at ``mapped``, which
    holds the tablespace's files, and no ``tablespace_map`` is left to undo it."""
    links = list((directory / "pg_tblspc").iterdir())
    assert [os.readlink(link) for link in links] == [str(mapped)], links
    assert not (directory / "tablespace_map").exists()
    assert any(mapped.iterdir())
