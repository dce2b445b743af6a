"""Steps for extract.feature."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import PGBACKUP, Harness, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import Cluster

scenarios("extract.feature")


def scratch_parent(h: Harness) -> Path:
    """Where the scenario's scratch clusters go: TMPDIR, for the CLI's tempfile."""
    tmp = h.root / "tmp"
    if not tmp.exists():
        tmp.mkdir()
        os.chmod(tmp, 0o1777)  # like /tmp: the server's OS user may write there too
        h.env["TMPDIR"] = str(tmp)
    return tmp


def superuser(cluster: Cluster) -> str:
    return cluster.os_user or pwd.getpwuid(os.geteuid()).pw_name


def extract(
    h: Harness, *args: str, expect_ok: bool | None = True
) -> subprocess.CompletedProcess[str]:
    scratch_parent(h)
    return h.run("extract", *args, expect_ok=expect_ok)


def extract_json(h: Harness, ctx: dict[str, Any], *args: str) -> dict[str, Any]:
    proc = extract(h, *args, "--json")
    ctx.setdefault("extractions", []).append(json.loads(proc.stdout))
    return dict(ctx["extractions"][-1])


def point_time(ctx: dict[str, Any], batch: int) -> str:
    return str(ctx["points"][batch - 1]["time"])


# --- given ------------------------------------------------------------------------------


@given(parsers.parse('a second database "{name}" with a table of its own'))
def second_database(h: Harness, name: str) -> None:
    cluster = h.sandbox()
    cluster.sql(f"CREATE DATABASE {name}")
    cluster.sql(
        "CREATE TABLE ledger AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 50000) g",
        dbname=name,
    )
    cluster.sql("CHECKPOINT")


@given(parsers.parse("{mb:d} MB of WAL were written and archived after the backup"))
def lots_of_wal(h: Harness, mb: int) -> None:
    cluster = h.sandbox()
    cluster.sql(
        "CREATE TABLE filler AS SELECT g AS id, repeat('x', 1000) AS pad "
        f"FROM generate_series(1, {mb * 1000}) g",
        dbname="platform",
    )
    switch_and_wait_archived(cluster)


# --- when -------------------------------------------------------------------------------


@when("every row of pitr_batches is deleted and that WAL is archived")
def delete_rows(h: Harness) -> None:
    cluster = h.sandbox()
    cluster.sql("DELETE FROM pitr_batches", dbname="platform")
    switch_and_wait_archived(cluster)


@when("tenants is renamed to tenants_old and a new empty tenants takes its name")
def replace_table(h: Harness) -> None:
    """The live server now calls the table's files tenants_old (a table extract leaves
    out); at the target they were tenants'."""
    cluster = h.sandbox()
    cluster.sql(
        "ALTER TABLE tenants RENAME TO tenants_old; CREATE TABLE tenants (LIKE tenants_old)",
        dbname="platform",
    )
    switch_and_wait_archived(cluster)


@when(
    parsers.parse(
        'I extract {table} as of the time recorded after batch {n:d} into the new database "{name}"'
    )
)
def extract_into(h: Harness, ctx: dict[str, Any], table: str, n: int, name: str) -> None:
    ctx["args"] = ["--table", table, "--target-time", point_time(ctx, n)]
    extract_json(
        h,
        ctx,
        "--db",
        "platform",
        *ctx["args"],
        "--into-db",
        name,
        "--user",
        superuser(h.sandbox()),
    )


@when(
    parsers.parse(
        'I extract {table} as of the time recorded after batch {n:d} into the new database "{name}" with --docker'
    )
)
def extract_into_docker(h: Harness, ctx: dict[str, Any], table: str, n: int, name: str) -> None:
    extract_json(
        h,
        ctx,
        "--db",
        "platform",
        "--table",
        table,
        "--target-time",
        point_time(ctx, n),
        "--into-db",
        name,
        "--user",
        superuser(h.sandbox()),
        "--docker",
    )


@when(parsers.parse('I extract {table} again into the new database "{name}"'))
def extract_again(h: Harness, ctx: dict[str, Any], table: str, name: str) -> None:
    extract(
        h,
        "--db",
        "platform",
        *ctx["args"],
        "--into-db",
        name,
        "--user",
        superuser(h.sandbox()),
        expect_ok=False,
    )


@when(parsers.parse("I extract {table} as of the latest point into a custom-format file"))
def extract_file(h: Harness, ctx: dict[str, Any], table: str) -> None:
    ctx["output"] = h.root / "users.dump"
    extract_json(
        h,
        ctx,
        "--db",
        "platform",
        "--table",
        table,
        "--target",
        "latest",
        "--output",
        str(ctx["output"]),
    )


