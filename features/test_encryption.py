"""Steps for encryption.feature: age keys made here, real backups, grep of the stored bytes."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

from harness import Harness, switch_and_wait
from pytest_bdd import given, scenarios, then, when

from pgbackup.postgres.cluster import free_port, hand_over, server_os_user
from pgbackup.postgres.connection import connect, table_checksums

scenarios("encryption.feature")

SAMPLE_TABLES = ["public.tenants", "public.users", "public.sessions"]
AGE_MAGIC = b"age-encryption.org/v1\n"


def write_key(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    user = server_os_user()
    if user:  # the restored server's restore_command (wal-fetch) runs as that user
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def new_identity() -> Any:
    from pyrage import x25519

    return x25519.Identity.generate()


@given("an age key pair in files of mode 0600")
def key_pair(h: Harness, ctx: dict[str, Any]) -> None:
    identity = new_identity()
    keys = h.root / "keys"
    keys.mkdir(mode=0o755)
    ctx["identity_file"] = keys / "age-identity.txt"
    ctx["recipients_file"] = keys / "recipients.txt"
    write_key(ctx["identity_file"], f"# test key\n{identity}\n")
    ctx["recipients_file"].write_text(f"{identity.to_public()}\n")
    os.chmod(ctx["recipients_file"], 0o644)


@given("the policy encrypts with it")
def policy_encrypts(h: Harness, ctx: dict[str, Any]) -> None:
    h.policy["encryption"] = {
        "method": "age",
        "recipients_file": str(ctx["recipients_file"]),
        "identity_file": str(ctx["identity_file"]),
    }
    h.write_policy()


@given("the policy does not compress")
def no_compression(h: Harness) -> None:
    h.policy["compression"] = {"method": "none"}
    h.write_policy()


@given("the policy names no identity file")
def no_identity(h: Harness) -> None:
    del h.policy["encryption"]["identity_file"]
    h.write_policy()


@given("the policy's identity file holds a different key")
def wrong_identity(h: Harness, ctx: dict[str, Any]) -> None:
    write_key(ctx["identity_file"], f"{new_identity()}\n")


@given("the identity file has mode 0644")
def loose_identity(ctx: dict[str, Any]) -> None:
    os.chmod(ctx["identity_file"], 0o644)


# --- recovery -------------------------------------------------------------------------


@when("I add rows, record the checksums and a recovery time, then delete rows")
def recovery_point(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    h.sql(
        cluster,
        "INSERT INTO tenants SELECT 52000000 + g, 'after-' || g FROM generate_series(1, 40) g",
    )
    with connect(cluster.conninfo("platform")) as conn:
        ctx["checksums"] = table_checksums(conn, SAMPLE_TABLES)
    time.sleep(1.2)
    ctx["recovery_time"] = cluster.sql("SELECT clock_timestamp()")[0][0].astimezone(UTC)
    time.sleep(1.2)
    h.sql(cluster, "DELETE FROM sessions WHERE id % 2 = 0")
    switch_and_wait(h)


@when("I restore the latest backup into an empty directory expecting failure")
def restore_fails(h: Harness, ctx: dict[str, Any]) -> None:
    d = h.root / "empty-target"
    d.mkdir()
    ctx["empty"] = d
    h.run("restore", "--backup", "latest", "--to", str(d), expect_ok=False)


@then("the output is one message without a traceback")
def one_message(h: Harness) -> None:
    assert h.last is not None
    out = h.last.stdout + h.last.stderr
    assert "Traceback" not in out and "internal error" not in out, out
    assert out.count("error:") == 1, out


@then("the directory is still empty")
def still_empty(ctx: dict[str, Any]) -> None:
    d: Path = ctx["empty"]
    assert d.is_dir() and list(d.iterdir()) == []


# --- what is stored -------------------------------------------------------------------


def stored_files(h: Harness) -> list[Path]:
    return [p for p in (h.repo / "platform").rglob("*") if p.is_file()]


@then("every stored base backup and WAL file is in age format")
def all_age(h: Harness) -> None:
    data = [p for p in stored_files(h) if "/base/" in str(p) or "/wal/" in str(p)]
    payload = [p for p in data if p.name != "metadata.json" and not p.name.endswith(".sha256")]
    assert any("/wal/" in str(p) for p in payload) and any("/base/" in str(p) for p in payload)
    for p in payload:
        assert p.name.endswith(".age"), p
        assert p.read_bytes()[: len(AGE_MAGIC)] == AGE_MAGIC, p


@when("I insert a row holding a unique marker")
def insert_marker(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["marker"] = f"plaintext-marker-{uuid.uuid4().hex}"
    h.sql(h.sandbox(), f"INSERT INTO tenants VALUES (54242424, '{ctx['marker']}')")
    h.sql(h.sandbox(), "CHECKPOINT", dbname="postgres")


@when("the WAL holding the marker is archived")
def marker_wal(h: Harness, ctx: dict[str, Any]) -> None:
    ctx["segment"] = switch_and_wait(h)


@then("no stored file contains the marker")
def marker_absent(h: Harness, ctx: dict[str, Any]) -> None:
    marker = ctx["marker"].encode()
    files = stored_files(h)
    wal = [p for p in files if "/wal/" in str(p) and p.name.startswith(ctx["segment"])]
    assert wal, "the segment written after the marker is archived"
    assert any("/base/" in str(p) for p in files)
    for p in files:
        assert marker not in p.read_bytes(), f"{p} contains the plaintext marker"


@then("the decrypted base backup contains the marker")
def marker_present_decrypted(h: Harness, ctx: dict[str, Any]) -> None:
    (base,) = [p for p in stored_files(h) if p.name.startswith("base.tar")]
    plain = subprocess.run(
        ["age", "-d", "-i", str(ctx["identity_file"]), str(base)],
        capture_output=True,
        check=True,
    ).stdout
    assert ctx["marker"].encode() in plain


@when("I decrypt, decompress and untar the backup with age, zstd and tar into a new directory")
def emergency(h: Harness, ctx: dict[str, Any]) -> None:
    (base,) = [p for p in stored_files(h) if p.name == "base.tar.zst.age"]
    (wal,) = [p for p in stored_files(h) if p.name == "pg_wal.tar.zst.age"]
    target = h.root / "emergency"
    target.mkdir(mode=0o700)
    # Exactly the README's lines: the data directory, then the WAL streamed meanwhile.
    for archive, into in ((base, "."), (wal, "pg_wal")):
        subprocess.run(
            f"age -d -i '{ctx['identity_file']}' '{archive}' | zstd -d | tar -x -C {into}",
            shell=True,
            cwd=target,
            check=True,
            capture_output=True,
        )
    assert (target / "PG_VERSION").is_file() and (target / "backup_label").is_file()
    ctx["emergency"] = target


@when("I start a server on that directory")
def start_emergency(h: Harness, ctx: dict[str, Any]) -> None:
    target: Path = ctx["emergency"]
    hand_over(target, server_os_user(), 0o700)
    port = free_port()
    cluster = h.track(target, port)
    # Archiving off: this copy must not push WAL into the source's archive.
    cluster.start(extra_options="-c archive_mode=off")
    ctx["restored"] = (target, port)


@when("I fetch an archived WAL segment expecting failure")
def wal_fetch_fails(h: Harness, ctx: dict[str, Any]) -> None:
    wal = sorted(p.name for p in (h.repo / "platform" / "wal").iterdir() if p.name.endswith(".age"))
    assert wal
    name = wal[0].split(".", 1)[0]
    ctx["fetch_dest"] = h.root / "fetched-segment"
    h.run("wal-fetch", "--target", "platform", name, str(ctx["fetch_dest"]), expect_ok=False)


@then("no file was written where the segment was asked for")
def nothing_fetched(ctx: dict[str, Any]) -> None:
    dest: Path = ctx["fetch_dest"]
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}*"))
