"""extract's pure parts: names, the sparse plan, pg_dump's argv, the restore list."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbackup.engine.restore_command import parse_recovery_flags
from pgbackup.errors import UsageError
from pgbackup.operations.extract.command import dump_argv, restore_list
from pgbackup.operations.extract.request import (
    Request,
    SparsePlan,
    check_request,
    parse_qualified,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("public.users", ("public", "users")),
        ("users", ("public", "users")),
        ("Sales.Orders", ("sales", "orders")),
        ('"Sales"."Orders"', ("Sales", "Orders")),
        ('"a.b"."c""d"', ("a.b", 'c"d')),
        (' app . "Mixed Case" ', ("app", "Mixed Case")),
    ],
)
def test_names_read_as_postgresql_reads_them(text: str, expected: tuple[str, str]) -> None:
    assert parse_qualified(text) == expected


@pytest.mark.parametrize("text", ["", "a.b.c", "a.", ".b", '"open', 'a"b', '"a"b'])
def test_bad_names_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_qualified(text)


def test_recovery_flags() -> None:
    assert parse_recovery_flags("latest", None, None, None, None) == ("latest", None)
    assert parse_recovery_flags(None, None, "0/3000060", None, None) == ("lsn", 0x3000060)
    assert parse_recovery_flags(None, None, None, "742", None) == ("xid", 742)
    assert parse_recovery_flags(None, "2026-11-23 14:30", None, None, None) == (
        "time",
        "2026-11-23 14:30",
    )
    assert parse_recovery_flags(None, None, None, None, None) == (None, None)
    for bad in [("latest", "2026-01-01", None, None, None), (None, None, "x", None, None)]:
        with pytest.raises(UsageError):
            parse_recovery_flags(*bad)
    with pytest.raises(UsageError):
        parse_recovery_flags(None, None, None, "-1", None)


def request(**kw: object) -> Request:
    base: dict[str, object] = {
        "database": "app",
        "tables": [("public", "users")],
        "schemas": [],
        "kind": "latest",
        "value": None,
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def test_one_destination_and_no_overwrite(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exactly one destination"):
        check_request(request())
    with pytest.raises(UsageError, match="exactly one destination"):
        check_request(request(output=tmp_path / "f", into_db="x"))
    (tmp_path / "exists").write_text("")
    with pytest.raises(UsageError, match="never overwrites"):
        check_request(request(output=tmp_path / "exists"))
    with pytest.raises(UsageError, match="does not exist"):
        check_request(request(output=tmp_path / "no" / "f"))
    with pytest.raises(UsageError, match="1 to 63 bytes"):
        check_request(request(into_db="x" * 64))
    with pytest.raises(UsageError, match="recovery target"):
        check_request(request(kind=None, output=tmp_path / "f"))
    check_request(request(output=tmp_path / "f"))


def test_sparse_plan_leaves_out_only_what_it_names() -> None:
    plan = SparsePlan(database_oid=16384, skip_databases={16500: "other"}, skip_nodes={16390})
    assert plan("base/16500/1259")  # another database: every file
    assert plan("base/16500/PG_VERSION")
    assert plan("base/16384/16390")  # a relation the dump does not read, every fork/segment
    assert plan("base/16384/16390.1")
    assert plan("./base/16384/16390_fsm")
    assert not plan("base/16384/16390_init")  # unlogged init forks are copied at startup
    assert not plan("base/16384/16391")  # the table asked for
    assert not plan("base/16384/1259")  # catalogs
    assert not plan("base/16384/pg_filenode.map")
    assert not plan("base/1/16390")  # template1
    assert not plan("global/1262")
    assert not plan("pg_wal/000000010000000000000003")
    assert plan.sparse_databases_seen() == {16500}
    assert plan.sparse_nodes_seen() == {16390}


def test_dump_argv_names_exact_objects(tmp_path: Path) -> None:
    req = request(tables=[("public", "users"), ("Sales", 'we"ird')], schemas=["audit"])
    argv = dump_argv("/usr/bin/pg_dump", "host=x", req, "custom", tmp_path / "f")
    assert argv == [
        "/usr/bin/pg_dump",
        "--dbname",
        "host=x",
        "--format",
        "custom",
        "--file",
        str(tmp_path / "f"),
        "--no-password",
        "--strict-names",
        "--table",
        '"public"."users"',
        "--table",
        '"Sales"."we""ird"',
        "--schema",
        '"audit"',
    ]


def test_restore_list_comments_out_dangling_foreign_keys() -> None:
    toc = (
        ";\n; Archive created at ...\n"
        "215; 1259 16390 TABLE public sessions app\n"
        "3333; 0 16390 TABLE DATA public sessions app\n"
        "3190; 2606 16420 CONSTRAINT public sessions sessions_pkey app\n"
        "3191; 2606 16425 FK CONSTRAINT public sessions sessions_user_id_fkey app\n"
        "3192; 2606 16426 FK CONSTRAINT public sessions sessions_self_fkey app\n"
    )
    out = restore_list(toc, [("public", "sessions", "sessions_user_id_fkey", "users")])
    lines = out.splitlines()
    assert ";3191; 2606 16425 FK CONSTRAINT public sessions sessions_user_id_fkey app" in lines
    assert "3192; 2606 16426 FK CONSTRAINT public sessions sessions_self_fkey app" in lines
    assert "3333; 0 16390 TABLE DATA public sessions app" in lines
