"""Steps of pg_bin_dir.feature: every program found through the target's pg_bin_dir alone,
and a check that cannot find its program says so (issue #29 points 2 and 3).

The pgbackup processes of these scenarios see no PostgreSQL directory but the policy's
pg_bin_dir: $PGBACKUP_PG_BIN_DIRS is unset and PATH keeps only directories without
PostgreSQL's programs, behind a first entry the server's OS user cannot search (a 0700
directory of root's, as /root/... in root's PATH kept by runuser). The test process itself
keeps its environment (its harness queries the clusters)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from harness import Harness
from pytest_bdd import given, scenarios, then, when
from versions import bin_dir

from pgbackup.errors import BinaryError
from pgbackup.postgres.binaries import find_program

scenarios("pg_bin_dir.feature")

# Programs whose presence marks a directory as a PostgreSQL install (Debian's /usr/bin
# holds only pg_wrapper links for client programs, which it keeps: tar, zstd live there).
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_waldump")


def without_postgres(path: str) -> list[str]:
    """The entries of ``path`` that hold none of PostgreSQL's server programs."""
    return [d for d in path.split(os.pathsep) if d and not _holds_postgres(Path(d))]


def _holds_postgres(d: Path) -> bool:
    return any(os.path.exists(d / name) for name in SERVER_PROGRAMS)


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Any:
    """``env`` as this process's environment for a moment (a lookup as pgbackup does it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@given("a sandbox cluster whose programs only the policy's pg_bin_dir names")
def only_pg_bin_dir(h: Harness, ctx: dict[str, Any], undo: contextlib.ExitStack) -> None:
    major = int(h.major or 15)
    directory, why = bin_dir(major)
    assert directory is not None, why  # use_major skipped already when it is missing
    if directory == Path(f"/usr/lib/postgresql/{major}/bin"):  # 15 here, 17 in trixie's image
        pytest.skip(
            f"Debian's PostgreSQL {major} is installed in /usr/lib/postgresql/{major}/bin "
            "(its client programs also in /usr/bin), which the documented order always "
            "searches: it cannot be hidden behind pg_bin_dir"
        )
    locked = Path(tempfile.mkdtemp(prefix="pgbackup-root-only-", dir="/tmp"))
    undo.callback(shutil.rmtree, locked, True)
    (locked / "bin").mkdir()
    locked.chmod(0o700)
    h.env.pop("PGBACKUP_PG_BIN_DIRS", None)
    h.env["PATH"] = os.pathsep.join([str(locked / "bin"), *without_postgres(h.env["PATH"])])
    with environ(h.env), pytest.raises(BinaryError):  # hidden indeed, but for pg_bin_dir
        find_program("pg_waldump", major, None)
    h.policy["targets"]["platform"]["pg_bin_dir"] = str(directory)
    h.write_policy()
    ctx["pg_bin_dir"] = directory
    h.start_source()
    rows = h.sql(h.sandbox(), "SELECT current_setting('server_version_num')::int / 10000")
    assert rows[0][0] == h.major


@then("verify --wal read the records of every archived segment")
def verify_read_every_segment(h: Harness) -> None:
    wal = h.json("verify", "--wal")["platform"]["wal"]
    assert wal["gaps"] == [], wal
    assert wal["not_checked"] == [], wal
    assert wal["content_checked"] == wal["archived"] >= 2, wal


@when("the policy's pg_bin_dir names a directory without pg_waldump")
def pg_bin_dir_without_waldump(h: Harness, ctx: dict[str, Any]) -> None:
    empty = h.root / "empty-bin"
    empty.mkdir()
    h.policy["targets"]["platform"]["pg_bin_dir"] = str(empty)
    h.write_policy()
    path = h.env["PATH"].split(os.pathsep)
    order = [str(empty), f"/usr/lib/postgresql/{h.major}/bin", f"/usr/pgsql-{h.major}/bin", *path]
    ctx["looked_in"] = (  # each directory once, in order (a PATH may name one already)
        f"pg_waldump not found (PostgreSQL {h.major}); looked in: "
        + ", ".join(dict.fromkeys(order))
        + f" (pg_bin_dir {empty})"
    )


def first_segment(h: Harness) -> str:
    """The oldest archived WAL segment (uncompressed: the policy compresses with none)."""
    names = sorted(p.name for p in (h.repo / "platform" / "wal").iterdir() if len(p.name) == 24)
    return names[0]


@then("verify --wal says the records were not checked, which program and where it looked")
def verify_not_checked(h: Harness, ctx: dict[str, Any]) -> None:
    wal = json.loads(h.run("verify", "--wal", "--json").stdout)["platform"]["wal"]
    count = len([n for n in (h.repo / "platform" / "wal").iterdir() if len(n.name) == 24])
    expected = (
        f"record checksums of {count} uncompressed segment(s) not checked "
        f"(first {first_segment(h)}): {ctx['looked_in']}"
    )
    assert wal["not_checked"] == [expected], wal
    text = h.run("verify", "--wal").stdout
    assert f"  - not checked: {expected}" in text, text
    ctx["not_checked"] = expected


@then("check reports the WAL content as not checked, and why")
def check_not_checked(h: Harness, ctx: dict[str, Any]) -> None:
    report = json.loads(h.run("check", "--json", "--no-alert", expect_ok=None).stdout)
    checks = {c["name"]: c for c in report["platform"]["checks"]}
    assert checks["wal_chain"]["status"] == "OK", checks["wal_chain"]
    assert checks["wal_content"] == {
        "name": "wal_content",
        "status": "UNKNOWN",
        "summary": f"not checked: {ctx['not_checked']}",
        "value": None,
    }


@then("the SLA report puts the WAL archive at risk, and says why")
def sla_not_checked(h: Harness, ctx: dict[str, Any]) -> None:
    sla = json.loads(h.run("sla-report", "--format", "json").stdout)["platform"]
    archive = sla["sections"]["archive"]
    assert archive["verdict"] == "AT RISK", archive
    (reason,) = archive["reasons"]
    assert reason.endswith(
        f"could not read all of it: wal_content: not checked: {ctx['not_checked']}"
    )


@then("a restore to the time after batch 2 is refused, naming pg_waldump")
def restore_refused(h: Harness, ctx: dict[str, Any]) -> None:
    when_ = ctx["points"][1]["time"]
    h.run("restore", "--to", str(h.root / "refused"), "--target-time", when_, expect_ok=False)
    assert h.last is not None
    out = h.last.stdout + h.last.stderr
    assert (
        "the end of the recoverable window of 'platform' by time was not checked: "
        + ctx["looked_in"]
    ) in out, out
    assert "Traceback" not in out and not (h.root / "refused").exists()


@then("list says the time of the window's end was not read, and why")
def list_not_checked(h: Harness, ctx: dict[str, Any]) -> None:
    window = h.json("list")["platform"]["window"]
    reason = window["time_not_checked"]
    assert reason.startswith("the time of the window's end was not read from "), reason
    assert reason.endswith(ctx["looked_in"]), reason
    text = " ".join(h.run("list").stdout.split())  # the console wraps long lines
    assert f"not checked: {' '.join(reason.split())}" in text, text
