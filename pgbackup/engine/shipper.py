"""WAL off-site as it is archived: ``pgbackup wal-ship`` copies every archived WAL file to
every upload destination within about one ``--interval`` of its arrival.

No queue: the archive itself is the queue. Each round lists the target's ``wal/`` prefix
in the repository and copies, per destination and in name order (a timeline's segments in
LSN order), what that destination does not hold yet, with uploads.py's rules: create-only
writes, an object already there is not copied again, different content is refused.
Several files move at once (uploads.copy_objects: about the destination's ``streams``
requests in flight; a posix destination one file at a time), started in order. A file
that fails stops the round at that destination: nothing starts after it, what was in
flight with it finishes or is cancelled, and what this shipper counts as shipped
advances only over the files stored before the first one that was not (a file stored
after it is found there when the destination is listed again; ``check``'s lag counts
from the oldest file missing there). It is retried the next round; the other
destinations go on. wal-push and PostgreSQL never wait for a destination.

The segment being written by ``wal-receive`` (``NAME.partial``) is the one object that
changes: it is copied again whenever the repository's copy changed, and removed at the
destination once the completed segment is there.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pgbackup.engine.repository import Repository
from pgbackup.errors import PgBackupError
from pgbackup.storage import ObjectInfo, open_storage
from pgbackup.ui import LOG

#: default seconds between two rounds (the bound is about one round plus the copy time)
INTERVAL = 1.0
#: the shipper's state, next to archive.json; rewritten at least this often while it runs
STATUS = "wal-ship.json"
HEARTBEAT = 30.0
#: seconds after which a destination is listed again (retention and backups change it)
RELIST = 300.0


def _base(key: str) -> str:
    """The WAL file name of a stored key (``…/wal/NAME.zst[.age]`` -> ``NAME``)."""
    from pgbackup.formats.codecs import parse_suffix

    name = key.rsplit("/", 1)[-1]
    if name.endswith(".sha256"):
        return name[: -len(".sha256")]
    return parse_suffix(name)[0]


def _order(obj: ObjectInfo) -> tuple[str, int, str]:
    """Completed files before the partial segment that follows them; history files of a
    timeline before its segments."""
    from pgbackup.formats.lsn import is_history, is_partial

    base = _base(obj.key)
    if is_history(base):
        return (base[:8], 0, base)
    return (base[:8], 2 if is_partial(base) else 1, base[:24])


@dataclass
class DestinationState:
    """What one destination holds, as far as this shipper knows (listed once, then kept)."""

    name: str
    present: dict[str, int] | None = None  # key -> size; None: list it again
    partials: dict[str, tuple[int, float]] = field(
        default_factory=dict
    )  # key -> source (size, mtime)
    shipped: int = 0
    listed_at: float = 0.0
    first: str | None = None  # the oldest segment its copies need (None: no copy yet)
    error: str | None = None
    failing_since: float | None = None


class Shipper:
    """Copies one target's archived WAL to every upload destination, round after round."""

    def __init__(self, policy: Any, target: str, only: list[str] | None = None) -> None:
        from pgbackup.engine.uploads import upload_spec

        self.policy = policy
        self.target = target
        names = [str(u.get("name")) for u in policy.uploads or []]
        for name in only or []:
            upload_spec(policy, name)  # an unknown name is one clear error
        self.names = list(only) if only else names
        self.base = open_storage(policy.repository)
        self.source = Repository(self.base)
        self.generation = 1  # the newest generation's WAL is shipped (engine/generations)
        self.states = {n: DestinationState(n) for n in self.names}
        # Older generations (after `pgbackup upgrade`): their WAL no longer grows, but what
        # was archived after the last round before the upgrade must get there too. Each is
        # shipped until a round finds the destination holding all of it, once per process.
        self.older: list[tuple[int, Repository]] = []
        self.older_states: dict[tuple[str, int], DestinationState] = {}
        self.older_done: set[tuple[str, int]] = set()
        self._dests: dict[str, Repository] = {}
        self._published: dict[str, Any] = {}
        self._published_at = 0.0

    def _dest(self, name: str) -> Repository:
        from pgbackup.engine.uploads import upload_storage

        if name not in self._dests:
            from pgbackup.engine.generations import copy_history, view

            dest = upload_storage(self.policy, name)
            if self.generation != 1:
                copy_history(self.base, dest, self.target)
            self._dests[name] = Repository(view(dest, self.target, self.generation))
        return self._dests[name]

    def follow_generation(self) -> None:
        """Ship the newest generation's WAL: after `pgbackup upgrade`, the new cluster's
        namespace here and at each destination (the states listed again)."""
        from pgbackup.engine.generations import generation_views

        views = generation_views(self.base, self.target)
        gen, storage = views[-1]
        if int(gen["generation"]) != self.generation:
            self.generation = int(gen["generation"])
            self.source = Repository(storage)
            self.older = [(int(g["generation"]), Repository(v)) for g, v in views[:-1]]
            self._dests.clear()
            for state in self.states.values():
                state.present = None
                state.partials.clear()

    def once(self) -> dict[str, dict[str, Any]]:
        """One round over every destination; destination -> {status, shipped, error}."""
        self.follow_generation()
        listing = sorted(self.source.storage.list(Repository.wal_prefix(self.target)), key=_order)
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            state = self.states[name]
            try:
                n = self._ship_older(name)
                n += self._ship(self._dest(name), state, listing, self.source)
                if state.error is not None:
                    LOG.info("wal-ship %s: %s reachable again", self.target, name)
                state.error, state.failing_since = None, None
                out[name] = {"status": "ok", "shipped": n}
            except Exception as exc:  # a storage error, or an OS error below it
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                if state.error is None:
                    LOG.error("wal-ship %s: %s: %s (retrying)", self.target, name, message)
                    state.failing_since = time.time()
                state.error = message
                state.present = None  # what got there before the failure: list again
                out[name] = {"status": "failed", "error": message}
        self._publish()
        return out

    def _publish(self) -> None:
        """``<target>/wal-ship.json``: each destination's state, for ``check``; written when
        a state changes and every HEARTBEAT seconds (its age says the shipper is alive)."""
        import json

        states = {n: (s.error, s.failing_since) for n, s in self.states.items()}
        now = time.time()
        if states == self._published and now - self._published_at < HEARTBEAT:
            return
        body = {
            "updated_at": now,
            "destinations": {
                n: {"error": err, "failing_since": since} for n, (err, since) in states.items()
            },
        }
        with contextlib.suppress(PgBackupError):
            self.source.storage.write_bytes(
                f"{self.target}/{STATUS}", json.dumps(body, sort_keys=True).encode()
            )
            self._published, self._published_at = states, now

    def _ship_older(self, name: str) -> int:
        """The older generations' WAL that destination ``name`` lacks (the tail archived
        between the last round and the upgrade, or all of it if none ran), in each
        generation's namespace there; each generation once, until it is complete."""
        from pgbackup.engine.generations import view
        from pgbackup.engine.uploads import upload_storage

        shipped = 0
        for number, source in self.older:
            if (name, number) in self.older_done:
                continue
            state = self.older_states.setdefault((name, number), DestinationState(name))
            dest = Repository(view(upload_storage(self.policy, name), self.target, number))
            listing = sorted(source.storage.list(Repository.wal_prefix(self.target)), key=_order)
            shipped += self._ship(dest, state, listing, source)
            self.older_done.add((name, number))  # no failure: it holds all of it now
        return shipped

    def _ship(
        self,
        dest: Repository,
        state: DestinationState,
        listing: list[ObjectInfo],
        source: Repository,
    ) -> int:
        from pgbackup.engine.uploads import (
            Copy,
            UploadError,
            copy_archive_info,
            copy_objects,
            raise_first_failure,
        )
        from pgbackup.engine.walchain import first_needed_segment
        from pgbackup.formats.lsn import is_history, is_partial

        if time.monotonic() - state.listed_at > RELIST:
            state.present = None  # what retention or a backup's upload changed there
        if state.present is None:
            copy_archive_info(source, dest, self.target)
            state.present = {
                i.key: i.size for i in dest.storage.list(Repository.wal_prefix(self.target))
            }
            state.partials.clear()
            state.listed_at = time.monotonic()
            state.first = first_needed_segment(dest.complete_backups(self.target))
        present = state.present
        completed = {_base(o.key) for o in listing if not is_partial(_base(o.key))}
        todo: list[Copy] = []
        refused: UploadError | None = None
        for obj in listing:
            base = _base(obj.key)
            if is_partial(base):
                if base[: -len(".partial")] in completed:
                    continue  # the receiver's stale copy, about to go
                if obj.key in present and state.partials.get(obj.key) == (obj.size, obj.mtime):
                    continue
                todo.append(Copy(obj.key, obj.size))  # replaced whenever it changed
                continue
            if state.first is not None and not is_history(base) and base[8:24] < state.first[8:24]:
                continue  # older than anything a copy there needs (maybe expired there)
            if obj.key in present:
                if present[obj.key] != obj.size and not obj.key.endswith(".sha256"):
                    refused = UploadError(
                        f"{obj.key} differs at the destination ({present[obj.key]} bytes there, "
                        f"{obj.size} here); refusing to overwrite archived WAL",
                        hint="two clusters may be uploading into one destination prefix",
                    )
                    break  # what comes before it is still copied
                continue
            todo.append(Copy(obj.key, obj.size, if_absent=True))
        mtimes = {o.key: o.mtime for o in listing}
        outcomes = copy_objects(source.storage, dest.storage, todo)
        from pgbackup.engine.uploads import upload_spec

        locked = bool(upload_spec(self.policy, state.name).get("object_lock"))
        shipped = 0
        # What was shipped advances over the files stored, in order, up to the first that
        # was not: one stored after a failed one (they were in flight together) is not
        # counted, and the next round, listing the destination again, sees it there.
        for done in outcomes:
            if not done.done:
                break
            key = done.copy.key
            present[key] = done.copy.size
            if not done.existed:  # else a backup's upload stored it first
                shipped += 1
            base = _base(key)
            if is_partial(base):
                state.partials[key] = (done.copy.size, mtimes[key])
                continue
            # the segment is complete there: its partial copy is stale (left in place
            # at a locked destination, whose host role deletes nothing: cleanup's)
            for stale in [k for k in present if _base(k) == base + ".partial"]:
                if not locked:
                    with contextlib.suppress(PgBackupError):
                        dest.storage.delete(stale)
                    present.pop(stale, None)
                state.partials.pop(stale, None)
        if shipped:
            state.shipped += shipped
            LOG.info("wal-ship %s: %d WAL files to %s", self.target, shipped, state.name)
        raise_first_failure(outcomes)
        if refused is not None:
            raise refused
        return shipped

    def run(self, stop: threading.Event, interval: float = INTERVAL) -> None:
        """Round after round until ``stop``; a last round after it (what arrived meanwhile)."""
        while not stop.is_set():
            try:
                self.once()
            except PgBackupError as exc:  # the repository itself: say it, retry
                LOG.error("wal-ship %s: %s (retrying)", self.target, exc.message)
            stop.wait(interval)
        with contextlib.suppress(PgBackupError):
            self.once()


