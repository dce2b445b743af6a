"""Steps for object_lock.feature: moto in server mode, a bucket with versioning and object
lock, the real CLI; the attacker is boto3 with the host's credentials."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import Harness, commit_batches, restore_and_start, switch_and_wait
from pytest_bdd import given, parsers, scenarios, then, when

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import services  # noqa: E402

scenarios("object_lock.feature")

PREFIX = "platform/"


def client(ctx: dict[str, Any], **keys: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=ctx["spec"]["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=keys.get("key", ctx["env"]["AWS_ACCESS_KEY_ID"]),
        aws_secret_access_key=keys.get("secret", ctx["env"]["AWS_SECRET_ACCESS_KEY"]),
    )


def versions(ctx: dict[str, Any], prefix: str = PREFIX) -> list[dict[str, Any]]:
    """Every version and delete marker under ``prefix`` (``Deleted`` tells them apart)."""
    s3 = client(ctx)
    out: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=ctx["bucket"], Prefix=prefix
    ):
        out += [dict(v, Deleted=False) for v in page.get("Versions", [])]
        out += [dict(v, Deleted=True) for v in page.get("DeleteMarkers", [])]
    return out


def lock_of(ctx: dict[str, Any], key: str, version_id: str) -> datetime | None:
    head = client(ctx).head_object(Bucket=ctx["bucket"], Key=key, VersionId=version_id)
    until = head.get("ObjectLockRetainUntilDate")
    return until.astimezone(UTC) if until else None


def policy_lock(h: Harness, ctx: dict[str, Any], margin: str | None = None) -> None:
    repo = dict(ctx["spec"], bucket=ctx["bucket"], maintenance_profile="maintenance")
    repo["object_lock"] = {"mode": "governance", **({"margin": margin} if margin else {})}
    h.policy["repository"] = repo
    h.write_policy()


# --- given ------------------------------------------------------------------------------


@given("a moto S3 server with a bucket that has versioning and object lock")
def locked_bucket(h: Harness, ctx: dict[str, Any], stack: contextlib.ExitStack) -> None:
    spec, env = stack.enter_context(services.moto_s3())
    ctx.update(spec=spec, env=env, bucket=services.unique_name("locked"))
    client(ctx).create_bucket(Bucket=ctx["bucket"], ObjectLockEnabledForBucket=True)
    # cleanup's own credentials: the maintenance profile (moto accepts any key).
    credentials = h.root / "aws-credentials"
    credentials.write_text(
        "[maintenance]\naws_access_key_id = maintenance-key\n"
        "aws_secret_access_key = maintenance-secret\n"
    )
    h.env.update(env, AWS_SHARED_CREDENTIALS_FILE=str(credentials))


@given("the repository is that bucket with object lock in governance mode")
def repository_locked(h: Harness, ctx: dict[str, Any]) -> None:
    policy_lock(h, ctx)


@given(
    parsers.parse(
        "retention keeps {days:d} days, {weekly:d} weekly, {monthly:d} monthly and locks "
        "have a margin of {margin}"
    )
)
def retention_and_margin(
    h: Harness, ctx: dict[str, Any], days: int, weekly: int, monthly: int, margin: str
) -> None:
    h.policy["retention"] = {"days": days, "weekly": weekly, "monthly": monthly}
    policy_lock(h, ctx, margin)
    ctx["margin"] = margin


@given(parsers.parse("batches {first:d} to {last:d} are committed and archived"))
def batches_archived(h: Harness, ctx: dict[str, Any], first: int, last: int) -> None:
    commit_batches(h.sandbox(), first, last)
    switch_and_wait(h)


# --- the attack -------------------------------------------------------------------------


@when(
    "an attacker with the host's credentials deletes every object and overwrites "
    "metadata.json, a base archive and a WAL segment"
)
def attack(h: Harness, ctx: dict[str, Any]) -> None:
    time.sleep(1.2)  # S3 keeps LastModified to the second: the attack is a later second
    ctx["attack_start"] = datetime.now(UTC).replace(microsecond=0)
    s3 = client(ctx)  # the host's own credentials
    current = [v for v in versions(ctx) if v["IsLatest"] and not v["Deleted"]]
    assert current
    for v in current:
        s3.delete_object(Bucket=ctx["bucket"], Key=v["Key"])  # a delete marker
    backup_id = ctx["backup_ids"][-1]
    base = f"{PREFIX}platform/base/{backup_id}/"
    wal = sorted(v["Key"] for v in current if "/wal/" in v["Key"] and v["Key"].endswith(".zst"))
    archive = next(v["Key"] for v in current if v["Key"].startswith(base + "base.tar"))
    ctx["attacked"] = [base + "metadata.json", archive, wal[0]]
    for key in ctx["attacked"]:
        s3.put_object(Bucket=ctx["bucket"], Key=key, Body=b"ransom note")  # a new version
    ctx["deleted"] = [v["Key"] for v in current]


@when("shortens the lock of the backup's manifest through the governance bypass")
def shorten_lock(ctx: dict[str, Any]) -> None:
    key = f"{PREFIX}platform/base/{ctx['backup_ids'][-1]}/backup_manifest"
    found = [v for v in versions(ctx, key) if v["Key"].startswith(key) and not v["Deleted"]]
    original = min(found, key=lambda v: v["LastModified"])
    shorter = datetime.now(UTC) + timedelta(hours=1)
    # Governance mode: an identity with s3:BypassGovernanceRetention may shorten a lock
    # (moto lets anyone: it does not enforce the permission; plan's roles never hold it).
    client(ctx).put_object_retention(
        Bucket=ctx["bucket"],
        Key=original["Key"],
        VersionId=original["VersionId"],
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": shorter},
        BypassGovernanceRetention=True,
    )
    ctx["shortened"] = original["Key"]


@then("check's object_lock is CRITICAL and names the manifest's shortened lock")
def lock_shortened(ctx: dict[str, Any]) -> None:
    check = ctx["check"]["object_lock"]
    assert check["status"] == "CRITICAL", check
    assert ctx["shortened"].removeprefix(PREFIX) in check["summary"], check
    assert check["value"] == 1, check


@then("deleting a locked version is refused")
def locked_version_delete_refused(ctx: dict[str, Any]) -> None:
    from botocore.exceptions import ClientError

    s3 = client(ctx)
    original = [
        v
        for v in versions(ctx, ctx["attacked"][0])
        if not v["Deleted"] and v["LastModified"] < ctx["attack_start"]
    ]
    assert len(original) == 1, original
    try:
        s3.delete_object(
            Bucket=ctx["bucket"], Key=original[0]["Key"], VersionId=original[0]["VersionId"]
        )
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied", exc.response
    else:
        raise AssertionError("a locked version was deleted")
    assert any(
        v["VersionId"] == original[0]["VersionId"] for v in versions(ctx, original[0]["Key"])
    )


@then("the live repository lists no complete backup")
def live_lists_nothing(h: Harness) -> None:
    assert not [b for b in h.backups() if b["status"] == "complete"], h.backups()


@then("check is CRITICAL and names the changed keys and an --as-of time before the attack")
def check_critical(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("check", "--json", "--no-alert", expect_ok=False)
    report = json.loads(proc.stdout)["platform"]
    assert report["status"] == "CRITICAL", report
    ctx["check"] = {c["name"]: c for c in report["checks"]}
    tamper = next(c for c in report["checks"] if c["name"] == "tampering")
    assert tamper["status"] == "CRITICAL", tamper
    assert tamper["value"] == len(ctx["deleted"]), tamper
    assert "metadata.json overwritten and deleted" in tamper["summary"] or (
        "metadata.json overwritten" in tamper["summary"]
    ), tamper
    found = re.search(r"--as-of (\S+)", tamper["summary"])
    assert found, tamper
    as_of = datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
    assert as_of < ctx["attack_start"], (as_of, ctx["attack_start"])
    assert as_of >= ctx["attack_start"] - timedelta(seconds=3), (as_of, ctx["attack_start"])
    ctx["as_of"] = found.group(1)


@then('"list --as-of" at that time lists the backup as complete')
def list_as_of(h: Harness, ctx: dict[str, Any]) -> None:
    backups = h.json("list", "--as-of", ctx["as_of"])["platform"]["backups"]
    complete = [b["backup_id"] for b in backups if b["status"] == "complete"]
    assert complete == ctx["backup_ids"][-1:], backups


@then('"verify --as-of" at that time passes')
def verify_as_of(h: Harness, ctx: dict[str, Any]) -> None:
    out = h.run("verify", "--as-of", ctx["as_of"], "--wal").stdout
    assert "OK" in out and "continuous" in out, out


@then('"drill --as-of" at that time passes its checks')
def drill_as_of(h: Harness, ctx: dict[str, Any]) -> None:
    result = h.json("drill", "--as-of", ctx["as_of"])["platform"]
    assert result["status"] == "ok", result


@then(
    parsers.parse(
        '"extract --as-of" at that time writes the batches table with batches {first:d} to {last:d}'
    )
)
def extract_as_of(h: Harness, ctx: dict[str, Any], first: int, last: int) -> None:
    tmp = h.root / "tmp"
    tmp.mkdir(exist_ok=True)
    os.chmod(tmp, 0o1777)  # the scratch server's OS user writes there too
    h.env["TMPDIR"] = str(tmp)
    out = h.root / "batches.sql"
    h.run(
        "extract",
        "--as-of",
        ctx["as_of"],
        "--db",
        "platform",
        "--table",
        "public.pitr_batches",
        "--target",
        "latest",
        "--format",
        "plain",
        "--output",
        str(out),
    )
    text = out.read_text()
    copied = text.split("COPY public.pitr_batches", 1)[1].split("\\.", 1)[0]
    batches = sorted({int(line.split("\t")[0]) for line in copied.splitlines()[1:] if line})
    assert batches == list(range(first, last + 1)), batches


@when("I restore --as-of that time with --target latest and start it")
def restore_as_of(h: Harness, ctx: dict[str, Any]) -> None:
    restore_and_start(h, ctx, h.root / "restored", "--as-of", ctx["as_of"], "--target", "latest")
    conf = (h.root / "restored" / "postgresql.auto.conf").read_text()
    assert "--as-of" in conf, conf  # wal-fetch reads the same past


@then("every object of the backup and every archived WAL segment is locked as promised")
def all_locked(h: Harness, ctx: dict[str, Any]) -> None:
    found = [v for v in versions(ctx) if not v["Deleted"]]
    backup = [v for v in found if "/base/" in v["Key"]]
    wal = [v for v in found if "/wal/" in v["Key"] and ".partial" not in v["Key"]]
    assert backup and wal, found
    assert_locked_as_promised(h, ctx, backup + wal)


def assert_locked_as_promised(h: Harness, ctx: dict[str, Any], found: list[dict[str, Any]]) -> None:
    """Each version in ``found`` is locked until its write time + the policy's horizon
    (``retention.days`` for a backup's object, the longest period for the rest) + the
    margin (the default day unless ``ctx["margin_seconds"]`` says otherwise), to the second."""
    margin = ctx.get("margin_seconds", 86400)
    days = h.policy["retention"]["days"]
    longest = max(days, 7 * h.policy["retention"]["weekly"], 31 * h.policy["retention"]["monthly"])
    for v in found:
        until = lock_of(ctx, v["Key"], v["VersionId"])
        horizon = days if "/base/" in v["Key"] else longest
        expected = v["LastModified"] + timedelta(days=horizon, seconds=margin)
        assert until is not None, v["Key"]
        assert abs((until - expected).total_seconds()) <= 2, (v["Key"], until, expected)


# --- cleanup ----------------------------------------------------------------------------


@when("I run cleanup with the maintenance credentials")
def cleanup_maintenance(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("cleanup")
    ctx.setdefault("cleanups", []).append(proc.stdout)
    assert "Traceback" not in proc.stdout + proc.stderr


@then("the first backup is still listed as complete and cleanup said its lock holds it")
def first_held(h: Harness, ctx: dict[str, Any]) -> None:
    first = ctx["backup_ids"][0]
    assert first in [b["backup_id"] for b in h.backups() if b["status"] == "complete"]
    assert_held_by_lock(ctx["cleanups"][-1], first)


def assert_held_by_lock(out: str, backup_id: str) -> None:
    """cleanup's output says, once, that retention expired ``backup_id`` and its lock
    kept it, and that it removed no backup."""
    assert out.count("object lock has not ended") == 1, out
    # retention expired it; the lock kept it: said, not an error
    assert f"{backup_id}: locked (" in out and "locked until" in out, out
    assert "removed 0 backup(s)" in out, out


@when("the locks of everything written before the second backup have ended")
def wait_locks(ctx: dict[str, Any]) -> None:
    second = ctx["backup_ids"][1]
    wait_lock_ended(ctx, f"{PREFIX}platform/base/{second}/metadata.json")


def wait_lock_ended(ctx: dict[str, Any], key: str) -> None:
    """Sleep until the lock of ``key``'s (one) version has ended: less than a minute."""
    v = next(v for v in versions(ctx, key) if not v["Deleted"] and v["Key"] == key)
    until = lock_of(ctx, key, v["VersionId"])
    assert until is not None
    wait = (until - datetime.now(UTC)).total_seconds() + 1.5
    assert wait < 60, wait
    time.sleep(max(0.0, wait))


@then("no version of any object of the first backup is left")
def first_gone(ctx: dict[str, Any]) -> None:
    first = ctx["backup_ids"][0]
    assert versions(ctx, f"{PREFIX}platform/base/{first}/") == []


@then("no version of WAL older than the second backup is left")
def old_wal_gone(h: Harness, ctx: dict[str, Any]) -> None:
    second = next(b for b in h.backups() if b["backup_id"] == ctx["backup_ids"][1])
    names = sorted(
        {v["Key"].rsplit("/", 1)[1][:24] for v in versions(ctx, f"{PREFIX}platform/wal/")}
    )
    assert names, "the second backup's WAL is gone"
    # The segment of the second backup's start LSN (log and segment parts, 16 MiB segments).
    hi, lo = (int(x, 16) for x in second["start_lsn"].split("/"))
    segment = f"{hi:08X}{lo >> 24:08X}"
    assert min(name[8:] for name in names) >= segment, (names, segment)


@then("the second backup is complete and verifies")
def second_ok(h: Harness, ctx: dict[str, Any]) -> None:
    second = ctx["backup_ids"][1]
    assert [b["backup_id"] for b in h.backups() if b["status"] == "complete"] == [second]
    h.run("verify", "--backup", second)


@then("check finds no tampering")
def no_tampering(h: Harness) -> None:
    report = json.loads(h.run("check", "--json", "--no-alert", expect_ok=None).stdout)["platform"]
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["tampering"]["status"] == "OK", by_name["tampering"]
    assert by_name["object_lock"]["status"] == "OK", by_name["object_lock"]


# --- promotion --------------------------------------------------------------------------


def backup_locks(ctx: dict[str, Any]) -> dict[str, datetime | None]:
    backup_id = ctx["backup_ids"][-1]
    found = [v for v in versions(ctx, f"{PREFIX}platform/base/{backup_id}/") if not v["Deleted"]]
    assert len(found) >= 3, found  # archives, manifest, metadata.json
    return {v["Key"]: lock_of(ctx, v["Key"], v["VersionId"]) for v in found}


def stop_time(h: Harness, ctx: dict[str, Any]) -> datetime:
    b = next(b for b in h.backups() if b["backup_id"] == ctx["backup_ids"][-1])
    return datetime.fromisoformat(b["stop_time"].replace("Z", "+00:00")).astimezone(UTC)


@then("every object of the backup is locked until the end of its weekly promise")
def weekly_locks(h: Harness, ctx: dict[str, Any]) -> None:
    stop = stop_time(h, ctx)
    monday = datetime(stop.year, stop.month, stop.day, tzinfo=UTC) - timedelta(days=stop.weekday())
    expected = monday + timedelta(weeks=2, seconds=60)  # its week, then one more
    locks = backup_locks(ctx)
    assert all(
        until is not None and abs((until - expected).total_seconds()) < 1.5
        for until in locks.values()
    ), (locks, expected)
    ctx["weekly_until"] = expected
    assert "lock(s) extended" in ctx["cleanups"][-1], ctx["cleanups"][-1]


@then("every object of the backup is locked until the end of its monthly promise")
def monthly_locks(h: Harness, ctx: dict[str, Any]) -> None:
    stop = stop_time(h, ctx)
    index = stop.year * 12 + stop.month - 1 + 3
    expected = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC) + timedelta(seconds=60)
    locks = backup_locks(ctx)
    assert all(
        until is not None and abs((until - expected).total_seconds()) < 1.5
        for until in locks.values()
    ), (locks, expected)
    assert expected > ctx["weekly_until"]


