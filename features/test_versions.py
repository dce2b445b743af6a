"""Steps of versions.feature: compression on each major, and a major with no programs."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

import pytest
from harness import Harness
from pytest_bdd import scenarios, then, when
from versions import bin_dir

scenarios("versions.feature")


def server_has(h: Harness, method: str) -> tuple[int, bool]:
    """(server major, whether its build offers ``method``: pgbackup/engine/streamcompress.py)."""
    num, enumvals = h.sql(
        h.sandbox(),
        "SELECT current_setting('server_version_num')::int, "
        "(SELECT enumvals FROM pg_settings WHERE name = 'wal_compression')",
    )[0]
    return int(num) // 10000, method in (enumvals or [])


@then("the backup was compressed with zstd by the server if it has zstd, else by pgbackup")
def compressed_by(h: Harness, ctx: dict[str, Any]) -> None:
    major, has_zstd = server_has(h, "zstd")
    meta = json.loads(
        (h.repo / "platform" / "base" / ctx["backup_ids"][-1] / "metadata.json").read_text()
    )
    side = meta["compressed_by"]
    assert meta["server_version_num"] // 10000 == major
    assert side["method"] == "zstd"
    assert side["side"] == ("server" if has_zstd else "pgbackup"), side
    if not has_zstd:
        assert f"PostgreSQL {major}) was built without zstd" in side["reason"], side
    base = [name for name, obj in meta["objects"].items() if obj["kind"] == "base"]
    assert base == ["base.tar.zst"], meta["objects"]
    ctx["side"] = side


@then("plan names the same side and why")
def plan_side(h: Harness, ctx: dict[str, Any]) -> None:
    plan = h.json("plan")
    (target,) = plan["targets"]
    assert target["compression"] == ctx["side"], target["compression"]
    text = h.run("plan").stdout
    assert f"compressed (zstd) by: {ctx['side']['side']}" in text, text


@then("the latest backup verifies with its WAL")
def verifies(h: Harness) -> None:
    h.run("verify", "--backup", "latest", "--wal")


@when("I take a backup with only other majors' client programs to be found")
def backup_without_programs(h: Harness, ctx: dict[str, Any]) -> None:
    major, _ = server_has(h, "zstd")
    if bin_dir(major)[0] == Path(f"/usr/lib/postgresql/{major}/bin"):  # 15 here
        pytest.skip(
            f"Debian's PostgreSQL {major} client programs are installed system-wide "
            f"(/usr/lib/postgresql/{major}/bin, /usr/bin): they cannot be hidden from this run"
        )
    others = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if not d.endswith(f"/{major}/bin")]
    if not others and bin_dir(major)[0] != Path(f"/usr/lib/postgresql/{major}/bin"):
        # A test-runner image (17 in Debian 13's) holds its own major only, moved aside.
        pytest.skip(f"no other major's programs are installed here, only {major}'s")
    ctx["major"] = major
    h.env.pop("PGBACKUP_PG_BIN_DIRS", None)  # the server's own programs are no more found
    h.run("backup", expect_ok=False)


@then("the message names the server's major and what to install")
def names_major(h: Harness, ctx: dict[str, Any]) -> None:
    assert h.last is not None
    out = h.last.stdout + h.last.stderr
    major = ctx["major"]
    assert f"pg_basebackup for PostgreSQL {major} not found" in out, out
    assert f"postgresql-client-{major}" in out and "pg_bin_dir" in out, out
    assert h.backups() == []
