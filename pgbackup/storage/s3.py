"""A repository in an S3 bucket (AWS or any S3-compatible endpoint).

Spec: ``{kind: s3, bucket, prefix, region, endpoint_url, part_size, retries, streams,
addressing_style}``. Credentials come only from botocore's own chain, boto3's (environment
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
config files, instance or task roles) — never from the spec.

Writes smaller than one part are a single ``PutObject``; larger ones a multipart upload
(``CreateMultipartUpload`` / ``UploadPart`` / ``CompleteMultipartUpload``, and
``AbortMultipartUpload`` on abort). ``if_absent`` is S3's conditional write:
``IfNoneMatch='*'`` on ``PutObject`` and on ``CompleteMultipartUpload`` — atomic on the
server; a clash is HTTP 412 ``PreconditionFailed`` and becomes ObjectExists.

Parts go up ``streams`` at a time (cloud.CloudWriter). An object larger than one part is
read as ranged ``GetObject`` requests with ``IfMatch`` set to the ETag the first GET
returned (cloud.RangedReader): an overwrite during the read is HTTP 412, ObjectChanged.

With ``object_lock`` (docs/security.md) every object is written create-only
(``IfNoneMatch='*'``) with ``ObjectLockMode``/``ObjectLockRetainUntilDate`` from
policy/immutability.retain_until; a multipart upload's lock is set again on the completed
version (``PutObjectRetention``, extending only: moto does not carry a multipart upload's
lock). With ``as_of`` (``--as-of``) every read sees the bucket as it was then: listings
come from ``ListObjectVersions`` (the newest version of each key written at or before the
time; a delete marker there hides the key), reads name the ``VersionId``; nothing is
deleted through such a view. ``maintenance_profile`` is the AWS profile cleanup opens the
repository with (``role: maintenance`` in the spec); every other command uses the default
chain.

botocore (boto3's core; boto3 itself is not needed at run time) is imported here only,
when an S3 repository is opened; its client is built as boto3 builds one, from a session
whose loader skips a listing of every service (storage/botocore_loader).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from pgbackup.errors import ConfigError, StorageError, UsageError
from pgbackup.policy.immutability import (
    LockRule,
    Version,
    lock_rule,
    parse_as_of,
    retain_until,
    version_as_of,
)
from pgbackup.storage.cloud import (
    EXISTS,
    NOT_FOUND,
    TRANSIENT,
    CloudStorage,
    MiB,
    ObjectChanged,
    _short,
)

TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "ConditionalRequestConflict",  # a concurrent conditional write: retry, then 412 or success
    "OperationAborted",
    "500",
    "502",
    "503",
    "504",
    "429",
}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
}


class S3Storage(CloudStorage):
    kind = "s3"
    ranged_reads = True
    min_part_size = 5 * MiB  # S3's minimum for every part but the last
    max_part_size = 5 * 1024 * MiB

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        addressing_style: str | None = None,
        sdk_attempts: int = 5,
        lock: LockRule | None = None,
        as_of: datetime | None = None,
        profile: str | None = None,
        **options: Any,
    ):
        # The SDK is the retry layer for requests (its own backoff); our loop only maps
        # errors. Streamed reads still resume after a mid-body failure (cloud.CloudReader).
        options.setdefault("attempts", 1)
        super().__init__(prefix=prefix, **options)
        if not bucket:
            raise ConfigError("repository.bucket: an S3 repository needs a bucket name")
        self.bucket = bucket
        self.region = region or None
        self.endpoint_url = endpoint_url or None
        self._bucket_verified = False
        self.lock = lock
        self.as_of = as_of
        self.versioned = True
        self._as_of_versions: dict[str, Version | None] = {}
        try:
            from botocore.config import Config

            from pgbackup.storage.botocore_loader import botocore_session
        except ImportError:
            raise StorageError(
                "the s3 repository kind needs boto3, which is not installed",
                hint="pip install 'pgbackup[s3]' (or pip install boto3)",
            ) from None
        style = addressing_style or ("path" if self.endpoint_url else "auto")
        config = Config(
            retries={"mode": "standard", "max_attempts": max(1, sdk_attempts)},
            connect_timeout=10,
            read_timeout=60,
            # A writer and a reader may each have ``streams`` requests in flight, and a
            # restore reads two objects at once: keep their connections pooled.
            max_pool_connections=max(10, 2 * self.streams + 2),
            s3={"addressing_style": style},
            signature_version="s3v4",
        )
        try:
            # botocore's client, as boto3 builds it (boto3 adds only its transfer methods
            # and resources, ~15-40 ms to import, used nowhere here), from a session that
            # does not list every service botocore knows (botocore_loader: ~20 ms)
            self.client = botocore_session(profile).create_client(
                "s3",
                region_name=self.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                endpoint_url=self.endpoint_url,
                config=config,
            )
        except Exception as exc:  # bad endpoint URL, bad profile name...
            raise StorageError(
                f"cannot set up the S3 client for s3://{bucket}: {_short(exc)}",
                hint="check repository.endpoint_url/region and AWS_PROFILE",
            ) from None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> S3Storage:
        opts = cls.common_options(spec)
        if spec.get("retries") is not None:
            opts["sdk_attempts"] = int(spec["retries"]) + 1
            opts.pop("attempts", None)
        as_of = spec.get("as_of")
        if isinstance(as_of, str):
            try:
                as_of = parse_as_of(as_of)
            except ValueError:
                raise UsageError(
                    f"--as-of {as_of!r} is not a time",
                    hint="an ISO 8601 time, e.g. '2026-11-23 14:30:00+00'",
                ) from None
        maintenance = spec.get("role") == "maintenance"
        return cls(
            spec.get("bucket") or "",
            region=spec.get("region"),
            endpoint_url=spec.get("endpoint_url"),
            addressing_style=spec.get("addressing_style"),
            lock=lock_rule(spec.get("object_lock")),
            as_of=as_of,
            profile=spec.get("maintenance_profile") if maintenance else None,
            **opts,
        )

    def container_url(self) -> str:
        return f"s3://{self.bucket}"

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        if self.as_of is not None:
            where += f" as of {self.as_of.isoformat()}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    # --- errors ----------------------------------------------------------------------------

    def _classify(self, exc: BaseException, action: str, key: str | None) -> str | StorageError:
        from botocore import exceptions as bx

        where = self.location(key or "")
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return StorageError(
                f"cannot {action} {where}: no AWS credentials found",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run "
                "with an instance/task role",
            )
        if isinstance(exc, bx.ProfileNotFound):
            return StorageError(
                f"cannot {action} {where}: {exc}", hint="fix AWS_PROFILE or ~/.aws/config"
            )
        if isinstance(exc, bx.ParamValidationError):
            return StorageError(f"cannot {action} {where}: {exc}")
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StorageError(
                    f"cannot {action} {where}: bucket {self.bucket!r} does not exist"
                    + (f" at {self.endpoint_url}" if self.endpoint_url else ""),
                    hint="create the bucket or fix repository.bucket"
                    + (" / endpoint_url" if self.endpoint_url else " / region"),
                )
            if code in ("PreconditionFailed", "412") or status == 412:
                return EXISTS
            if code in NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
                # HEAD has no body: a 404 may also mean "no such bucket"; tell them apart.
                if (
                    action in ("stat", "read")
                    and not code.startswith("NoSuch")
                    and key
                    and not self._bucket_exists()
                ):
                    return self._classify(
                        bx.ClientError({"Error": {"Code": "NoSuchBucket"}}, "HeadObject"),
                        action,
                        key,
                    )
                return NOT_FOUND
            if code in CREDENTIAL_CODES:
                return StorageError(
                    f"cannot {action} {where}: the AWS credentials were rejected ({code})",
                    hint="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or refresh the session token",
                )
            if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
                return StorageError(
                    f"cannot {action} {where}: access denied",
                    hint=f"grant this identity s3:GetObject/PutObject/ListBucket/DeleteObject "
                    f"(and multipart upload) on bucket {self.bucket!r}",
                )
            if code in TRANSIENT_CODES or (status is not None and status >= 500) or status == 429:
                return TRANSIENT
            return StorageError(f"cannot {action} {where}: {code or status}: {_short(exc)}")
        if isinstance(
            exc,
            bx.EndpointConnectionError
            | bx.ConnectTimeoutError
            | bx.ReadTimeoutError
            | bx.ConnectionClosedError
            | bx.ResponseStreamingError
            | bx.IncompleteReadError,
        ):
            return TRANSIENT
        if isinstance(exc, bx.NoRegionError):
            return StorageError(
                f"cannot {action} {where}: no region", hint="set repository.region or AWS_REGION"
            )
        if isinstance(exc, ConnectionError | TimeoutError):
            return TRANSIENT
        if isinstance(exc, bx.BotoCoreError):
            return StorageError(f"cannot {action} {where}: {_short(exc)}")
        raise exc

    def _bucket_exists(self) -> bool:
        """HEAD the bucket once; a positive answer is remembered."""
        if self._bucket_verified:
            return True
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            resp = getattr(exc, "response", None) or {}
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status != 404  # cannot tell otherwise: do not claim it is missing
        self._bucket_verified = True
        return True

    # --- primitives ------------------------------------------------------------------------

    def _lock_args(self, name: str) -> dict[str, Any]:
        """A locked object's arguments: its lock, and create-only (never rewritten)."""
        if self.lock is None:
            return {}
        until = retain_until(self.key_of(name), datetime.now(UTC), self.lock)
        if until is None:  # written again in place by design: not locked
            return {}
        return {"ObjectLockMode": self.lock.s3_mode, "ObjectLockRetainUntilDate": until}

    def _put(self, name: str, data: bytes, if_absent: bool) -> None:
        lock = self._lock_args(name)
        extra = {"IfNoneMatch": "*"} if if_absent or lock else {}
        self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **extra, **lock)

    def _begin(self, name: str, if_absent: bool) -> Any:
        lock = self._lock_args(name)
        resp = self.client.create_multipart_upload(Bucket=self.bucket, Key=name, **lock)
        return (resp["UploadId"], lock)

    def _upload_part(self, upload: Any, name: str, number: int, offset: int, data: bytes) -> Any:
        resp = self.client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload[0], PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _complete(
        self,
        upload: Any,
        name: str,
        parts: Sequence[Any],
        offset: int,
        last: bytes,
        if_absent: bool,
    ) -> None:
        last_part = self._upload_part(upload, name, len(parts) + 1, offset, last)
        upload_id, lock = upload
        extra = {"IfNoneMatch": "*"} if if_absent or lock else {}
        try:
            resp = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": [*parts, last_part]},
                **extra,
            )
            if lock and resp.get("VersionId"):
                self.client.put_object_retention(
                    Bucket=self.bucket,
                    Key=name,
                    VersionId=resp["VersionId"],
                    Retention={
                        "Mode": lock["ObjectLockMode"],
                        "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
                    },
                )
        except Exception as exc:
            # A retried complete whose first attempt succeeded (reply lost) finds the upload
            # gone: if the object is there with our size, it is ours.
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code != "NoSuchUpload":
                raise
            found = self._stat(name)
            if found is None or found[0] != offset + len(last):
                raise

    def _abort_upload(self, upload: Any, name: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload[0])

    # --- "as of": the newest version of each key written at or before the time ---------

    def _no_such_key(self, name: str) -> Exception:
        return self.client.exceptions.NoSuchKey(  # type: ignore[no-any-return]
            {"Error": {"Code": "NoSuchKey", "Message": f"{name} did not exist then"}},
            "GetObject",
        )

    def _version_args(self, name: str) -> dict[str, Any]:
        """``{}`` for the live bucket; ``{"VersionId": ...}`` of the as-of version; the
        SDK's NoSuchKey when the key did not exist then."""
        if self.as_of is None:
            return {}
        if name not in self._as_of_versions:
            found = [v for v in self._name_versions(name) if v.key == name]
            self._as_of_versions[name] = version_as_of(found, self.as_of)
        version = self._as_of_versions[name]
        if version is None:
            raise self._no_such_key(name)
        return {"VersionId": version.version_id}

    def _name_versions(self, prefix: str) -> Iterator[Version]:
        """Every version and delete marker of the objects named ``prefix...`` (full names)."""
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Versions", []):
                yield Version(
                    item["Key"],
                    str(item.get("VersionId")),
                    item["LastModified"],
                    False,
                    int(item.get("Size", 0)),
                )
            for item in page.get("DeleteMarkers", []):
                yield Version(item["Key"], str(item.get("VersionId")), item["LastModified"], True)

    def _list_as_of(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        assert self.as_of is not None
        by_name: dict[str, list[Version]] = {}
        for version in self._name_versions(prefix):
            by_name.setdefault(version.key, []).append(version)
        for name, found in by_name.items():
            chosen = version_as_of(found, self.as_of)
            self._as_of_versions[name] = chosen
            if chosen is not None:
                yield name, chosen.size, chosen.written.timestamp()

    # --- versions and locks (check, cleanup, validate --live) ------------------------------

    def versions(self, prefix: str = "") -> Iterator[Version]:
        for v in self.call(
            "list versions of",
            prefix or None,
            lambda: list(self._name_versions(self.prefix + prefix)),
        ):
            yield v._replace(key=self.key_of(v.key))

    def retention_of(self, key: str, version_id: str) -> tuple[str, datetime] | None:
        name = self.object_name(key)
        resp = self.call(
            "stat",
            key,
            lambda: self.client.head_object(Bucket=self.bucket, Key=name, VersionId=version_id),
        )
        until = resp.get("ObjectLockRetainUntilDate")
        if until is None:
            return None
        return str(resp.get("ObjectLockMode") or ""), until

    def extend_retention(self, key: str, version_id: str, until: datetime) -> None:
        if self.lock is None:
            raise StorageError(f"{self.describe()}: object_lock is not declared for it")
        name = self.object_name(key)
        current = self.retention_of(key, version_id)
        if current is not None and current[1] >= until:
            return  # extending only
        mode = current[0] if current is not None and current[0] else self.lock.s3_mode
        self.call(
            "lock",
            key,
            lambda: self.client.put_object_retention(
                Bucket=self.bucket,
                Key=name,
                VersionId=version_id,
                Retention={"Mode": mode, "RetainUntilDate": until},
            ),
        )

    def delete_version(self, key: str, version_id: str) -> None:
        self._refuse_as_of("delete", key)
        name = self.object_name(key)
        self.call(
            "delete",
            key,
            lambda: self.client.delete_object(Bucket=self.bucket, Key=name, VersionId=version_id),
        )

    def _held_until(self, versions: list[Version]) -> datetime | None:
        """The latest lock among ``versions`` that has not ended yet; None: none holds."""
        now = datetime.now(UTC)
        held: datetime | None = None
        for v in versions:
            if v.deleted:
                continue
            lock = self.retention_of(v.key, v.version_id)
            if lock is not None and lock[1] > now and (held is None or lock[1] > held):
                held = lock[1]
        return held

    def expire(self, key: str) -> datetime | None:
        if self.lock is None:
            return super().expire(key)
        self._refuse_as_of("delete", key)
        found = [v for v in self.versions(key) if v.key == key]
        held = self._held_until(found)
        if held is not None:
            return held
        for v in found:  # every version and marker: the key is gone, its bytes too
            self.delete_version(v.key, v.version_id)
        return None

    def expire_prefix(self, prefix: str) -> tuple[int, datetime | None]:
        if self.lock is None:
            return super().expire_prefix(prefix)
        self._refuse_as_of("delete", prefix)
        found = list(self.versions(prefix))
        held = self._held_until(found)
        if held is not None:
            return 0, held
        # metadata.json first: an interrupted removal never looks complete.
        found.sort(key=lambda v: (not v.key.endswith("metadata.json"), v.key))
        for v in found:
            self.delete_version(v.key, v.version_id)
        return len({v.key for v in found if not v.deleted}), None

    def protection(self) -> dict[str, Any]:
        versioning = self.call(
            "read the versioning of",
            None,
            lambda: self.client.get_bucket_versioning(Bucket=self.bucket),
        )
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
            locked = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if "ObjectLockConfiguration" not in code and "NotFound" not in code:
                verdict = self._classify(exc, "read the object lock of", None)
                if isinstance(verdict, StorageError):
                    raise verdict from None
                raise
            locked = False
        return {"versioning": versioning.get("Status") == "Enabled", "object_lock": locked}

    def _refuse_as_of(self, action: str, key: str) -> None:
        if self.as_of is not None:
            raise StorageError(
                f"cannot {action} {self.location(key)}: the repository is read as of "
                f"{self.as_of.isoformat()}, a view nothing is removed through"
            )

    def delete(self, key: str) -> None:
        self._refuse_as_of("delete", key)
        super().delete(key)

    # --- reads -------------------------------------------------------------------------------

    def _open_read(self, name: str, start: int) -> Any:
        extra = {"Range": f"bytes={start}-"} if start else {}
        version = self._version_args(name)
        return self.client.get_object(Bucket=self.bucket, Key=name, **extra, **version)["Body"]

    def _open_read_info(self, name: str) -> tuple[Any, int | None, Any]:
        resp = self.client.get_object(Bucket=self.bucket, Key=name, **self._version_args(name))
        size = resp.get("ContentLength")
        return resp["Body"], int(size) if size is not None else None, resp.get("ETag")

    def _read_range(self, name: str, start: int, length: int, version: Any) -> bytes:
        extra = {"IfMatch": version} if version else {}
        extra.update(self._version_args(name))
        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=name, Range=f"bytes={start}-{start + length - 1}", **extra
            )
        except Exception as exc:
            err = getattr(exc, "response", None) or {}
            status = err.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412 or err.get("Error", {}).get("Code") == "PreconditionFailed":
                raise ObjectChanged(
                    f"{self.location(self.key_of(name))} was overwritten while it was being "
                    "read (its ETag changed); nothing of the new object was used",
                    hint="something else writes to this repository; read it again",
                ) from None
            raise
        body = resp["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def _list(self, prefix: str, start_after: str | None) -> Iterator[tuple[str, int, float]]:
        if self.as_of is not None:  # every version under the prefix; the caller filters
            yield from self._list_as_of(prefix)
            return
        start = {} if start_after is None else {"StartAfter": start_after}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **start):
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp()

    def _stat(self, name: str) -> tuple[int, float] | None:
        resp = self.client.head_object(Bucket=self.bucket, Key=name, **self._version_args(name))
        return int(resp["ContentLength"]), resp["LastModified"].timestamp()

    def _delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=name)

    def create_bucket(self, *, object_lock: bool = False) -> None:
        """For tests and sandboxes: create the bucket (no error if it is already ours);
        with ``object_lock``, versioned and lockable."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
            self.client.create_bucket(**kwargs)
