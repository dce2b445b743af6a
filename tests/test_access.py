"""The IAM policies plan prints for the two roles (operations/access.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pgbackup.operations.access import host_policy, iam_plan, maintenance_policy

SPEC = {"kind": "s3", "bucket": "pg-backups", "prefix": "platform/"}


def statements(doc: dict[str, Any], effect: str) -> list[dict[str, Any]]:
    return [s for s in doc["Statement"] if s["Effect"] == effect]


def actions(doc: dict[str, Any], effect: str) -> set[str]:
    out: set[str] = set()
    for s in statements(doc, effect):
        out |= {s["Action"]} if isinstance(s["Action"], str) else set(s["Action"])
    return out


def test_the_host_creates_and_never_deletes() -> None:
    doc = host_policy(SPEC, partials=False)
    allowed = actions(doc, "Allow")
    assert {"s3:PutObject", "s3:GetObjectVersion", "s3:ListBucketVersions"} <= allowed
    assert (
        not {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} & allowed
    )
    denied = actions(doc, "Deny")
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= denied
    never_delete = next(s for s in doc["Statement"] if s["Sid"] == "NeverDelete")
    assert never_delete["Resource"] == "arn:aws:s3:::pg-backups/platform/*"
    create_only = next(s for s in doc["Statement"] if s["Sid"] == "CreateOnlyNeverOverwrite")
    assert create_only["Condition"] == {
        "Null": {"s3:if-none-match": "true"},
        "Bool": {"s3:ObjectCreationOperation": "true"},
    }
    assert create_only["NotResource"] == [
        "arn:aws:s3:::pg-backups/platform/*/wal/*.partial*",
        "arn:aws:s3:::pg-backups/platform/*/wal-ship.json",
    ]


def test_without_a_lock_the_receiver_may_delete_partials_only() -> None:
    doc = host_policy(SPEC, partials=True)
    allow = next(s for s in doc["Statement"] if s["Sid"] == "ReplaceTheOpenSegmentOnly")
    assert allow["Action"] == "s3:DeleteObject"
    assert allow["Resource"] == "arn:aws:s3:::pg-backups/platform/*/wal/*.partial*"
    deny = next(s for s in doc["Statement"] if s["Sid"] == "NeverDelete")
    assert deny["NotResource"] == allow["Resource"]


def test_maintenance_deletes_versions_but_cannot_bypass_a_lock() -> None:
    doc = maintenance_policy(SPEC)
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectRetention"} <= actions(
        doc, "Allow"
    )
    assert "s3:BypassGovernanceRetention" in actions(doc, "Deny")
    assert "s3:DeleteObjectVersion" not in actions(doc, "Deny")


def test_plan_covers_each_s3_storage_and_the_receiver() -> None:
    receiving = SimpleNamespace(wal_receiver={"slot": "pgbackup"})
    policy = SimpleNamespace(
        repository={**SPEC, "object_lock": {"mode": "compliance"}},
        uploads=[
            {"name": "offsite", "kind": "s3", "bucket": "copies"},
            {"name": "nas", "kind": "posix", "path": "/mnt/nas"},
        ],
        targets={"platform": receiving},
    )
    plan = iam_plan(policy)
    assert [p["storage"] for p in plan] == ["repository", "upload offsite"]
    locked, unlocked = plan
    assert locked["object_lock"] == "compliance"
    assert "s3:DeleteObject" not in actions(locked["host"], "Allow")  # a lock: no delete
    assert "s3:DeleteObject" in actions(unlocked["host"], "Allow")  # partials, no lock