# --- an upload destination ------------------------------------------------------------


@given(
    parsers.parse(
        'an upload destination "{name}" on another locked bucket, keeping copies {days:d} days'
    )
)
def locked_upload(h: Harness, ctx: dict[str, Any], name: str, days: int) -> None:
    bucket = services.unique_name("offsite")
    client(ctx).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    h.policy["uploads"] = [
        dict(
            ctx["spec"],
            name=name,
            bucket=bucket,
            retention_days=days,
            object_lock={"mode": "governance"},
        )
    ]
    h.write_policy()
    ctx["upload_bucket"] = bucket


@then(
    parsers.parse(
        'every object of the backup\'s copy at "{name}" is locked for {days:d} days and the margin'
    )
)
def upload_locked(ctx: dict[str, Any], name: str, days: int) -> None:
    base = f"{PREFIX}platform/base/{ctx['backup_ids'][-1]}/"
    found = [v for v in versions(dict(ctx, bucket=ctx["upload_bucket"]), base) if not v["Deleted"]]
    assert any(v["Key"].endswith("metadata.json") for v in found), found
    for v in found:
        until = lock_of(dict(ctx, bucket=ctx["upload_bucket"]), v["Key"], v["VersionId"])
        expected = v["LastModified"] + timedelta(days=days + 1)  # + the default margin
        assert until is not None and abs((until - expected).total_seconds()) <= 2, (v, until)


