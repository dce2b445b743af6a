"""WAL read-ahead for recovery: a verified spool in the data directory, filled ahead of
PostgreSQL's requests by one background prefetcher (issue #26 point 3).

PostgreSQL asks restore_command for one file at a time and replays it before it asks for
the next; from object storage each request pays a process start, an object-store client
and a round trip. Like pgBackRest's asynchronous archive-get (a spool queue filled by a
background process; a request is served from it when the file is there and marked
``.ok``) and WAL-G's prefetch (``pg_wal/.wal-g/prefetch``, files moved into place when
complete), the segments after the one asked for are fetched in parallel into a spool
while PostgreSQL replays, and the next ``wal-fetch`` only renames its file into ``%p``.

**Where.** ``pgbackup_spool/`` at the top of the data directory being recovered
(restore_command runs there: ``RestoreArchivedFile`` in xlogarchive.c runs it with the
data directory as the working directory). PostgreSQL ignores a directory it does not
know there (the manual's "Database File Layout" lists what it owns; nothing in the
server lists the top directory and acts on unknown names); ``pg_basebackup`` and
``pg_rewind`` copy it (basebackup.c excludes only its own list), which is harmless: a copy
is bound to this archive and this cluster (below), and it is removed when recovery ends.
Being in the data directory, a spool file and ``%p`` (``pg_wal/RECOVERYXLOG``) are on one
filesystem, so serving is a ``rename`` (a copy when ``pg_wal`` is a link elsewhere).

**What the spool holds.** Only whole WAL segments, never a ``.history``, ``.backup`` or
``.partial`` file (those are always fetched synchronously). Each is fetched, decoded
(compression and age carry their own checksums) and verified before it gets a final
name: its size is the segment size, its first page has a known XLOG_PAGE_MAGIC and a long
header with the archive's system identifier and segment size, and that page's timeline
and address are those its name says (:func:`verify_segment`). It is written under a
temporary name (``.tmp.*``) and renamed to ``<segment>.<crc32 of its bytes>``: the rename
is the commit, so a killed prefetcher leaves at most temporary files, removed by the
next one. Before the rename its modification time is set to that CRC, as nanoseconds
after the epoch: any later write into the file (PostgreSQL recycling a restored segment
that shares the spooled file's inode, a damaged file rewritten) sets it to the time of
the write. So a file whose modification time is still its CRC, in a spool written during
this boot of the machine (the manifest records ``/proc/sys/kernel/random/boot_id``: an
operating-system crash can leave a renamed file whose bytes never reached the disk, as no
fsync precedes the rename), holds the bytes that were verified, and serving it needs no
second CRC-32 of 16 MiB (7 ms of a hit's ~20 ms of CPU). Anything else is checked in full.
``manifest`` binds the spool to one archive: a digest of the policy file (its
path, bytes and the variables it references, as the validated-policy cache keys it), the
``--target``/``--from`` flags, and the system identifier of the archive. A spool whose
manifest is not this request's, or not this data directory's cluster (``pg_control``), is
discarded, never served.

**Serving** (:func:`serve`, before the policy is loaded and without importing any storage
client): the segment asked for is in the spool under a matching manifest; its size and
first page header are checked again, and its bytes are those verified when it was spooled:
its CRC-32 is computed again, unless the file provably has not been written since (below);
it is linked to ``%p`` (the spool keeps it: at the end of recovery PostgreSQL reads the last
segment a second time) and wal-fetch exits 0. A file the spool does not hold (a segment
not fetched yet, the one past the end of the archive, a timeline's history file) is
*asked* of the running prefetcher (:func:`ask`): it runs wal-fetch's own fetch
(``engine/wal.fetch``, every rule, no second copy) with its client already open, after the
question was written, and answers 0 (the file) or 1 (not archived); anything else (a
hole, a corrupt or unreachable file, no prefetcher, no answer) is no answer, and wal-fetch
fetches synchronously with all its rules (1 only for a file truly not archived, 255
during archive recovery for a corrupt file, a hole, an unreadable archive) and (re)starts
the read-ahead (:func:`kick`). A file the spool refuses is removed and fetched
synchronously, where the same damage fails loudly.

**The prefetcher** (``python -m pgbackup.engine.walprefetch``, started detached by
wal-fetch, one per data directory, at its first segment or history file; that wal-fetch
then waits for it to open the archive and asks it, rather than open a second client
beside it: it holds ``flock`` on ``pgbackup_spool/lock``). ``restore --start`` starts it
before the server instead (:class:`BeforeServer`), so that the archive is open when the
first history probe comes. Either way it begins with the backup's first segment
(``backup_label``), before PostgreSQL asks for it. Each wal-fetch appends the file asked for to
``pgbackup_spool/requests`` and wakes the prefetcher (a datagram to the abstract UNIX
socket named after the spool: :func:`wake_address`); the prefetcher keeps the segment asked for last, the newest
served (PostgreSQL reads it again as recovery ends) and the next ``read_ahead`` segments
of the timeline in the spool, ``streams`` at a time, and removes any other (served,
skipped, of another timeline). It never writes
a "missing" marker: a segment it cannot find, or refuses, stops it going further on that
timeline (it looks again every few seconds: a standby's archive grows), and PostgreSQL's
own requests (the new timeline's history file, then its segments) drive the synchronous
path exactly as without a spool. Past ``--until`` (the last segment the recovery target
needs) it fetches nothing. It exits, removing the spool, when recovery has ended
(``recovery.signal`` and ``standby.signal`` both gone: PostgreSQL removes them when it
promotes), when the postmaster is gone (``postmaster.pid``), after
:data:`IDLE_SECONDS` without a request, on SIGTERM, or when a request comes from another
archive; ``pgbackup restore`` and drills stop it and remove the spool once recovery has
ended (:func:`end_read_ahead`). It writes a line to the server's log (its standard error,
when that is a file) when it starts, when it refuses a segment and when it stops, with
the count of segments served from the spool.

Settings: a target's ``wal_fetch: {read_ahead: N, streams: M}`` (schema/backup.schema.json;
:class:`pgbackup.policy.records.WalFetch`): 8 segments, 4 at a time, from every storage
kind (docs/benchmarks.md: "WAL read-ahead"; ``read_ahead: 0`` turns it off).
"""

