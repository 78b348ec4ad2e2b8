"""Fills: streaming a file from its origin into the chunk cache, in order, while someone reads it.

A fill fetches blocks (``FIRST_BLOCK``, then ``FILL_BLOCK`` at a time), cuts
them into chunks in a thread, makes the chunks readable from memory at once
and writes them behind the fetch. After its first block a fill waits until a
reader reads past what that block surely made readable (the head): a scanner
reading the tags of ten thousand tracks fetches one block of each, however
late its close reaches the daemon (the kernel sends the release after the
read is answered, by which time a fill that went straight on has the next
block under way). Once a reader reads on, the fill goes on while the file is
open, so a track played once is cached whole, and stops after the block in
hand once the last handle is closed. A reader that keeps catching up with
the fill (a copy) gets several blocks asked for at once.

When a fill moves to another replica mid-file, that replica must first
return the last chunk cut so far, byte for byte: two versions of a file
never mix. A finished fill is checked against the origin's checksum of the
whole file where there is one (:mod:`musicfs.store.verify`), then saves the
file's manifest. While it runs, the prefix whose chunks are on disk is saved
as a partial manifest every ``SAVE_EVERY`` seconds and when it stops, so a
fill cut off by a crash resumes without fetching those chunks again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..digest import digest
from ..errors import MusicFSError, OriginUnavailable
from ..events import ChunkFetched, EventBus, FetchStarted, FillCompleted, FillStopped
from .cache import ContentCache
from .chunkdb import ChunkRef
from .chunker import MAX_SIZE, StreamChunker
from .fetch import ReplicaDiffers, ReplicaFetcher
from .filestate import FileState, ReaderCounters
from .verify import Verifier

log = logging.getLogger(__name__)

FILL_BLOCK = 1024 * 1024  # bytes asked of the origin per fill step, once under way
# The first step of a fill asks for half as much, then FILL_BLOCK: a player waits for the first
# block before its first byte, so it should be small, yet it must yield the chunks a first read
# needs. A chunk is final once the largest chunk size (256 KiB) past its start is known, so
# 512 KiB always yields chunks reaching past 256 KiB: more than a first read (128 KiB) asks.
# A hundred tracks starting at once then need 50 MiB to cross the link before every player
# has sound, not 100 MiB.
FIRST_BLOCK = 512 * 1024
FETCH_WINDOW = 4  # blocks one fill asks for at once while a reader waits on it
AHEAD_TOTAL = 32  # blocks asked ahead across all fills (memory: 32 MiB at most)
STORE_PARALLEL = 8  # blocks of chunks being written while the fill fetches the next
# Bytes cut and not yet on disk, across all fills. Without a bound, readers that outpace the
# cache's disk (8 cold readers) left every byte they read waiting in memory for its write:
# 1.4 GB for 1.6 GB read. At the bound a fill waits for writes before it fetches on.
PENDING_LIMIT = 32 * 1024 * 1024
STORE_THREADS = 8  # threads writing packs of chunks at once, across all fills
SAVE_EVERY = 1.0  # seconds between saves of a running fill's progress (its partial manifest)


@dataclass
class _Fetch:
    """One block of a fill, asked of the origin; taken in file order once ``done``."""

    offset: int
    size: int
    extra: bool  # beyond the first in flight: holds one of the AHEAD_TOTAL shared places
    asked: float = field(default_factory=trio.current_time)
    # asked when a reader at its own pace read past the head: its wait says nothing of the origin
    paced: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    result: tuple[bytes, str] | None = None  # the bytes and the origin that served them
    error: BaseException | None = None


class PendingBudget:
    """The bytes of cut chunks waiting for their write, across all fills (trio side only).

    A fill takes its block's bytes after making them readable and before
    queueing their write, and waits while that would pass ``limit``: readers
    then go at the pace of the cache's disk instead of memory growing. One
    block is always let through, so a fill never waits for nothing.
    """

    def __init__(self, limit: int = PENDING_LIMIT):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waits = 0  # blocks that had to wait for writes to finish
        self._freed = trio.Event()

    async def take(self, size: int) -> None:
        if self.used and self.used + size > self.limit:
            self.waits += 1
            while self.used and self.used + size > self.limit:
                await self._freed.wait()
        self.used += size
        self.peak = max(self.peak, self.used)

    def give(self, size: int) -> None:
        self.used -= size
        self._freed.set()
        self._freed = trio.Event()

    def statistics(self) -> dict[str, int]:
        return {"pending_chunk_bytes": self.used, "pending_chunk_bytes_peak": self.peak,
                "pending_waits": self.waits}


def _blocks(position: int, size: int):
    """The blocks a fill asks for from ``position``: FIRST_BLOCK, then FILL_BLOCK at a time."""
    step = FIRST_BLOCK
    while position < size:
        length = min(step, size - position)
        yield position, length
        position += length
        step = FILL_BLOCK


class Filler:
    def __init__(self, fetcher: ReplicaFetcher, verifier: Verifier, cache: ContentCache, bus: EventBus,
                 counters: ReaderCounters, nursery: trio.Nursery, *, limiter: trio.CapacityLimiter,
                 pending: dict[str, bytes], on_idle: Callable[[FileState], None]):
        """``pending`` holds the chunks cut and not yet on disk (the reader serves them from
        there); ``on_idle(state)`` is called when a fill ends with the file no longer open."""
        self.fetcher = fetcher
        self.verifier = verifier
        self.cache = cache
        self.bus = bus
        self.counters = counters
        self.nursery = nursery
        self.limiter = limiter
        # chunk writes wait on the disk: they get threads of their own, so an open()'s manifest
        # lookup or a fill's chunking never queues behind them
        self.store_limiter = trio.CapacityLimiter(STORE_THREADS)
        self.on_idle = on_idle
        self._pending = pending
        self.budget = PendingBudget()
        self._ahead = 0  # blocks in flight beyond the first of each fill (at most AHEAD_TOTAL)

    def start(self, state: FileState) -> None:
        """Start filling ``state`` from what it covers, unless a fill runs or it is complete."""
        if state.filling or state.complete:
            return
        state.filling = True
        state.error = None
        self.counters.fills_started += 1
        self.nursery.start_soon(self._fill, state)

    async def _fill(self, state: FileState) -> None:
        started = time.monotonic()
        self.bus.publish(FetchStarted(state.origin_id, state.real_path, state.cut))
        try:
            await self.verifier.prepare(state, state.cut)
            finished = await self._fill_from(state, state.cut)
        except (MusicFSError, OSError) as exc:
            self._fill_failed(state, exc)
            # an origin that cannot serve is logged once per outage by the health monitor
            log.log(logging.INFO if isinstance(exc, OriginUnavailable) else logging.WARNING,
                    "filling %s:%s stopped at %d bytes: %s", state.origin_id, state.real_path,
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
            state.tail = b""  # a fill that resumes cuts from ``covered`` afresh
            with trio.CancelScope(shield=True):  # also on unmount: what is on disk is kept for next time
                await self._wrap_up(state)
            state.filling = False
            state.notify()
            if state.handles <= 0:
                self.on_idle(state)

    async def _wrap_up(self, state: FileState) -> None:
        """After a fill that did not complete: drop unverified chunks, or save the progress made."""
        if state.complete:
            return
        if state.verify_first:
            if state.chunks:
                await self.verifier.discard(state, "the fill stopped before the file could be checked")
            return
        await self._save_progress(state)

    async def _save_progress(self, state: FileState) -> None:
        """Save the chunks of the file's prefix that are on disk as a partial manifest."""
        if len(state.chunks) <= state.saved or state.complete:
            return
        saved = await trio.to_thread.run_sync(self._save_prefix, state.origin_id, state.real_path, state.size,
                                              state.version, list(state.chunks), state.saved,
                                              limiter=self.limiter)
        state.saved = max(state.saved, saved)

    def _save_prefix(self, origin_id: str, real_path: str, size: int, version: str,
                     chunks: list[ChunkRef], saved: int) -> int:
        """In a worker thread: save the chunks from the first up to the first not on disk; how many."""
        durable = saved + self.cache.held_prefix(chunks[saved:])
        if durable > saved and self.cache.save_manifest(origin_id, real_path, size, version,
                                                        chunks[:durable], complete=False):
            return durable
        return saved

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
        await self.verifier.check(state)  # raises (having dropped what was stored) on a mismatch
        await trio.to_thread.run_sync(self.cache.save_manifest, state.origin_id, state.real_path,
                                      state.size, state.version, list(state.chunks), limiter=self.limiter)
        state.reveal()
        state.complete = True
        await self.verifier.check_header(state)
        return True

    async def _fetch_blocks(self, state: FileState, position: int, chunker: StreamChunker,
                            stores: trio.Nursery, slots: trio.Semaphore) -> bool:
        """The fill's loop: fetch blocks, cut them in order, make their chunks readable, queue their writes.

        One block is in flight at a time until a reader has waited for two of
        them (the first always has a reader waiting): then up to
        ``FETCH_WINDOW``, so a slow origin's round trips overlap for a reader
        that keeps catching up with the fill (a copy), while a player reading
        at its own pace, or a scanner that wanted the head, costs no more. The
        second block is asked for only once a reader reads past the head the
        first one covers (``_reader_goes_on``). Returns True at the end of the
        file, False when it stops early: after a block, if nobody has the file
        open any more.
        """
        plan = _blocks(position, state.size)
        window: deque[_Fetch] = deque()
        starved = 0  # blocks a reader was already waiting for when they arrived
        head = None  # after the first block: the bytes it surely made readable end here
        failure: BaseException | None = None
        finished = False
        try:
            async with trio.open_nursery() as fetches:
                self._widen(fetches, state, plan, window, 1)
                while window:
                    fetch = window[0]
                    await fetch.done.wait()
                    taken = [window.popleft()]
                    # past the head, the blocks that came meanwhile are cut with it: one trip to a
                    # thread and one store for all, where the cutting is what a reader waits for
                    # (as many as the bytes waiting for their write may grow by)
                    room = self.budget.limit - self.budget.used - fetch.size
                    while head is not None and window and window[0].done.is_set() and window[0].size <= room:
                        room -= window[0].size
                        taken.append(window.popleft())
                    for block in taken:
                        self._ahead -= block.extra
                        starved += state.wanted > state.readable and not block.paced  # a reader waited for it
                    try:
                        position = await self._take(state, taken, chunker, stores, slots)
                    except (MusicFSError, OSError) as exc:
                        failure = exc
                        break
                    paced = False
                    if head is None and position < state.size:
                        head = position - MAX_SIZE  # every chunk starting before this is cut
                        parked = trio.current_time()
                        if not await self._reader_goes_on(state, head):
                            break
                        # past the head sooner than the first block took to come: a reader outpacing
                        # the origin (a copy); later, one reading at its own pace (a player)
                        paced = trio.current_time() - parked >= parked - fetch.asked
                    if state.handles <= 0 and position < state.size:
                        break
                    self._widen(fetches, state, plan, window, FETCH_WINDOW if starved >= 2 else 1)
                    if paced and window:
                        window[-1].paced = True
                else:
                    finished = True
                fetches.cancel_scope.cancel()  # blocks asked for but no longer wanted
        finally:
            self._ahead -= sum(fetch.extra for fetch in window)
        if failure is not None:
            raise failure
        return finished

    @staticmethod
    async def _reader_goes_on(state: FileState, head: int) -> bool:
        """After the first block: wait until a reader asks for bytes past ``head`` (True) or the last
        handle is closed (False).

        The first block covers a head read and the kernel's read-ahead of it
        (chunks are final up to ``MAX_SIZE`` before the block's end, at least
        the 256 KiB a first read and its read-ahead reach). Asking for the next
        block at once would fetch it for every scanner whose close reaches the
        daemon a few milliseconds after its read; a player reading on asks past
        the head one read-ahead window later, long before it plays what it has.
        A reader waiting for bytes the fill has not made readable (a file
        checked whole before any of it is served) lets the fill go on at once.
        """
        while state.handles > 0:
            if state.read_to > head or state.wanted > state.readable:
                return True
            state.parked = True
            try:
                await state.changed.wait()
            finally:
                state.parked = False
        return False

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
            fetch.result = await self.fetcher.fetch(state, fetch.offset, fetch.size)
        except (MusicFSError, OSError) as exc:
            fetch.error = exc
        finally:
            fetch.done.set()

    async def _take(self, state: FileState, fetches: list[_Fetch], chunker: StreamChunker, stores: trio.Nursery,
                    slots: trio.Semaphore) -> int:
        """Fetched blocks, in file order: checked, cut, readable, queued for writing; the new position.
        A block that failed is raised once the blocks before it are taken."""
        blocks: list[bytes] = []
        failure: BaseException | None = None
        for fetch in fetches:
            try:
                blocks.append(await self._accept(state, fetch))
            except (MusicFSError, OSError) as exc:
                failure = exc
                break
        position = fetches[0].offset + sum(fetch.size for fetch in fetches[:len(blocks)])
        if blocks:
            hasher = state.hasher if state.hasher is not None and state.hashed == state.cut else None
            items = await trio.to_thread.run_sync(self._cut, chunker, blocks, position >= state.size, hasher,
                                                  limiter=self.limiter)
            if hasher is not None:
                state.hashed += sum(ref.size for ref, _ in items)
            for ref, piece in items:
                self._pending[ref.address] = piece
                state.add(ref)
                self.bus.publish(ChunkFetched(state.origin_id, state.real_path, ref.offset, ref.size))
            if not state.verify_first and chunker.position == state.covered:
                state.tail = chunker.buffered  # the rest of the blocks: readable before it is cut
            state.notify()
            if items:
                self.cache.hold(ref.address for ref, _ in items)
                await self.budget.take(sum(ref.size for ref, _ in items))
                await slots.acquire()
                stores.start_soon(self._store, state, items, slots)
        if failure is not None:
            raise failure
        return position

    async def _accept(self, state: FileState, fetch: _Fetch) -> bytes:
        """A fetched block's bytes, once its replica is known to agree with the one the file was cut from."""
        if fetch.error is not None:
            raise fetch.error
        data, served_by = fetch.result
        if state.chunks and served_by not in state.agreeing | {state.filled_from}:
            try:
                await self.fetcher.check_replica(state, served_by, state.filled_from)
            except ReplicaDiffers:  # go on with the replica the file was cut from, if it answers
                state.suspects |= {served_by}
                data, served_by = await self.fetcher.fetch(state, fetch.offset, fetch.size)
                if served_by not in state.agreeing | {state.filled_from}:
                    raise
        state.agreeing.add(served_by)
        state.filled_from = served_by
        if len(data) < fetch.size:
            raise OriginUnavailable(f"file ended at {fetch.offset + len(data)} of {state.size} bytes;"
                                    " it changed since the scan")
        return data

    @staticmethod
    def _cut(chunker: StreamChunker, blocks: list[bytes], last: bool, hasher) -> list[tuple[ChunkRef, bytes]]:
        """Cut blocks into chunks (in a worker thread), feeding them to the file's running hash."""
        pieces = [piece for data in blocks for piece in chunker.feed(data)]
        if last:
            pieces += chunker.finish()
        if hasher is not None:
            for piece in pieces:
                hasher.update(piece.data)
        return [(ChunkRef(p.offset, len(p.data), digest(p.data)), p.data) for p in pieces]

    async def _store(self, state: FileState, items: list[tuple[ChunkRef, bytes]], slots: trio.Semaphore) -> None:
        """Write a block's chunks; a cache that cannot be written keeps none (logged by the cache)."""
        try:
            stored = await trio.to_thread.run_sync(self._write, items, limiter=self.store_limiter)
            if not stored:
                self.counters.store_errors += 1
            elif not state.verify_first and not state.save_due:
                state.save_due = True  # progress on disk: saved within SAVE_EVERY (not per block)
                self.nursery.start_soon(self._save_soon, state)
        finally:
            for ref, _ in items:
                self._pending.pop(ref.address, None)
            self.budget.give(sum(ref.size for ref, _ in items))
            slots.release()

    async def _save_soon(self, state: FileState) -> None:
        await trio.sleep_until(state.saved_at + SAVE_EVERY)
        state.save_due = False
        state.saved_at = trio.current_time()
        if not state.complete and not state.verify_first:
            await self._save_progress(state)

    def _write(self, items: list[tuple[ChunkRef, bytes]]) -> int:
        return self.cache.store_chunks([(ref.address, data) for ref, data in items])
