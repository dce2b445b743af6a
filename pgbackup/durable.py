"""How a file is written durably into a posix repository: the one home of the protocol.

PostgreSQL's own rules for its archive: write a temporary file beside the final name
(created exclusively, mode 0640, handed to the repository's owner when we run as root),
fsync it, hard-link it into place (create-only-if-absent: ``link`` fails when the name
exists) or rename it over the name, remove the temporary name, fsync the directory.
Directories are created 0750.

:mod:`pgbackup.storage.posix` writes every object this way, and so does wal-push's fast
path (:mod:`pgbackup.engine.wal_fastpush`). It lives on the package's floor and imports
only ``os`` because importing anything under ``pgbackup.storage`` runs that package's
``__init__`` (``typing`` and the storage contract: a sixth of a fast push's start-up).
"""

from __future__ import annotations

import os

DIR_MODE = 0o750
FILE_MODE = 0o640
#: The temporary name's suffix: listings skip it, cleanup removes old ones.
TMP_SUFFIX = ".pgbackup-tmp"


def temp_path(final: str) -> str:
    """A fresh temporary name beside ``final`` (hidden, random, :data:`TMP_SUFFIX`)."""
    directory, name = os.path.split(final)
    return os.path.join(directory, f".{name}.{os.urandom(6).hex()}{TMP_SUFFIX}")


def repository_owner(root: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(uid, gid) that new files and directories must get: when we run as root in a
    repository owned by another user (the server's, whose archive_command writes there
    too), that user's; else None. OSError when ``root`` cannot be examined."""
    if os.geteuid() != 0:
        return None
    st = os.stat(root)
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def open_temp(final: str, owner: tuple[int, int] | None) -> tuple[int, str]:
    """Create the temporary file for ``final``: (descriptor, its path)."""
    tmp = temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    if owner is not None:
        try:
            os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            remove_quietly(tmp)
            raise
    return fd, tmp


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_temp(final: str, data: bytes, owner: tuple[int, int] | None) -> str:
    """The temporary file for ``final`` holding ``data``, fsynced and closed: its path.
    On any error nothing is left behind and the OSError is raised."""
    fd, tmp = open_temp(final, owner)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def place(tmp: str, final: str, *, if_absent: bool) -> None:
    """Put the fsynced temporary file at ``final``: hard-linked (``if_absent``: raises
    FileExistsError when the name exists, an atomic create-only-if-absent) or renamed
    over it. On an error the temporary file is removed and nothing is published. The
    directory is not yet fsynced (:func:`fsync_path` of it makes the name durable)."""
    try:
        if if_absent:
            os.link(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise
    if if_absent:
        remove_quietly(tmp)  # if this fails, a leftover that cleanup removes


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory, by its path (Linux lets a read-only descriptor sync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` if it can be removed; say nothing either way."""
    try:  # noqa: SIM105 - contextlib is one of the imports wal-push's fast path avoids
        os.unlink(path)
    except OSError:
        pass
