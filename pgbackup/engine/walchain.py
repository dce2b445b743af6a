"""The WAL archive read as a chain: continuity, gaps, the recoverable window, expiry.

:mod:`pgbackup.engine.wal` stores and serves one file at a time (archive_command and
restore_command run once per segment and must stay light); this module looks at a
target's archive as a whole: which segments a backup needs (following timeline
switches), where the unbroken run from a backup's start ends, whether archived files
decode and belong where they sit, what pg_waldump says about the last reachable point,
and which segments no kept backup needs. verify, restore, inventory, cleanup and the
monitor use it; wal-push and wal-fetch never import it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgbackup.engine.wal import (
    MAGIC_MAJOR,
    is_wal_name,
    policy_identities,
    read_archive_info,
    segment_sysid,
    wal_major,
)
from pgbackup.errors import BinaryError, PgBackupError
from pgbackup.formats.codecs import decode_bytes, parse_suffix
from pgbackup.formats.lsn import (
    is_history,
    is_partial,
    is_segment,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_name,
)
from pgbackup.storage import Storage

#: Listings taken inside :func:`one_listing`, by (storage, target); None outside one.
_LISTINGS: contextvars.ContextVar[dict[tuple[int, str], dict[str, str]] | None] = (
    contextvars.ContextVar("pgbackup_wal_listings", default=None)
)


@contextlib.contextmanager
def one_listing() -> Iterator[None]:
    """Inside this block a target's archive is listed once: a restore's checks (the chain
    to the target, the recoverable window, the search for a transaction) all read the
    same listing, one LIST instead of three on object storage. Scoped, never global: a
    long-running process (receiver, exporter) must see the archive as it is now."""
    token = _LISTINGS.set({})
    try:
        yield
    finally:
        _LISTINGS.reset(token)


def archived_names(storage: Storage, target: str) -> dict[str, str]:
    """Plain WAL name -> stored key, for everything in a target's archive."""
    listings = _LISTINGS.get()
    if listings is not None and (id(storage), target) in listings:
        return dict(listings[(id(storage), target)])
    names: dict[str, str] = {}
    for info in storage.list(f"{target}/wal/"):
        base, _spec = parse_suffix(info.key.rsplit("/", 1)[-1])
        if is_wal_name(base):
            names[base] = info.key
    if listings is not None:
        listings[(id(storage), target)] = dict(names)
    return names


def timeline_switches(
    storage: Storage, target: str, names: dict[str, str], policy: Any = None
) -> dict[int, list[tuple[int, int, str]]]:
    """Timeline -> its history (parent timeline, switch LSN) read from ``.history`` files."""
    result: dict[int, list[tuple[int, int, str]]] = {}
    try:
        identities = policy_identities(policy)
    except PgBackupError:
        identities = None  # encrypted histories then stay unread, as when no key is named
    for name, key in names.items():
        if not is_history(name):
            continue
        tli = int(name[:8], 16)
        _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
        try:
            text = decode_bytes(
                spec, storage.read_bytes(key), identities=identities, what=key
            ).decode()
        except PgBackupError:
            continue
        result[tli] = parse_history(text)
    return result


def expected_segments(
    start_tli: int,
    start_lsn: int,
    end_tli: int,
    end_lsn: int,
    history: list[tuple[int, int, str]],
    seg_size: int,
) -> list[str]:
    """Segment names needed to replay from (start_tli, start_lsn) to (end_tli, end_lsn).

    ``history`` is the end timeline's history: each (parent, switch LSN) in order.
    """
    # Build the path of timelines: [(tli, from_lsn, to_lsn)].
    spans: list[tuple[int, int, int]] = []
    begin = start_lsn
    for parent, switch, _reason in history:
        if parent < start_tli:
            continue
        # The segment holding the switch point is read from the newer timeline.
        spans.append((parent, begin, switch - 1))
        begin = switch
    spans.append((end_tli, begin, end_lsn))
    names: list[str] = []
    for tli, lo, hi in spans:
        if hi < lo:
            continue
        seg = lo // seg_size
        last = hi // seg_size
        while seg <= last:
            names.append(segment_name(tli, seg * seg_size, seg_size))
            seg += 1
    return names