def ship(
    policy: Any,
    targets: list[str],
    only: list[str] | None = None,
    *,
    once: bool = False,
    interval: float = INTERVAL,
    ready: Any = None,
) -> list[str]:
    """``wal-ship``: one round (``once``) or rounds until SIGTERM/SIGINT.

    Returns "TARGET -> DEST: error" for each destination still failing at the end.
    """
    import signal

    shippers = [Shipper(policy, t, only) for t in targets]
    if once:
        for s in shippers:
            s.once()
    else:
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            stop.set()

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if ready is not None:
                ready(
                    f"shipping WAL of {', '.join(targets)} to {', '.join(shippers[0].names)} "
                    f"every {interval:g}s"
                )
            threads = [
                threading.Thread(target=s.run, args=(stop, interval), daemon=True) for s in shippers
            ]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    return [
        f"{s.target} -> {name}: {state.error}"
        for s in shippers
        for name, state in s.states.items()
        if state.error
    ]


# --- what check says of each destination ---------------------------------------------

#: seconds a destination may take to answer check's listing before it counts as down
PROBE_TIMEOUT = 10.0


def _completed_needed(listing: list[ObjectInfo], dest: Repository, target: str) -> list[ObjectInfo]:
    """The source's WAL files a destination should hold: everything from the oldest segment
    its copies need (everything when it holds no copy yet)."""
    from pgbackup.engine.walchain import first_needed_segment
    from pgbackup.formats.lsn import is_history, is_partial

    first = first_needed_segment(dest.complete_backups(target))
    out = []
    for obj in listing:
        base = _base(obj.key)
        if obj.key.endswith(".sha256"):
            continue
        if first is not None and not is_history(base) and base[8:24] < first[8:24]:
            continue
        if is_partial(base) and any(_base(o.key) == base[: -len(".partial")] for o in listing):
            continue
        out.append(obj)
    return out


