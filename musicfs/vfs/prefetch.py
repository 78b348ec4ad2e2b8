"""Prefetch: the track a listener will likely play next is in the cache before it is opened.

Why: on a slow origin a player that moves to the next track waits for its
first bytes, and for every block it reads faster than the fill comes; only the
open file is read ahead. What is fetched, in the background, when a track is
opened (PH-3.1):

* at once, the head (the fill's first block, what a player's first reads take)
  of the tracks opened after this one before, most often first
  (:meth:`~musicfs.vfs.access.AccessTracker.next_tracks`: a shuffle, a playlist
  played in another order), and of the next track in album order (the next file
  of the same directory; after an album's last, the first of the next album
  beside it), from the very first listen;
* once the track has been open for ``whole_after`` seconds (being played, not
  skipped), all of the likeliest next track: the learned one, else the album's.

:meth:`Prefetcher.request` does the same on request (``POST /v1/prefetch``,
``musicfs prefetch``): named folders, files or a search's hits, their heads or
whole, with progress per file.

It stays out of the way of listening: one prefetch at a time (``concurrent``),
none while a reader waits for a fill, and never more than ``budget`` bytes
prefetched that nobody has opened yet. Opens are looked at by one task, in
turn, and of a burst (a media server opening a thousand tracks at once) only
the last few: work per open would otherwise land beside the reads that follow. What it fetched goes into the chunk
cache like any fill, and is evicted like anything else.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from typing import Protocol

import trio

from ..errors import MusicFSError
from .access import AccessTracker
from .node import Node
from .resolver import Resolver

log = logging.getLogger(__name__)

GIVE_WAY = 0.05  # seconds between looks at whether a reader still waits for a fill
QUEUE = 8  # prefetches waiting their turn at most (a scanner opening every track queues no more)
WASTED_AFTER = 3600.0  # seconds after which a prefetch nobody opened counts as wasted
STRATEGIES = ("metadata", "headers", "full")  # what a request fetches: nothing (the index has the tags),
# each file's head, each file whole
MAX_FILES = 10_000  # files one request may name (a folder's, a search's)
REQUEST_TIMEOUT = 60.0  # seconds one requested file's fetch may take before the request moves on


@dataclass(frozen=True)
class PrefetchPolicy:
    """``[prefetch]`` in the config."""

    enabled: bool = True
    whole_after: float = 20.0  # seconds a track is open before the next one is fetched whole
    budget: int = 1_000_000_000  # bytes prefetched and not opened yet, at most
    concurrent: int = 1  # prefetches at once
    learned: int = 2  # learned next tracks whose heads are fetched (seen once is enough)


class PrefetchReader(Protocol):
    async def prefetch(self, track: dict, *, whole: bool, timeout: float = 60.0, progress=None) -> int: ...

    def busy(self) -> bool: ...


@dataclass
class PrefetchCounters:
    heads: int = 0  # heads fetched
    wholes: int = 0  # whole tracks fetched
    bytes: int = 0  # bytes those fetches cut
    hits: int = 0  # opens of a track prefetched before
    hit_bytes: int = 0  # bytes of those prefetches
    over_budget: int = 0  # prefetches not made: too much prefetched and not opened yet
    dropped: int = 0  # prefetches not made: too many waiting
    wasted_bytes: int = 0  # bytes prefetched and not opened within WASTED_AFTER
    failures: int = 0
    # track id -> (bytes prefetched, trio time): not opened yet
    unused: dict[int, tuple[int, float]] = field(default_factory=dict)


class Prefetcher:
    def __init__(self, conn: sqlite3.Connection, reader: PrefetchReader, access: AccessTracker,
                 policy: PrefetchPolicy, nursery: trio.Nursery, resolver: Resolver | None = None):
        self.conn = conn  # the index, read on the loop as the tree reads it
        self.resolver = resolver or Resolver(conn)
        self.reader = reader
        self.access = access
        self.policy = policy
        self.nursery = nursery
        self.counters = PrefetchCounters()
        self._limiter = trio.CapacityLimiter(max(1, policy.concurrent))
        self._open: dict[int, int] = {}  # track id -> handles open through the tree
        self._queued: set[tuple[int, bool]] = set()  # (track id, whole) waiting or running
        # (when, track opened, its likeliest next track): the next is fetched whole if the first is
        # still open then. One timer task for them all (see _whole_when_played), none when empty.
        self._due: list[tuple[float, int, int]] = []
        self._pending: set[tuple[int, int]] = set()  # (track, next) in _due: a track opened again adds none
        self._timer = False
        # opens not looked at yet (track, when), newest last: one task works through them (see
        # _work_through_opens); a burst keeps only its last QUEUE, as a scanner's opens are no listening
        self._opens: deque[tuple[Node, float]] = deque(maxlen=QUEUE)
        self._looking = 0  # opens taken from _opens and being looked at (0 or 1)

    # -- told by the tag tree ------------------------------------------------------------------
    def opened(self, node: Node) -> None:
        track_id = node.track_id
        self._open[track_id] = self._open.get(track_id, 0) + 1
        fetched = self.counters.unused.pop(track_id, None)
        if fetched is not None:
            self.counters.hits += 1
            self.counters.hit_bytes += fetched[0]
        if not self.policy.enabled:
            return
        if len(self._opens) == QUEUE:
            self.counters.dropped += 1  # the oldest waiting open goes
        self._opens.append((node, trio.current_time()))
        if len(self._opens) == 1 and not self._looking:
            self.nursery.start_soon(self._work_through_opens)

    def closed(self, track_id: int) -> None:
        left = self._open.get(track_id, 0) - 1
        if left > 0:
            self._open[track_id] = left
        else:
            self._open.pop(track_id, None)

    # -- the work --------------------------------------------------------------------------------
    async def _work_through_opens(self) -> None:
        """Look at each open in turn: the next tracks' heads are fetched, and the next whole later.

        One task for all opens, not one each: a media server that opens a thousand tracks at
        once (and holds them) had a thousand tasks each asking the index for next tracks in a
        worker thread right after, beside the reads those clients went on to make (NFR-2.4).
        """
        while self._opens:
            node, started = self._opens.popleft()
            self._looking = 1
            try:
                await self._after_open(node, started)
            except sqlite3.Error as exc:  # the index cannot be read now: no prefetch for this open, the mount goes on
                self.counters.failures += 1
                log.warning("no prefetch after opening track %d: %s", node.track_id, exc)
            finally:
                self._looking = 0

    async def _after_open(self, node: Node, started: float) -> None:
        album_next = self._album_next(node)
        try:
            learned = await trio.to_thread.run_sync(self.access.next_tracks, node.track_id, self.policy.learned, 1)
        except sqlite3.Error as exc:  # the album's order still holds
            log.debug("no learned next tracks for %d: %s", node.track_id, exc)
            learned = []
        heads = [t for t in dict.fromkeys([*learned, album_next]) if t is not None and t != node.track_id]
        for track_id in heads:  # in this order: the prefetch limiter lets them in as they came
            self.nursery.start_soon(self._fetch, track_id, False)
        if heads and (node.track_id, heads[0]) not in self._pending:
            self._pending.add((node.track_id, heads[0]))
            heapq.heappush(self._due, (started + self.policy.whole_after, node.track_id, heads[0]))
            if not self._timer:
                self._timer = True
                self.nursery.start_soon(self._whole_when_played)

    async def _whole_when_played(self) -> None:
        """Fetch the next track whole for each opened track still open ``whole_after`` seconds later.

        Why one task and not a sleeping task per open: a media server that opens every track
        of a big library left thousands of tasks asleep in the event loop, and their timers
        woke in bursts beside the reads (a cached read's p99 tripled with 1,200 files held
        open, NFR-2.4). Entries are pushed in about the order their tracks were opened; one
        pushed meanwhile due earlier than the one slept for waits at most that difference.
        """
        try:
            while self._due:
                when, track_id, next_id = self._due[0]
                if when > trio.current_time():
                    await trio.sleep_until(when)
                    continue
                heapq.heappop(self._due)
                self._pending.discard((track_id, next_id))
                if self._open.get(track_id) and (next_id, True) not in self._queued:  # played, not skipped
                    if len(self._queued) >= QUEUE:
                        self.counters.dropped += 1
                    else:
                        self.nursery.start_soon(self._fetch, next_id, True)
        finally:
            self._timer = False

    def _album_next(self, node: Node) -> int | None:
        """The next file of the track's directory, else the first file of the next directory beside it."""
        q = self.conn.execute
        row = q("SELECT track_id FROM nodes WHERE parent = ? AND kind = 'file' AND name > ? ORDER BY name LIMIT 1",
                (node.parent, node.name)).fetchone()
        if row is None:
            after = q("SELECT d.id FROM nodes album JOIN nodes d ON d.parent = album.parent AND d.name > album.name"
                      " AND d.kind = 'dir' WHERE album.id = ? ORDER BY d.name LIMIT 1", (node.parent,)).fetchone()
            if after is not None:
                row = q("SELECT track_id FROM nodes WHERE parent = ? AND kind = 'file' ORDER BY name LIMIT 1",
                        (after[0],)).fetchone()
        return row[0] if row is not None else None

    def _unused_bytes(self) -> int:
        """Bytes prefetched that nobody opened yet; older ones count as wasted and no longer hold."""
        now, unused = trio.current_time(), self.counters.unused
        for track_id, (size, at) in list(unused.items()):
            if now - at > WASTED_AFTER:
                del unused[track_id]
                self.counters.wasted_bytes += size
        return sum(size for size, _ in unused.values())

    async def _fetch(self, track_id: int, whole: bool) -> None:
        try:
            row = self.conn.execute("SELECT * FROM tracks WHERE id = ?", (track_id,)).fetchone()
        except sqlite3.Error as exc:  # a task of the mount's nursery: never let it end the mount
            self.counters.failures += 1
            log.warning("no prefetch of track %d: %s", track_id, exc)
            return
        if row is None or (track_id, whole) in self._queued:
            return
        track = dict(row)
        if self._unused_bytes() + (track["size"] if whole else 0) > self.policy.budget:
            self.counters.over_budget += 1
            return
        if len(self._queued) >= QUEUE:
            self.counters.dropped += 1
            return
        self._queued.add((track_id, whole))
        try:
            async with self._limiter:
                while self.reader.busy():  # a listener waits for the origin: it goes first
                    await trio.sleep(GIVE_WAY)
                cut = await self.reader.prefetch(track, whole=whole)
        except (MusicFSError, OSError) as exc:
            self.counters.failures += 1
            log.info("prefetch of %s:%s failed: %s", track["origin_id"], track["real_path"], exc)
            return
        finally:
            self._queued.discard((track_id, whole))
        if whole:
            self.counters.wholes += 1
        else:
            self.counters.heads += 1
        self.counters.bytes += cut
        if cut and not self._open.get(track_id):
            size, _ = self.counters.unused.get(track_id, (0, 0.0))
            self.counters.unused[track_id] = (size + cut, trio.current_time())

    # -- on request -------------------------------------------------------------------------------
    def files_under(self, paths: list[str]) -> list[tuple[int, str]]:
        """(track id, path) of every file at or below the virtual ``paths``, in tree order; raises
        NotFound for a path the tree does not hold, ValueError past MAX_FILES."""
        found: dict[int, str] = {}
        for path in paths:
            node = self.resolver.resolve(path)
            if not node.is_dir:
                found[node.track_id] = self.resolver.path_of(node.id)
                continue
            rows = self.conn.execute(
                "WITH RECURSIVE below(id) AS (SELECT ? UNION ALL SELECT n.id FROM nodes n JOIN below b"
                " ON n.parent = b.id WHERE n.kind = 'dir') SELECT f.id, f.track_id FROM nodes f JOIN below b"
                " ON f.parent = b.id WHERE f.kind = 'file' LIMIT ?", (node.id, MAX_FILES + 1)).fetchall()
            for node_id, track_id in rows:
                found.setdefault(track_id, self.resolver.path_of(node_id))
            if len(found) > MAX_FILES:
                raise ValueError(f"more than {MAX_FILES} files named; ask for less at a time")
        return sorted(found.items(), key=lambda item: item[1])

    async def request(self, files: list[tuple[int, str]], strategy: str,
                      timeout: float = REQUEST_TIMEOUT) -> AsyncIterator[dict]:
        """Fetch ``files`` one after another (``strategy`` of STRATEGIES): a progress document per
        file as its bytes come, then a summary. A file not fetched as asked within ``timeout``
        seconds is given up with an error saying so. A client that leaves does not stop it."""
        job = _Job([_FileProgress(track_id, path) for track_id, path in files])
        self.nursery.start_soon(self._serve, job, strategy, timeout)
        shown: dict[int, tuple] = {}
        while True:
            changed = job.changed
            for item in job.files:
                if shown.get(id(item)) != item.key():
                    shown[id(item)] = item.key()
                    yield item.document(strategy)
            if job.done:
                yield job.summary(strategy)
                return
            await changed.wait()

    async def _serve(self, job: _Job, strategy: str, timeout: float) -> None:
        try:
            for item in job.files:
                row = self.conn.execute("SELECT * FROM tracks WHERE id = ?", (item.track_id,)).fetchone()
                if row is None:
                    item.error = "no longer in the library"
                    job.notify()
                    continue
                track = dict(row)
                item.total = track["size"]
                if strategy != "metadata":
                    def progress(cut: int, item=item) -> None:
                        item.cached = cut
                        job.notify()

                    try:
                        async with self._limiter:
                            item.fetched = await self.reader.prefetch(track, whole=strategy == "full",
                                                                      timeout=timeout, progress=progress)
                    except (MusicFSError, OSError) as exc:
                        item.error = str(exc)
                    if item.error is None and strategy == "full" and item.cached < item.total:
                        item.error = f"{item.cached:,} of {item.total:,} bytes cached after {timeout:g} s"
                item.complete = item.error is None
                job.notify()
        finally:
            job.done = True
            job.notify()

    def statistics(self) -> dict:
        # read from the status thread: copies (atomic in CPython), never an iteration of the live dict
        unused = list(dict(self.counters.unused).values())
        counters = {f.name: getattr(self.counters, f.name) for f in fields(self.counters) if f.name != "unused"}
        return {"enabled": self.policy.enabled, **counters, "unused_bytes": sum(size for size, _ in unused),
                "unused_tracks": len(unused), "queued": len(self._queued) + len(self._opens) + self._looking, "due": len(self._due)}


@dataclass
class _FileProgress:
    track_id: int
    path: str
    total: int = 0
    cached: int = 0  # bytes of it in the cache (from its start)
    fetched: int = 0  # bytes this request fetched of it
    complete: bool = False
    error: str | None = None

    def key(self) -> tuple:
        return (self.total, self.cached, self.fetched, self.complete, self.error)

    def document(self, strategy: str) -> dict:
        return {"path": self.path, "track_id": self.track_id, "strategy": strategy, "total": self.total,
                "cached": self.cached, "fetched": self.fetched, "complete": self.complete, "error": self.error}


@dataclass
class _Job:
    files: list[_FileProgress]
    done: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def summary(self, strategy: str) -> dict:
        return {"done": True, "strategy": strategy, "files": len(self.files),
                "complete": sum(f.complete for f in self.files), "failed": sum(f.error is not None for f in self.files),
                "fetched": sum(f.fetched for f in self.files)}
