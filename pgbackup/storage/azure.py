"""A repository in an Azure Blob Storage container.

Spec: ``{kind: azure, container, prefix, account_url, part_size, retries, streams}``.
Credentials, first match wins (never from the spec):

1. ``AZURE_STORAGE_CONNECTION_STRING`` (``account_url`` is then optional);
2. ``AZURE_STORAGE_KEY`` with the account name from ``AZURE_STORAGE_ACCOUNT`` or from
   ``account_url`` (``https://ACCOUNT.blob.core.windows.net`` or the emulator's
   ``http://host:port/ACCOUNT``);
3. ``AZURE_STORAGE_SAS_TOKEN``;
4. ``DefaultAzureCredential`` (managed identity, ``az login``, workload identity...) when the
   optional ``azure-identity`` package is installed.

Writes smaller than one part are one ``Put Blob``; larger ones are staged blocks
(``Put Block``) made visible by one ``Put Block List``. Uncommitted blocks are never
visible; abort leaves them to the service's garbage collection (one week). Blocks are
staged ``streams`` at a time. An object larger than one part is read as ranged downloads,
``streams`` at a time, each conditional on the ETag the first download returned
(``If-Match``; an overwrite is HTTP 412, ObjectChanged).

``if_absent`` is the ``If-None-Match: *`` condition on ``Put Blob`` / ``Put Block List``
(``MatchConditions.IfMissing``): atomic on the service; a clash (409 BlobAlreadyExists or
412 ConditionNotMet) becomes ObjectExists.

azure-storage-blob is imported here only, when an Azure repository is opened.
"""

from __future__ import annotations

import base64
import os
import re
import urllib.parse
import uuid
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

CREDENTIAL_HINT = (
    "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_KEY (with AZURE_STORAGE_ACCOUNT or "
    "repository.account_url), or AZURE_STORAGE_SAS_TOKEN, or install azure-identity "
    "(pip install azure-identity) to use DefaultAzureCredential"
)


def account_name_from_url(url: str) -> str | None:
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or ""
    m = re.match(r"^([a-z0-9]+)\.blob\.", host)
    if m:
        return m.group(1)
    first = parsed.path.strip("/").split("/", 1)[0]  # emulator style: http://host:port/ACCOUNT
    return first or None