@when(
    parsers.parse(
        "an attacker with the host's credentials deletes the copy's metadata.json at \"{name}\""
    )
)
def attack_upload(ctx: dict[str, Any], name: str) -> None:
    time.sleep(1.2)
    key = f"{PREFIX}platform/base/{ctx['backup_ids'][-1]}/metadata.json"
    client(ctx).delete_object(Bucket=ctx["upload_bucket"], Key=key)
    ctx["upload_attacked"] = key


@then(parsers.parse('check\'s "{check}" is CRITICAL and names that key'))
def upload_tamper_reported(h: Harness, ctx: dict[str, Any], check: str) -> None:
    proc = h.run("check", "--json", "--no-alert", expect_ok=False)
    by_name = {c["name"]: c for c in json.loads(proc.stdout)["platform"]["checks"]}
    assert by_name[check]["status"] == "CRITICAL", by_name[check]
    key = ctx["upload_attacked"].removeprefix(PREFIX)
    assert f"{key} deleted at" in by_name[check]["summary"], by_name[check]
    assert by_name["tampering"]["status"] == "OK", by_name["tampering"]  # the repository
    assert by_name[check.replace("tampering", "object_lock")]["status"] == "OK"


# --- refusals ---------------------------------------------------------------------------


@given("the repository is a bucket without versioning, with object lock declared")
def plain_bucket(h: Harness, ctx: dict[str, Any]) -> None:
    plain = services.unique_name("plain")
    client(ctx).create_bucket(Bucket=plain)
    h.policy["repository"] = dict(ctx["spec"], bucket=plain, object_lock={"mode": "compliance"})
    h.write_policy()