from __future__ import annotations

import os
import sys

from pgbackup.formats import walpage

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from concurrent.futures import Future
    from typing import Any

#: The spool's directory, at the top of the data directory.
SPOOL_DIR = "pgbackup_spool"
MANIFEST = "manifest"
REQUESTS = "requests"
LOCK = "lock"
TMP_PREFIX = ".tmp."
#: The prefetcher exits after this long without a request (PGBACKUP_PREFETCH_IDLE).
IDLE_SECONDS = float(os.environ.get("PGBACKUP_PREFETCH_IDLE", "60"))
#: A segment it could not find or refused is looked for again after this long.
RETRY_SECONDS = 3.0
#: How often the prefetcher reads the requests and checks that recovery goes on, without
#: its wake-up socket; with it, at least every TURN_SECONDS (a request or a finished fetch
#: wakes it at once).
POLL_SECONDS = 0.02
TURN_SECONDS = 0.1
PREFIX = "pgbackup wal-prefetch: "
#: A wal-fetch that asked the prefetcher (:func:`ask`) reads its answer from this file.
ANSWER_PREFIX = "answer."
#: How long a wal-fetch waits for the prefetcher's answer before it fetches the file itself.
ASK_SECONDS = 120.0
#: How long a wal-fetch that started the prefetcher waits for it to open the archive,
#: and for it to take the spool's lock (its first act).
START_SECONDS = 30.0
LOCK_SECONDS = 3.0


# --- verification (the prefetcher before it spools; wal-fetch again before it serves) ---


def verify_segment(
    name: str, data: bytes | mmap.mmap, sysid: int, seg_size: int, size: int | None = None
) -> str | None:
    """Why the decoded segment ``data`` must not be served as ``name`` (None: it may).

    Its size is the segment size; its first page is a WAL page of a known major with a
    long header naming cluster ``sysid`` and ``seg_size``; the page's timeline and address
    are those of ``name``. ``size``: the whole segment's, when ``data`` is its start only.
    """
    import struct

    size = len(data) if size is None else size
    if size != seg_size:
        return f"{size} bytes, a segment has {seg_size}"
    if len(data) < 40:
        return "its first page cannot be read whole"
    magic, info, tli, pageaddr = struct.unpack_from("<HHIQ", data, 0)
    if magic not in walpage.MAGIC_MAJOR:
        return f"its first page has no WAL page magic we know (0x{magic:04X})"
    if not info & walpage.XLP_LONG_HEADER:
        return "its first page has no long header"
    header_sysid, header_seg_size = struct.unpack_from("<QI", data, 24)
    if header_sysid != sysid:
        return f"written by cluster {header_sysid}, the archive belongs to {sysid}"
    if header_seg_size != seg_size:
        return f"its header says {header_seg_size}-byte segments, the archive has {seg_size}"
    if not walpage.is_segment(name):
        return "not a segment's name"
    per = 0x100000000 // seg_size
    want_tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    if tli != want_tli or pageaddr != (log * per + seg) * seg_size:
        return (
            f"its first page is of timeline {tli} at {pageaddr >> 32:X}/{pageaddr & 0xFFFFFFFF:X}, "
            "not where its name says"
        )
    return None


def spool_identity(policy_path: str, target: str | None, source: str | None) -> str:
    """What binds a spool to one archive: the policy file (path, bytes, the variables it
    references: policyrules.cache_key) and the flags naming target and upload."""
    from pgbackup import policyrules

    with open(policy_path, "rb") as f:
        data = f.read()
    key = policyrules.cache_key(policy_path, data, b"wal-prefetch", os.environ)
    text = f"{key}\0{target or ''}\0{source or ''}"
    h = policyrules.blake2b(digest_size=16)
    h.update(text.encode())
    return h.hexdigest()


def manifest_bytes(identity: str, sysid: int, seg_size: int) -> bytes:
    return (
        f"identity {identity}\nsystem_identifier {sysid}\nsegment_size {seg_size}\n"
        f"boot {boot_id() or '-'}\n"
    ).encode()


