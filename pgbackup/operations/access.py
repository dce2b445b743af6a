"""The two roles of an S3 repository, as IAM policies (``plan``; docs/security.md).

* **host**: what the database host's jobs need (backup, wal-push, wal-receive, wal-ship,
  verify, restore, check, list, drill): read everything, create objects, never delete or
  overwrite one. Every ``PutObject``/``CompleteMultipartUpload`` must be conditional
  (``If-None-Match: *``: create only) except the two keys written again in place by
  design (wal-receive's ``.partial``, wal-ship's status). Under object lock the host
  deletes nothing at all (a completed segment's stale ``.partial`` stays until cleanup);
  without it, ``DeleteObject`` is allowed on ``.partial`` only.
  ``PutObjectRetention`` lets it set a multipart upload's lock on the completed version;
  without ``s3:BypassGovernanceRetention`` a lock can only be extended. Explicit denies
  keep another attached policy from granting what would let it destroy a backup.
* **maintenance**: ``cleanup``, run elsewhere with ``maintenance_profile``: the same
  reads, locks extended, versions deleted (only once their lock has ended: no bypass).
"""

from __future__ import annotations

from typing import Any

DESTROY = [
    "s3:DeleteObjectVersion",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketVersioning",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
]
READ = ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectRetention"]
LIST = ["s3:ListBucket", "s3:ListBucketVersions"]
BUCKET_FACTS = ["s3:GetBucketVersioning", "s3:GetBucketObjectLockConfiguration"]


def _arns(spec: dict[str, Any]) -> tuple[str, str, str]:
    bucket = str(spec.get("bucket"))
    prefix = str(spec.get("prefix") or "").strip("/")
    prefix = f"{prefix}/" if prefix else ""
    return f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{prefix}*", prefix


def host_policy(spec: dict[str, Any], *, partials: bool = True) -> dict[str, Any]:
    """The host role; ``partials``: the host deletes a completed segment's stale
    ``.partial`` (some target runs wal-receive, and the storage declares no object lock:
    under a lock the stale copy stays until cleanup). Without it the role holds no delete
    at all."""
    bucket, objects, prefix = _arns(spec)
    rewritten = [f"{bucket}/{prefix}*/wal/*.partial*", f"{bucket}/{prefix}*/wal-ship.json"]
    doc: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": [
            *_bucket_statements(bucket, prefix),
            {"Sid": "Read", "Effect": "Allow", "Action": READ, "Resource": objects},
            {
                "Sid": "CreateAndLock",
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:PutObjectRetention",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": objects,
            },
            {
                "Sid": "CreateOnlyNeverOverwrite",
                "Effect": "Deny",
                "Action": "s3:PutObject",
                "NotResource": rewritten,
                "Condition": {
                    "Null": {"s3:if-none-match": "true"},
                    "Bool": {"s3:ObjectCreationOperation": "true"},
                },
            },
            {
                "Sid": "ReplaceTheOpenSegmentOnly",
                "Effect": "Allow",
                "Action": "s3:DeleteObject",
                "Resource": rewritten[0],
            },
            {
                "Sid": "NeverDelete",
                "Effect": "Deny",
                "Action": "s3:DeleteObject",
                "NotResource": rewritten[0],
            },
            {
                "Sid": "NeverDestroy",
                "Effect": "Deny",
                "Action": DESTROY,
                "Resource": [bucket, objects],
            },
        ],
    }
    if not partials:
        doc["Statement"] = [s for s in doc["Statement"] if s["Sid"] != "ReplaceTheOpenSegmentOnly"]
        for statement in doc["Statement"]:
            if statement["Sid"] == "NeverDelete":
                statement.pop("NotResource")
                statement["Resource"] = objects
    return doc


def _bucket_statements(bucket: str, prefix: str) -> list[dict[str, Any]]:
    """What both roles may do on the bucket itself: list the repository's prefix, read
    its protection (versioning, object lock), nothing else."""
    return [
        {
            "Sid": "ListTheRepository",
            "Effect": "Allow",
            "Action": LIST,
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        },
        {"Sid": "BucketProtection", "Effect": "Allow", "Action": BUCKET_FACTS, "Resource": bucket},
    ]


def maintenance_policy(spec: dict[str, Any]) -> dict[str, Any]:
    bucket, objects, prefix = _arns(spec)
    return {
        "Version": "2012-10-17",
        "Statement": [
            *_bucket_statements(bucket, prefix),
            {
                "Sid": "ExpireWhatRetentionReleased",
                "Effect": "Allow",
                "Action": [
                    *READ,
                    "s3:PutObject",
                    "s3:PutObjectRetention",
                    "s3:DeleteObject",
                    "s3:DeleteObjectVersion",
                ],
                "Resource": objects,
            },
            {
                "Sid": "NoLockBypass",
                "Effect": "Deny",
                "Action": [d for d in DESTROY if d != "s3:DeleteObjectVersion"],
                "Resource": [bucket, objects],
            },
        ],
    }


def iam_plan(policy: Any) -> list[dict[str, Any]]:
    """Each S3 storage (the repository, then the upload destinations) and its roles."""
    specs = [("repository", policy.repository)] + [
        (f"upload {u.get('name')}", u) for u in policy.uploads or []
    ]
    receives = any(t.wal_receiver for t in policy.targets.values())
    out = []
    for name, spec in specs:
        partials = receives and not spec.get("object_lock")
        if spec.get("kind") != "s3":
            continue
        out.append(
            {
                "storage": name,
                "bucket": spec.get("bucket"),
                "object_lock": (spec.get("object_lock") or {}).get("mode"),
                "host": host_policy(spec, partials=partials),
                "maintenance": maintenance_policy(spec),
            }
        )
    return out


def protection_problems(policy: Any) -> list[str]:
    """``validate --live``: each storage that declares ``object_lock`` must be a bucket
    with versioning and object lock enabled (asked of the store itself)."""
    from pgbackup.errors import PgBackupError
    from pgbackup.storage import open_storage

    specs = [("repository", policy.repository)] + [
        (f"uploads.{u.get('name')}", u) for u in policy.uploads or []
    ]
    problems = []
    for name, spec in specs:
        if not spec.get("object_lock"):
            continue
        clean = {k: v for k, v in spec.items() if k not in ("name", "retention_days")}
        try:
            found = open_storage(clean).protection()
        except PgBackupError as exc:
            problems.append(f"{name}: cannot check the bucket's protection: {exc.message}")
            continue
        missing = [what for what in ("versioning", "object_lock") if not found.get(what)]
        if missing:
            problems.append(
                f"{name}: object_lock is declared but bucket {spec.get('bucket')!r} has no "
                + " and no ".join(w.replace("_", " ") for w in missing)
                + " (object lock can only be enabled on a versioned bucket, for new buckets "
                "at creation: create one with --object-lock-enabled-for-bucket)"
            )
    return problems
