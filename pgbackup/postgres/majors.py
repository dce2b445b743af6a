"""Which PostgreSQL majors pgbackup runs on, and the one refusal for any other (issue #29).

A major is supported when the test-suite proves backup, point-in-time recovery, verify and
drills on it (docs/testing.md's table): 15, 16, 17 and 18. Another major is refused before
anything is written, by the two things that write: a backup (its preflight, from the
server's ``server_version_num``) and wal-push / wal-receive (from the WAL page's
XLOG_PAGE_MAGIC, or the data directory's ``PG_VERSION``, since archive_command runs in
the data directory: ``pgarch.c`` starts it there). What supporting 14 or 19 would take is
in docs/testing.md ("Majors outside the table").
"""

from __future__ import annotations

import os

from pgbackup.errors import PgBackupError
from pgbackup.formats.walpage import SUPPORTED_MAJORS, wal_major

SUPPORTED_TEXT = ", ".join(str(m) for m in SUPPORTED_MAJORS[:-1]) + f" and {SUPPORTED_MAJORS[-1]}"


def unsupported(major: int | None, what: str) -> PgBackupError | None:
    """The refusal for ``what`` (a server, a WAL file) of PostgreSQL ``major``; None when
    the major is supported or unknown (an unknown major is judged where it is known)."""
    if major is None or major in SUPPORTED_MAJORS:
        return None
    return PgBackupError(
        f"{what} is PostgreSQL {major}, which this pgbackup does not support (it is proven "
        f"on PostgreSQL {SUPPORTED_TEXT}); nothing was written",
        hint="back this cluster up with its own major's tools (pg_basebackup, "
        "archive_command) until a pgbackup release lists it; docs/testing.md says what "
        "supporting another major takes",
    )


def data_dir_major(data_dir: str | os.PathLike[str] = ".") -> int | None:
    """The major in ``data_dir``'s PG_VERSION (None: not a data directory)."""
    try:
        with open(os.path.join(data_dir, "PG_VERSION"), encoding="ascii") as f:
            text = f.read(16).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def wal_file_refusal(data: bytes, name: str) -> PgBackupError | None:
    """wal-push's refusal of a WAL file of an unsupported major: its page magic says which
    (a known one), else the data directory it is pushed from (PostgreSQL runs
    archive_command with the data directory as the working directory)."""
    return unsupported(wal_major(data) or data_dir_major(), f"WAL file {name}")
