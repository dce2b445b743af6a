"""Secrets never leak; permissions are tight.

A full flow (backup, list --json, verify, restore, cleanup, a failing connection that
alerts a webhook) runs with PGPASSWORD and a webhook URL secret in the environment.
Every output, the log file, every stored JSON and the process list sampled during the
run are searched for the secret values.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import threading
import time

import counts
from faultlib import restored
from harness import Harness

from pgbackup.postgres.cluster import free_port, server_os_user

PASSWORD = "pgb-Secret-Passw0rd-7f3a"
WEBHOOK_TOKEN = "pgb-Webhook-Token-91c2"


def sample_ps(stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        time.sleep(0.05)


def test_no_secret_leaks(h: Harness) -> None:
    h.env["PGPASSWORD"] = PASSWORD
    h.env["PGB_WEBHOOK_URL"] = f"http://127.0.0.1:{free_port()}/hooks/{WEBHOOK_TOKEN}"
    h.policy["alerts"] = {"webhooks": [{"name": "ops", "url": "${PGB_WEBHOOK_URL}"}]}
    h.policy["targets"]["broken"] = {
        "connection": {"host": "127.0.0.1", "port": free_port(), "user": "nobody", "dbname": "x"}
    }
    h.write_policy()
    outputs: list[str] = []
    stop = threading.Event()
    ps: list[str] = []
    sampler = threading.Thread(target=sample_ps, args=(stop, ps))
    sampler.start()
    try:
        for args, ok in [
            (("validate",), True),
            (("sandbox.up",), True),
            (("backup", "--target", "platform"), True),
            (("list", "--json"), True),
            (("verify", "--target", "platform"), True),
            (("verify", "--target", "platform", "--wal", "--json"), True),
            (("backup", "--target", "broken"), False),
            (("cleanup", "--json"), True),
            (("plan",), True),
        ]:
            proc = h.run(*args, expect_ok=ok)
            outputs.append(proc.stdout + proc.stderr)
        with restored(h, "--target", "platform") as cluster:
            assert h.last is not None
            outputs.append(h.last.stdout + h.last.stderr)
            assert cluster is not None, outputs[-1]
            data = cluster.data_dir
            st = data.stat()
            assert stat.S_IMODE(st.st_mode) == 0o700
            user = server_os_user()
            assert st.st_uid == (pwd.getpwnam(user).pw_uid if user else os.geteuid())
    finally:
        stop.set()
        sampler.join()
    places = {f"output {i}": o for i, o in enumerate(outputs)}
    places["ps -eo args"] = "\n".join(ps)
    for p in h.repo.rglob("*"):
        if p.is_file() and (p.suffix in (".json", ".log") or p.name == "backup.log"):
            places[str(p)] = p.read_text(errors="replace")
    for p in (h.root / "sandbox").glob("*.log"):
        places[str(p)] = p.read_text(errors="replace")
    leaks = [
        f"{secret[:8]}... in {where}"
        for where, text in places.items()
        for secret in (PASSWORD, WEBHOOK_TOKEN)
        if secret in text
    ]
    assert len(ps) > 5 and any("pgbackup" in s for s in ps)
    assert any(p.endswith("backup.log") for p in places)
    counts.record("secret leak search (outputs, logs, JSON, ps)", not leaks)
    assert not leaks, leaks


def test_repository_permissions_and_identity_file(h: Harness) -> None:
    from pyrage import x25519

    ident = x25519.Identity.generate()
    keys = h.root / "keys"
    keys.mkdir()
    (keys / "recipients.txt").write_text(str(ident.to_public()) + "\n")
    identity = keys / "identity.txt"
    identity.write_text(str(ident) + "\n")
    identity.chmod(0o644)
    h.policy["encryption"] = {
        "method": "age",
        "recipients_file": str(keys / "recipients.txt"),
        "identity_file": str(identity),
    }
    h.write_policy()
    h.run("sandbox.up")
    h.run("backup")
    loose = []
    for p in [h.repo, *h.repo.rglob("*")]:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue  # a temporary file of the sandbox's own archiving, renamed meanwhile
        mode = stat.S_IMODE(st.st_mode)
        if p.is_dir() and mode & 0o027 or p.is_file() and mode & 0o137:
            loose.append(f"{p} {mode:04o}")
    counts.record("repository permissions (dirs 0750, files 0640)", not loose)
    assert not loose, loose
    problems = []
    for args in (("verify",), ("restore", "--to", str(h.root / "r1"))):
        proc = h.run(*args, expect_ok=None)
        if proc.returncode == 0 or "group or others" not in proc.stdout + proc.stderr:
            problems.append(f"{args} with a 0644 identity: exit {proc.returncode}: {proc.stderr}")
    identity.chmod(0o600)
    h.run("verify")
    counts.record("age identity file looser than 0600", not problems)
    assert not problems, problems


def test_password_in_connection_string_rejected(h: Harness) -> None:
    problems = []
    variants = [
        {"host": f"postgresql://platform_service:{PASSWORD}@127.0.0.1/platform"},
        {"host": "127.0.0.1", "options": f"password={PASSWORD}"},
        {"host": "${PGB_DSN}"},
        {"host": "127.0.0.1", "password": PASSWORD},
    ]
    h.env["PGB_DSN"] = f"host=127.0.0.1 password={PASSWORD}"
    for conn in variants:
        h.policy["targets"]["platform"] = {"connection": {"user": "u", "dbname": "d", **conn}}
        h.write_policy()
        for task in ("validate", "backup"):
            proc = h.run(task, expect_ok=None)
            out = proc.stdout + proc.stderr
            if proc.returncode != 2 or "targets.platform.connection" not in out:
                problems.append(f"{conn} {task}: exit {proc.returncode}: {out[-300:]}")
            if PASSWORD in out or "Traceback" in out:
                problems.append(f"{conn} {task}: secret or traceback in output")
            counts.inputs("password in backup.yaml", 1, rejected=int(not problems), tracebacks=0)
    counts.record("connection string with a password", not problems)
    assert not problems, "\n".join(problems)
