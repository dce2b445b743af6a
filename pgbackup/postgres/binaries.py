"""Find PostgreSQL client programs that match the server's major version.

pg_basebackup of one major version refuses (or silently mis-handles) servers of
another, so we look for the matching one first: the policy's ``pg_bin_dir``, then the
directories in ``$PGBACKUP_PG_BIN_DIRS`` (colon-separated: installs in places of their own,
as the test-suite's PostgreSQL 16 and 18 from PyPI), then Debian/Ubuntu's
``/usr/lib/postgresql/<major>/bin``, then RHEL's ``/usr/pgsql-<major>/bin``, then ``$PATH``.
Every program a target needs (client and server alike) is found this way, through
:func:`program_for`; a directory the caller may not search is skipped (issue #29).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from pgbackup.errors import BinaryError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@functools.lru_cache(maxsize=64)
def program_major(path: str) -> int | None:
    """The major version a PostgreSQL program reports with ``--version`` (None if unknown).

    Asked once per installed file: the answer is kept in pgbackup's cache under the
    file's identity (device, inode, size, modification time; a package upgrade changes
    it), so that a backup does not start a process for it every time (issue #15).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    identity = f"{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"
    known = _known_majors()
    if isinstance(known.get(identity), int):
        return int(known[identity])
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION_RE.search(out)
    major = int(m.group(1)) if m else None
    if major is not None:
        _remember_major(identity, major)
    return major


def _majors_file() -> Path:
    from pgbackup.policy.cache import cache_root

    return cache_root() / "program-majors.json"


def _known_majors() -> dict[str, Any]:
    try:
        known = json.loads(_majors_file().read_bytes())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remember_major(identity: str, major: int) -> None:
    """Add one answer to the cache (atomically replaced; a lost race only costs a
    ``--version`` next time). A cache that cannot be written is simply not used."""
    path = _majors_file()
    known = _known_majors()
    # Entries of replaced files are dropped: keep only paths other than this one.
    name = identity.split("|", 1)[0]
    known = {k: v for k, v in known.items() if k.split("|", 1)[0] != name}
    known[identity] = major
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def candidate_dirs(major: int | None, pg_bin_dir: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    if pg_bin_dir:
        dirs.append(Path(pg_bin_dir))
    extra = os.environ.get("PGBACKUP_PG_BIN_DIRS", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    if major is not None:
        dirs += [Path(f"/usr/lib/postgresql/{major}/bin"), Path(f"/usr/pgsql-{major}/bin")]
    else:
        # Newest installed first.
        found = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
            reverse=True,
        )
        dirs += [Path(p) for p in found]
    dirs += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return dirs


def _is_program(path: Path) -> bool:
    """An executable file at ``path``. False, not an error, when a directory on the way
    cannot be searched: ``runuser`` keeps root's PATH, whose first entries may lie under
    /root (mode 0700), where stat() fails with EACCES for the server's OS user."""
    try:
        return path.is_file() and os.access(path, os.X_OK)
    except OSError:
        return False


def _looked_in(dirs: list[Path], pg_bin_dir: str | os.PathLike[str] | None) -> str:
    """Where a program was looked for, in order, for a message (said even when the
    policy has no ``pg_bin_dir``: the usual fix)."""
    where = ", ".join(dict.fromkeys(str(d) for d in dirs))
    policy = f"pg_bin_dir {pg_bin_dir}" if pg_bin_dir else "no pg_bin_dir in the policy"
    return f"looked in: {where} ({policy})"


def find_program(name: str, major: int | None, pg_bin_dir: str | os.PathLike[str] | None) -> str:
    """Absolute path of ``name`` whose major version is ``major`` (any when None).

    ``pg_bin_dir`` (the target's, from the policy) has no default, so that no caller can
    forget it: :func:`program_for` passes a target's."""
    seen: list[str] = []
    dirs = candidate_dirs(major, pg_bin_dir)
    for d in dirs:
        path = d / name
        if not _is_program(path):
            continue
        if major is None:
            return str(path)  # any version will do: no need to ask it (a process start)
        found_major = program_major(str(path))
        if found_major == major:
            return str(path)
        seen.append(f"{path} (PostgreSQL {found_major})")
    if seen:
        raise BinaryError(
            f"{name} for PostgreSQL {major} not found (the server is PostgreSQL {major}; "
            "a client program of another major version refuses it or mis-reads its files); "
            "found only " + ", ".join(dict.fromkeys(seen)) + "; " + _looked_in(dirs, pg_bin_dir),
            hint=f"install the PostgreSQL {major} client programs (Debian: apt-get install "
            f"postgresql-client-{major}) or set pg_bin_dir for the target in backup.yaml",
        )
    raise BinaryError(
        f"{name} not found"
        + (f" (PostgreSQL {major})" if major else "")
        + "; "
        + _looked_in(dirs, pg_bin_dir),
        hint="install the PostgreSQL client programs (Debian: apt-get install postgresql-client; "
        "server programs: postgresql) or set pg_bin_dir for the target in backup.yaml",
    )


def program_for(target: Any, name: str, major: int | None) -> str:
    """``name`` of PostgreSQL ``major`` for ``target`` (a policy Target: anything with
    ``pg_bin_dir``; None for no target): its ``pg_bin_dir`` first, then the order above.
    The one lookup every caller with a target uses (issue #29)."""
    return find_program(name, major, getattr(target, "pg_bin_dir", None))


def server_bin_dir(major: int | None, pg_bin_dir: str | os.PathLike[str] | None) -> Path:
    """Directory holding initdb/pg_ctl/postgres (needed for sandboxes, drills and tests)."""
    return Path(find_program("initdb", major, pg_bin_dir)).parent
