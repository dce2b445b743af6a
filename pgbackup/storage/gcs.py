"""A repository in a Google Cloud Storage bucket.

Spec: ``{kind: gcs, bucket, prefix, project, endpoint_url, part_size, retries, streams}``.
Credentials come from Google's Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login``, the metadata server). With ``endpoint_url``
(or the ``STORAGE_EMULATOR_HOST`` environment variable) the client talks to that
endpoint with anonymous credentials — the emulator case.

Writes smaller than one part are one upload request; larger ones a resumable upload
session sent part by part (``Content-Range: bytes a-b/*``); the object appears only when
the final chunk (with the total size) is accepted, and abort cancels the session. A
session takes its chunks in order, so an upload has one part in flight (in the
background, while the next fills). An object larger than one part is read as ranged
media GETs, ``streams`` at a time, with ``ifGenerationMatch`` set to the generation the
first GET named (an overwrite is HTTP 412, ObjectChanged); gcp-storage-emulator names no
generation and ignores the condition, so there only a changed size is caught.

``if_absent`` is ``ifGenerationMatch=0`` on the upload (or on the resumable session):
atomic on GCS, a clash is HTTP 412 and becomes ObjectExists. gcp-storage-emulator
ignores preconditions, so against an emulator endpoint the writer also checks for the
object right before the final request; that check alone is not atomic (a concurrent
writer can slip in between), which is acceptable only for emulators.

google-cloud-storage is imported here only, when a GCS repository is opened.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from pgbackup.errors import ConfigError, StorageError
from pgbackup.storage.cloud import (
    EXISTS,
    NOT_FOUND,
    TRANSIENT,
    CloudStorage,
    ObjectChanged,
    ShortRange,
    _short,
)

GCS_ENDPOINT = "https://storage.googleapis.com"
TIMEOUT = (10, 120)  # connect, read (seconds)


class HTTPStatusError(Exception):
    """A raw request (resumable session chunk, media download) got an unexpected status."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