def destination_lag(policy: Any, source: Repository, target: str, name: str) -> dict[str, Any]:
    """How far destination ``name`` is behind the repository's WAL archive, now.

    ``lag_seconds``: the age of the oldest archived WAL file the destination lacks (0 when
    it holds everything): the commits a lost host would take with it beyond what the
    destination restores. After `pgbackup upgrade`, every generation's WAL is compared
    with that generation's namespace there (engine/generations): the new cluster's, and
    an older one's tail archived before the upgrade but never shipped. Raises
    PgBackupError when the destination cannot be read.
    """
    from pgbackup.engine.generations import generation_views, view
    from pgbackup.engine.uploads import upload_storage

    destination = upload_storage(policy, name)
    missing: list[ObjectInfo] = []
    for gen, archive in generation_views(source.storage, target):
        dest = Repository(view(destination, target, int(gen["generation"])))
        listing = sorted(archive.list(Repository.wal_prefix(target)), key=_order)
        there = {i.key: i.size for i in dest.storage.list(Repository.wal_prefix(target))}
        missing += [
            o for o in _completed_needed(listing, dest, target) if there.get(o.key) != o.size
        ]
    oldest = min(missing, key=lambda o: o.mtime) if missing else None
    return {
        "missing": len(missing),
        "oldest_missing": _base(oldest.key) if oldest else None,
        "lag_seconds": max(0.0, time.time() - oldest.mtime) if oldest else 0.0,
    }


def probe_within(fn: Any, timeout: float) -> Any:
    """``fn()`` in a thread, at most ``timeout`` seconds (a dead network hangs, not fails)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:  # reported as the destination's problem
            box["error"] = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return {"error": f"no answer within {timeout:g}s"}
    return box