class AzureStorage(CloudStorage):
    kind = "azure"
    ranged_reads = True
    max_part_size = 4000 * MiB  # Put Block limit

    def __init__(
        self,
        container: str,
        *,
        prefix: str = "",
        account_url: str | None = None,
        sdk_attempts: int = 4,
        **options: Any,
    ):
        # The SDK is the retry layer for requests (its own backoff); our loop only maps
        # errors. Streamed reads still resume after a mid-body failure (cloud.CloudReader).
        options.setdefault("attempts", 1)
        super().__init__(prefix=prefix, **options)
        if not container:
            raise ConfigError("repository.container: an Azure repository needs a container name")
        self.container_name = container
        self.account_url = (account_url or "").rstrip("/") or None
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise StorageError(
                "the azure repository kind needs azure-storage-blob, which is not installed",
                hint="pip install 'pgbackup[azure]' (or pip install azure-storage-blob)",
            ) from None
        from azure.storage.blob import ExponentialRetry

        retries = max(0, sdk_attempts - 1)
        kwargs: dict[str, Any] = {
            # The SDK default waits 15 s + 3^n between tries (minutes for a dead endpoint);
            # 1 s, 3 s, 5 s (+-1 s jitter) is plenty for throttling and blips.
            "retry_policy": ExponentialRetry(
                initial_backoff=1,
                increment_base=2,
                retry_total=retries,
                random_jitter_range=1,
                retry_connect=retries,
                retry_read=retries,
                retry_status=retries,
            ),
            "connection_timeout": 10,
            "read_timeout": 120,
            # Bounded memory on reads: the first GET and each following one fetch 4 MiB.
            "max_single_get_size": 4 * MiB,
            "max_chunk_get_size": 4 * MiB,
        }
        if self.streams > 4:
            # requests keeps 10 connections per host by default; azure-core mounts its own
            # adapter only on a session it creates, so hand it one with room for the streams.
            import requests
            from azure.core.pipeline.transport._bigger_block_size_http_adapters import (
                BiggerBlockSizeHTTPAdapter,
            )
            from urllib3.util.retry import Retry

            session = requests.Session()
            adapter = BiggerBlockSizeHTTPAdapter(
                max_retries=Retry(total=False, redirect=False, raise_on_status=False),
                pool_maxsize=2 * self.streams + 2,
            )
            for scheme in ("http://", "https://"):
                session.mount(scheme, adapter)
            kwargs["session"] = session
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        try:
            if conn:
                self.service = BlobServiceClient.from_connection_string(conn, **kwargs)
                self.account_url = self.service.url.rstrip("/")
            else:
                if not self.account_url:
                    raise StorageError(
                        f"azure container {container!r}: no account_url and no "
                        "AZURE_STORAGE_CONNECTION_STRING",
                        hint="set repository.account_url (https://ACCOUNT.blob.core.windows.net) "
                        "or AZURE_STORAGE_CONNECTION_STRING",
                    )
                self.service = BlobServiceClient(
                    self.account_url, credential=self._credential(), **kwargs
                )
        except StorageError:
            raise
        except Exception as exc:  # malformed connection string or URL
            raise StorageError(
                f"cannot set up the Azure client for container {container!r}: {_short(exc)}",
                hint="check AZURE_STORAGE_CONNECTION_STRING / repository.account_url",
            ) from None
        self.account_name = self.service.account_name or account_name_from_url(
            self.account_url or ""
        )
        self.container = self.service.get_container_client(container)

    def _credential(self) -> Any:
        key = os.environ.get("AZURE_STORAGE_KEY")
        if key:
            account = os.environ.get("AZURE_STORAGE_ACCOUNT") or account_name_from_url(
                self.account_url or ""
            )
            if not account:
                raise StorageError(
                    "AZURE_STORAGE_KEY is set but the storage account name is unknown",
                    hint="set AZURE_STORAGE_ACCOUNT or repository.account_url",
                )
            return {"account_name": account, "account_key": key}
        sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN")
        if sas:
            return sas.lstrip("?")
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise StorageError(
                f"no Azure credentials for container {self.container_name!r}: none of "
                "AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN "
                "is set, and azure-identity (for DefaultAzureCredential) is not installed",
                hint=CREDENTIAL_HINT,
            ) from None
        return DefaultAzureCredential()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> AzureStorage:
        opts = cls.common_options(spec)
        if spec.get("retries") is not None:
            opts["sdk_attempts"] = int(spec["retries"]) + 1
            opts.pop("attempts", None)
        return cls(spec.get("container") or "", account_url=spec.get("account_url"), **opts)

    def container_url(self) -> str:
        return f"azure://{self.account_name}/{self.container_name}"

    def describe(self) -> str:
        where = f"{self.container_url()}/{self.prefix}"
        url = self.account_url or ""
        if url and not url.endswith(".blob.core.windows.net"):
            return f"{where} at {url.split('?', 1)[0]}"  # never a SAS query string
        return where

    def _blob(self, name: str) -> Any:
        return self.container.get_blob_client(name)

    # --- errors ----------------------------------------------------------------------------

    def _classify(self, exc: BaseException, action: str, key: str | None) -> str | StorageError:
        from azure.core import exceptions as zx

        where = self.location(key or "")
        if isinstance(exc, zx.ClientAuthenticationError):
            code = getattr(exc, "error_code", None)
            if type(exc).__name__ == "CredentialUnavailableError" or getattr(
                exc, "status_code", None
            ) in (None, 401):
                return StorageError(
                    f"cannot {action} {where}: Azure authentication failed ({code or _short(exc)})",
                    hint=CREDENTIAL_HINT,
                )
            return StorageError(
                f"cannot {action} {where}: access denied ({code or exc.status_code})",
                hint="check the account key/SAS, or give this identity the 'Storage Blob Data "
                f"Contributor' role on container {self.container_name!r}",
            )
        if isinstance(exc, zx.IncompleteReadError):  # the body was cut short: read again
            return TRANSIENT
        if isinstance(exc, zx.HttpResponseError):
            status = exc.status_code
            code = str(getattr(exc, "error_code", None) or "")
            if code == "ContainerNotFound":
                return StorageError(
                    f"cannot {action} {where}: container {self.container_name!r} does not "
                    f"exist in account {self.account_name!r}",
                    hint="create the container or fix repository.container / account_url",
                )
            if code in ("BlobAlreadyExists", "ConditionNotMet") or status == 412:
                return EXISTS
            if status == 409 and isinstance(exc, zx.ResourceExistsError) and action != "delete":
                return EXISTS
            if status == 404:
                return NOT_FOUND
            if status == 403 or code in ("AuthorizationFailure", "AuthenticationFailed"):
                return StorageError(
                    f"cannot {action} {where}: access denied ({code or status})",
                    hint="check the account key/SAS, or give this identity the 'Storage Blob "
                    f"Data Contributor' role on container {self.container_name!r}",
                )
            if status is not None and (status in (408, 429) or status >= 500):
                return TRANSIENT
            return StorageError(f"cannot {action} {where}: {code or status}: {_short(exc)}")
        if isinstance(exc, zx.ServiceRequestError | zx.ServiceResponseError):
            return TRANSIENT
        if isinstance(exc, zx.AzureError):
            return StorageError(f"cannot {action} {where}: {_short(exc)}")
        if isinstance(exc, ConnectionError | TimeoutError):
            return TRANSIENT
        raise exc

    # --- primitives ------------------------------------------------------------------------

    def _conditions(self, if_absent: bool) -> dict[str, Any]:
        if not if_absent:
            return {}
        from azure.core import MatchConditions

        return {"match_condition": MatchConditions.IfMissing}  # If-None-Match: *

    def _put(self, name: str, data: bytes, if_absent: bool) -> None:
        self._blob(name).upload_blob(
            data,
            blob_type="BlockBlob",
            overwrite=not if_absent,
            max_concurrency=1,
            **self._conditions(if_absent),
        )

    def _begin(self, name: str, if_absent: bool) -> Any:
        return uuid.uuid4().hex  # block ids of this upload start with it; nothing to send yet

    def _upload_part(self, upload: Any, name: str, number: int, offset: int, data: bytes) -> Any:
        block_id = base64.b64encode(f"{upload}-{number:08d}".encode()).decode()
        self._blob(name).stage_block(block_id, data, length=len(data))
        return block_id

    def _complete(
        self,
        upload: Any,
        name: str,
        parts: Sequence[Any],
        offset: int,
        last: bytes,
        if_absent: bool,
    ) -> None:
        from azure.storage.blob import BlobBlock

        last_id = self._upload_part(upload, name, len(parts) + 1, offset, last)
        blocks = [BlobBlock(block_id=b) for b in [*parts, last_id]]
        self._blob(name).commit_block_list(blocks, **self._conditions(if_absent))

    def _abort_upload(self, upload: Any, name: str) -> None:
        # Uncommitted blocks cannot be deleted on their own; they are never visible and the
        # service discards them after a week (or at the blob's next commit).
        return None

    def _open_read(self, name: str, start: int) -> Any:
        return self._blob(name).download_blob(offset=start or None, max_concurrency=1)

    def _open_read_info(self, name: str) -> tuple[Any, int | None, Any]:
        downloader = self._blob(name).download_blob(max_concurrency=1)
        size = getattr(downloader, "size", None)
        etag = getattr(getattr(downloader, "properties", None), "etag", None)
        return downloader, int(size) if size is not None else None, etag

    def _read_range(self, name: str, start: int, length: int, version: Any) -> bytes:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError

        extra: dict[str, Any] = (
            {"etag": version, "match_condition": MatchConditions.IfNotModified} if version else {}
        )
        try:
            downloader = self._blob(name).download_blob(
                offset=start, length=length, max_concurrency=1, **extra
            )
            return bytes(downloader.readall())
        except ResourceModifiedError:
            raise ObjectChanged(
                f"{self.location(self.key_of(name))} was overwritten while it was being read "
                "(its ETag changed); nothing of the new object was used",
                hint="something else writes to this repository; read it again",
            ) from None

    def _list(self, prefix: str, start_after: str | None) -> Iterator[tuple[str, int, float]]:
        # List Blobs has no start key (its marker is the service's own continuation
        # token): every blob under the prefix, the caller drops those before start_after.
        for blob in self.container.list_blobs(name_starts_with=prefix or None):
            mtime = blob.last_modified.timestamp() if blob.last_modified else 0.0
            yield blob.name, int(blob.size or 0), mtime

    def _stat(self, name: str) -> tuple[int, float] | None:
        props = self._blob(name).get_blob_properties()
        mtime = props.last_modified.timestamp() if props.last_modified else 0.0
        return int(props.size or 0), mtime

    def _delete(self, name: str) -> None:
        self._blob(name).delete_blob(delete_snapshots="include")

    def create_container(self) -> None:
        """For tests and sandboxes."""
        self.container.create_container()
