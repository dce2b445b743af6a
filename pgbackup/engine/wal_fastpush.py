"""wal-push's fast path: the common case stored with nothing but the standard library's core.

PostgreSQL starts ``pgbackup wal-push`` once per 16 MiB segment. The general path
(:func:`pgbackup.engine.wal.push` behind :func:`pgbackup.policy.load_policy_fast`) imports
``pathlib``, ``typing``, ``json``, ``re`` and a dozen pgbackup modules: about 70 million
instructions, a fifth of a whole push, before the first byte is compressed. This module
handles the case that almost every push is, importing only ``os``, ``sys``, ``struct``,
``mmap``, ``_blake2``, ``_json`` (the C scanner) and zstd's C extension:

- the policy (named by ``--config`` or ``$PGBACKUP_CONFIG``) was validated before and its
  parsed document is in the validated-policy cache (the same key as
  :mod:`pgbackup.policy.cache`);
- the repository is posix, zstd without encryption, read from plain strings (no ``$``:
  no interpolation to do);
- the file is a WAL segment (or ``.partial``) whose long page header names its cluster,
  and the target's ``archive.json`` already binds the archive to that cluster;
- nothing is archived under that name yet (and the ``wal/`` directory exists).

It stores exactly what the general path stores, the same way: zstd with the same
parameters, a temporary file fsynced, hard-linked into place (create-only-if-absent),
then the directory fsynced. Anything else, or any error before the link, returns False
having published nothing, and the general path runs from the start (so a retry, another
cluster's WAL, a first push, a full disk, get its checks, messages and alerts). An error
after the link (the directory cannot be fsynced) raises :class:`OSError`: the file is in
place but not yet durable, and the push must fail.

``tests/test_wal_fastpush.py`` pins this module to the general path: same cache key, same
stored bytes, same WAL page magics, and the fallbacks.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# XLOG_PAGE_MAGIC per major version, as pgbackup.engine.wal.WAL_PAGE_MAGIC (a test checks
# they agree; a page this table does not know goes to the general path).
_MAGICS = (0xD10D, 0xD110, 0xD113, 0xD116, 0xD118)
_XLP_LONG_HEADER = 0x0002
_HEX_UPPER = "0123456789ABCDEF"
_MAP_THRESHOLD = 1024 * 1024
_WHOLE_JOB_SIZE = 2 * 1024 * 1024  # as formats.codecs.spec.WHOLE_JOB_SIZE
_TMP_SUFFIX = ".pgbackup-tmp"  # as storage.posix.TMP_SUFFIX
_FILE_MODE = 0o640  # as storage.posix.FILE_MODE
_SUFFIXES = ("", ".zst", ".lz4", ".gz")  # every name a stored WAL file can have (codecs.spec)


def fast_push(config: str | None, target: str | None, path: str) -> bool:
    """Store the WAL file ``path`` if it is the common case; False: not handled, nothing
    published. OSError: stored, but its directory could not be made durable."""
    tmp = None
    try:
        plan = _plan(config, target, path)
        if plan is None:
            return False
        data, final, wal_dir, threads, level, owner = plan
        compressed = _compress(data, level, threads)
        tmp = os.path.join(
            wal_dir, f".{os.path.basename(final)}.{os.urandom(6).hex()}{_TMP_SUFFIX}"
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(compressed)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, final)  # fails if the name exists: create-only-if-absent
    except Exception:
        if tmp is not None:
            try:  # noqa: SIM105 - contextlib is one of the imports this module avoids
                os.unlink(tmp)
            except OSError:
                pass
        return False
    try:  # noqa: SIM105
        os.unlink(tmp)
    except OSError:
        pass  # a leftover temporary file; cleanup removes those
    dir_fd = os.open(wal_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def _plan(
    config: str | None, target: str | None, path: str
) -> tuple[bytes, str, str, int, int, tuple[int, int] | None] | None:
    """(segment bytes, final path, wal directory, zstd threads, level, owner), or None."""
    name = os.path.basename(path)
    if not (_upper_hex(name, 24) or (name.endswith(".partial") and _upper_hex(name[:-8], 24))):
        return None
    policy_path = _policy_path(config)
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
    if repo.get("kind", "posix") != "posix" or comp.get("method", "zstd") != "zstd":
        return None
    root, level = repo.get("path"), comp.get("level", 3)
    if not isinstance(root, str) or "$" in root or root.startswith("~") or type(level) is not int:
        return None
    if target is None:
        if len(targets) != 1:
            return None
        target = next(iter(targets))
    if not isinstance(target, str) or target not in targets or "$" in target:
        return None
    repo_root = os.path.join(os.path.dirname(policy_path), root)
    target_dir = os.path.join(repo_root, target)
    data = _read(path)
    header = _segment_sysid(data)
    if header is None or not _bound_to(os.path.join(target_dir, "archive.json"), header):
        return None
    wal_dir = os.path.join(target_dir, "wal")
    for suffix in _SUFFIXES:
        for enc in ("", ".age"):
            if os.path.lexists(os.path.join(wal_dir, name + suffix + enc)):
                return None  # archived already: the general path compares
    if not os.path.isdir(wal_dir):
        return None  # the general path creates it, durably
    from pgbackup.formats.zstdlib import wal_threads

    threads = wal_threads()
    # storage.posix.PosixStorage.owner: root writing into a repository owned by another
    # user (the server's) gives the new file to that user.
    owner = None
    if os.geteuid() == 0:
        st = os.stat(repo_root)
        if st.st_uid != 0:
            owner = (st.st_uid, st.st_gid)
    return data, os.path.join(wal_dir, name + ".zst"), wal_dir, threads, level, owner


def _upper_hex(text: str, length: int) -> bool:
    return len(text) == length and not text.strip(_HEX_UPPER)


def _policy_path(config: str | None) -> str | None:
    """As policy.find_config for an explicit file: absolute, symlinks resolved."""
    explicit = config if config else os.environ.get("PGBACKUP_CONFIG")
    if not explicit or explicit.startswith("~") or not os.path.isfile(explicit):
        return None
    return os.path.realpath(explicit)


def _cache_key(policy_path: str, data: bytes, env: dict[str, str] | os._Environ[str]) -> str:
    """pgbackup.policy.cache._cache_key, without pathlib or re."""
    from _blake2 import blake2b

    from pgbackup import __version__

    h = blake2b(digest_size=32)
    h.update(b"pgbackup-policy-v2\0" + __version__.encode() + b"\0")
    with open(_schema_path(), "rb") as f:
        h.update(f.read())
    h.update(b"\0" + policy_path.encode() + b"\0")
    h.update(len(data).to_bytes(8, "little") + data)
    for var in referenced_vars(data):
        value = env.get(var)
        h.update(var.encode() + b"\0")
        h.update(b"\x01unset" if value is None else b"=" + value.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def referenced_vars(data: bytes) -> list[str]:
    """policy.interpolation._referenced_vars (``\\$\\{([A-Za-z_][A-Za-z0-9_]*)``), by hand."""
    first = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
    rest = first + b"0123456789"
    names = set()
    i = data.find(b"${")
    while i >= 0:
        j = i + 2
        if j < len(data) and data[j] in first:
            k = j + 1
            while k < len(data) and data[k] in rest:
                k += 1
            names.add(data[j:k].decode())
            i = data.find(b"${", k)
        else:
            i = data.find(b"${", i + 1)
    return sorted(names)


def _schema_path() -> str:
    """policy.schema._schema_path: packaged beside the modules, else the source tree's."""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # pgbackup/
    packaged = os.path.join(here, "schema", "backup.schema.json")
    if os.path.isfile(packaged):
        return packaged
    return os.path.join(os.path.dirname(here), "schema", "backup.schema.json")


def _cache_dir() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "pgbackup", "validated")