def boot_id() -> str | None:
    """This boot of the machine (the kernel's random boot id), or None when unknown: a
    spool written in another boot may hold files whose bytes never reached the disk."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def read_manifest(spool: str) -> dict[str, str] | None:
    try:
        with open(os.path.join(spool, MANIFEST), encoding="ascii") as f:
            pairs = [line.split(" ", 1) for line in f.read().splitlines()]
    except (OSError, UnicodeDecodeError):
        return None
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def spooled(spool: str) -> dict[str, str]:
    """Segment name -> its file name in the spool (``<segment>.<crc32>``)."""
    out: dict[str, str] = {}
    try:
        entries = os.listdir(spool)
    except OSError:
        return out
    for entry in entries:
        if len(entry) == 33 and entry[24] == "." and walpage.is_segment(entry[:24]):
            out[entry[:24]] = entry
    return out


def discard_segments(spool: str) -> None:
    """Remove every segment (and temporary file) from the spool: it is not to be served."""
    try:
        entries = os.listdir(spool)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(TMP_PREFIX) or (len(entry) == 33 and walpage.is_segment(entry[:24])):
            _unlink(os.path.join(spool, entry))


def say(text: str) -> None:
    """One line to standard error: in restore_command (and in the prefetcher it starts)
    that is the server's log, beside PostgreSQL's own lines about the file."""
    try:
        sys.stderr.write(f"{PREFIX}{text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # no log to write to


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _control_sysid(data_dir: str) -> int | None:
    try:
        with open(os.path.join(data_dir, "global", "pg_control"), "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return int.from_bytes(head, "little") if len(head) == 8 else None


def _in_recovery(data_dir: str) -> bool:
    return os.path.exists(os.path.join(data_dir, "recovery.signal")) or os.path.exists(
        os.path.join(data_dir, "standby.signal")
    )


# --- wal-fetch's side ---------------------------------------------------------------------


def serve(
    policy_path: str,
    target: str | None,
    source: str | None,
    until: str | None,
    name: str,
    dest: str,
    *,
    just_started: bool = False,
) -> int | None:
    """Answer ``wal-fetch name dest`` from the read-ahead: 0 when the file is in
    ``dest`` (wal-fetch exits 0), 1 when the running prefetcher found it not archived
    (wal-fetch exits 1, as its own fetch would have), None when wal-fetch must fetch it
    itself (no spool, a foreign one, a refused file, no prefetcher, anything else).

    Imports no policy loader and no storage: a hit costs a link and a CRC; a miss is
    asked of the prefetcher, whose object-store client is already open (:func:`ask`).
    ``just_started``: this wal-fetch has just started the prefetcher (:func:`kick`), and
    waits for it to open the archive rather than open a client of its own beside it."""
    data_dir = os.getcwd()
    spool = os.path.join(data_dir, SPOOL_DIR)
    if not os.path.isdir(spool):
        return None
    manifest = read_manifest(spool)
    # A prefetcher opening the archive (just started by this wal-fetch, or by a restore
    # before the server: BeforeServer) is waited for, not fetched beside.
    opening = manifest is None and (just_started or _lock_holder(spool) is not None)
    if opening and _await_manifest(spool):
        manifest = read_manifest(spool)
    identity = spool_identity(policy_path, target, source)
    sysid = _control_sysid(data_dir)
    if (
        manifest is None
        or manifest.get("identity") != identity
        or sysid is None
        or manifest.get("system_identifier") != str(sysid)
    ):
        if manifest is not None:  # another archive's (or another cluster's) spool
            discard_segments(spool)
        return None
    seg_size = int(manifest.get("segment_size", "0"))
    entry = spooled(spool).get(name) if walpage.is_segment(name) else None
    if entry is None:
        return ask(spool, name, dest, identity)
    path = os.path.join(spool, entry)
    boot = boot_id()
    this_boot = boot is not None and manifest.get("boot") == boot
    problem = _check_spooled(path, name, sysid, seg_size, int(entry[25:], 16), this_boot)
    if problem is not None:
        say(f"refused {name} from the spool ({problem}); fetching it from the archive")
        _unlink(path)
        return None
    if not _link_into(path, dest):
        return None  # the prefetcher pruned it meanwhile: fetch it ourselves
    try:  # served: whatever happens to the read-ahead now, wal-fetch has succeeded
        record_request(spool, name, "hit", identity)
        ensure_running(spool, _prefetcher_argv(policy_path, target, source, until, data_dir))
    except OSError:
        pass  # the spool was removed meanwhile (recovery ended): the next miss restarts it
    return 0


def _await_manifest(spool: str) -> bool:
    """Wait for a prefetcher just started to write its manifest (it has opened the
    archive then); False when it does not (it could not open the archive: wal-fetch's own
    fetch says why)."""
    return _await_prefetcher(spool, os.path.join(spool, MANIFEST), START_SECONDS, running=False)


def _await_prefetcher(spool: str, path: str, seconds: float, *, running: bool) -> bool:
    """Wait for the prefetcher to write ``path``: True once it exists; False after
    ``seconds``, when the prefetcher stops, or (``running`` False: just started) when it
    never takes the spool's lock within :data:`LOCK_SECONDS`."""
    import time

    start = checked = time.monotonic()
    seen = running
    while not os.path.exists(path):
        now = time.monotonic()
        if now - start > seconds:
            return False
        if now - checked > (0.5 if seen else 0.005):  # /proc is read: not every turn
            checked = now
            holder = _lock_holder(spool) is not None
            if seen and not holder:
                return False  # it stopped
            if not holder and now - start > LOCK_SECONDS:
                return False  # it never took the lock: it did not start
            seen = seen or holder
        time.sleep(0.002)
    return True