@then('"validate --live" fails saying the bucket has no versioning and no object lock')
def validate_refuses(h: Harness) -> None:
    proc = h.run("validate", "--live", expect_ok=False)
    out = proc.stdout + proc.stderr
    assert "has no versioning and no object lock" in out, out
    assert "Traceback" not in out


@then('"validate --live" accepts the bucket')
def validate_accepts(h: Harness) -> None:
    out = h.run("validate", "--live").stdout
    assert "object lock" not in out, out


@then('"list --as-of" on a posix repository is refused before anything is read')
def as_of_posix(h: Harness) -> None:
    h.policy["repository"] = {"path": str(h.root / "posix-repo")}
    h.write_policy()
    proc = h.run("list", "--as-of", "2026-11-23T14:30:00Z", expect_ok=False)
    assert proc.returncode == 2, proc
    assert "--as-of reads object versions, which a posix repository does not keep" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing read nor stored; only the log file, which lives beside the repository.
    stored = [p.name for p in (h.root / "posix-repo").glob("*")]
    assert stored in ([], ["backup.log"]), stored
    bad = h.run("list", "--as-of", "yesterday", expect_ok=False)
    assert "--as-of 'yesterday' is not a time" in bad.stderr, bad.stderr


# --- IAM --------------------------------------------------------------------------------


