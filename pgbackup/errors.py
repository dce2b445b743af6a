"""One root error for everything a user can get wrong.

Every failure that reaches a user is a :class:`PgBackupError`: a message that says what
is wrong and where, an optional hint that says what to do, and the exit status. The CLI
prints these without a traceback; anything else is a bug and is reported as one.
"""

from __future__ import annotations


class PgBackupError(Exception):
    """A failure explained to the user: ``message`` (what/where) and ``hint`` (what to do)."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(PgBackupError):
    """The policy file is missing, unreadable or invalid; ``problems`` lists each (path, message)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        problems: list[tuple[str, str]] | None = None,
        hint: str | None = None,
    ):
        self.problems = problems or []
        if self.problems:
            message = (
                message + "\n" + "\n".join(f"  - {path}: {msg}" for path, msg in self.problems)
            )
        super().__init__(message, hint=hint)


class UsageError(PgBackupError):
    """A wrong flag or flag value."""

    exit_code = 2


class StorageError(PgBackupError):
    """The repository could not be read or written (permissions, full disk, network)."""


class ObjectExists(StorageError):
    """A create-only-if-absent write found the key already present."""


class ObjectNotFound(StorageError):
    """The key is not in the repository."""


class PostgresError(PgBackupError):
    """The server is unreachable, misconfigured or refused what we asked."""


class BinaryError(PgBackupError):
    """A PostgreSQL client program is missing or of the wrong major version."""


class LockError(PgBackupError):
    """Another pgbackup process holds the lock for this target."""


class BackupError(PgBackupError):
    """A base backup failed; the message names the step that was running."""


class VerifyError(PgBackupError):
    """Stored data does not match its checksums or manifest."""


class RestoreError(PgBackupError):
    """A restore was refused or failed before it could complete."""


class EncryptionError(PgBackupError):
    """A key is missing, unreadable, too permissive or does not decrypt the data."""