def _link_into(path: str, dest: str) -> bool:
    """``dest`` made the spooled file, which stays in the spool: PostgreSQL may ask for
    the same segment again (at the end of recovery it reads the last one a second time),
    and the prefetcher keeps the newest segment it served. A link, not a copy: the
    server never writes into a restored file, and should it ever (a recycled segment in
    pg_wal), the CRC checked before each serve refuses the spooled one."""
    import errno

    for _attempt in range(2):
        try:
            os.link(path, dest)
            return True
        except FileExistsError:  # a leftover %p: restore_command replaces it
            _unlink(dest)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                return False
            return _copy_into(path, dest)  # pg_wal is a link to another filesystem
    return False


def ask(spool: str, name: str, dest: str, identity: str) -> int | None:
    """A file the spool does not hold (a segment not fetched yet, past the end of the
    archive, a timeline's history file) asked of the running prefetcher, which fetches it
    with :func:`pgbackup.engine.wal.fetch` itself (every rule of a synchronous fetch, no
    second copy: a hole, a corrupt or unreachable file is not an answer, and wal-fetch
    then fetches it itself and fails as loudly as ever). The question is written before
    the prefetcher looks, so its "not archived" is as fresh as wal-fetch's own. 0: the
    file is in ``dest``; 1: not archived; None: no answer (no prefetcher, a failure)."""
    import time

    if _lock_holder(spool) is None:
        return None
    nonce = f"{os.getpid()}-{time.monotonic_ns()}"
    answer = os.path.join(spool, f"{ANSWER_PREFIX}{nonce}")
    record_request(spool, name, f"ask:{nonce}", identity)
    if not _await_prefetcher(spool, answer, ASK_SECONDS, running=True):
        say(f"no answer for {name} from the read-ahead; fetching it")
        return None
    try:
        with open(answer, encoding="utf-8") as f:
            status = f.read()
    except OSError:
        return None
    _unlink(answer)
    data = answer + ".data"
    if status == "0":
        try:
            os.rename(data, dest)
        except OSError:
            _unlink(data)
            return None
        return 0
    if status == "1":
        return 1
    return None  # a failure: wal-fetch's own fetch says it, alerts, and exits as it must


def _check_spooled(
    path: str, name: str, sysid: int, seg_size: int, crc: int, this_boot: bool
) -> str | None:
    """Why the spooled file must not be served (None: it may): its size and first page
    header, and its CRC-32 against the one in its name unless the file was spooled during
    this boot and never written since (its modification time is still that CRC: the
    module's docstring says why that proves its bytes unchanged)."""
    import mmap
    import zlib

    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            if size != seg_size or size == 0:
                return f"{size} bytes, a segment has {seg_size}"
            if this_boot and st.st_mtime_ns == crc:
                return verify_segment(name, os.pread(f.fileno(), 40, 0), sysid, seg_size, size)
            with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as data:
                problem = verify_segment(name, data, sysid, seg_size)
                if problem is None and zlib.crc32(data) != crc:
                    problem = "its CRC-32 is not the one recorded when it was spooled"
                return problem
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"


def _copy_into(path: str, dest: str) -> bool:
    import shutil

    tmp = os.path.join(os.path.dirname(dest) or ".", f".{os.path.basename(dest)}.pgbackup-fetch")
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    except OSError:
        _unlink(tmp)
        return False
    return True