def _cached_document(policy_path: str) -> object:
    with open(policy_path, "rb") as f:
        data = f.read()
    try:
        with open(os.path.join(_cache_dir(), _cache_key(policy_path, data, os.environ)), "rb") as f:
            entry = _json_loads(f.read())
    except OSError:
        return None
    return entry.get("document") if isinstance(entry, dict) else None


class _JsonContext:
    """What json.decoder.JSONDecoder hands the C scanner (json.loads' defaults), without
    importing json (which imports re)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"JSON constant {name}")  # NaN/Infinity: not in what we read


def _json_loads(raw: bytes) -> object:
    """A JSON document written by json.dumps, or ValueError."""
    from _json import make_scanner

    text = raw.decode("utf-8")
    try:
        value, end = make_scanner(_JsonContext())(text, 0)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("not JSON")
    return value


def _read(path: str) -> bytes:
    """The file's bytes, mapped when large (as engine.wal.read_wal_file)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _MAP_THRESHOLD:
            return f.read()
        import mmap

        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)  # type: ignore[return-value]


def _segment_sysid(data: bytes) -> tuple[int, int] | None:
    """engine.wal.segment_sysid: (system identifier, segment size) from the long header."""
    import struct

    if len(data) < 40:
        return None
    magic, info = struct.unpack_from("<HH", data, 0)
    if magic not in _MAGICS or not info & _XLP_LONG_HEADER:
        return None
    sysid, seg_size = struct.unpack_from("<QI", data, 24)
    return int(sysid), int(seg_size)


def _bound_to(archive_json: str, header: tuple[int, int]) -> bool:
    """The target's archive.json exists and names this cluster (engine.wal.bind_archive)."""
    try:
        with open(archive_json, "rb") as f:
            info = _json_loads(f.read())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and str(info.get("system_identifier")) == str(header[0])


def _compress(data: bytes, level: int, threads: int) -> bytes:
    """formats.codecs.encode_bytes for zstd without encryption: the same parameters."""
    from pgbackup.formats.zstdlib import load

    zstandard: Any = load()
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=len(data),
        threads=threads,
        job_size=_WHOLE_JOB_SIZE if threads else 0,
        write_checksum=True,
    )
    compressed: bytes = zstandard.ZstdCompressor(compression_params=params).compress(data)
    return compressed