def newest_segment(names: dict[str, str]) -> tuple[int, int] | None:
    """(timeline, segment number) of the newest archived segment (highest timeline first)."""
    segs = [parse_segment_name(n) for n in names if is_segment(n)]
    valid = [s for s in segs if s is not None]
    return max(valid) if valid else None


def streamed_names(names: dict[str, str]) -> dict[str, str]:
    """``names`` plus segment name -> key of its ``.partial`` copy where only that is stored."""
    out = dict(names)
    for name, key in names.items():
        if is_partial(name) and name[:24] not in out:
            out[name[:24]] = key
    return out


def chain_from(
    backup_meta: dict[str, Any],
    names: dict[str, str],
    switches: dict[int, list[tuple[int, int, str]]],
    timeline: int | None = None,
) -> dict[str, Any]:
    """Follow archived segments from a backup's start: how far the unbroken run reaches.

    Walks the newest timeline that descends from the backup's timeline. Returns
    ``{"timeline", "last_segment", "gaps": [...], "segments": n}``.

    A ``.partial`` copy stands for its segment when the segment itself is not archived
    (wal-receive's segment in progress; wal-fetch serves it at the end of the archive),
    so a hole before it is a gap here as it is for wal-fetch. ``newest_segment`` stays
    the newest *complete* one: the point recovery must reach at least.
    """
    complete = names
    names = streamed_names(names)
    seg_size = int(backup_meta.get("wal_segment_size", 16 * 1024 * 1024))
    start_tli = int(backup_meta["timeline"])
    start_lsn = parse_lsn(backup_meta["start_lsn"])
    newest = newest_segment(names)
    if newest is None:
        return {
            "timeline": start_tli,
            "last_segment": None,
            "gaps": [],
            "segments": 0,
            "end_lsn": None,
        }
    # Choose the highest timeline whose history includes ours (or is ours).
    candidates = [start_tli] + [
        t for t, hist in switches.items() if any(p == start_tli for p, _, _ in hist)
    ]
    end_tli = timeline if timeline in candidates else max(candidates)
    history = switches.get(end_tli, [])
    tli_segments = [parse_segment_name(n) for n in names if is_segment(n)]
    last_on_end = max((s[1] for s in tli_segments if s and s[0] == end_tli), default=None)
    if last_on_end is None:
        end_tli = start_tli
        history = []
        last_on_end = max(
            (s[1] for s in tli_segments if s and s[0] == start_tli), default=start_lsn // seg_size
        )
    newest_complete = max(
        (
            s[1]
            for s in (parse_segment_name(n) for n in complete if is_segment(n))
            if s and s[0] == end_tli
        ),
        default=last_on_end,
    )
    end_lsn = (last_on_end + 1) * seg_size - 1  # the last byte of the newest segment
    expected = expected_segments(start_tli, start_lsn, end_tli, end_lsn, history, seg_size)
    gaps: list[str] = []
    reached: str | None = None
    for seg in expected:
        if seg in names:
            if not gaps:
                reached = seg
        else:
            gaps.append(seg)
    return {
        "timeline": end_tli,
        "last_segment": reached,
        "newest_segment": segment_name(end_tli, newest_complete * seg_size, seg_size),
        "gaps": gaps,
        "segments": len(expected),
    }


def verify_wal_chain(policy: Any, repo: Any, target: Any) -> dict[str, Any]:
    """Continuity from each kept backup's start LSN to the newest archived segment, and
    the content of every archived file (decodes, header names this cluster and place);
    each generation's archive on its own (engine/generations), its problems named with
    it."""
    from pgbackup.engine.generations import generation_views
    from pgbackup.engine.repository import Repository

    views = generation_views(repo.storage, target.name)
    if len(views) == 1:
        return _verify_one(policy, repo, target)
    out: dict[str, Any] = {
        "gaps": [],
        "segments": 0,
        "archived": 0,
        "content_checked": 0,
        "not_checked": [],
        "generations": [],
    }
    for gen, storage in views:
        one = _verify_one(policy, Repository(storage), target)
        n = gen["generation"]
        out["gaps"] += [f"generation {n}: {g}" for g in one["gaps"]]
        out["not_checked"] += [f"generation {n}: {g}" for g in one["not_checked"]]
        for key in ("segments", "archived", "content_checked"):
            out[key] += one[key]
        out["generations"].append({"generation": n, **one})
    return out