def record_request(spool: str, name: str, how: str, identity: str) -> None:
    """Tell the prefetcher which segment PostgreSQL asked for (one appended line), and
    wake it."""
    fd = os.open(os.path.join(spool, REQUESTS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{name} {how} {identity}\n".encode())
    finally:
        os.close(fd)
    wake(spool)


def wake_address(spool: str) -> str:
    """The prefetcher's wake-up socket: a name in Linux's abstract UNIX socket namespace
    (no file: a FIFO in the data directory made every base backup taken from a server in
    recovery warn "skipping special file", basebackup.c's sendDir), from the spool's
    device and inode, so that two data directories never share one, even at the same
    path in two containers. Anybody may send to it: a datagram only wakes the prefetcher,
    which then reads the requests file as at every turn."""
    st = os.stat(spool)
    return f"\0pgbackup-wal-prefetch-{st.st_dev:x}-{st.st_ino:x}"


def wake(spool: str) -> None:
    """A datagram to the prefetcher's socket (:func:`wake_address`). Nobody bound to it
    (no prefetcher: ECONNREFUSED), its queue full (it has been woken already): nothing to
    do; the prefetcher still looks at the requests every turn."""
    import _socket  # socket's C half: `socket` itself imports enum, ~5 ms a wal-fetch

    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    except OSError:
        return
    try:
        sock.setblocking(False)
        sock.sendto(b"\0", wake_address(spool))
    except OSError:
        pass
    finally:
        sock.close()


def kick(
    policy: Any,
    policy_path: str | None,
    target: str | None,
    source: str | None,
    until: str | None,
    name: str,
) -> str | None:
    """Before a synchronous fetch of ``name`` during recovery: make sure a prefetcher
    runs, when the target's ``wal_fetch`` says so, and, for a segment, record the request
    it reads ahead of. A timeline's history file starts it too: PostgreSQL asks for one
    before its first segment. ``"started"`` when this call started it (wal-fetch then
    asks it for ``name``: one object-store client opened, not two side by side),
    ``"running"`` when one ran already, None when there is no read-ahead."""
    if policy_path is None:
        return None
    data_dir = os.getcwd()
    if not _in_recovery(data_dir) or _control_sysid(data_dir) is None:
        return None  # not a server's restore_command: a person at a prompt
    if target is not None:
        settings = policy.targets[target].wal_fetch if target in policy.targets else None
    else:
        settings = (
            next(iter(policy.targets.values())).wal_fetch if len(policy.targets) == 1 else None
        )
    if settings is None or settings.read_ahead <= 0:
        return None
    spool = os.path.join(data_dir, SPOOL_DIR)
    if not os.path.isdir(spool):
        os.makedirs(spool, 0o700, exist_ok=True)
    identity = spool_identity(policy_path, target, source)
    if walpage.is_segment(name):
        record_request(spool, name, "miss", identity)
    else:  # read ahead from the backup's first segment while history probes are answered
        record_seed(spool, data_dir, identity)
    started = ensure_running(spool, _prefetcher_argv(policy_path, target, source, until, data_dir))
    return "started" if started else "running"


def backup_start_segment(data_dir: str) -> str | None:
    """The first segment recovery replays, as ``backup_label`` names it ("START WAL
    LOCATION: 0/2000028 (file 000000010000000000000002)"), or None. PostgreSQL reads
    ``backup_label`` and asks for the timeline history files (``InitWalRecovery`` in
    xlogrecovery.c) before it renames the label to ``backup_label.old``, so the history
    probe's wal-fetch still finds it; the segment is only a hint for the read-ahead
    (fetched, verified and served like any other, and only when asked for by name)."""
    try:
        with open(os.path.join(data_dir, "backup_label"), encoding="ascii") as f:
            for line in f:
                if line.startswith("START WAL LOCATION:") and "(file " in line:
                    name = line.rsplit("(file ", 1)[1].split(")", 1)[0].strip()
                    return name if walpage.is_segment(name) else None
    except (OSError, UnicodeDecodeError):
        return None
    return None


def record_seed(spool: str, data_dir: str, identity: str) -> None:
    """Name the backup's first segment (:func:`backup_start_segment`) to the prefetcher,
    which reads ahead from it before any segment is asked for; nothing without a label."""
    first = backup_start_segment(data_dir)
    if first is not None:
        record_request(spool, first, "seed", identity)


#: The prefetcher's last argument when a restore starts it before the server (its log says so).
BEFORE_SERVER = "before-server"
#: What its first line in the server's log then says (read back by read_ahead_report).
STARTED_BEFORE_SERVER = "started by the restore, before the server"


class BeforeServer:
    """What a restore needs to start the read-ahead before it starts the server it
    recovers (``restore --start``): the flags its restore_command gives wal-fetch, so the
    prefetcher's spool identity is the one wal-fetch computes. A mismatch costs only the
    head start: the first request then stops this prefetcher, and wal-fetch starts its
    own, as without it."""

    def __init__(
        self, policy_path: str, target: str, source: str | None, until: str | None
    ) -> None:
        self.policy_path = os.path.realpath(policy_path)  # as wal-fetch's named_policy_file
        self.target, self.source, self.until = target, source, until

    def prepare(self, data_dir: str) -> list[str]:
        """The spool made, the backup's first segment recorded as its seed; the
        prefetcher's command line (the caller starts it as the server's OS user, its
        standard error the server's log)."""
        spool = os.path.join(data_dir, SPOOL_DIR)
        os.makedirs(spool, 0o700, exist_ok=True)
        record_seed(spool, data_dir, spool_identity(self.policy_path, self.target, self.source))
        argv = _prefetcher_argv(self.policy_path, self.target, self.source, self.until, data_dir)
        return [*argv, BEFORE_SERVER]


def _prefetcher_argv(
    policy_path: str, target: str | None, source: str | None, until: str | None, data_dir: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pgbackup.engine.walprefetch",
        policy_path,
        target or "",
        source or "",
        until or "",
        data_dir,
    ]


def ensure_running(spool: str, argv: list[str]) -> bool:
    """Start the prefetcher unless one holds the spool's lock (detached: its own session,
    standard error the server's log when that is a file); True when it started one."""
    import fcntl

    fd = os.open(os.path.join(spool, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # it runs
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    import signal
    import stat

    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    ]
    try:
        to_file = stat.S_ISREG(os.fstat(2).st_mode)
    except OSError:
        to_file = False
    if not to_file:
        actions.append((os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0))
    defaults = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE)
    os.posix_spawn(
        argv[0],
        argv,
        os.environ,
        file_actions=actions,
        setsid=True,
        setsigmask=(),
        setsigdef=defaults,
    )
    return True


def read_ahead_report(log_text: str) -> dict[str, Any] | None:
    """What the read-ahead did in one recovery, from the server's log (the prefetchers'
    lines, :func:`main`): segments spooled, served from the spool, not in it, refused,
    summed over every prefetcher that stopped, and whether a restore started the first
    one before the server. None when no prefetcher said it stopped."""
    import re

    stopped = re.findall(
        re.escape(PREFIX)
        + r"[^\n]*?\[\d+\] stopped \([^)]*\): (\d+) segments spooled, (\d+) served from the "
        r"spool, (\d+) not in it \(\d+ files answered for wal-fetch\), (\d+) refused",
        log_text,
    )
    if not stopped:
        return None
    totals = [sum(int(line[i]) for line in stopped) for i in range(4)]
    return {
        "spooled": totals[0],
        "served": totals[1],
        "not_in_spool": totals[2],
        "refused": totals[3],
        "started_before_server": STARTED_BEFORE_SERVER in log_text,
    }


def end_read_ahead(data_dir: str | os.PathLike[str], timeout: float = 10.0) -> None:
    """Stop the data directory's prefetcher (SIGTERM) and remove its spool: recovery has
    ended (pgbackup restore and drills call it). Any user may call it: the prefetcher
    runs as the server's OS user."""
    import contextlib
    import fcntl
    import shutil
    import signal
    import time

    spool = os.path.join(os.fspath(data_dir), SPOOL_DIR)
    if not os.path.isdir(spool):
        return
    pid = _lock_holder(spool)
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                fd = os.open(os.path.join(spool, LOCK), os.O_RDONLY)
            except OSError:
                break  # it removed the spool
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
            finally:
                os.close(fd)
    shutil.rmtree(spool, ignore_errors=True)


def _lock_holder(spool: str) -> int | None:
    """The pid of the prefetcher holding the spool's lock (None: none holds it). The pid
    written in the lock file is believed only while the lock is held and the process is
    a prefetcher: a killed one's pid may belong to another process by now."""
    import fcntl

    try:
        fd = os.open(os.path.join(spool, LOCK), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it
        except BlockingIOError:
            pass
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not text.isdigit():
        return None
    try:
        with open(f"/proc/{text}/cmdline", "rb") as f:
            mine = b"pgbackup.engine.walprefetch" in f.read()
    except OSError:
        return None
    return int(text) if mine else None


# --- the prefetcher -------------------------------------------------------------------------


class Prefetcher:
    """One data directory's read-ahead: keeps the segments after the newest request in
    the spool, verified, until recovery ends."""

    def __init__(
        self,
        policy_path: str,
        target: str | None,
        source: str | None,
        until: str | None,
        data_dir: str,
    ) -> None:
        self.policy_path, self.target_flag, self.source = policy_path, target, source
        self.until = until
        self.data_dir = data_dir
        self.spool = os.path.join(data_dir, SPOOL_DIR)
        self.stopping = False
        self.served = self.missed = self.written = self.refused = self.answered = 0
        self.offset = 0  # how much of the requests file has been read
        # Started by a restore before its server (BeforeServer), there is no postmaster
        # yet: it has START_SECONDS to appear; once seen, its end ends the read-ahead.
        import time

        self.started = time.monotonic()
        self.server_seen = False
        self.wake_sock: Any = None  # socket.socket, bound to wake_address

    def log(self, text: str) -> None:
        import time

        now = time.time()  # stamped to the millisecond, as PostgreSQL's own lines (%m)
        when = time.localtime(now)
        stamp = f"{time.strftime('%Y-%m-%d %H:%M:%S', when)}.{int(now * 1000) % 1000:03d}"
        say(f"{stamp} {time.strftime('%Z', when)} [{os.getpid()}] {text}")

    def open(self) -> None:
        """The policy, the storage, the archive's identity; the manifest written."""
        from pgbackup.engine import wal
        from pgbackup.policy import load_policy_fast

        policy = load_policy_fast(self.policy_path)
        if self.source:
            from pgbackup.engine.uploads import upload_storage

            self.storage = upload_storage(policy, self.source)
        else:
            self.storage = wal.open_storage(policy.repository)
        sysid = _control_sysid(self.data_dir)
        self.target = wal.pick_target(policy, self.storage, self.target_flag, sysid)
        self.storage = wal.generation_storage(self.storage, self.target, sysid, strict=False)
        settings = policy.target(self.target).wal_fetch
        self.ahead = settings.read_ahead
        self.streams = settings.streams
        info = wal.read_archive_info(self.storage, self.target) or {}
        archive_sysid = int(info.get("system_identifier") or sysid or 0)
        if sysid is None or archive_sysid != sysid:
            raise wal.WalError(
                f"the archive of {self.target!r} belongs to cluster {archive_sysid}, "
                f"this data directory to {sysid}"
            )
        self.sysid = sysid
        self.seg_size = int(info.get("wal_segment_size") or 16 * 1024 * 1024)
        self.policy = policy
        self.spec = wal.codec_for(policy)
        self.identities = wal.policy_identities(policy)
        self.identity = spool_identity(self.policy_path, self.target_flag, self.source)
        wanted = manifest_bytes(self.identity, self.sysid, self.seg_size)
        try:
            with open(os.path.join(self.spool, MANIFEST), "rb") as f:
                same = f.read() == wanted
        except OSError:
            same = False
        if not same:
            discard_segments(self.spool)
        else:  # a killed predecessor's temporary files
            for entry in os.listdir(self.spool):
                if entry.startswith(TMP_PREFIX):
                    os.unlink(os.path.join(self.spool, entry))
        self._open_wake()
        tmp = os.path.join(self.spool, f"{TMP_PREFIX}{MANIFEST}")
        with open(tmp, "wb") as f:
            f.write(wanted)
        os.replace(tmp, os.path.join(self.spool, MANIFEST))

    def _open_wake(self) -> None:
        """The socket wal-fetch wakes this process with (bound before the manifest is
        written: the first question comes right after it); a failure (the name taken)
        leaves the prefetcher to its turns."""
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(wake_address(self.spool))
        except OSError as exc:
            sock.close()
            self.log(f"no wake-up socket ({exc.strerror or exc}); looking every {POLL_SECONDS:g} s")
            return
        self.wake_sock = sock

    def nap(self) -> None:
        """Until a datagram comes (a request, a fetch ended, SIGTERM), or one turn."""
        import select
        import time

        if self.wake_sock is None:
            time.sleep(POLL_SECONDS)
            return
        if select.select([self.wake_sock], [], [], TURN_SECONDS)[0]:
            try:
                while self.wake_sock.recv(64):
                    pass
            except OSError:  # drained (BlockingIOError)
                pass

    def _poke(self, _job: object = None) -> None:
        import contextlib

        if self.wake_sock is not None:
            with contextlib.suppress(OSError):  # a full queue wakes it already
                self.wake_sock.sendto(b"\0", self.wake_sock.getsockname())

    # --- one segment ------------------------------------------------------------------

    def fetch_one(self, name: str) -> str:
        """Fetch, decode, verify and spool one segment: "spooled", "missing" or why it was
        refused."""
        import zlib

        from pgbackup.engine import wal
        from pgbackup.errors import ObjectNotFound, PgBackupError
        from pgbackup.formats.codecs import decode_bytes, parse_suffix

        try:
            key = wal.wal_key(self.target, name, self.spec)
            try:
                stored = self.storage.read_bytes(key)
            except ObjectNotFound:
                found = wal.find_archived(self.storage, self.target, name, self.spec)
                if found is None:
                    return "missing"
                key, stored = found, self.storage.read_bytes(found)
            _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
            data = decode_bytes(spec, stored, identities=self.identities, what=key)
        except ObjectNotFound:
            return "missing"
        except PgBackupError as exc:
            return f"refused: {exc.message}"
        problem = verify_segment(name, data, self.sysid, self.seg_size)
        if problem is not None:
            return f"refused: {problem}"
        if self.stopping:
            return "stopped"
        crc = zlib.crc32(data)
        tmp = os.path.join(self.spool, f"{TMP_PREFIX}{name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.utime(fd, ns=(crc, crc))  # unwritten since: the serve needs no second CRC
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.spool, f"{name}.{crc:08x}"))
        return "spooled"

    def answer(self, name: str, nonce: str, pending: Future[str] | None = None) -> None:
        """Answer a wal-fetch that asked for ``name`` (:func:`ask`): the file fetched by
        :func:`pgbackup.engine.wal.fetch`, the synchronous fetch itself, into
        ``answer.<nonce>.data``, then the status in ``answer.<nonce>``: ``0``, ``1`` (not
        archived), or the failure, which wal-fetch leaves to its own fetch to report.

        A segment the read-ahead is fetching already (``pending``) is not downloaded a
        second time beside it: once that fetch has spooled it (verified), the spooled
        file is the answer; any other outcome of it, and the answer is wal.fetch's."""
        from pgbackup.engine import wal

        answer = os.path.join(self.spool, f"{ANSWER_PREFIX}{nonce}")
        if pending is not None:
            try:
                joined = pending.result(timeout=ASK_SECONDS) == "spooled"
            except Exception:
                joined = False
            entry = spooled(self.spool).get(name) if joined else None
            if entry is not None and _link_into(os.path.join(self.spool, entry), answer + ".data"):
                self._answered(answer, "0")
                return
        try:
            wal.fetch(  # target and generation as open() found them: no lookup per question
                self.policy,
                name,
                answer + ".data",
                until=self.until,
                resolved=(self.target, self.storage),
            )
            status = "0"
        except wal.WalNotFound:
            status = "1"
        except Exception as exc:  # said by wal-fetch's own fetch, which fails the same way
            status = f"failed: {type(exc).__name__}: {exc}"
        self._answered(answer, status)

    def _answered(self, answer: str, status: str) -> None:
        tmp = os.path.join(self.spool, TMP_PREFIX + os.path.basename(answer))
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(status)
            os.rename(tmp, answer)
        except OSError:
            return  # the spool is gone: recovery ended, nobody waits
        self.answered += 1

    # --- the loop ---------------------------------------------------------------------

    def window(self, request: str) -> list[str]:
        """The segments to hold after ``request``: the next ``ahead`` of its timeline,
        none past ``until``."""
        per = 0x100000000 // self.seg_size
        tli = request[:8]
        segno = int(request[8:16], 16) * per + int(request[16:24], 16)
        names = []
        for n in range(segno + 1, segno + 1 + self.ahead):
            name = f"{tli}{n // per:08X}{n % per:08X}"
            if self.until and name[8:24] > self.until[8:24]:
                break
            names.append(name)
        return names

    def new_requests(self) -> list[tuple[str, str, str]]:
        try:
            with open(os.path.join(self.spool, REQUESTS), "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in chunk[:end].decode("ascii", "replace").splitlines():
            parts = line.split(" ")
            if len(parts) == 3 and (walpage.is_segment(parts[0]) or _askable(parts)):
                out.append((parts[0], parts[1], parts[2]))
        return out

    def why_stop(self, idle: float) -> str | None:
        import time

        if self.stopping:
            return "asked to stop"
        if not _in_recovery(self.data_dir):
            return "recovery has ended"
        if _postmaster_alive(self.data_dir):
            self.server_seen = True
        elif self.server_seen or time.monotonic() - self.started > START_SECONDS:
            return "the server is gone" if self.server_seen else "no server started"
        if idle > IDLE_SECONDS:
            return f"no request for {IDLE_SECONDS:g}s"
        if not os.path.exists(os.path.join(self.spool, MANIFEST)):
            return "its spool was removed"
        return None

    def run(self) -> str:
        import time
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.streams, thread_name_prefix="wal-prefetch")
        # Questions have their own threads: never queued behind the read-ahead.
        asks = ThreadPoolExecutor(2, thread_name_prefix="wal-prefetch-ask")
        inflight: dict[str, Future[str]] = {}
        failed: dict[str, float] = {}
        request: str | None = None
        served: str | None = None  # the newest segment served from the spool
        seed: str | None = None
        last = checked = time.monotonic()
        why: str | None = None
        try:
            while why is None:
                now = time.monotonic()
                for name, how, identity in self.new_requests():
                    if identity != self.identity:
                        why = "a request came from another archive"
                    last = now
                    if how == "seed":  # the backup's first segment, before any request
                        seed = seed or name
                        continue
                    if how.startswith("ask:") and why is None:
                        asks.submit(self.answer, name, how[4:], inflight.get(name))
                    if walpage.is_segment(name):
                        request = name
                        self.served += how == "hit"
                        self.missed += how != "hit"
                        served = name if how == "hit" else served
                if self.stopping or now - checked > 0.25:
                    checked = now
                    why = why or self.why_stop(now - last)
                for name, job in list(inflight.items()):
                    if job.done():
                        del inflight[name]
                        outcome = job.result() if job.exception() is None else repr(job.exception())
                        if outcome == "spooled":
                            self.written += 1
                            failed.pop(name, None)
                        else:
                            if outcome != "missing" and name not in failed:
                                self.refused += 1
                                self.log(f"{name} not spooled: {outcome}")
                            failed[name] = now
                anchor = request or seed
                if anchor is None or why is not None:
                    self.nap()
                    continue
                # After the newest request; before any, from the seed itself on.
                wanted = (
                    self.window(anchor) if request else [anchor, *self.window(anchor)][: self.ahead]
                )
                present = spooled(self.spool)
                for name, entry in present.items():
                    # The newest segment asked for and the newest served stay: at the end
                    # of recovery PostgreSQL reads the last one again, after asking for
                    # the one after it (missing).
                    if name not in wanted and name not in (request, served):
                        _unlink(os.path.join(self.spool, entry))
                for name in wanted:
                    if name in present or name in inflight:
                        continue
                    if name in failed and now - failed[name] < RETRY_SECONDS:
                        break  # a hole or a refused file: nothing past it on this timeline
                    if len(inflight) >= self.streams:
                        break
                    inflight[name] = pool.submit(self.fetch_one, name)
                    inflight[name].add_done_callback(self._poke)
                self.nap()
        finally:
            self.stopping = True
            pool.shutdown(wait=False, cancel_futures=True)
            asks.shutdown(wait=False, cancel_futures=True)
        return why or "stopped"


def _askable(parts: list[str]) -> bool:
    """A question's line: any WAL file name PostgreSQL asks for (a segment, a history,
    ``.partial`` or ``.backup`` file): hexadecimal, then at most a plain suffix."""
    name = parts[0]
    return (
        parts[1].startswith("ask:")
        and len(name) >= 8
        and all(c in "0123456789ABCDEF" for c in name[:8])
        and all(c.isalnum() or c == "." for c in name)
        and not name.startswith(".")
    )


def _postmaster_alive(data_dir: str) -> bool:
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="ascii") as f:
            pid = int(f.readline().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str]) -> int:
    """``python -m pgbackup.engine.walprefetch POLICY TARGET FROM UNTIL DATA_DIR
    [before-server]`` (empty strings for flags not given): the prefetcher, as
    :func:`ensure_running` starts it (or a restore, before its server: BeforeServer)."""
    import fcntl
    import shutil
    import signal
    import time

    os.closerange(3, 65536)  # nothing of the server's but the log on stderr
    policy_path, target, source, until, data_dir, *how = argv
    before_server = how == [BEFORE_SERVER]
    spool = os.path.join(data_dir, SPOOL_DIR)
    try:
        fd = os.open(os.path.join(spool, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return 0  # the spool is gone already
    for _ in range(50):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.02)
    else:
        return 0  # another one runs
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.chdir(data_dir)  # wal.fetch reads the data directory as restore_command does: its cwd
    prefetcher = Prefetcher(policy_path, target or None, source or None, until or None, data_dir)

    def stop(_signum: int, _frame: object) -> None:
        prefetcher.stopping = True
        prefetcher._poke()  # out of its nap now (select is resumed after a handler)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    why = "it failed"
    try:
        opening = time.monotonic()
        prefetcher.open()
        prefetcher.log(
            f"reading ahead {prefetcher.ahead} segments, {prefetcher.streams} at a time, "
            f"into {spool} (archive opened in {time.monotonic() - opening:.2f} s)"
            + (f"; {STARTED_BEFORE_SERVER}" if before_server else "")
        )
        why = prefetcher.run() if prefetcher.ahead > 0 else "read-ahead is off"
    except Exception as exc:  # the read-ahead is an optimisation: recovery goes on without it
        prefetcher.log(f"error: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(spool, ignore_errors=True)
        prefetcher.log(
            f"stopped ({why}): {prefetcher.written} segments spooled, {prefetcher.served} "
            f"served from the spool, {prefetcher.missed} not in it "
            f"({prefetcher.answered} files answered for wal-fetch), "
            f"{prefetcher.refused} refused; spool removed"
        )
    os._exit(0)  # fetches still in flight are abandoned, never waited for


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
