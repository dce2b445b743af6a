"""Incremental backups (PostgreSQL 17+): chain links, retention that keeps chains whole,
the argv, the schedule and the policy rule. Pure parts; features/incremental.feature
proves the rest on PostgreSQL 18."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgbackup.engine.backup import basebackup_argv
from pgbackup.engine.backup_preflight import incremental_preflight
from pgbackup.errors import PostgresError
from pgbackup.formats.codecs import CodecSpec
from pgbackup.operations.schedule import cron_entries
from pgbackup.policy import load_policy, validate_file
from pgbackup.policy.chains import link_problems
from pgbackup.policy.retention import (
    BackupRecord,
    RetentionRule,
    chain_ancestors,
    plan_retention,
    spare_chains,
)
from pgbackup.postgres.connection import ServerFacts

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def rec(day: int, parent: int | None = None, complete: bool = True) -> BackupRecord:
    when = NOW - timedelta(days=day)
    return BackupRecord(
        f"b{day:03d}",
        when,
        complete,
        start_lsn=1000 - day,
        parent=f"b{parent:03d}" if parent else None,
    )


def kept(backups: list[BackupRecord], rule: RetentionRule) -> set[str]:
    return {d.backup_id for d in plan_retention(backups, rule, NOW) if d.keep}


# --------------------------------------------------------------------------- retention


def test_a_kept_incremental_keeps_its_whole_chain() -> None:
    # Full 20 days ago, incrementals 19 and 18 days ago on it; a new full 10 days ago.
    backups = [rec(20), rec(19, 20), rec(18, 19), rec(10), rec(9, 10), rec(1, 9)]
    got = kept(backups, RetentionRule(days=3, weekly=0, monthly=0))
    # The newest (an incremental) is kept with its chain: 9 and the full 10, nothing older.
    assert got == {"b001", "b009", "b010"}


def test_a_full_expires_only_with_its_dependents() -> None:
    backups = [rec(20), rec(19, 20), rec(18, 19), rec(1)]
    # min_backups 2 keeps the incremental 18 days old: its parent 19 and the full 20 stay.
    got = kept(backups, RetentionRule(days=3, weekly=0, monthly=0, min_backups=2))
    assert got == {"b001", "b018", "b019", "b020"}
    decisions = {d.backup_id: d for d in plan_retention(backups, RetentionRule(3, 0, 0, 2), NOW)}
    assert "in the chain of kept incremental b018" in decisions["b020"].reasons
    # Without it, the whole chain expires together.
    assert kept(backups, RetentionRule(days=3, weekly=0, monthly=0)) == {"b001"}


def test_weekly_counts_an_incremental_as_a_restorable_point() -> None:
    # The newest backup of week 2026-W47 (Sunday the 22nd) is an incremental: the weekly
    # rule keeps it, and with it the chain it is built on (b009, b010, the full b012).
    backups = [rec(12), rec(10, 12), rec(9, 10), rec(8, 9), rec(1)]
    got = kept(backups, RetentionRule(days=3, weekly=3, monthly=0))
    assert got == {"b001", "b008", "b009", "b010", "b012"}


def test_chain_ancestors_stop_at_the_full_and_at_a_cycle() -> None:
    backups = {b.backup_id: b for b in [rec(20), rec(19, 20), rec(18, 19)]}
    assert chain_ancestors("b018", backups) == ["b019", "b020"]
    assert chain_ancestors("b020", backups) == []
    loop = {
        "a": BackupRecord("a", NOW, True, parent="b"),
        "b": BackupRecord("b", NOW, True, parent="a"),
    }
    assert chain_ancestors("a", loop) == ["b", "a"]


def test_upload_expiry_spares_what_a_kept_incremental_is_built_on() -> None:
    parents = {"f1": None, "i1": "f1", "i2": "i1", "f2": None, "i3": "f2"}
    # Days-based expiry picked the old full and its first incremental; i2 stays, so both do.
    assert spare_chains({"f1", "i1"}, parents) == set()
    # The whole old chain expired: it goes together.
    assert spare_chains({"f1", "i1", "i2"}, parents) == {"f1", "i1", "i2"}
    assert spare_chains({"f1", "i1", "i2", "f2"}, parents) == {"f1", "i1", "i2"}


# --------------------------------------------------------------------------- chain links


def meta(backup_id: str, start: str, chain: list[str], sysid: str = "7") -> dict[str, Any]:
    return {
        "backup_id": backup_id,
        "start_lsn": start,
        "system_identifier": sysid,
        "parent": chain[-1] if chain else None,
        "chain": chain,
    }


def repo_of(*metas: dict[str, Any]) -> dict[str, tuple[bool, dict[str, Any]]]:
    return {m["backup_id"]: (True, m) for m in metas}


def test_a_whole_chain_has_no_problems() -> None:
    full, i1 = meta("f", "0/2000028", []), meta("i1", "0/4000028", ["f"])
    i2 = meta("i2", "0/6000028", ["f", "i1"])
    assert link_problems("i2", i2, repo_of(full, i1, i2)) == []
    assert link_problems("f", full, repo_of(full)) == []


def test_a_missing_or_incomplete_parent_breaks_the_chain() -> None:
    full, i1 = meta("f", "0/2000028", []), meta("i1", "0/4000028", ["f"])
    i2 = meta("i2", "0/6000028", ["f", "i1"])
    assert link_problems("i2", i2, repo_of(i1, i2)) == [
        "chain member f is missing from the repository"
    ]
    backups = repo_of(full, i1, i2)
    backups["i1"] = (False, i1)
    assert link_problems("i2", i2, backups) == ["chain member i1 is not complete"]


def test_links_that_disagree_are_named() -> None:
    full, i1 = meta("f", "0/2000028", []), meta("i1", "0/4000028", ["f"], sysid="8")
    i2 = meta("i2", "0/3000028", ["f", "i1"])
    found = link_problems("i2", i2, repo_of(full, i1, i2))
    assert any("of another cluster" in p for p in found)
    assert any("LSN order" in p for p in found)
    odd = meta("i3", "0/8000028", ["i1"])
    assert any("disagrees with parent" in p for p in link_problems("i3", odd, repo_of(full, i1)))


# --------------------------------------------------------------------------- argv, server


def test_incremental_argv_names_the_parent_manifest() -> None:
    argv = basebackup_argv(
        "pg_basebackup",
        {"host": "h"},
        "l",
        Path("/x"),
        CodecSpec("zstd", 3),
        incremental=Path("/tmp/p/backup_manifest"),
    )
    assert "--incremental=/tmp/p/backup_manifest" in argv
    full = basebackup_argv("pg_basebackup", {"host": "h"}, "l", Path("/x"), CodecSpec("zstd", 3))
    assert not [a for a in full if a.startswith("--incremental")]


def facts(
    version_num: int, summarize: str | None, tablespaces: tuple[Any, ...] = ()
) -> ServerFacts:
    return ServerFacts(
        version_num,
        str(version_num),
        "7",
        1,
        "replica",
        "on",
        "",
        60,
        16 << 20,
        None,
        False,
        True,
        10,
        0,
        tablespaces=tablespaces,
        summarize_wal=summarize,
    )


@pytest.mark.parametrize(
    ("found", "says", "hint"),
    [
        (facts(150004, None), "cannot take incremental backups", "upgrade to 17"),
        (facts(180001, "off"), "summarize_wal is off", "ALTER SYSTEM SET summarize_wal = on"),
    ],
)
def test_incremental_preflight_refuses_with_the_fix(
    found: ServerFacts, says: str, hint: str
) -> None:
    with pytest.raises(PostgresError) as err:
        incremental_preflight(found, {"host": "h", "user": "u"})
    assert says in err.value.message
    assert hint in (err.value.hint or "")
    incremental_preflight(facts(180001, "on"), {"host": "h"})  # fine
    # and with a tablespace too: a chain restores it through pg_combinebackup -T
    tablespace = ({"oid": 1, "name": "ts1", "location": "/t"},)
    incremental_preflight(facts(180001, "on", tablespace), {"host": "h"})


# --------------------------------------------------------------------------- policy


def policy_file(tmp_path: Path, schedules: dict[str, str]) -> Path:
    doc = {
        "version": 1,
        "repository": {"path": str(tmp_path / "repo")},
        "targets": {"db": {"connection": {"host": "127.0.0.1", "dbname": "app"}}},
        "schedules": schedules,
    }
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_schedules_incremental_runs_backup_type_incremental(tmp_path: Path) -> None:
    path = policy_file(tmp_path, {"backup": "0 2 * * 0", "incremental": "0 2 * * 1-6"})
    assert validate_file(path) == []
    entries = {e.name: e for e in cron_entries(load_policy(path), program="pgbackup")}
    assert " backup --type incremental >> " in entries["incremental"].command
    assert entries["incremental"].expression == "0 2 * * 1-6"


def test_incrementals_without_full_backups_are_invalid(tmp_path: Path) -> None:
    path = policy_file(tmp_path, {"incremental": "0 * * * *"})
    problems = validate_file(path)
    assert [p for p, _ in problems] == ["schedules.incremental"]
    assert "schedules.backup" in problems[0][1]