def _verify_one(policy: Any, repo: Any, target: Any) -> dict[str, Any]:
    storage = repo.storage
    names = archived_names(storage, target.name)
    switches = timeline_switches(storage, target.name, names, policy)
    gaps: list[str] = []
    segments = 0
    for b in repo.complete_backups(target.name):
        chain = chain_from(b.metadata, names, switches)
        segments = max(segments, chain["segments"])
        for g in chain["gaps"]:
            msg = f"missing {g} (needed after backup {b.backup_id})"
            if msg not in gaps:
                gaps.append(msg)
    damaged, skipped, not_checked = check_wal_content(policy, storage, target.name, names)
    return {
        "gaps": gaps + damaged,
        "segments": segments,
        "archived": len(names),
        "content_checked": len(names) - skipped,
        "not_checked": not_checked,
    }


def check_wal_content(
    policy: Any, storage: Storage, target: str, names: dict[str, str]
) -> tuple[list[str], int, list[str]]:
    """Decode every archived file (compression and age carry checksums) and check each
    segment's first page header: this cluster, this position. Uncompressed segments are
    read by pg_waldump, whose record CRCs find a flipped byte. Returns (problems, skipped,
    what was not checked and why: a missing pg_waldump is said, never passed in silence)."""
    info = read_archive_info(storage, target) or {}
    sysid = info.get("system_identifier")
    identities = policy_identities(policy)
    problems: list[str] = []
    unchecked: dict[str, list[str]] = {}  # why -> the segments it left unchecked
    skipped = 0
    for name in sorted(names):
        key = names[name]
        _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
        if spec.encrypted and identities is None:
            skipped += 1
            continue
        try:
            data = decode_bytes(spec, storage.read_bytes(key), identities=identities, what=key)
        except PgBackupError as exc:
            problems.append(f"damaged {name}: {exc.message}")
            continue
        if not is_segment(name):
            continue
        seg_size = int(info.get("wal_segment_size", 16 * 1024 * 1024))
        parsed = parse_segment_name(name, seg_size)
        magic = struct.unpack_from("<H", data, 0)[0] if len(data) >= 2 else None
        pageaddr = struct.unpack_from("<Q", data, 8)[0] if len(data) >= 16 else None
        header = segment_sysid(data)
        if len(data) != seg_size:
            problems.append(f"damaged {name}: {len(data)} bytes, a segment has {seg_size}")
        elif magic not in MAGIC_MAJOR or parsed is None or pageaddr != parsed[1] * seg_size:
            problems.append(
                f"damaged {name}: its first page header does not belong at this position"
            )
        elif header is not None and sysid is not None and str(header[0]) != str(sysid):
            problems.append(f"damaged {name}: written by cluster {header[0]}, not {sysid}")
        elif spec.compression == "none":
            try:
                reason = _waldump_problem(pg_waldump(policy, target, wal_major(data)), name, data)
            except BinaryError as exc:
                unchecked.setdefault(exc.message, []).append(name)
                continue
            if reason:
                problems.append(f"damaged {name}: {reason}")
    return problems, skipped, [_not_checked(why, segs) for why, segs in unchecked.items()]


def _not_checked(why: str, segments: list[str]) -> str:
    """One "not checked" line: which check, how many segments, the first, and why."""
    return (
        f"record checksums of {len(segments)} uncompressed segment(s) not checked "
        f"(first {segments[0]}): {why}"
    )


