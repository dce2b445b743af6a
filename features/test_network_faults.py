"""Steps for network_faults.feature: a moto S3 server, or the PostgreSQL server, in a
network namespace of its own, pgbackup's network commands in a second one, a veth pair
between them (10.x addresses in those namespaces only; features/netns.py), the link cut
with ``ip link set down`` and healed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from harness import PGBACKUP, Harness, commit_batches, restore_and_start, switch_and_wait
from netns import Net, start_in_namespace, veth_pair
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import Cluster

scenarios("network_faults.feature")

PYTHON = sys.executable
MOTO = str(Path(sys.executable).parent / "moto_server")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_SESSION_TOKEN": "",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@contextlib.contextmanager
def namespaces() -> Iterator[Net]:
    """The veth pair of features/netns.py with moto's S3 server in the server namespace."""
    proc: subprocess.Popen[bytes] | None = None
    with veth_pair("s3") as net:
        try:
            proc = subprocess.Popen(
                net.server(MOTO, "-H", net.address, "-p", str(net.port)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait = (
                "import socket,sys,time\n"
                "for _ in range(150):\n"
                "    try:\n"
                f"        socket.create_connection(('{net.address}', {net.port}), 1).close(); sys.exit(0)\n"
                "    except OSError: time.sleep(0.2)\n"
                "sys.exit(1)\n"
            )
            assert subprocess.run(net.client(PYTHON, "-c", wait)).returncode == 0, (
                "moto never listened"
            )
            yield net
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def spec_for(net: Net, bucket: str, prefix: str) -> dict[str, Any]:
    return {
        "kind": "s3",
        "bucket": bucket,
        "prefix": prefix,
        "region": "us-east-1",
        "endpoint_url": net.endpoint,
        "retries": 2,
    }


def in_client(h: Harness, net: Net, code: str, *args: str) -> Any:
    """Run Python ``code`` in the client namespace (the test process cannot reach S3)."""
    proc = subprocess.run(
        net.client(PYTHON, "-c", code, *args),
        capture_output=True,
        text=True,
        env=h.env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


LIST_CODE = """
import hashlib, json, sys
from pgbackup.storage import open_storage
s = open_storage(json.loads(sys.argv[1]))
print(json.dumps({i.key: hashlib.sha256(s.read_bytes(i.key)).hexdigest() for i in s.list(sys.argv[2])}))
"""


@given("an S3 server in its own network namespace, reached over a veth pair")
def s3_in_namespace(h: Harness, ctx: dict[str, Any], stack: contextlib.ExitStack) -> None:
    net = stack.enter_context(namespaces())
    h.env.update(AWS_ENV)
    bucket = f"pgbackup-{secrets.token_hex(4)}"
    create = (
        "import boto3,sys\n"
        f"boto3.client('s3', endpoint_url='{net.endpoint}', region_name='us-east-1')"
        ".create_bucket(Bucket=sys.argv[1])\nprint('{}')\n"
    )
    in_client(h, net, create, bucket)
    ctx["net"], ctx["bucket"] = net, bucket


@when(parsers.parse('the upload destination "{name}" is that S3 server'))
def destination(h: Harness, ctx: dict[str, Any], name: str) -> None:
    ctx["dest"] = {"name": name, **spec_for(ctx["net"], ctx["bucket"], "platform/")}
    h.policy["uploads"] = [ctx["dest"]]
    h.write_policy()


@when("wal-ship is started in the client namespace")
def start_shipper(h: Harness, ctx: dict[str, Any], shippers: list[Any]) -> None:
    net: Net = ctx["net"]
    proc = start_in_client(h, net, "--config", str(h.config), "wal-ship", "--interval", "0.5")
    shippers.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("shipping WAL of platform")


@when("the link is cut")
def cut(ctx: dict[str, Any]) -> None:
    ctx["net"].cut()


@when("the link is healed")
def heal(ctx: dict[str, Any]) -> None:
    ctx["net"].heal()


@when(parsers.parse("{n:d} batches are committed, each closing a WAL segment"))
def batches(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    ctx["failed_before"] = cluster.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    ctx["segments"] = []
    for i in range(1, n + 1):
        commit_batches(cluster, i, i)
        ctx["segments"].append(switch_and_wait(h))


@then("PostgreSQL archived every segment without a failure")
def archived_fine(h: Harness, ctx: dict[str, Any]) -> None:
    assert (
        h.sandbox().sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == ctx["failed_before"]
    )


@then(parsers.parse('check in the client namespace reports "{check}" {status}'))
def check_in_client(h: Harness, ctx: dict[str, Any], check: str, status: str) -> None:
    proc = subprocess.run(
        ctx["net"].client(PGBACKUP, "--config", str(h.config), "check", "--no-alert", "--json"),
        capture_output=True,
        text=True,
        env=h.env,
        timeout=120,
    )
    report = json.loads(proc.stdout)["platform"]
    found = [c for c in report["checks"] if c["name"] == check]
    assert found and found[0]["status"] == status, found


def local_objects(h: Harness) -> dict[str, str]:
    wal = h.repo / "platform" / "wal"
    return {
        f"platform/wal/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in wal.iterdir()
    }


def dest_objects(h: Harness, ctx: dict[str, Any]) -> dict[str, str]:
    spec = {k: v for k, v in ctx["dest"].items() if k != "name"}
    return dict(in_client(h, ctx["net"], LIST_CODE, json.dumps(spec), "platform/wal/"))


@then(parsers.parse('every archived WAL file reaches "{name}" within {seconds:d} seconds'))
def caught_up(h: Harness, ctx: dict[str, Any], name: str, seconds: int) -> None:
    deadline = time.monotonic() + seconds
    while True:
        missing = set(local_objects(h)) - set(dest_objects(h, ctx))
        if not missing:
            return
        assert time.monotonic() < deadline, sorted(missing)
        time.sleep(1)


@then(parsers.parse('every WAL file at "{name}" is byte for byte the repository\'s'))
def bytes_equal(h: Harness, ctx: dict[str, Any], name: str) -> None:
    there = dest_objects(h, ctx)
    here = local_objects(h)
    assert there == here
    assert all(any(seg in k for k in there) for seg in ctx["segments"])


# --- wal-push through the cut link ------------------------------------------------------


@given(parsers.parse("{n:d} WAL segments were archived locally and fetched back as originals"))
def originals(h: Harness, ctx: dict[str, Any], n: int) -> None:
    cluster = h.sandbox()
    out = h.root / "originals"
    out.mkdir()
    ctx["originals"] = []
    for i in range(n):
        commit_batches(cluster, i + 1, i + 1)
        segment = switch_and_wait(h)
        h.run("wal-fetch", "--target", "platform", segment, str(out / segment))
        ctx["originals"].append(out / segment)


@given("a second policy whose repository is that S3 server")
def s3_policy(h: Harness, ctx: dict[str, Any]) -> None:
    policy = json.loads(json.dumps(h.policy))
    policy["repository"] = spec_for(ctx["net"], ctx["bucket"], "pushed/")
    ctx["s3_config"] = h.root / "s3.yaml"
    ctx["s3_config"].write_text(yaml.safe_dump(policy, sort_keys=False))


def start_in_client(
    h: Harness, net: Net, *argv: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``pgbackup ARGV`` in the client namespace, its output captured."""
    return subprocess.Popen(
        net.client(PGBACKUP, *argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or h.env,
        cwd=h.root,
    )


def push(h: Harness, ctx: dict[str, Any], path: Path) -> subprocess.Popen[str]:
    return start_in_client(
        h,
        ctx["net"],
        "--config",
        str(ctx["s3_config"]),
        "wal-push",
        "--target",
        "platform",
        str(path),
    )


@when("the link is cut while each original is pushed to it")
def push_while_cut(h: Harness, ctx: dict[str, Any]) -> None:
    net: Net = ctx["net"]
    ctx["pushes"] = []
    for delay, path in zip((0.3, 0.6, 0.9), ctx["originals"], strict=False):
        proc = push(h, ctx, path)
        time.sleep(delay)
        net.cut()
        ctx.setdefault("cut_in_flight", []).append(proc.poll() is None)
        time.sleep(3)
        net.heal()
        out, err = proc.communicate(timeout=300)
        ctx["pushes"].append((proc.returncode, err))
    net.cut()  # and it stays down until the scenario heals it


@then("every push failed with one clear message, or succeeded")
def push_outcomes(ctx: dict[str, Any]) -> None:
    assert any(ctx["cut_in_flight"]), "every push ended before its link was cut"
    for rc, err in ctx["pushes"]:
        if rc != 0:
            assert "Traceback" not in err and err.startswith("pgbackup"), err


def fetch(
    h: Harness, ctx: dict[str, Any], segment: str, out: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ctx["net"].client(
            PGBACKUP,
            "--config",
            str(ctx["s3_config"]),
            "wal-fetch",
            "--target",
            "platform",
            segment,
            str(out),
        ),
        capture_output=True,
        text=True,
        env=h.env,
        timeout=300,
    )


@then("wal-fetch from it serves no segment that is not byte for byte the original")
def served_while_cut(h: Harness, ctx: dict[str, Any]) -> None:
    # The link is down: nothing may be served at all, and what is served later must be whole.
    out = h.root / "served"
    out.mkdir()
    path = ctx["originals"][0]
    proc = fetch(h, ctx, path.name, out / path.name)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert not (out / path.name).exists() or (out / path.name).read_bytes() == path.read_bytes()


@when("each original is pushed again")
def push_again(h: Harness, ctx: dict[str, Any]) -> None:
    for path in ctx["originals"]:
        proc = push(h, ctx, path)
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


@then("wal-fetch from it returns each original byte for byte")
def fetched_equal(h: Harness, ctx: dict[str, Any]) -> None:
    out = h.root / "fetched"
    out.mkdir()
    for path in ctx["originals"]:
        proc = fetch(h, ctx, path.name, out / path.name)
        assert proc.returncode == 0, proc.stderr
        assert (out / path.name).read_bytes() == path.read_bytes()


# --- wal-receive through the cut link ---------------------------------------------------


@given(
    "the server runs in its own network namespace, the receiver in a second one, a veth pair between them"
)
def server_in_namespace(h: Harness, ctx: dict[str, Any], stack: contextlib.ExitStack) -> None:
    """The sandbox's cluster moves into the server namespace, on its 10.x address; the
    policy names it by that address, archiving is off (only the receiver stores WAL)."""
    net = stack.enter_context(veth_pair("pg"))
    cluster = h.sandbox()
    # wal_sender_timeout: the walsender of a receiver that no longer answers ends after
    # it ("Terminate replication connections that are inactive for longer than this
    # amount of time", PostgreSQL's documentation), so the slot turns inactive during a
    # long outage and the receiver must come back through its slot.
    ctx["server"] = start_in_namespace(
        cluster,
        net.server_ns,
        net.address,
        h.root / "sock",
        {"archive_mode": "off", "wal_sender_timeout": "5s"},
    )
    assert ctx["server"].sql("SHOW archive_mode") == [("off",)]
    target = h.policy["targets"]["platform"]
    target.pop("sandbox")
    target["connection"] = {
        "host": net.address,
        "port": cluster.port,
        "user": "platform_service",
        "dbname": "platform",
    }
    target["wal_receiver"] = {"slot": "pgbackup_platform", "directory": str(h.root / "spool")}
    h.write_policy()
    ctx["net"], ctx["slot"] = net, "pgbackup_platform"


def in_ns(h: Harness, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=h.env, cwd=h.root, timeout=timeout
    )


def receiver_state(ctx: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The receiver's walsender: state, the WAL it reported written (pg_receivewal without
    --synchronous reports a flush only when it closes a segment: receivelog.c; what it
    wrote is what the receiver stores as .partial), the server's position, caught up."""
    return list(
        ctx["server"].sql(
            "SELECT r.state, r.write_lsn::text, pg_current_wal_lsn()::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), r.write_lsn) < 256 * 1024 "
            "FROM pg_stat_replication r WHERE r.application_name = 'pgbackup_platform'"
        )
    )


@when("wal-receive is started in the client namespace")
def receiver_in_client(h: Harness, ctx: dict[str, Any], wal_receivers: list[Any]) -> None:
    net: Net = ctx["net"]
    proc = start_in_client(
        h,
        net,
        *("--config", str(h.config), "wal-receive", "--target", "platform"),
        env={**h.env, "PGBACKUP_QUIET": "0"},
    )
    wal_receivers.append(proc)
    ctx["receiver"] = proc
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("streaming platform on slot"), (line, proc.poll())
    deadline = time.monotonic() + 30
    while not [r for r in receiver_state(ctx) if r[0] == "streaming"]:
        assert time.monotonic() < deadline, "the receiver never streamed"
        time.sleep(0.2)
    # the replication connection comes from the client namespace's address
    peer = ctx["server"].sql(
        "SELECT client_addr::text FROM pg_stat_replication WHERE application_name = 'pgbackup_platform'"
    )
    assert peer == [(f"{net.client_address}/32",)], peer


@when("a backup is taken from the client namespace")
def backup_in_client(h: Harness, ctx: dict[str, Any]) -> None:
    proc = in_ns(h, ctx["net"].client(PGBACKUP, "--config", str(h.config), "backup"))
    assert proc.returncode == 0, proc.stderr
    listed = in_ns(h, ctx["net"].client(PGBACKUP, "--config", str(h.config), "list", "--json"))
    ctx["backup"] = json.loads(listed.stdout)["platform"]["backups"][-1]


def _commit(server: Any, acked: list[tuple[int, str, float]], stop: threading.Event) -> None:
    """One row per commit; after each, the WAL insert position (at or past the commit
    record's end), so a commit counts as flushed by the receiver when it is <= its flush."""
    server.sql("CREATE TABLE stream_log (n int PRIMARY KEY)", dbname="platform")
    try:
        with server.connect("platform") as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO stream_log VALUES (%s)", (n,))
                lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
                acked.append((n, lsn, time.monotonic()))
                time.sleep(0.005)
    except Exception as exc:  # the server's fast shutdown ends the session
        acked.append((-1, str(exc), time.monotonic()))


@when("single-row commits run on the server")
def commits_run(ctx: dict[str, Any]) -> None:
    ctx["acked"], ctx["stop"] = [], threading.Event()
    ctx["writer"] = threading.Thread(
        target=_commit, args=(ctx["server"], ctx["acked"], ctx["stop"]), daemon=True
    )
    ctx["writer"].start()
    time.sleep(2)
    assert len(ctx["acked"]) > 50, ctx["acked"][-3:]


@when("the link is cut on the receiver's side")
def cut_client(ctx: dict[str, Any]) -> None:
    ctx["net"].cut("client")
    ctx["cut_at"] = time.monotonic()
    ctx["commits_at_cut"] = len(ctx["acked"])


def check_in_server_ns(h: Harness, ctx: dict[str, Any], name: str) -> dict[str, Any]:
    proc = in_ns(
        h,
        ctx["net"].server(
            PGBACKUP,
            "--config",
            str(h.config),
            "check",
            "--no-alert",
            "--json",
            "--target",
            "platform",
        ),
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    found = [c for c in json.loads(proc.stdout)["platform"]["checks"] if c["name"] == name]
    assert found, proc.stdout
    return dict(found[0])


@then(
    parsers.parse('check in the server namespace reports "{name}" {status} while the link is down')
)
def check_while_down(h: Harness, ctx: dict[str, Any], name: str, status: str) -> None:
    seen = []
    deadline = time.monotonic() + 30
    while True:
        found = check_in_server_ns(h, ctx, name)
        down_for = time.monotonic() - ctx["cut_at"]
        seen.append((round(down_for, 1), found["status"], found["summary"]))
        if found["status"] == status:
            break
        if down_for > 2.5 and found.get("value") is not None:
            # While the walsender still holds the connection, the lag is the receiver's
            # silence (its last reply's age), not a frozen write_lag of "0s".
            assert found["value"] >= down_for - 2.0, seen
        assert time.monotonic() < deadline, seen
        time.sleep(1)
    print("check during the outage:", *seen, sep="\n  ")
    time.sleep(max(0.0, ctx["cut_at"] + 10 - time.monotonic()))  # an outage of 10 s at least


@then("the server went on committing, across 2 segment switches, while the link was down")
def committed_while_down(ctx: dict[str, Any]) -> None:
    for _ in range(2):  # segments the receiver must fetch whole from its slot later
        ctx["server"].sql("SELECT pg_switch_wal()")
        time.sleep(0.5)
    during = len(ctx["acked"]) - ctx["commits_at_cut"]
    assert during > 100, during
    ctx["commits_while_down"] = during


@when("the link is healed on the receiver's side")
def heal_client(ctx: dict[str, Any]) -> None:
    ctx["net"].heal("client")
    ctx["healed_at"] = time.monotonic()


@then("the receiver streams from its slot again and catches up")
def resumes(h: Harness, ctx: dict[str, Any]) -> None:
    deadline = time.monotonic() + 90
    while True:
        rows = receiver_state(ctx)
        if rows and rows[0][0] == "streaming" and rows[0][3]:
            break
        assert time.monotonic() < deadline, (rows, ctx["receiver"].poll())
        time.sleep(0.3)
    print(f"streaming and caught up {time.monotonic() - ctx['healed_at']:.1f}s after healing")
    found = check_in_server_ns(h, ctx, "wal_receiver")
    assert found["status"] == "OK" and "streaming on" in found["summary"], found


@when("the commits stop and the server is stopped")
def stop_server(h: Harness, ctx: dict[str, Any]) -> None:
    time.sleep(1)
    ctx["stop"].set()
    ctx["writer"].join(30)
    time.sleep(1.5)  # a status packet after the last commit (--status-interval 1)
    rows = receiver_state(ctx)
    ctx["ack_flush"] = rows[0][1]
    # A fast shutdown's walsender sends everything up to the shutdown checkpoint and waits
    # for the receiver to confirm its flush before it exits (WalSndDone in
    # src/backend/replication/walsender.c).
    h.sandbox().stop("fast")


@then("wal-receive stops on SIGTERM with exit status 0")
def receiver_stops(ctx: dict[str, Any]) -> None:
    proc = ctx["receiver"]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, out, err[-3000:])
    assert "stopped:" in out and "Traceback" not in err, (out, err[-3000:])
    ctx["receiver_log"] = err
    print(out.strip().splitlines()[-1])
    print("restarts of pg_receivewal:", [ln for ln in err.splitlines() if "restarting in" in ln])


@then(
    "every segment since the backup is in the repository, each the server's bytes or a prefix of them"
)
def no_gap(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.formats.lsn import parse_lsn, segment_name

    size = 16 * 1024 * 1024
    cluster = h.sandbox()
    pg_wal = cluster.data_dir / "pg_wal"
    # the shutdown checkpoint's segment: the last one written (pg_wal may hold recycled
    # segments with later names, renamed ahead of use: xlog.c, InstallXLogFileSegment)
    control = subprocess.run(
        [cluster.program("pg_controldata"), str(cluster.data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env={**h.env, "LC_ALL": "C"},
    ).stdout
    checkpoint = next(
        ln.split(":", 1)[1].strip()
        for ln in control.splitlines()
        if ln.startswith("Latest checkpoint location:")
    )
    first = parse_lsn(ctx["backup"]["start_lsn"]) // size
    wanted = [segment_name(1, s * size) for s in range(first, parse_lsn(checkpoint) // size + 1)]
    wal = h.repo / "platform" / "wal"
    stored = {p.name for p in wal.iterdir()}
    out = h.root / "fetched"
    out.mkdir()
    partials = 0
    for name in wanted:
        complete = f"{name}.zst" in stored
        assert complete or (name == wanted[-1] and f"{name}.partial.zst" in stored), (
            name,
            sorted(stored),
        )
        got = h.run("wal-fetch", "--target", "platform", name, str(out / name))
        assert got.returncode == 0
        fetched = (out / name).read_bytes()
        server = (pg_wal / name).read_bytes()
        if complete:
            assert fetched == server, name
        else:
            partials += 1
            written = len(fetched.rstrip(b"\0"))
            assert written > 0 and fetched[:written] == server[:written], name
    # no stale .partial of a completed segment is left to be served
    assert not [n for n in stored if n.endswith(".partial.zst") and n[:24] != wanted[-1]], stored
    print(f"{len(wanted)} segments since the backup, {partials} of them as a .partial prefix")


@then(
    "a restore of the latest point holds every commit up to the receiver's last acknowledged flush"
)
def restore_holds(h: Harness, ctx: dict[str, Any]) -> None:
    from pgbackup.formats.lsn import parse_lsn

    restore_and_start(h, ctx, h.root / "restored", "--target", "latest")
    cluster = Cluster(*ctx["restored"])
    count, highest = cluster.sql("SELECT count(*), max(n) FROM stream_log", dbname="platform")[0]
    acked = [(n, lsn) for n, lsn, _t in ctx["acked"] if n > 0]
    last_acked = acked[-1][0]
    flush = parse_lsn(ctx["ack_flush"])
    covered = max(n for n, lsn in acked if parse_lsn(lsn) <= flush)
    print(
        f"commits acknowledged {last_acked} ({ctx['commits_while_down']} while the link was "
        f"down), covered by the receiver's flush {covered}, recovered {highest}"
    )
    assert count == highest  # no hole: every commit up to the highest
    assert covered <= highest <= last_acked + 1
    # the fast shutdown waited for the receiver: every acknowledged commit is there
    assert highest >= last_acked
