"""wal-push's fast path: the common case, stored with the same rules and few imports.

PostgreSQL starts ``pgbackup wal-push`` once per 16 MiB segment. The general path
(:func:`pgbackup.engine.wal.push` behind :func:`pgbackup.policy.load_policy_fast`) imports
``pathlib``, ``typing``, ``json``, ``re`` and a dozen pgbackup modules: about 70 million
instructions, a fifth of a whole push, before the first byte is compressed. This module
handles the case that almost every push is. It has no rule of its own: each one it applies
has one home that the general path reads too, and each home imports next to nothing:

- the validated-policy cache (key, entry, defaults, ``${...}``): :mod:`pgbackup.policyrules`;
- the page magics, the long header, reading a segment, ``archive.json``'s bytes:
  :mod:`pgbackup.formats.walpage`;
- stored names and zstd's one-shot parameters: :mod:`pgbackup.formats.codecbase`;
- the durable create-only write (temporary file, fsync, link, directory fsync, modes,
  owner): :mod:`pgbackup.durable`.

The common case:

- the policy (named by ``--config`` or ``$PGBACKUP_CONFIG``) was validated before and its
  parsed document is in the validated-policy cache;
- the repository is posix, zstd without encryption, read from plain strings (no ``$``:
  no interpolation to do; no ``~``);
- the file is a WAL segment (or ``.partial``) whose long page header names its cluster,
  and the target's ``archive.json`` already binds the archive to that cluster (as the
  first push wrote it), or, after a major upgrade, the newest generation's does
  (``<target>/gen/<n>/archive.json``: :mod:`pgbackup.engine.generations`);
- nothing is archived under that name yet, and the ``wal/`` directory exists.

Anything else DECLINES: :func:`fast_push` returns False having published nothing, and the
general path runs from the start (so a retry, another cluster's WAL, a first push get its
checks, messages and alerts). An OSError of the filesystem before the file is linked into
place (the segment, the policy or the cache cannot be read; a full disk, a permission)
declines too: the general path meets it again and says what it is, in its own words, with
its hint and its alert. An OSError after the link (the directory cannot be fsynced) is
raised as :class:`NotDurable`: the file is in place but not yet durable, and the push
must fail.

Every other exception is a bug here and is raised, never taken for "not the common case":
wal-push then fails with one line on stderr and the traceback in the log file
(:mod:`pgbackup.interface.wal_commands`), rather than running slower forever in silence.

``tests/test_wal_fastpush.py`` checks that it stores what the general path stores, that it
is taken in the common case, the fallbacks, and that its bugs surface.
"""

from __future__ import annotations

import os

from pgbackup import durable, policyrules
from pgbackup.formats import codecbase, walpage


class NotDurable(OSError):
    """The file is linked into place, but its directory could not be fsynced."""


def fast_push(config: str | None, target: str | None, path: str) -> bool:
    """Store the WAL file ``path`` if it is the common case; False: not handled, nothing
    published. :class:`NotDurable`: stored, but its directory could not be made durable."""
    plan = _plan(config, target, path)
    if plan is None:
        return False
    data, final, wal_dir, level, owner = plan
    from pgbackup.formats.zstdlib import wal_threads

    compressed = codecbase.zstd_whole(data, level, wal_threads())
    try:
        tmp = durable.write_temp(final, compressed, owner)
        durable.place(tmp, final, if_absent=True)
    except OSError:
        return False  # nothing published (a name archived meanwhile, too): the general path
    try:
        durable.fsync_path(wal_dir)
    except OSError as exc:
        raise NotDurable(exc.errno, exc.strerror or str(exc), wal_dir) from exc
    return True