class GCSStorage(CloudStorage):
    kind = "gcs"
    part_multiple = 256 * 1024  # resumable chunks must be multiples of 256 KiB
    # A resumable session takes its chunks in order: one part in flight (in the
    # background, while the next fills); reads use ``streams`` ranged GETs.
    parallel_parts = False
    ranged_reads = True

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        project: str | None = None,
        endpoint_url: str | None = None,
        **options: Any,
    ):
        super().__init__(prefix=prefix, **options)
        if not bucket:
            raise ConfigError("repository.bucket: a GCS repository needs a bucket name")
        self.bucket_name = bucket
        self.project = project or None
        emulator_host = os.environ.get("STORAGE_EMULATOR_HOST") or None
        endpoint = endpoint_url or emulator_host
        if endpoint and "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        self.endpoint_url = endpoint.rstrip("/") if endpoint else None
        # An emulator (anonymous credentials, no preconditions): STORAGE_EMULATOR_HOST, or an
        # endpoint on plain http / loopback. Any other endpoint_url (a private Google endpoint)
        # keeps Application Default Credentials.
        host = urllib.parse.urlparse(self.endpoint_url or "").hostname or ""
        self.emulator = bool(
            emulator_host
            or (self.endpoint_url or "").startswith("http://")
            or host in ("localhost", "::1")
            or host.startswith("127.")
        )
        self._bucket_verified = False
        try:
            from google.cloud import storage
        except ImportError:
            raise StorageError(
                "the gcs repository kind needs google-cloud-storage, which is not installed",
                hint="pip install 'pgbackup[gcs]' (or pip install google-cloud-storage)",
            ) from None
        try:
            if self.emulator:
                from google.auth.credentials import AnonymousCredentials

                self.client = storage.Client(
                    project=self.project or "pgbackup-emulator",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options={"api_endpoint": self.endpoint_url},
                )
            else:
                client_options: dict[str, Any] = (
                    {"api_endpoint": self.endpoint_url} if self.endpoint_url else {}
                )
                self.client = storage.Client(
                    project=self.project, client_options=client_options or None
                )
        except Exception as exc:
            verdict = self._classify(exc, "open", None)
            if isinstance(verdict, StorageError):
                raise verdict from None
            raise StorageError(
                f"cannot set up the GCS client for gs://{bucket}: {_short(exc)}"
            ) from None
        self.bucket = self.client.bucket(bucket)
        self.api_base = self.endpoint_url or GCS_ENDPOINT
        if self.streams > 4:  # requests keeps 10 connections per host by default
            from requests.adapters import HTTPAdapter

            adapter = HTTPAdapter(pool_maxsize=2 * self.streams + 2)
            for scheme in ("https://", "http://"):
                self.http.mount(scheme, adapter)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> GCSStorage:
        return cls(
            spec.get("bucket") or "",
            project=spec.get("project"),
            endpoint_url=spec.get("endpoint_url"),
            **cls.common_options(spec),
        )

    def container_url(self) -> str:
        return f"gs://{self.bucket_name}"

    def describe(self) -> str:
        where = f"gs://{self.bucket_name}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    @property
    def http(self) -> Any:
        return self.client._http

    # --- errors ----------------------------------------------------------------------------

    def _no_bucket(self, action: str, where: str) -> StorageError:
        return StorageError(
            f"cannot {action} {where}: bucket {self.bucket_name!r} does not exist"
            + (f" at {self.endpoint_url}" if self.endpoint_url else ""),
            hint="create the bucket or fix repository.bucket"
            + (" / endpoint_url" if self.endpoint_url else " / project"),
        )

    def _classify(self, exc: BaseException, action: str, key: str | None) -> str | StorageError:
        import requests
        from google.api_core import exceptions as gx
        from google.auth import exceptions as ax

        where = self.location(key or "")
        if isinstance(exc, ax.DefaultCredentialsError):
            return StorageError(
                f"cannot {action} {where}: no Google credentials found",
                hint="set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run "
                "'gcloud auth application-default login', or run on GCP with a service account",
            )
        if isinstance(exc, ax.RefreshError):
            return StorageError(
                f"cannot {action} {where}: the Google credentials were rejected ({_short(exc)})",
                hint="check GOOGLE_APPLICATION_CREDENTIALS or re-run "
                "'gcloud auth application-default login'",
            )
        status: int | None = None
        if isinstance(exc, gx.GoogleAPICallError):
            status = exc.code
        elif isinstance(exc, HTTPStatusError):
            status = exc.status
        if status is not None:
            text = str(exc).lower()
            if status == 404:
                if "bucket" in text and "object" not in text:
                    return self._no_bucket(action, where)
                if not self._bucket_exists():
                    return self._no_bucket(action, where)
                return NOT_FOUND
            if status == 412:
                return EXISTS
            if status in (401, 403):
                return StorageError(
                    f"cannot {action} {where}: access denied ({status})",
                    hint="grant this identity roles/storage.objectAdmin (or objectCreator + "
                    f"objectViewer) on bucket {self.bucket_name!r}",
                )
            if status in (408, 429) or status >= 500:
                return TRANSIENT
            return StorageError(f"cannot {action} {where}: {_short(exc)}")
        from urllib3.exceptions import HTTPError as Urllib3Error

        if isinstance(
            exc,
            requests.ConnectionError
            | requests.Timeout
            | requests.exceptions.ChunkedEncodingError  # a body cut short
            | Urllib3Error  # the same, read from resp.raw
            | ax.TransportError,
        ):
            return TRANSIENT
        if isinstance(exc, ConnectionError | TimeoutError):
            return TRANSIENT
        if isinstance(exc, gx.RetryError):
            return TRANSIENT
        raise exc

    def _bucket_exists(self) -> bool:
        if self._bucket_verified:
            return True
        try:
            self._bucket_verified = (
                self.client.lookup_bucket(self.bucket_name, retry=None) is not None
            )
        except Exception:
            return True  # cannot tell: do not claim it is missing
        return self._bucket_verified

    # --- primitives ------------------------------------------------------------------------

    def _precheck(self, name: str, if_absent: bool) -> None:
        """Emulators ignore ifGenerationMatch: look first (not atomic; emulators only)."""
        if if_absent and self.emulator and self._stat(name) is not None:
            from google.api_core.exceptions import PreconditionFailed

            raise PreconditionFailed("object exists (emulator pre-check)")

    def _put(self, name: str, data: bytes, if_absent: bool) -> None:
        self._precheck(name, if_absent)
        self.bucket.blob(name).upload_from_string(
            data,
            content_type="application/octet-stream",
            if_generation_match=0 if if_absent else None,
            retry=None,  # our own retry loop, see cloud.py
            timeout=TIMEOUT,
        )
        self._bucket_verified = True

    def _begin(self, name: str, if_absent: bool) -> Any:
        url = self.bucket.blob(name).create_resumable_upload_session(
            content_type="application/octet-stream",
            if_generation_match=0 if if_absent else None,
            checksum=None,
            retry=None,
            timeout=TIMEOUT,
        )
        self._bucket_verified = True
        return {"url": url, "dirty": False}

    def _persisted(self, upload: dict[str, Any]) -> int | None:
        """Bytes the session has kept; None when the upload is already complete."""
        resp = self.http.put(
            upload["url"], data=b"", headers={"Content-Range": "bytes */*"}, timeout=TIMEOUT
        )
        if resp.status_code in (200, 201):
            return None
        if resp.status_code != 308:
            raise HTTPStatusError(resp.status_code, resp.text)
        rng = resp.headers.get("Range")
        return int(rng.rsplit("-", 1)[1]) + 1 if rng else 0

    def _send(self, upload: dict[str, Any], offset: int, data: bytes, total: int | None) -> int:
        """PUT ``data`` at ``offset``; returns the HTTP status (308 = more expected)."""
        if upload["dirty"]:
            # A previous attempt failed mid-way: resume from what the server kept.
            persisted = self._persisted(upload)
            if persisted is None:
                return 200
            skip = min(max(persisted - offset, 0), len(data))
            offset, data = offset + skip, data[skip:]
            if not data and total is None:
                upload["dirty"] = False
                return 308
        upload["dirty"] = True
        end = f"{offset + len(data) - 1}" if data else None
        size = "*" if total is None else str(total)
        content_range = f"bytes {offset}-{end}/{size}" if end is not None else f"bytes */{size}"
        resp = self.http.put(
            upload["url"],
            data=data,
            headers={"Content-Range": content_range, "Content-Type": "application/octet-stream"},
            timeout=TIMEOUT,
        )
        if resp.status_code not in (200, 201, 308):
            if resp.status_code < 500 and resp.status_code not in (408, 429):
                upload["dirty"] = False
            raise HTTPStatusError(resp.status_code, resp.text)
        upload["dirty"] = False
        return int(resp.status_code)

    def _upload_part(self, upload: Any, name: str, number: int, offset: int, data: bytes) -> Any:
        status = self._send(upload, offset, data, None)
        if status != 308:
            raise StorageError(f"GCS finished the upload of {name} before its last part")
        return len(data)

    def _complete(
        self,
        upload: Any,
        name: str,
        parts: Sequence[Any],
        offset: int,
        last: bytes,
        if_absent: bool,
    ) -> None:
        self._precheck(name, if_absent)
        status = self._send(upload, offset, last, offset + len(last))
        if status == 308:
            raise HTTPStatusError(503, f"GCS did not finish the upload of {name}")

    def _abort_upload(self, upload: Any, name: str) -> None:
        # Cancelling a session: DELETE its URI (GCS answers 499). Emulators may not support it;
        # an unfinished session is never visible and expires on its own.
        self.http.delete(upload["url"], timeout=(5, 10))

    def _media_url(self, name: str) -> str:
        return (
            f"{self.api_base}/download/storage/v1/b/{urllib.parse.quote(self.bucket_name, safe='')}"
            f"/o/{urllib.parse.quote(name, safe='')}?alt=media"
        )

    def _get(self, url: str, start: int, end: int | None = None, *, stream: bool = True) -> Any:
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        resp = self.http.get(url, headers=headers, stream=stream, timeout=TIMEOUT)
        if resp.status_code not in (200, 206):
            text = resp.text
            resp.close()
            raise HTTPStatusError(resp.status_code, text)
        self._bucket_verified = True
        return resp

    def _open_read(self, name: str, start: int) -> Any:
        resp = self._get(self._media_url(name), start)
        resp.raw.decode_content = False
        return _ResponseReader(resp)

    def _open_read_info(self, name: str) -> tuple[Any, int | None, Any]:
        resp = self._get(self._media_url(name), 0)
        resp.raw.decode_content = False
        length = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity") not in ("", "identity")
        size = int(length) if length is not None and not encoded else None
        # GCS names the generation; gcp-storage-emulator does not (then only the size,
        # in each range's Content-Range, tells an overwrite).
        version = {"generation": resp.headers.get("x-goog-generation"), "size": size}
        return _ResponseReader(resp), size, version

    def _read_range(self, name: str, start: int, length: int, version: Any) -> bytes:
        url = self._media_url(name)
        generation = (version or {}).get("generation")
        if generation:
            url += f"&ifGenerationMatch={generation}"
        try:
            resp = self._get(url, start, start + length - 1, stream=False)
        except HTTPStatusError as exc:
            if exc.status == 412:
                raise self._changed(name) from None
            raise
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        got = resp.headers.get("x-goog-generation")
        size = (version or {}).get("size")
        if (generation and got and got != generation) or (
            size is not None and total.isdigit() and int(total) != size
        ):
            raise self._changed(name)
        if resp.status_code != 206:
            raise ShortRange(f"{name}: HTTP {resp.status_code} to a ranged GET")
        return bytes(resp.content)

    def _changed(self, name: str) -> ObjectChanged:
        return ObjectChanged(
            f"{self.location(self.key_of(name))} was overwritten while it was being read "
            "(its generation changed); nothing of the new object was used",
            hint="something else writes to this repository; read it again",
        )

    def _list(self, prefix: str, start_after: str | None) -> Iterator[tuple[str, int, float]]:
        # startOffset is inclusive: the caller drops start_after itself.
        start = {} if start_after is None else {"start_offset": start_after}
        for blob in self.client.list_blobs(
            self.bucket_name, prefix=prefix, timeout=TIMEOUT, **start
        ):
            self._bucket_verified = True
            yield blob.name, int(blob.size or 0), blob.updated.timestamp() if blob.updated else 0.0

    def _stat(self, name: str) -> tuple[int, float] | None:
        blob = self.bucket.get_blob(name, retry=None, timeout=TIMEOUT)
        if blob is None:
            if not self._bucket_exists():
                raise HTTPStatusError(404, "bucket does not exist")
            return None
        self._bucket_verified = True
        return int(blob.size or 0), blob.updated.timestamp() if blob.updated else 0.0

    def _delete(self, name: str) -> None:
        self.bucket.blob(name).delete(retry=None, timeout=TIMEOUT)

    def create_bucket(self) -> None:
        """For tests and sandboxes."""
        self.client.create_bucket(self.bucket_name)


class _ResponseReader:
    def __init__(self, resp: Any):
        self.resp = resp

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return bytes(self.resp.raw.read(decode_content=False))
        return bytes(self.resp.raw.read(n, decode_content=False))

    def close(self) -> None:
        self.resp.close()
