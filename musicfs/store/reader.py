"""Reading tracks through the chunk cache: hits from disk, misses filled from the origin.

For each file version being read there is one :class:`FileState`, shared by
all its handles. The first read that misses starts one *fill*: a task that
streams the file from the origin in order, cuts it into chunks, stores them
and advances ``covered``. A fill goes on while the file is open, so a track
played once is cached whole; once the last handle is closed it stops after
the block in hand, so a scanner reading the tags of ten thousand tracks
fetches their heads, not the library. What a stopped fill covered is
remembered (for the last ``PARTIAL_KEPT`` such files), and the next read
of the file resumes it from there. Readers whose range the fill will reach soon wait
only for the bytes they need; a read far ahead of the fill (a seek) is served
by a ranged fetch of its own instead of waiting for the prefix. Concurrent
readers of one file therefore cause one origin fetch per chunk.

A finished fill saves the file's manifest; later opens find it and read
without touching the origin, so cached files keep playing offline (NFR-7.1).
A chunk missing or corrupt on disk is fetched again and checked against its
address (NFR-8.1, NFR-8.4). Reads that need an unreachable origin fail with
EIO after a bounded time (``read_timeout``), never hang.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..errors import MusicFSError, NotFound, OriginUnavailable
from ..events import ChunkFetched, EventBus, FetchStarted, FillCompleted, FillStopped, OriginError
from ..origins.retry import call_with_retry
from .cache import ContentCache
from .chunkdb import ChunkRef
from .chunker import StreamChunker
from .digest import digest

log = logging.getLogger(__name__)

FILL_BLOCK = 1024 * 1024  # bytes asked of the origin per fill step, once under way
# The first step of a fill asks for half as much, then FILL_BLOCK: a player waits for the first
# block before its first byte, so it should be small, yet it must yield the chunks a first read
# needs. A chunk is final once the largest chunk size (256 KiB) past its start is known, so
# 512 KiB always yields chunks reaching past 256 KiB: more than a first read (128 KiB) asks.
# A hundred tracks starting at once then need 50 MiB to cross the link before every player
# has sound, not 100 MiB.
FIRST_BLOCK = 512 * 1024
AHEAD = 4 * 1024 * 1024  # a read within this distance of the fill waits for it; further is a seek
RECENT_BYTES = 16 * 1024 * 1024  # verified chunks kept in memory for adjacent reads
READ_AHEAD = 24  # chunks loaded beyond a read that had to go to disk
STORE_PARALLEL = 8  # blocks of chunks being written while the fill fetches the next
STORE_THREADS = 8  # threads writing chunk files at once, across all fills
# After a fill gave up, reads of the same file fail at once for this long instead of starting
# another fill: one read() of an application is several FUSE requests, and each waiting out
# its own read_timeout would multiply the time before the application sees EIO.
FAIL_FAST = 1.0
FETCH_WINDOW = 4  # blocks one fill asks for at once while a reader waits on it
AHEAD_TOTAL = 32  # blocks asked ahead across all fills (memory: 32 MiB at most)
PARTIAL_KEPT = 256  # files read in part whose chunks so far are remembered after the last close


@dataclass
class _Fetch:
    """One block of a fill, asked of the origin; taken in file order once ``done``."""

    offset: int
    size: int
    extra: bool  # beyond the first in flight: holds one of the AHEAD_TOTAL shared places
    done: trio.Event = field(default_factory=trio.Event)
    result: tuple[bytes, str] | None = None  # the bytes and the origin that served them
    error: BaseException | None = None


def _blocks(position: int, size: int):
    """The blocks a fill asks for from ``position``: FIRST_BLOCK, then FILL_BLOCK at a time."""
    step = FIRST_BLOCK
    while position < size:
        length = min(step, size - position)
        yield position, length
        position += length
        step = FILL_BLOCK


@dataclass
class FileState:
    origin_id: str
    real_path: str
    size: int
    version: str
    replicas: list[str] = field(default_factory=list)  # origins holding the same file, any order
    chunks: list[ChunkRef] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    covered: int = 0  # bytes [0, covered) are stored as chunks
    complete: bool = False
    filling: bool = False
    error: BaseException | None = None
    failed_at: float = float("-inf")  # trio time of the last failed fill
    filled_from: str | None = None  # the replica whose bytes the last block taken was cut from
    agreeing: set[str] = field(default_factory=set)  # replicas proven to hold the bytes cut so far
    handles: int = 0
    last_end: int = -1  # where the last read of this file ended: sequential access detection
    wanted: int = 0  # the furthest byte a reader has waited for the fill to reach
    changed: trio.Event = field(default_factory=trio.Event)

    def add(self, ref: ChunkRef) -> None:
        self.chunks.append(ref)
        self.offsets.append(ref.offset)
        self.covered = ref.end

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def refs_after(self, offset: int, count: int) -> list[ChunkRef]:
        """Up to ``count`` known chunks starting at or after ``offset``."""
        first = bisect.bisect_left(self.offsets, offset)
        return self.chunks[first:first + count]

    def refs_for(self, start: int, end: int) -> list[ChunkRef]:
        first = max(bisect.bisect_right(self.offsets, start) - 1, 0)
        refs = []
        for ref in self.chunks[first:]:
            if ref.offset >= end:
                break
            refs.append(ref)
        return refs


@dataclass
class CachedHandle:
    track_id: int
    state: FileState
    direct: Any = None  # the pass-through handle when the origin's policy is cache = "never"
    passthrough: bool = False  # cache = "never" on a non-local origin: ranged reads, nothing kept


@dataclass
class ReaderCounters:
    fills_started: int = 0
    fills_completed: int = 0
    fills_failed: int = 0
    fills_stopped: int = 0  # ended early: nobody had the file open any more
    direct_reads: int = 0
    origin_requests: int = 0
    origin_bytes: int = 0
    refetched_chunks: int = 0
    store_errors: int = 0
    failovers: int = 0  # reads served by a replica other than the track's own origin
    replica_mismatches: int = 0  # a fill moved to a replica that held other bytes (and stopped)


class CachedReader:
    def __init__(self, origins: dict, cache: ContentCache, bus: EventBus, nursery: trio.Nursery, *,
                 direct: Any = None, policies: dict[str, str] | None = None, read_timeout: float = 5.0,
                 threads: int = 16, origin_threads: int = 128, health: Any = None,
                 replicas: Callable[[str, str, int], list[str]] | None = None):
        """``direct`` serves local origins whose policy is cache = "never" (a pass-through
        reader); ``replicas(origin_id, path, size)`` names the origins holding the same file;
        ``health`` (a HealthMonitor) orders them."""
        self.origins = origins
        self.direct = direct
        self.health = health
        self.replicas = replicas
        self.cache = cache
        self.bus = bus
        self.nursery = nursery
        self.policies = policies or {}
        self.read_timeout = read_timeout
        self.limiter = trio.CapacityLimiter(threads)
        # chunk writes wait on fsync: they get threads of their own, so an open()'s manifest
        # lookup or a fill's chunking never queues behind the disk
        self.store_limiter = trio.CapacityLimiter(STORE_THREADS)
        # origin calls mostly wait on a network: many may be in flight at once (ASYNC-2)
        self.origin_limiter = trio.CapacityLimiter(origin_threads)
        self.counters = ReaderCounters()
        self._states: dict[tuple[str, str, str], FileState] = {}
        self._partial: OrderedDict[tuple[str, str, str], FileState] = OrderedDict()  # closed, in part cached
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, bytes] = {}  # cut by a fill, not yet written to disk
        self._loading: dict[str, trio.Event] = {}  # chunk loads under way (single-flight)
        self._bad: set[str] = set()  # found missing or corrupt on disk; fetched again when needed
        self._recent_bytes = 0
        self._ahead = 0  # blocks in flight beyond the first of each fill (at most AHEAD_TOTAL)

    # -- handles ----------------------------------------------------------
    async def open(self, track: dict) -> CachedHandle:
        never = self.policies.get(track["origin_id"], "always") == "never"
        if never and self.direct is not None and hasattr(self.origins.get(track["origin_id"]), "local_path"):
            state = FileState(track["origin_id"], track["real_path"], track["size"], "")
            return CachedHandle(track["id"], state, direct=await self.direct.open(track))
        version = track.get("version") or f"{track['size']}:{track['mtime_ns']}"
        key = (track["origin_id"], track["real_path"], version)
        state = self._states.get(key) or self._resume(key)
        if state is None:
            state = FileState(track["origin_id"], track["real_path"], track["size"], version)
            state.replicas = (self.replicas(state.origin_id, state.real_path, state.size)
                              if self.replicas else [state.origin_id])
            if not never:
                manifest = await trio.to_thread.run_sync(self.cache.manifest, *key[:2], limiter=self.limiter)
                if manifest is not None and manifest.version == version and manifest.size == state.size:
                    for ref in manifest.chunks:
                        state.add(ref)
                    state.complete = True
                    self.cache.hold(r.address for r in state.chunks)
            state = self._states.setdefault(key, state)
        state.handles += 1
        return CachedHandle(track["id"], state, passthrough=never)

    def release(self, handle: CachedHandle) -> None:
        if handle.direct is not None:
            self.direct.release(handle.direct)
            return
        state = handle.state
        state.handles -= 1
        if state.handles <= 0 and not state.filling:
            self._forget(state)

    def _resume(self, key: tuple[str, str, str]) -> FileState | None:
        """The state of a file read in part before, to go on from where its fill stopped."""
        state = self._partial.pop(key, None)
        if state is not None:
            state.error = None  # a new open is a new attempt
            self.cache.hold(r.address for r in state.chunks)
            self._states[key] = state
        return state

    def _forget(self, state: FileState) -> None:
        key = (state.origin_id, state.real_path, state.version)
        self._states.pop(key, None)
        self.cache.unhold(r.address for r in state.chunks)
        if state.chunks and not state.complete:  # its chunks may be evicted meanwhile: then refetched
            self._partial[key] = state
            self._partial.move_to_end(key)
            if len(self._partial) > PARTIAL_KEPT:
                self._partial.popitem(last=False)
        if self.cache.size > self.cache.limit:  # chunks spared while in use may go now
            self.nursery.start_soon(self._evict)

    async def _evict(self) -> None:
        await trio.to_thread.run_sync(self.cache.evict, limiter=self.limiter)

    # -- reads ------------------------------------------------------------
    async def read(self, handle: CachedHandle, offset: int, size: int) -> bytes:
        state = handle.state
        end = min(offset + size, state.size)
        if offset >= end:
            return b""
        if handle.direct is not None:
            return await self.direct.read(handle.direct, offset, size)
        if handle.passthrough:
            return await self._direct(state, offset, end)
        if state.complete or end <= state.covered:
            data = await self._from_chunks(state, offset, end)
            if data is not None:
                self.cache.counters.hits += 1
                return data
        self.cache.counters.misses += 1
        if offset > state.covered + AHEAD and not state.complete:
            self._start_fill(state)
            return await self._direct(state, offset, end)
        await self._wait_for(state, end)
        data = await self._from_chunks(state, offset, end)
        if data is None:
            raise OriginUnavailable(f"{state.origin_id}:{state.real_path}: chunks vanished while reading")
        return data

    async def _wait_for(self, state: FileState, end: int) -> None:
        state.wanted = max(state.wanted, end)
        deadline = trio.current_time() + self.read_timeout
        with trio.move_on_at(deadline):
            while not (state.complete or state.covered >= end):
                if (state.error is not None and not state.filling
                        and trio.current_time() - state.failed_at < FAIL_FAST):
                    raise OriginUnavailable(f"{state.origin_id}:{state.real_path}: {state.error}")
                self._start_fill(state)  # an older failure: ask the origin again
                await state.changed.wait()
            return
        raise OriginUnavailable(
            f"{state.origin_id}:{state.real_path}: origin did not deliver within {self.read_timeout:g} s")

    def _in_memory(self, address: str) -> bytes | None:
        data = self._pending.get(address)
        return data if data is not None else self._recent.get(address)

    async def _from_chunks(self, state: FileState, start: int, end: int) -> bytes | None:
        refs = state.refs_for(start, end)
        if not refs or refs[0].offset > start or refs[-1].end < end:
            return None
        # read ahead only for a reader going front to back; a random reader gets what it asks
        sequential = start == state.last_end or start == 0
        state.last_end = end
        parts = []
        for ref in refs:
            data = self._in_memory(ref.address)
            parts.append(data if data is not None else await self._chunk(state, ref, sequential))
        if sequential:
            self._read_ahead(state, refs[-1].end)
        blob = b"".join(parts) if len(parts) > 1 else parts[0]
        base = refs[0].offset
        return blob[start - base:end - base]

    def _wanted(self, ref: ChunkRef) -> bool:
        """True if nobody holds or is fetching this chunk yet."""
        return (self._in_memory(ref.address) is None and ref.address not in self._loading
                and ref.address not in self._bad)

    async def _chunk(self, state: FileState, ref: ChunkRef, sequential: bool = True) -> bytes:
        """One chunk: from memory, from a load already under way, or loaded now with the next few.

        Loads are single-flight: a reader that needs a chunk another is loading waits for it.
        """
        loading = self._loading.get(ref.address)
        if loading is not None:
            await loading.wait()
        elif ref.address not in self._bad:
            ahead = state.refs_after(ref.end, READ_AHEAD) if sequential else []
            batch = [ref] + [r for r in ahead if self._wanted(r)]
            await self._load_batch(batch)
        data = self._in_memory(ref.address)
        if data is None:  # missing or corrupt on disk (now discarded): fetch it again
            data = await self._refetch(state, ref)
            self._remember(ref.address, data)
        return data

    async def _load_batch(self, batch: list[ChunkRef]) -> None:
        for ref in batch:
            self._loading[ref.address] = trio.Event()
        try:
            loaded = await trio.to_thread.run_sync(self._load, batch, limiter=self.limiter)
            for ref, data in zip(batch, loaded):
                if data is None:
                    self._bad.add(ref.address)
                else:
                    self._remember(ref.address, data)
        finally:
            for ref in batch:
                self._loading.pop(ref.address).set()

    def _read_ahead(self, state: FileState, offset: int) -> None:
        """Start loading the chunks after a read before the reader asks for them."""
        upcoming = [r for r in state.refs_after(offset, READ_AHEAD) if self._wanted(r)]
        if len(upcoming) >= READ_AHEAD // 2 or (upcoming and upcoming[0].offset == offset):
            self.nursery.start_soon(self._prefetch, upcoming)  # keep one batch ahead of the reader

    async def _prefetch(self, batch: list[ChunkRef]) -> None:
        batch = [r for r in batch if self._wanted(r)]
        if batch:
            await self._load_batch(batch)

    def _load(self, refs: list[ChunkRef]) -> list[bytes | None]:
        return [self.cache.read_chunk(ref) for ref in refs]

    def _remember(self, address: str, data: bytes) -> None:
        if address in self._recent:
            self._recent.move_to_end(address)
            return
        self._recent[address] = data
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES and self._recent:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old)

    async def _refetch(self, state: FileState, ref: ChunkRef) -> bytes:
        """A chunk is missing or corrupt on disk: fetch its range again and check it."""
        self.counters.refetched_chunks += 1
        data = await self._fetch(state, ref.offset, ref.size)
        if len(data) != ref.size or digest(data) != ref.address:
            await trio.to_thread.run_sync(self.cache.drop_manifest, state.origin_id, state.real_path)
            raise OriginUnavailable(f"{state.origin_id}:{state.real_path} changed since it was cached;"
                                    " rescan the library")
        await trio.to_thread.run_sync(self.cache.store_chunk, ref.address, data, limiter=self.limiter)
        self._bad.discard(ref.address)
        return data

    async def _direct(self, state: FileState, start: int, end: int) -> bytes:
        self.counters.direct_reads += 1
        return await self._fetch(state, start, end - start)

    async def _fetch(self, state: FileState, offset: int, size: int) -> bytes:
        return (await self._fetch_from(state, offset, size))[0]

    async def _fetch_from(self, state: FileState, offset: int, size: int) -> tuple[bytes, str]:
        """Bytes from the best replica, and which origin served them: healthier first, then by priority (federation, G3).

        With several replicas, each but the last gets one attempt within a share of
        the deadline, so a failing or too slow origin fails over at once; the last
        gets the whole retry schedule (NFR-7.3) in what time is left.
        """
        replicas = [o for o in state.replicas if o in self.origins] or [state.origin_id]
        if self.health is not None:
            replicas = self.health.ranked(replicas)
        deadline = trio.current_time() + self.read_timeout
        share = self.read_timeout / len(replicas)
        failures = []
        for i, origin_id in enumerate(replicas):
            last = i == len(replicas) - 1
            origin = self.origins.get(origin_id)
            if origin is None:
                failures.append(f"{origin_id}: not configured")
                continue
            self.counters.origin_requests += 1
            try:
                data = await call_with_retry(
                    origin.read_range, state.real_path, offset, size, limiter=self.origin_limiter,
                    deadline=deadline if last else min(deadline, trio.current_time() + share),
                    attempts=4 if last else 1, on_error=self._on_origin_error(origin_id, state, offset))
            except NotFound:
                failures.append(f"{origin_id}: missing")
                if len(replicas) == 1:
                    raise
                continue
            except OriginUnavailable as exc:
                failures.append(f"{origin_id}: {exc}")
                if self.health is not None:
                    self.health.read_failed(origin_id, str(exc))
                continue
            if self.health is not None:
                self.health.read_succeeded(origin_id)
            if origin_id != state.origin_id:
                self.counters.failovers += 1
            self.counters.origin_bytes += len(data)
            return data, origin_id
        raise OriginUnavailable(f"{state.real_path}: no replica could be read ({'; '.join(failures)})")

    def _on_origin_error(self, origin_id: str, state: FileState, offset: int):
        def on_error(exc: BaseException, attempt: int) -> None:
            log.warning("origin %s: reading %s at %d failed (attempt %d): %s", origin_id,
                        state.real_path, offset, attempt, exc)
            self.bus.publish(OriginError(origin_id, state.real_path, str(exc), attempt))
        return on_error

    # -- fills ------------------------------------------------------------
    def _start_fill(self, state: FileState) -> None:
        if state.filling or state.complete:
            return
        state.filling = True
        state.error = None
        self.counters.fills_started += 1
        self.nursery.start_soon(self._fill, state)

    async def _fill(self, state: FileState) -> None:
        started = time.monotonic()
        self.bus.publish(FetchStarted(state.origin_id, state.real_path, state.covered))
        try:
            finished = await self._fill_from(state, state.covered)
        except (MusicFSError, OSError) as exc:
            self._fill_failed(state, exc)
            log.warning("filling %s:%s stopped at %d bytes: %s", state.origin_id, state.real_path,
                        state.covered, exc)
        except Exception as exc:
            self._fill_failed(state, exc)
            log.exception("filling %s:%s failed unexpectedly", state.origin_id, state.real_path)
        else:
            if finished:
                self.counters.fills_completed += 1
                self.bus.publish(FillCompleted(state.origin_id, state.real_path, state.size,
                                               len(state.chunks), time.monotonic() - started))
            else:
                self.counters.fills_stopped += 1
                self.bus.publish(FillStopped(state.origin_id, state.real_path, state.covered, state.size))
        finally:
            state.filling = False
            state.notify()
            if state.handles <= 0:
                self._forget(state)

    def _fill_failed(self, state: FileState, exc: BaseException) -> None:
        self.counters.fills_failed += 1
        state.error = exc
        state.failed_at = trio.current_time()

    async def _fill_from(self, state: FileState, start: int) -> bool:
        """Fetch in order; cut and hash in a thread; store chunks in parallel behind the fetch.

        Chunks become readable from memory as soon as they are cut; up to
        ``STORE_PARALLEL`` blocks are being written while the next is fetched,
        which bounds memory and keeps the origin busy. Returns False if the
        fill stopped before the end (nobody has the file open).
        """
        chunker = StreamChunker(start)
        slots = trio.Semaphore(STORE_PARALLEL)
        try:
            async with trio.open_nursery() as stores:
                finished = await self._fetch_blocks(state, start, chunker, stores, slots)
        except ExceptionGroup as group:  # not BaseExceptionGroup: cancellation passes untouched
            if len(group.exceptions) == 1:  # the fetch loop's own error (stores handle theirs)
                raise group.exceptions[0] from None
            raise
        if not finished:
            return False
        await trio.to_thread.run_sync(self.cache.save_manifest, state.origin_id, state.real_path,
                                      state.size, state.version, list(state.chunks), limiter=self.limiter)
        state.complete = True
        return True

    async def _fetch_blocks(self, state: FileState, position: int, chunker: StreamChunker,
                            stores: trio.Nursery, slots: trio.Semaphore) -> bool:
        """The fill's loop: fetch blocks, cut them in order, make their chunks readable, queue their writes.

        One block is in flight at a time until a reader has waited for two of
        them (the first always has a reader waiting): then up to
        ``FETCH_WINDOW``, so a slow origin's round trips overlap for a reader
        that keeps catching up with the fill (a copy), while a player reading
        at its own pace, or a scanner that wanted the head, costs no more. Returns True at the end
        of the file, False when it stops early: after a block, if nobody has
        the file open any more.
        """
        plan = _blocks(position, state.size)
        window: deque[_Fetch] = deque()
        starved = 0  # blocks a reader was already waiting for when they arrived
        failure: BaseException | None = None
        finished = False
        try:
            async with trio.open_nursery() as fetches:
                self._widen(fetches, state, plan, window, 1)
                while window:
                    fetch = window[0]
                    await fetch.done.wait()
                    window.popleft()
                    self._ahead -= fetch.extra
                    starved += state.wanted > state.covered  # a reader was waiting for it when it came
                    try:
                        position = await self._take(state, fetch, chunker, stores, slots)
                    except (MusicFSError, OSError) as exc:
                        failure = exc
                        break
                    if state.handles <= 0 and position < state.size:
                        break
                    self._widen(fetches, state, plan, window, FETCH_WINDOW if starved >= 2 else 1)
                else:
                    finished = True
                fetches.cancel_scope.cancel()  # blocks asked for but no longer wanted
        finally:
            self._ahead -= sum(fetch.extra for fetch in window)
        if failure is not None:
            raise failure
        return finished

    def _widen(self, fetches: trio.Nursery, state: FileState, plan, window: deque[_Fetch], most: int) -> None:
        """Ask for more blocks: up to ``most`` in flight; beyond the first, only while shared room is left."""
        while len(window) < most:
            extra = bool(window)
            if extra and self._ahead >= AHEAD_TOTAL:
                return
            block = next(plan, None)
            if block is None:
                return
            fetch = _Fetch(*block, extra=extra)
            self._ahead += extra
            window.append(fetch)
            fetches.start_soon(self._fetch_into, state, fetch)

    async def _fetch_into(self, state: FileState, fetch: _Fetch) -> None:
        try:
            fetch.result = await self._fetch_from(state, fetch.offset, fetch.size)
        except (MusicFSError, OSError) as exc:
            fetch.error = exc
        finally:
            fetch.done.set()

    async def _take(self, state: FileState, fetch: _Fetch, chunker: StreamChunker, stores: trio.Nursery,
                    slots: trio.Semaphore) -> int:
        """One fetched block, in file order: checked, cut, readable, queued for writing; the new position."""
        if fetch.error is not None:
            raise fetch.error
        data, served_by = fetch.result
        if state.chunks and served_by not in state.agreeing | {state.filled_from}:
            await self._check_replica(state, served_by, state.filled_from)
        state.agreeing.add(served_by)
        state.filled_from = served_by
        if len(data) < fetch.size:
            raise OriginUnavailable(f"file ended at {fetch.offset + len(data)} of {state.size} bytes;"
                                    " it changed since the scan")
        position = fetch.offset + fetch.size
        items = await trio.to_thread.run_sync(self._cut, chunker, data, position >= state.size,
                                              limiter=self.limiter)
        if items:
            for ref, piece in items:
                self._pending[ref.address] = piece
                state.add(ref)
                self.bus.publish(ChunkFetched(state.origin_id, state.real_path, ref.offset, ref.size))
            self.cache.hold(ref.address for ref, _ in items)
            state.notify()
            await slots.acquire()
            stores.start_soon(self._store, items, slots)
        return position

    async def _check_replica(self, state: FileState, origin_id: str, before: str) -> None:
        """A fill moved to another replica: it must hold the bytes already cut, or the file would mix two.

        The same path and size on two origins is taken for one file; this proves
        it on the last chunk cut so far (its hash is its address) before any of
        the new replica's bytes are kept.
        """
        ref = state.chunks[-1]
        data = await call_with_retry(
            self.origins[origin_id].read_range, state.real_path, ref.offset, ref.size,
            limiter=self.origin_limiter, deadline=trio.current_time() + self.read_timeout,
            on_error=self._on_origin_error(origin_id, state, ref.offset))
        if len(data) == ref.size and digest(data) == ref.address:
            return
        self.counters.replica_mismatches += 1
        log.error("%s: origins %s and %s hold different bytes at %d; not mixing them (rescan or "
                  "fix the copies)", state.real_path, before, origin_id, ref.offset)
        raise OriginUnavailable(f"{state.real_path}: replica {origin_id} differs from {before}")

    @staticmethod
    def _cut(chunker: StreamChunker, data: bytes, last: bool) -> list[tuple[ChunkRef, bytes]]:
        pieces = chunker.feed(data)
        if last:
            pieces += chunker.finish()
        return [(ChunkRef(p.offset, len(p.data), digest(p.data)), p.data) for p in pieces]

    async def _store(self, items: list[tuple[ChunkRef, bytes]], slots: trio.Semaphore) -> None:
        try:
            await trio.to_thread.run_sync(self._write, items, limiter=self.store_limiter)
        except OSError as exc:  # disk full or gone: the bytes were served; they are not kept
            self.counters.store_errors += 1
            log.error("cannot store chunks in the cache: %s", exc)
        finally:
            for ref, _ in items:
                self._pending.pop(ref.address, None)
            slots.release()

    def _write(self, items: list[tuple[ChunkRef, bytes]]) -> None:
        self.cache.store_chunks([(ref.address, data) for ref, data in items])

    # -- lifecycle --------------------------------------------------------
    async def flush_periodically(self, every: float = 5.0) -> None:
        """Write gathered last-access times to the chunk index now and then."""
        while True:
            await trio.sleep(every)
            await trio.to_thread.run_sync(self.cache.flush, limiter=self.limiter)

    async def drain(self, timeout: float) -> None:
        """Let running fills finish (bounded), so what was read is kept for next time."""
        with trio.move_on_after(timeout):
            while any(state.filling for state in self._states.values()):
                await trio.sleep(0.02)

    def close(self) -> None:
        self.cache.close()

    def statistics(self) -> dict:
        return {**self.counters.__dict__, "open_files": len(self._states), "partial_files": len(self._partial),
                "memory_chunk_bytes": self._recent_bytes}
