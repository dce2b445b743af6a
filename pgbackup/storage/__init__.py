"""Repositories: one interface (:class:`~pgbackup.storage.base.Storage`), one module per kind.

Provider modules are imported lazily so that, for instance, ``wal-push`` to a posix
repository never imports boto3.
"""

from __future__ import annotations

from typing import Any

from pgbackup.storage.base import ObjectInfo, ObjectWriter, Storage

__all__ = ["ObjectInfo", "ObjectWriter", "Storage", "open_storage"]


def open_storage(spec: dict[str, Any]) -> Storage:
    """Build the storage for a repository/upload spec (``kind`` defaults to posix)."""
    kind = spec.get("kind", "posix")
    if spec.get("as_of") and kind != "s3":
        from pgbackup.errors import UsageError

        raise UsageError(
            f"--as-of reads object versions, which a {kind} repository does not keep",
            hint="--as-of needs an S3 repository with versioning (docs/security.md)",
        )
    if kind == "posix":
        from pgbackup.storage.posix import PosixStorage

        return PosixStorage.from_spec(spec)
    if kind == "s3":
        from pgbackup.storage.s3 import S3Storage

        return S3Storage.from_spec(spec)
    if kind == "gcs":
        from pgbackup.storage.gcs import GCSStorage

        return GCSStorage.from_spec(spec)
    if kind == "azure":
        from pgbackup.storage.azure import AzureStorage

        return AzureStorage.from_spec(spec)
    from pgbackup.errors import ConfigError

    raise ConfigError(f"repository.kind: unknown storage kind {kind!r} (posix, s3, gcs, azure)")