def pg_waldump(policy: Any, target: str, major: int | None) -> str:
    """pg_waldump of ``major`` for ``target``: the target's pg_bin_dir first
    (binaries.program_for). pg_waldump reads only its own major's WAL format (it checks
    XLOG_PAGE_MAGIC: src/bin/pg_waldump/pg_waldump.c, src/include/access/xlog_internal.h).
    Raises BinaryError saying where it was looked for."""
    from pgbackup.postgres.binaries import program_for

    return program_for(getattr(policy, "targets", {}).get(target), "pg_waldump", major)


def waldump_missing(policy: Any, target: str, backup_meta: dict[str, Any]) -> str | None:
    """Why the archive cannot be read by pg_waldump for this backup's major (None: it
    can): the recoverable window's end time is then unknown, not the backup's end."""
    major = int(backup_meta.get("server_version_num", 0)) // 10000 or None
    try:
        pg_waldump(policy, target, major)
    except BinaryError as exc:
        return exc.message
    return None


def _waldump_problem(program: str, name: str, data: bytes) -> str | None:
    """A record checksum failure reported by pg_waldump (end-of-WAL messages are normal)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pgbackup-walcheck-") as tmp:
        (Path(tmp) / name).write_bytes(data)
        proc = subprocess.run(
            [program, "-q", "-p", tmp, name], capture_output=True, text=True, timeout=60
        )
    text = proc.stderr + proc.stdout
    if "checksum" in text or "invalid resource manager" in text or "incorrect prev-link" in text:
        return text.strip().splitlines()[-1]
    return None


def first_needed_segment(backups: list[Any]) -> str | None:
    """The oldest segment any of ``backups`` needs: the one its oldest start is in (None:
    no backups, so every segment is needed)."""
    if not backups:
        return None
    oldest = min(backups, key=lambda b: parse_lsn(b.metadata["start_lsn"]))
    seg_size = int(oldest.metadata.get("wal_segment_size", 16 * 1024 * 1024))
    return segment_name(
        int(oldest.metadata["timeline"]), parse_lsn(oldest.metadata["start_lsn"]), seg_size
    )


def plan_wal_expiry(repo: Any, target: str, kept: list[Any]) -> list[str]:
    """Keys of archived WAL no kept backup needs (all timelines; history files stay)."""
    from pgbackup.policy.retention import wal_cleanup_candidates

    first_needed = first_needed_segment(kept)
    if first_needed is None:
        return []
    names = archived_names(repo.storage, target)
    expire = set(wal_cleanup_candidates(list(names), first_needed))
    keys = [names[n] for n in sorted(expire)]
    # Their plain checksums (encrypted archives) go too.
    sidecars = {i.key for i in repo.storage.list(f"{target}/wal/") if i.key.endswith(".sha256")}
    for n in sorted(expire):
        side = f"{target}/wal/{n}.sha256"
        if side in sidecars:
            keys.append(side)
    return keys


def waldump(
    policy: Any, storage: Storage, target: str, key: str, name: str, major: int | None
) -> str:
    """pg_waldump's description of every complete record in an archived segment ("" when
    it cannot be decrypted here). Raises BinaryError when pg_waldump is not found."""
    import subprocess
    import tempfile

    program = pg_waldump(policy, target, major)
    _base, spec = parse_suffix(key.rsplit("/", 1)[-1])
    identities = policy_identities(policy) if spec.encrypted else None
    if spec.encrypted and identities is None:
        return ""
    data = decode_bytes(spec, storage.read_bytes(key), identities=identities, what=key)
    with tempfile.TemporaryDirectory(prefix="pgbackup-waldump-") as tmp:
        (Path(tmp) / name).write_bytes(data)
        proc = subprocess.run(
            [program, "-p", tmp, name],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": "UTC", "PGTZ": "UTC"},
            timeout=60,
        )
    return proc.stdout


def segment_summary(
    policy: Any, storage: Storage, target: str, key: str, name: str, major: int | None
) -> dict[str, str | None]:
    """The last complete record's LSN and the last commit/abort time in an archived
    segment, read by pg_waldump (``not_checked``: why they could not be read).

    The last record's LSN is a point an inclusive ``recovery_target_lsn`` can reach
    with this segment alone: recovery stops right after replaying the record that
    starts at or after it (PostgreSQL's recoveryStopsAfter), so it needs no later file.
    """
    import re

    try:
        text = waldump(policy, storage, target, key, name, major)
    except BinaryError as exc:
        return {"last_record_lsn": None, "last_commit_time": None, "not_checked": exc.message}
    stamps = re.findall(
        r"desc: (?:COMMIT|ABORT)\S* (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC", text
    )
    records = re.findall(r"lsn: ([0-9A-F]+/[0-9A-F]+),", text)
    return {
        "last_record_lsn": records[-1] if records else None,
        "last_commit_time": stamps[-1].replace(" ", "T") + "Z" if stamps else None,
    }


def locate_record(
    policy: Any,
    storage: Storage,
    target: str,
    backup_meta: dict[str, Any],
    last_segment: str,
    kind: str,
    value: Any,
) -> str | None:
    """The archived segment, from the backup's start to ``last_segment``, that holds
    the commit of transaction ``value`` (kind ``xid``) or the restore point named
    ``value`` (kind ``name``); None when none does. Used only when the chain has a hole,
    to tell whether such a target lies before it."""
    import re

    seg_size = int(backup_meta.get("wal_segment_size", 16 * 1024 * 1024))
    first = parse_lsn(backup_meta["start_lsn"]) // seg_size
    last = last_segment[8:]
    names = archived_names(storage, target)
    candidates = sorted(
        (n for n in names if is_segment(n) and n[8:] <= last),
        key=lambda n: (n[8:], n[:8]),
    )
    if kind == "xid":
        pattern = re.compile(rf"tx:\s+{int(value)}, lsn: \S+ prev \S+ desc: (?:COMMIT|ABORT)")
    else:
        pattern = re.compile(rf"desc: RESTORE_POINT {re.escape(str(value))}$", re.MULTILINE)
    major = int(backup_meta.get("server_version_num", 0)) // 10000 or None
    for name in candidates:
        parsed = parse_segment_name(name, seg_size)
        if parsed is None or parsed[1] < first:
            continue
        if pattern.search(waldump(policy, storage, target, names[name], name, major)):
            return name
    return None


def last_commit_time(
    policy: Any, storage: Storage, target: str, key: str, name: str, major: int | None
) -> str | None:
    """Timestamp of the last commit/abort record in an archived segment (via pg_waldump)."""
    return segment_summary(policy, storage, target, key, name, major).get("last_commit_time")


def reachable(
    policy: Any,
    storage: Storage,
    target: str,
    backup_meta: dict[str, Any],
    timeline: int | None = None,
) -> dict[str, Any]:
    """How far recovery from this backup can replay with what the archive holds.

    ``gap``: the first segment missing before the newest archived one (None: no hole);
    ``newest_segment``: the newest archived segment on the timeline recovery follows;
    with a gap, also the last point before it that can be reached (``last_lsn``, the
    last complete record of the last segment before the hole, and ``last_commit_time``,
    the last commit found in the segments before the hole).
    """
    names = streamed_names(archived_names(storage, target))
    switches = timeline_switches(storage, target, names, policy)
    chain = chain_from(backup_meta, names, switches, timeline)
    out: dict[str, Any] = {
        "timeline": chain["timeline"],
        "gap": chain["gaps"][0] if chain["gaps"] else None,
        "gaps": chain["gaps"],
        "newest_segment": chain.get("newest_segment"),
        "last_segment": chain["last_segment"],
    }
    if out["gap"] is None:
        return out
    major = int(backup_meta.get("server_version_num", 0)) // 10000 or None
    last = chain["last_segment"]
    out["last_lsn"] = backup_meta.get("stop_lsn")
    out["last_commit_time"] = None
    if last is not None:
        summary = segment_summary(policy, storage, target, names[last], last, major)
        if summary.get("last_record_lsn") and parse_lsn(summary["last_record_lsn"] or "0/0") > (
            parse_lsn(backup_meta["stop_lsn"])
        ):
            out["last_lsn"] = summary["last_record_lsn"]
        out["last_commit_time"] = summary.get("last_commit_time")
        # An idle segment has no commit: look back a few segments for the last one.
        seg_size = int(backup_meta.get("wal_segment_size", 16 * 1024 * 1024))
        parsed = parse_segment_name(last, seg_size)
        for back in range(1, 9):
            segno = parsed[1] - back if parsed else -1
            if out["last_commit_time"] is not None or parsed is None or segno < 0:
                break
            earlier = segment_name(parsed[0], segno * seg_size, seg_size)
            if earlier not in names:
                break
            out["last_commit_time"] = last_commit_time(
                policy, storage, target, names[earlier], earlier, major
            )
    stop_time = backup_meta.get("stop_time")
    if out["last_commit_time"] and stop_time and out["last_commit_time"] < stop_time:
        out["last_commit_time"] = None  # before the backup's end: not a reachable point
    return out


#: How many segments before the last one the window's end time is looked for, when the
#: last holds no commit (a server stopped after its last commit: its shutdown checkpoint,
#: an archive_timeout switch).
COMMIT_LOOKBACK = 8


def earlier_commit_time(
    policy: Any,
    storage: Storage,
    target: str,
    names: dict[str, str],
    tli: int,
    segno: int,
    newest: dict[str, Any],
    major: int | None,
) -> str | None:
    """The last commit time in the segments before ``segno`` (down to the newest backup's
    stop), when the last segment holds none; None when none of them does."""
    from pgbackup.formats.lsn import segment_name

    seg_size = int(newest.get("wal_segment_size", 16 * 1024 * 1024))
    first = parse_lsn(newest["stop_lsn"]) // seg_size
    for earlier in range(segno - 1, max(first - 1, segno - 1 - COMMIT_LOOKBACK), -1):
        name = segment_name(tli, earlier * seg_size, seg_size)
        if name not in names:
            return None
        when = segment_summary(policy, storage, target, names[name], name, major).get(
            "last_commit_time"
        )
        if when:
            return when
    return None


def window_end(
    policy: Any, repo: Any, target: str, backups: list[Any], timeline: int | None = None
) -> dict[str, Any]:
    """The latest recoverable point after the newest complete backup."""
    from pgbackup.formats.lsn import format_lsn

    storage = repo.storage
    names = streamed_names(archived_names(storage, target))
    switches = timeline_switches(storage, target, names, policy)
    newest = backups[-1].metadata
    chain = chain_from(newest, names, switches, timeline)
    seg_size = int(newest.get("wal_segment_size", 16 * 1024 * 1024))
    last = chain.get("last_segment")
    if not last:
        return {"timeline": newest["timeline"], "gaps": chain["gaps"]}
    parsed = parse_segment_name(last, seg_size)
    assert parsed is not None
    tli, segno = parsed
    end_lsn = (segno + 1) * seg_size
    major = int(newest.get("server_version_num", 0)) // 10000 or None
    summary = segment_summary(policy, storage, target, names[last], last, major)
    if is_partial(parse_suffix(names[last].rsplit("/", 1)[-1])[0]) and summary["last_record_lsn"]:
        # wal-receive's segment in progress: the window ends at its last complete record.
        end_lsn = parse_lsn(summary["last_record_lsn"])
    if end_lsn <= parse_lsn(newest["stop_lsn"]):
        return {"timeline": newest["timeline"], "gaps": chain["gaps"]}
    when = summary.get("last_commit_time")
    if not when and not summary.get("not_checked"):
        when = earlier_commit_time(policy, storage, target, names, tli, segno, newest, major)
    return {
        "timeline": tli,
        "lsn": format_lsn(end_lsn),
        "time": when if when and when > newest["stop_time"] else None,
        "gaps": chain["gaps"],
        "last_segment": last,
        **({"not_checked": summary["not_checked"]} if summary.get("not_checked") else {}),
    }