def _plan(
    config: str | None, target: str | None, path: str
) -> tuple[bytes, str, str, int, tuple[int, int] | None] | None:
    """(segment bytes, final path, wal directory, zstd level, owner), or None: declined."""
    name = os.path.basename(path)
    if not walpage.is_segment_or_partial(name):
        return None
    policy_path = policyrules.named_policy_file(config)
    if policy_path is None:
        return None
    doc = _cached_document(policy_path)
    if not isinstance(doc, dict) or doc.get("encryption") is not None:
        return None
    repo = doc.get("repository")
    comp = doc.get("compression") or {}
    targets = doc.get("targets")
    if not (isinstance(repo, dict) and isinstance(comp, dict) and isinstance(targets, dict)):
        return None
    if repo.get("kind", policyrules.DEFAULT_REPOSITORY_KIND) != "posix":
        return None
    if comp.get("method", policyrules.DEFAULT_COMPRESSION_METHOD) != "zstd":
        return None
    root = repo.get("path")
    level = comp.get("level", policyrules.DEFAULT_COMPRESSION_LEVEL)
    if not isinstance(root, str) or policyrules.interpolated(root) or root.startswith("~"):
        return None
    if type(level) is not int:
        return None
    if target is None:
        if len(targets) != 1:
            return None
        target = next(iter(targets))
    if not isinstance(target, str) or target not in targets or policyrules.interpolated(target):
        return None
    repo_root = os.path.join(os.path.dirname(policy_path), root)  # as policy.build._abs
    target_dir = os.path.join(repo_root, target)
    try:
        data = walpage.read_wal_file(path)
        header = walpage.segment_sysid(data)
        if walpage.wal_major(data) not in walpage.SUPPORTED_MAJORS:
            return None  # the general path refuses it (postgres/majors.py)
        if header is None:
            return None
        if not _bound_to(os.path.join(target_dir, walpage.ARCHIVE_INFO), header):
            newest = _newest_generation(repo_root, target)  # after `pgbackup upgrade`
            if newest is None or not _bound_to(os.path.join(newest, walpage.ARCHIVE_INFO), header):
                return None
            target_dir = newest
        wal_dir = os.path.join(target_dir, "wal")
        for stored in codecbase.stored_names(name):
            if os.path.lexists(os.path.join(wal_dir, stored)):
                return None  # archived already: the general path compares
        if not os.path.isdir(wal_dir):
            return None  # the general path creates it, durably
        owner = durable.repository_owner(repo_root)
    except OSError:
        return None
    return data, os.path.join(wal_dir, name + codecbase.SUFFIXES["zstd"]), wal_dir, level, owner


def _cached_document(policy_path: str) -> object:
    """The cached, validated document of the policy file (None: not in the cache)."""
    try:
        with open(policy_path, "rb") as f:
            data = f.read()
        with open(_schema_path(), "rb") as f:
            schema = f.read()
    except OSError:
        return None
    return policyrules.read_entry(policyrules.cache_key(policy_path, data, schema, os.environ))


def _schema_path() -> str:
    """policy.schema.SCHEMA_PATH, without pathlib: packaged beside the modules (setup.py
    maps it there), else the source tree's (a test checks they agree)."""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # pgbackup/
    packaged = os.path.join(here, "schema", "backup.schema.json")
    if os.path.isfile(packaged):
        return packaged
    return os.path.join(os.path.dirname(here), "schema", "backup.schema.json")


def _newest_generation(repo_root: str, target: str) -> str | None:
    """The directory of the target's newest generation after generation 1
    (named by formats/walpage, as engine/generations names it), or None (OSError too:
    declined). Its archive.json binds
    it to a cluster only once the general path found that cluster in the target's history,
    so a segment of the cluster it names is the common case there."""
    directory = os.path.join(repo_root, target, walpage.GENERATIONS)
    numbers = [int(n) for n in os.listdir(directory) if n.isdigit()]
    return (
        os.path.join(repo_root, walpage.generation_root(target, max(numbers))) if numbers else None
    )


def _bound_to(archive_json: str, header: tuple[int, int]) -> bool:
    """The target's archive.json exists and binds it to this cluster, as the first push
    wrote it (engine.wal.bind_archive); anything else is the general path's to read."""
    with open(archive_json, "rb") as f:  # OSError (absent, too): declined by the caller
        info = f.read()
    return walpage.names_cluster(info, header[0])