@given("the IAM policies that plan prints for the repository")
def iam_policies(h: Harness, ctx: dict[str, Any]) -> None:
    plan = h.json("plan")
    item = next(i for i in plan["iam"] if i["storage"] == "repository")
    ctx["iam"] = item
    text = h.run("plan").stdout
    assert "role host" in text and "role maintenance" in text, text


@then(
    "an identity with the host policy can create an object but cannot delete it nor a version of it"
)
def host_cannot_delete(ctx: dict[str, Any], stack: contextlib.ExitStack) -> None:
    import boto3
    from botocore.exceptions import ClientError

    port = services.free_port()
    # moto enforces IAM after this many requests (its INITIAL_NO_AUTH_ACTION_COUNT): the
    # set-up below is the first 8.
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "8"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(server.wait, 10)
    stack.callback(server.terminate)
    services.wait_for_port(port)
    url = f"http://127.0.0.1:{port}"
    root = {"endpoint_url": url, "region_name": "us-east-1"}
    admin = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", **root}
    bucket = ctx["bucket"]
    boto3.client("s3", **admin).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    iam = boto3.client("iam", **admin)
    keys = {}
    for role in ("host", "maintenance"):
        iam.create_user(UserName=role)
        iam.put_user_policy(
            UserName=role, PolicyName=role, PolicyDocument=json.dumps(ctx["iam"][role])
        )
        made = iam.create_access_key(UserName=role)["AccessKey"]
        keys[role] = boto3.client(
            "s3",
            aws_access_key_id=made["AccessKeyId"],
            aws_secret_access_key=made["SecretAccessKey"],
            **root,
        )
    ctx["iam_clients"] = keys
    host = keys["host"]
    key = f"{PREFIX}platform/wal/000000010000000000000001.zst"
    made = host.put_object(Bucket=bucket, Key=key, Body=b"segment", IfNoneMatch="*")
    ctx["iam_key"] = (bucket, key)
    for attempt in (
        lambda: host.delete_object(Bucket=bucket, Key=key),
        lambda: host.delete_object(Bucket=bucket, Key=key, VersionId=made["VersionId"]),
    ):
        try:
            attempt()
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "AccessDenied", exc.response
        else:
            raise AssertionError("the host role deleted an object")
    assert host.get_object(Bucket=bucket, Key=key)["Body"].read() == b"segment"


@then("an identity with the maintenance policy can delete it")
def maintenance_deletes(ctx: dict[str, Any]) -> None:
    bucket, key = ctx["iam_key"]
    maintenance = ctx["iam_clients"]["maintenance"]
    maintenance.delete_object(Bucket=bucket, Key=key)
    from botocore.exceptions import ClientError

    try:
        maintenance.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchKey", exc.response
    else:
        raise AssertionError("the maintenance role's delete did not take")
