"""A repository in an S3 bucket (AWS or any S3-compatible endpoint).

Spec: ``{kind: s3, bucket, prefix, region, endpoint_url, part_size, retries, streams,
addressing_style}``. Credentials come only from boto3's own chain (environment
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

boto3 is imported here only, when an S3 repository is opened.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from pgbackup.errors import ConfigError, StorageError
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
        try:
            import boto3
            from botocore.config import Config
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
            session = boto3.session.Session()
            self.client = session.client(
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
        return cls(
            spec.get("bucket") or "",
            region=spec.get("region"),
            endpoint_url=spec.get("endpoint_url"),
            addressing_style=spec.get("addressing_style"),
            **opts,
        )

    def container_url(self) -> str:
        return f"s3://{self.bucket}"

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
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

    def _put(self, name: str, data: bytes, if_absent: bool) -> None:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **extra)

    def _begin(self, name: str, if_absent: bool) -> Any:
        resp = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)
        return resp["UploadId"]

    def _upload_part(self, upload: Any, name: str, number: int, offset: int, data: bytes) -> Any:
        resp = self.client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number, Body=data
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
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload,
                MultipartUpload={"Parts": [*parts, last_part]},
                **extra,
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
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)

    def _open_read(self, name: str, start: int) -> Any:
        extra = {"Range": f"bytes={start}-"} if start else {}
        return self.client.get_object(Bucket=self.bucket, Key=name, **extra)["Body"]

    def _open_read_info(self, name: str) -> tuple[Any, int | None, Any]:
        resp = self.client.get_object(Bucket=self.bucket, Key=name)
        size = resp.get("ContentLength")
        return resp["Body"], int(size) if size is not None else None, resp.get("ETag")

    def _read_range(self, name: str, start: int, length: int, version: Any) -> bytes:
        extra = {"IfMatch": version} if version else {}
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

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp()

    def _stat(self, name: str) -> tuple[int, float] | None:
        resp = self.client.head_object(Bucket=self.bucket, Key=name)
        return int(resp["ContentLength"]), resp["LastModified"].timestamp()

    def _delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=name)

    def create_bucket(self) -> None:
        """For tests and sandboxes: create the bucket (no error if it is already ours)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
            self.client.create_bucket(**kwargs)