@when(parsers.parse("I extract {table} as of one hour from now into a file"))
def extract_future(h: Harness, ctx: dict[str, Any], table: str) -> None:
    ctx["output"] = h.root / "future.dump"
    when_ = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    extract(
        h,
        "--db",
        "platform",
        "--table",
        table,
        "--target-time",
        when_,
        "--output",
        str(ctx["output"]),
        expect_ok=False,
    )


@when(parsers.parse("I extract {table} as of the latest point into a file"))
def extract_missing(h: Harness, ctx: dict[str, Any], table: str) -> None:
    ctx["output"] = h.root / "missing.dump"
    extract(
        h,
        "--db",
        "platform",
        "--table",
        table,
        "--target",
        "latest",
        "--output",
        str(ctx["output"]),
        expect_ok=False,
    )


def scratch_postmasters(h: Harness) -> list[int]:
    """Processes whose command line names the scenario's scratch directory."""
    marker = str(scratch_parent(h)).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"pgbackup-extract-" in cmdline:
            found.append(int(entry.name))
    return found


@when(parsers.parse("I start an extraction and send it {name} while its scratch cluster runs"))
def interrupt(h: Harness, ctx: dict[str, Any], name: str) -> None:
    scratch_parent(h)
    proc = subprocess.Popen(
        [
            PGBACKUP,
            "--config",
            str(h.config),
            "extract",
            "--db",
            "platform",
            "--table",
            "public.filler",
            "--target",
            "latest",
            "--output",
            str(h.root / "interrupted.dump"),
        ],
        env=h.env,
        cwd=h.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches a program whose SIGINT is at its default. A test run started in
        # the background (`bash .ci/run &`) ignores SIGINT, as POSIX shells do for
        # asynchronous commands, and every child inherits that (Python keeps an ignored
        # SIGINT ignored): the extraction would then rightly run to its end.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    seen = False
    while time.monotonic() < deadline and proc.poll() is None:
        if scratch_postmasters(h):
            seen = True
            break
        time.sleep(0.02)
    assert seen, f"the scratch cluster never ran (exit {proc.poll()})"
    proc.send_signal(getattr(signal, name))
    out, err = proc.communicate(timeout=120)
    time.sleep(2)  # a server that was still starting when the signal came would be up now
    ctx["interrupted"] = (proc.returncode, out + err)


# --- then -------------------------------------------------------------------------------


@then(parsers.parse('the database "{name}" holds batches {present} and no others'))
def holds_batches(h: Harness, name: str, present: str) -> None:
    rows = h.sandbox().sql(
        "SELECT batch, count(*) FROM pitr_batches GROUP BY batch ORDER BY batch", dbname=name
    )
    assert all(n == 100 for _b, n in rows), rows  # whole transactions only
    assert [b for b, _n in rows] == [int(x) for x in present.split(",")]
    tables = h.sandbox().sql(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        dbname=name,
    )
    assert tables == [("public.pitr_batches",)]


@then(parsers.parse('the database "{name}" holds the rows of the live tenants_old'))
def holds_old_rows(h: Harness, name: str) -> None:
    query = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM {} t"
    then_ = h.sandbox().sql(query.format("tenants"), dbname=name)[0]
    live = h.sandbox().sql(query.format("tenants_old"), dbname="platform")[0]
    assert then_ == live and then_[0] > 0


@then("the live table pitr_batches is still empty")
def live_untouched(h: Harness) -> None:
    assert h.sandbox().sql("SELECT count(*) FROM pitr_batches", dbname="platform")[0][0] == 0


@then(
    parsers.parse('the scratch restore left out the database "{name}" and the tables not asked for')
)
def left_out(ctx: dict[str, Any], name: str) -> None:
    restored = ctx["extractions"][-1]["restored"]
    assert restored["databases_left_out"] == [name], restored
    assert not restored["restored_whole"], restored
    assert restored["left_out_files"] > 0
    assert restored["written_bytes"] + restored["left_out_bytes"] == restored["raw_bytes"]
    assert restored["left_out_bytes"] > 1024 * 1024  # "other"'s ledger and platform's sessions


@then("the scratch restore was redone whole because the plan missed the table's files")
def redone_whole(ctx: dict[str, Any]) -> None:
    restored = ctx["extractions"][-1]["restored"]
    assert restored["restored_whole"] and restored["left_out_files"] == 0, restored
    assert restored["written_bytes"] == restored["raw_bytes"]


@then("no scratch cluster or scratch directory remains")
def nothing_left(h: Harness) -> None:
    assert scratch_postmasters(h) == []
    assert list(scratch_parent(h).glob("pgbackup-extract-*")) == []


@then("the extraction is recorded under the repository with its target, objects and time")
def recorded(h: Harness, ctx: dict[str, Any]) -> None:
    files = sorted((h.repo / "platform" / "runs").glob("*-extract.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    assert rec["kind"] == "extract" and rec["status"] == "ok"
    assert rec["objects"] == ["public.pitr_batches"]
    assert rec["recovery_target"]["kind"] == "time"
    assert rec["recovery_target"]["value"].startswith(point_time(ctx, 2)[:19].replace("T", " "))
    assert rec["seconds"] > 0 and rec["timings"]["restore"] > 0
    assert rec["destination"] == ctx["extractions"][-1]["destination"]
    # check and the SLA report still run and ignore the new kind of run
    h.run("check", "--json", expect_ok=None)
    assert "Traceback" not in h.last.stdout + h.last.stderr  # type: ignore[union-attr]
    h.run("sla-report", "--format", "json")


def toc_entries(h: Harness, path: Path) -> list[tuple[str, str]]:
    """(kind, name) of each TABLE and TABLE DATA entry in a custom-format archive."""
    pg_restore = h.sandbox().program("pg_restore")  # the server's major reads its dump
    toc = subprocess.run(
        [pg_restore, "--list", str(path)], capture_output=True, text=True, check=True
    )
    out = []
    for line in toc.stdout.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        rest = line.split(" ", 3)[3]  # after "id; catalog oid"
        for kind in ("TABLE DATA", "TABLE", "SEQUENCE", "VIEW", "MATERIALIZED VIEW"):
            if rest.startswith(kind + " "):
                out.append((kind, rest[len(kind) + 1 :].split()[1]))
                break
    return out


@then("pg_restore --list of the file names the table users and no other table")
def only_users(h: Harness, ctx: dict[str, Any]) -> None:
    assert ctx["output"].exists()
    assert sorted(toc_entries(h, ctx["output"])) == [("TABLE", "users"), ("TABLE DATA", "users")]


@then("the file's users rows equal the live users rows")
def same_rows(h: Harness, ctx: dict[str, Any]) -> None:
    pg_restore = h.sandbox().program("pg_restore")  # the server's major reads its dump
    sql = subprocess.run(
        [pg_restore, "--data-only", "--file", "-", str(ctx["output"])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    block = sql.split("COPY public.users ", 1)[1].split("\n", 1)[1].split("\n\\.\n", 1)[0]
    dumped = sorted(block.splitlines())
    with h.sandbox().connect("platform") as conn, conn.cursor() as cur:
        live = []
        with cur.copy("COPY users TO STDOUT") as copy:
            for data in copy:
                live.append(bytes(data).decode())
    assert dumped == sorted("".join(live).splitlines())
    assert len(dumped) == 100  # the sandbox's scale-1 users


@then(parsers.parse('the database "{name}" still holds every session row'))
def sessions_kept(h: Harness, name: str) -> None:
    live = h.sandbox().sql("SELECT count(*), sum(id) FROM sessions", dbname="platform")[0]
    copy = h.sandbox().sql("SELECT count(*), sum(id) FROM sessions", dbname=name)[0]
    assert copy == live and live[0] > 0


@then("the first extraction said which foreign key it left out")
def fk_said(ctx: dict[str, Any]) -> None:
    first = ctx["extractions"][0]
    assert first["skipped_foreign_keys"] == ["public.sessions sessions_user_id_fkey -> users"]


@then("no output file was written")
def no_output(h: Harness, ctx: dict[str, Any]) -> None:
    assert not ctx["output"].exists()
    assert not list(ctx["output"].parent.glob(f".{ctx['output'].name}*"))


@then("extract refuses each bad request with a clear message and restores nothing")
def bad_requests(h: Harness, datatable: list[list[str]]) -> None:
    out = h.root / "bad.dump"
    for arguments, says in datatable[1:]:
        args = [
            out.as_posix() if a == "OUT" else superuser(h.sandbox()) if a == "SUPERUSER" else a
            for a in arguments.split()
        ]
        proc = extract(h, *args, expect_ok=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 2, (arguments, proc.returncode, text)
        assert says in text, (arguments, text)
        assert "Traceback" not in text
        assert text.count("error:") == 1, text
        assert not out.exists()
        assert list(scratch_parent(h).glob("pgbackup-extract-*")) == []
    assert not list((h.repo / "platform" / "runs").glob("*-extract.json"))


@then(parsers.parse('it exits with status 130 saying "{text}" and no traceback'))
def interrupted(h: Harness, ctx: dict[str, Any], text: str) -> None:
    code, output = ctx["interrupted"]
    assert code == 130, (code, output)
    assert text in output and "Traceback" not in output
    assert not (h.root / "interrupted.dump").exists()
    records = [
        json.loads(p.read_text()) for p in (h.repo / "platform" / "runs").glob("*-extract.json")
    ]
    assert [(r["status"], r["error"]) for r in records] == [("failed", "interrupted")]
