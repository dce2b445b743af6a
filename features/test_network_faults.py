"""Steps for network_faults.feature: a moto S3 server in a network namespace of its own,
pgbackup's network commands in a second one, a veth pair between them (10.x addresses in
those namespaces only), the link cut with ``ip link set down`` and healed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import PGBACKUP, Harness, commit_batches, switch_and_wait
from pytest_bdd import given, parsers, scenarios, then, when

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


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@dataclass
class Net:
    server_ns: str
    client_ns: str
    server_if: str
    address: str
    port: int = 5000

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    def client(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *argv]

    def cut(self) -> None:
        assert ip("-n", self.server_ns, "link", "set", self.server_if, "down").returncode == 0

    def heal(self) -> None:
        assert ip("-n", self.server_ns, "link", "set", self.server_if, "up").returncode == 0


@contextlib.contextmanager
def namespaces() -> Iterator[Net]:
    tag = secrets.token_hex(3)
    server_ns, client_ns = f"pgbk-s3-{tag}", f"pgbk-cl-{tag}"
    server_if, client_if = f"pgs{tag}", f"pgc{tag}"
    octet = int(tag[:2], 16)
    created: list[str] = []
    proc: subprocess.Popen[bytes] | None = None
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces with")
    try:
        probe = ip("netns", "add", server_ns)
        if probe.returncode != 0:
            pytest.skip(f"ip netns add is not permitted here: {probe.stderr.strip()}")
        created.append(server_ns)
        for step in (
            ("netns", "add", client_ns),
            ("link", "add", server_if, "type", "veth", "peer", "name", client_if),
            ("link", "set", server_if, "netns", server_ns),
            ("link", "set", client_if, "netns", client_ns),
            ("-n", server_ns, "addr", "add", f"10.231.{octet}.1/30", "dev", server_if),
            ("-n", client_ns, "addr", "add", f"10.231.{octet}.2/30", "dev", client_if),
            ("-n", server_ns, "link", "set", "lo", "up"),
            ("-n", client_ns, "link", "set", "lo", "up"),
            ("-n", server_ns, "link", "set", server_if, "up"),
            ("-n", client_ns, "link", "set", client_if, "up"),
        ):
            done = ip(*step)
            assert done.returncode == 0, (step, done.stderr)
            if step[:2] == ("netns", "add"):
                created.append(step[2])
        net = Net(server_ns, client_ns, server_if, f"10.231.{octet}.1")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", server_ns, MOTO, "-H", net.address, "-p", str(net.port)],
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
        assert subprocess.run(net.client(PYTHON, "-c", wait)).returncode == 0, "moto never listened"
        yield net
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in created:  # deleting a namespace deletes its end of the veth pair, and so both
            ip("netns", "del", ns)


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture
def shippers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
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
    proc = subprocess.Popen(
        net.client(PGBACKUP, "--config", str(h.config), "wal-ship", "--interval", "0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.env,
        cwd=h.root,
    )
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


def push(h: Harness, ctx: dict[str, Any], path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ctx["net"].client(
            PGBACKUP,
            "--config",
            str(ctx["s3_config"]),
            "wal-push",
            "--target",
            "platform",
            str(path),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.env,
        cwd=h.root,
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
