"""Reading tracks through the chunk cache: hits from disk, misses filled from the origin.

For each file version being read there is one
:class:`~musicfs.store.filestate.FileState`, shared by all its handles. The
first read that misses starts one fill (:mod:`musicfs.store.fill`), which
streams the file from the origin in order; readers whose range the fill will
reach soon wait only for the bytes they need, and a read far ahead of it (a
seek) is served by a ranged fetch of its own instead of waiting for the
prefix. Concurrent readers of one file therefore cause one origin fetch per
chunk. A file closed before its fill finished is remembered (the last
``PARTIAL_KEPT`` of them), and the next read resumes the fill from where it
stopped.

A finished fill saves the file's manifest; later opens find it and read
without touching the origin, so cached files keep playing offline (NFR-7.1).
A fill that stopped early (or was cut off by a crash) leaves a partial
manifest, and the next read resumes from its end. A chunk missing or corrupt
on disk is fetched again, from whichever replica returns exactly the bytes
its address names (NFR-8.1, NFR-8.4); wrong bytes are never served from a
known map. Reads that need an unreachable origin fail with EIO after a
bounded time (``read_timeout``), never hang.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..digest import digest
from ..errors import OriginUnavailable
from ..events import EventBus, FileAccessed
from ..memtrim import release_free_memory
from .cache import ContentCache
from .cas import Loaded, Place
from .chunkdb import ChunkRef, Manifest
from .chunker import AVG_SIZE
from .fetch import ReplicaFetcher
from .filestate import FileState, ReaderCounters
from .fill import FIRST_BLOCK, Filler
from .headers import Header, HeaderTier
from .verify import ChecksumMismatchError, Verifier

log = logging.getLogger(__name__)

AHEAD = 4 * 1024 * 1024  # a read within this distance of the fill waits for it; further is a seek
RECENT_BYTES = 32 * 1024 * 1024  # verified chunks kept in memory: read ahead, or for adjacent reads

# chunks loaded ahead of a sequential reader (16 MiB, half of RECENT_BYTES), in batches of a
# quarter of that: several batches are in flight at once, so the next is on its way while one is
# being read (one batch at a time left a reader waiting on every other one: ~650 MB/s from disk
# instead of ~800). 16 MiB rather than 8: ~5 % faster from disk and ~8 % from the OS's memory here

READ_AHEAD = 256
# ... and never fewer than this many, however many files are open. More than fit would thrash:
# a hundred streams each loading 16 chunks ahead into 16 MiB pushed out one another's chunks
# before they were read, and every read loaded (and hashed) them again
MIN_WINDOW = 4
MIN_BATCH = 2  # chunks loaded together ahead of a reader
STREAMING_FOR = 1.0  # seconds after its last read that a reader going front to back still counts as one
PLACES_AHEAD = 512  # chunks after a load whose places are looked up with it (32 MiB of a file)
# the most loaded on the event loop at once, between checkpoints (a read-ahead batch, a quarter of
# the window, ~4 MiB, is two such runs): each run is one buffer, and a request inside it is one
# slice of it; 512 KiB runs made most requests a join of two
INLINE_BYTES = 3 * 1024 * 1024
# After a fill gave up, reads of the same file fail at once for this long instead of starting
# another fill: one read() of an application is several FUSE requests, and each waiting out
# its own read_timeout would multiply the time before the application sees EIO.
FAIL_FAST = 1.0
PARTIAL_KEPT = 256  # files read in part whose chunks so far are remembered after the last close
IDLE_TRIM_AFTER = 5.0  # seconds with no file open before freed memory is given back to the system


@dataclass
class CachedHandle:
    track_id: int
    state: FileState
    direct: Any = None  # the pass-through handle when the origin's policy is cache = "never"
    passthrough: bool = False  # cache = "never" on a non-local origin: ranged reads, nothing kept
    # False when the file's bytes failed a checksum before: the kernel must drop what it cached
    # of it (the wrong bytes a first reader was served) instead of serving them again
    keep_cache: bool = True
    # where this handle's last read ended: a read starting there goes on front to back and is
    # read ahead of. Per handle, not per file: two clients streaming one track at different
    # places would otherwise break each other's run, and neither would be read ahead of
    last_end: int = -1
    ahead_to: int = 0  # read-ahead has loaded or is loading this handle's chunks up to here


class CachedReader:
    def __init__(self, origins: dict, cache: ContentCache, bus: EventBus, nursery: trio.Nursery, *,
                 direct: Any = None, policies: dict[str, str] | None = None, read_timeout: float = 5.0,
                 threads: int = 16, origin_threads: int = 128, health: Any = None,
                 replicas: Callable[[str, str, int], list[str]] | None = None,
                 headers: HeaderTier | None = None):
        """``direct`` serves local origins whose policy is cache = "never" (a pass-through
        reader); ``replicas(origin_id, path, size)`` names the origins holding the same file;
        ``health`` (a HealthMonitor) orders them; ``headers`` answers reads of what a tag scan
        read of a file not cached whole (the header tier)."""
        self.origins = origins
        self.headers = headers
        self.direct = direct
        self.replicas = replicas
        self.cache = cache
        self.bus = bus
        self.nursery = nursery
        self.policies = policies or {}
        self.read_timeout = read_timeout
        self.limiter = trio.CapacityLimiter(threads)
        self.counters = ReaderCounters()
        # origin calls mostly wait on a network: many may be in flight at once (ASYNC-2)
        self.fetcher = ReplicaFetcher(origins, bus, self.counters, read_timeout=read_timeout,
                                      limiter=trio.CapacityLimiter(origin_threads), health=health)
        self._states: dict[tuple[str, str, str], FileState] = {}
        # readers going front to back (a handle, or a file the daemon reads itself) -> when they
        # last read, oldest first: each reads ahead on its own (see _window)
        self._streaming: OrderedDict[int, float] = OrderedDict()
        self._partial: OrderedDict[tuple[str, str, str], FileState] = OrderedDict()  # closed, in part cached
        self._recent: OrderedDict[str, bytes | memoryview] = OrderedDict()
        # of those loaded in a run with the chunks beside them: the run's buffer and where each
        # starts in it, so that a request inside one run is answered with one slice (no join)
        self._spans: dict[str, tuple[memoryview, int]] = {}
        self._pending: dict[str, bytes] = {}  # cut by a fill, not yet written to disk
        self._loading: dict[str, trio.Event] = {}  # chunk loads under way (single-flight)
        self._bad: set[str] = set()  # found missing or corrupt on disk; fetched again when needed
        self._refetching: dict[str, trio.Event] = {}  # chunks being fetched again (single-flight)
        self._refetch_failed: dict[str, tuple[float, BaseException]] = {}  # when and why, recently
        self._recent_bytes = 0
        self._went_idle = trio.Event()  # set when the last open file is forgotten
        self.memory_trims = 0  # times freed memory was given back after a busy spell
        self.verifier = Verifier(cache, bus, self.counters, limiter=self.limiter, load_chunk=self._chunk_in_order,
                                 headers=headers)
        self.filler = Filler(self.fetcher, self.verifier, cache, bus, self.counters, nursery, limiter=self.limiter,
                             pending=self._pending, on_idle=self._forget)

    # -- handles ----------------------------------------------------------
    async def open(self, track: dict) -> CachedHandle:
        """A handle on ``track``; a FileAccessed event says so (one per open, not per read).

        A pass-through open is announced by the pass-through reader itself.
        """
        never = self.policies.get(track["origin_id"], "always") == "never"
        if never and self.direct is not None and hasattr(self.origins.get(track["origin_id"]), "local_path"):
            state = FileState(track["origin_id"], track["real_path"], track["size"], "")
            return CachedHandle(track["id"], state, direct=await self.direct.open(track))
        handle = await self._open_cached(track, never)
        self.bus.publish(FileAccessed(track["origin_id"], track["real_path"], track["size"]))
        return handle

    async def _open_cached(self, track: dict, never: bool) -> CachedHandle:
        version = track.get("version") or f"{track['size']}:{track['mtime_ns']}"
        key = (track["origin_id"], track["real_path"], version)
        state = self._states.get(key) or self._resume(key)
        if state is None:
            state = FileState(track["origin_id"], track["real_path"], track["size"], version)
            state.replicas = (self.replicas(state.origin_id, state.real_path, state.size)
                              if self.replicas else [state.origin_id])
            origin = self.origins.get(state.origin_id)
            state.expected = origin.whole_checksum(version) if origin is not None else None
            if not never:
                manifest, state.header = await trio.to_thread.run_sync(self._maps, state, limiter=self.limiter)
                if manifest is not None:
                    for ref in manifest.chunks:
                        state.add(ref)
                    state.complete = manifest.complete
                    state.saved = len(manifest.chunks)
                if state.header is not None and not state.complete:
                    self._seed(state, state.header)
                self.cache.hold(r.address for r in state.chunks)
            state = self._states.setdefault(key, state)
        state.handles += 1
        return CachedHandle(track["id"], state, passthrough=never, keep_cache=not self.verifier.suspected(state))

    async def prefetch(self, track: dict, *, whole: bool, timeout: float = 60.0,
                       progress: Callable[[int], None] | None = None) -> int:
        """Fill a track as a reader would, without one: its first block (``whole`` False, what a
        player's first reads take) or all of it. No FileAccessed: nobody opened it. Returns the
        bytes the fill cut meanwhile (0 for a file cached already, or never cached); ``progress``
        hears the bytes of the file cut so far as they grow. An origin that fails raises."""
        if self.policies.get(track["origin_id"], "always") == "never":
            return 0
        handle = await self._open_cached(track, never=False)
        state = handle.state
        before = state.cut
        if progress is not None:
            progress(state.cut)
        try:
            if whole:
                self._reads_on(state, state.size)  # a reader going on: the fill does not wait at the head
            with trio.move_on_after(timeout):
                while not state.complete:
                    if state.error is not None and not state.filling:
                        break
                    if not whole and (state.parked or state.readable >= min(state.size, FIRST_BLOCK)):
                        break
                    self.filler.start(state)
                    await state.changed.wait()
                    if progress is not None:
                        progress(state.cut)
            if state.error is not None and not state.complete and not state.filling:
                raise OriginUnavailable(f"{state.origin_id}:{state.real_path}: {state.error}")
            return state.cut - before
        finally:
            self.release(handle)

    def busy(self) -> bool:
        """A reader waits for bytes a fill has not made readable yet (prefetch gives way)."""
        return any(state.wanted > state.readable and not state.complete for state in self._states.values())

    def _seed(self, state: FileState, header: Header) -> None:
        """Start the map of a file not cached whole with the head its header holds (FS-11).

        The header's run from byte 0 was cut as a fill cuts the file, and its
        pieces are chunks of the cache: they are the first chunks of the map,
        as a partial map's would be, so a track played after a scan fetches
        from where they end, not from byte 0 again. Only when they extend the
        map known so far; each is checked against its hash when read, like
        every chunk.
        """
        head = header.head_chunks()
        known = len(state.chunks)
        if len(head) <= known or head[:known] != state.chunks:
            return
        for ref in head[known:]:
            state.add(ref)
        if not known:  # the scan read them from the file's own origin, this version: no replica
            state.filled_from = state.origin_id  # check needed before that origin fills on
        state.seeded = head[-1].end
        self.counters.seeded_bytes += head[-1].end - (head[known - 1].end if known else 0)

    def _maps(self, state: FileState) -> tuple[Manifest | None, Header | None]:
        """The file version's chunk map, and its header unless the map is complete (one thread hop)."""
        manifest = self.cache.manifest(state.origin_id, state.real_path)
        if manifest is not None and (manifest.version, manifest.size) != (state.version, state.size):
            manifest = None
        if self.headers is None or (manifest is not None and manifest.complete):
            return manifest, None
        return manifest, self.headers.lookup(state.origin_id, state.real_path, state.size, state.version)

    def release(self, handle: CachedHandle) -> None:
        if handle.direct is not None:
            self.direct.release(handle.direct)
            return
        state = handle.state
        state.handles -= 1
        self._streaming.pop(id(handle), None)
        if state.handles > 0:
            return
        if state.parked:  # its fill waits for this reader to read on: it stops after its first block
            state.notify()
        elif not state.filling:
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
        state.places.clear()  # looked up for this reading (up to 512 chunks ahead); stale by the next
        if state.chunks and not state.complete:  # its chunks may be evicted meanwhile: then refetched
            self._partial[key] = state
            self._partial.move_to_end(key)
            if len(self._partial) > PARTIAL_KEPT:
                self._partial.popitem(last=False)
        if not self._states:  # nothing is read: chunks kept for readers would only hold memory
            self._recent.clear()
            self._spans.clear()
            self._recent_bytes = 0
            self._went_idle.set()
        if self.cache.size > self.cache.limit:  # chunks spared while in use may go now
            self.nursery.start_soon(self._evict)

    async def _evict(self) -> None:
        await trio.to_thread.run_sync(self.cache.evict, limiter=self.limiter)

    # -- reads ------------------------------------------------------------
    async def read(self, handle: CachedHandle, offset: int, size: int) -> bytes | memoryview:
        """Bytes [offset, offset + size) of the file, as bytes or a read-only view of a chunk."""
        state = handle.state
        end = min(offset + size, state.size)
        if offset >= end:
            return b""
        if handle.direct is not None:
            return await self.direct.read(handle.direct, offset, size)
        if handle.passthrough:
            return await self._direct(state, offset, end)
        if state.complete or end <= state.readable:
            self._reads_on(state, end)
            data = await self._from_chunks(state, offset, end, handle)
            if data is not None:
                self.cache.counters.hits += 1
                return data
        if state.header is not None and not state.complete:
            data = await self._from_header(state, offset, end)
            if data is not None:
                self.headers.counters.hits += 1
                return data
        self.cache.counters.misses += 1
        if offset > state.covered + AHEAD and not state.complete and not state.verify_first:
            # a lone seek (the tags at the end of a file) is no sign of reading on; reading on
            # from there (a player after a seek) is: the fill then catches up with it
            if offset == state.seek_end:
                self._reads_on(state, end)
            state.seek_end = end
            self.filler.start(state)
            return await self._direct(state, offset, end)
        await self._wait_for(state, end)
        data = await self._from_chunks(state, offset, end, handle)
        if data is None:
            raise OriginUnavailable(f"{state.origin_id}:{state.real_path}: chunks vanished while reading")
        return data

    @staticmethod
    def _reads_on(state: FileState, end: int) -> None:
        """A read up to ``end`` through the cache: a fill waiting after its first block hears of it."""
        if end > state.read_to:
            state.read_to = end
            if state.parked:
                state.notify()

    async def _wait_for(self, state: FileState, end: int) -> None:
        self._reads_on(state, end)
        state.wanted = max(state.wanted, end)
        deadline = trio.current_time() + self.read_timeout
        with trio.move_on_at(deadline):
            while not (state.complete or state.readable >= end):
                if (state.error is not None and not state.filling
                        and trio.current_time() - state.failed_at < FAIL_FAST
                        and not self._another_replica_may_serve(state)):
                    raise OriginUnavailable(f"{state.origin_id}:{state.real_path}: {state.error}")
                self.filler.start(state)  # an older failure: ask the origin again
                await state.changed.wait()
            return
        raise OriginUnavailable(
            f"{state.origin_id}:{state.real_path}: origin did not deliver within {self.read_timeout:g} s")

    @staticmethod
    def _another_replica_may_serve(state: FileState) -> bool:
        """A fill that just failed its checksum check is no reason to fail a reader at once when
        the file has another replica: the next fill checks first and asks the others before the
        suspect origin. Once only (that fill verifies first): a second mismatch fails fast."""
        return (isinstance(state.error, ChecksumMismatchError) and len(state.replicas) > 1
                and not state.verify_first)

    def _in_memory(self, address: str) -> bytes | memoryview | None:
        data = self._pending.get(address)
        return data if data is not None else self._recent.get(address)

    async def _from_chunks(self, state: FileState, start: int, end: int, handle: CachedHandle | None = None
                           ) -> bytes | memoryview | None:
        """Bytes [start, end) from the file's chunks, the last of them from the fill's tail if it
        reaches there; None if some are neither.

        The answer is assembled with one copy at most: the pieces are views of the chunks (a
        range inside one chunk is a view, no copy at all), joined once. A 512 KiB request spans
        some nine chunks; joining them and then slicing the result copied it twice. Chunks
        loaded together side by side are views of one buffer, and a request that lies inside
        one such run is one slice of it, no copy at all (:meth:`_one_slice`). ``handle``:
        the open file the read came through (its own run front to back); none for the daemon's
        own reads, which keep theirs on the file.
        """
        run: CachedHandle | FileState = handle if handle is not None else state
        tail_at, tail = state.covered, state.tail  # taken now: the next block replaces them
        if end > tail_at + len(tail) and not state.complete:
            return None
        upto = min(end, tail_at) if tail else end
        pieces: list[memoryview] = []
        used: list[ChunkRef] = []
        if start < upto:
            refs = state.refs_for(start, upto)
            if not refs or refs[0].offset > start or refs[-1].end < upto:
                return None
            # read ahead only for a reader going front to back; a random reader gets what it asks
            sequential = start == run.last_end or start == 0
            run.last_end = end
            if sequential:  # what follows starts loading now, beside what this request waits for
                self._streaming[id(run)] = trio.current_time()
                self._streaming.move_to_end(id(run))
                self._read_ahead(state, run, refs[-1].end)
            for i, ref in enumerate(refs):
                data = self._in_memory(ref.address)
                if data is None:
                    data = await self._chunk(state, ref, refs[i + 1:])
                lo, hi = max(start, ref.offset) - ref.offset, min(upto, ref.end) - ref.offset
                pieces.append(memoryview(data)[lo:hi])
                used.append(ref)
                if sequential and ref.end <= end and ref.address in self._recent:
                    # read to its end by a reader going on: the first to go when memory is short,
                    # before chunks loaded ahead that some reader has yet to reach
                    self._recent.move_to_end(ref.address, last=False)
        else:
            run.last_end = end
        if upto < end:
            pieces.append(memoryview(tail)[max(start, tail_at) - tail_at:end - tail_at])
        elif len(pieces) > 1:
            whole = self._one_slice(used, start, end)
            if whole is not None:
                return whole
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _one_slice(self, refs: list[ChunkRef], start: int, end: int) -> memoryview | None:
        """Bytes [start, end) of the file, which ``refs`` cover, as one slice of a run's buffer if
        they were loaded side by side in one run (:class:`~.cas.Loaded`); None if not.

        The chunks' spans say where each starts in which buffer; consecutive chunks of the
        file are consecutive in the buffer only if each starts where the one before ends
        there (the same chunk may appear twice in a file, or be kept from another run)."""
        first = self._spans.get(refs[0].address)
        if first is None:
            return None
        buffer, at = first
        for before, ref in zip(refs, refs[1:]):
            span = self._spans.get(ref.address)
            if span is None or span[0] is not buffer or span[1] != at + before.size:
                return None
            at = span[1]
        origin = first[1] - refs[0].offset  # where the file's offset 0 would be in the buffer
        return buffer[origin + start:origin + end]

    async def _from_header(self, state: FileState, start: int, end: int) -> bytes | memoryview | None:
        """Bytes [start, end) from the file's header, if it holds them all; None if not.

        A piece missing or damaged on disk (found so by the chunk check) costs
        the header: it is dropped, and this read and the next go to the origin.
        """
        header = state.header
        pieces = header.covering(start, end) if header is not None else None
        if pieces is None:
            return None
        for piece in pieces:
            if self._in_memory(piece.address) is None:
                loading = self._loading.get(piece.address)
                if loading is not None:
                    await loading.wait()
                elif piece.address not in self._bad:
                    await self._load_batch([p for p in pieces if self._wanted(p)])
        views = []
        for piece in pieces:
            data = self._in_memory(piece.address)
            if data is None:
                if state.header is header:
                    state.header = None
                    await trio.to_thread.run_sync(self.headers.drop, state.origin_id, state.real_path,
                                                  limiter=self.limiter)
                return None
            views.append(memoryview(data)[max(start, piece.offset) - piece.offset:
                                          min(end, piece.end) - piece.offset])
        return views[0] if len(views) == 1 else b"".join(views)

    def _wanted(self, ref: ChunkRef) -> bool:
        """True if nobody holds or is fetching this chunk yet."""
        return (self._in_memory(ref.address) is None and ref.address not in self._loading
                and ref.address not in self._bad)

    async def _chunk(self, state: FileState, ref: ChunkRef, rest: list[ChunkRef]) -> bytes:
        """One chunk: from memory, from a load already under way, or loaded now with ``rest`` (the
        chunks after it that the same request needs). What lies beyond the request is the
        read-ahead's, loaded beside this: a first read waits for its own chunks only.

        Loads are single-flight: a reader that needs a chunk another is loading waits for it.
        """
        loading = self._loading.get(ref.address)
        if loading is not None:
            await loading.wait()
        elif ref.address not in self._bad:
            await self._load_batch([ref] + [r for r in rest if self._wanted(r)], state)
        data = self._in_memory(ref.address)
        if data is None:  # missing or corrupt on disk (now discarded): fetch it again
            data = await self._refetch(state, ref)
            self._remember(ref.address, data)
        return data

    async def _chunk_in_order(self, state: FileState, ref: ChunkRef) -> bytes:
        """A chunk of a file the daemon reads front to back itself (the rehash of a resumed fill):
        loaded with the chunks after it, as a sequential reader's would be."""
        return await self._chunk(state, ref, state.refs_after(ref.end, self._window() // 4))

    async def _load_batch(self, batch: list[ChunkRef], state: FileState | None = None) -> None:
        """Load ``batch`` (chunks of ``state``'s file, or header pieces when None) into memory.

        What the OS holds in memory of chunks whose places are known is loaded here on the
        event loop (:meth:`_load_in_memory`). The rest goes to a worker thread, which also
        looks up where the chunks after it are kept, so that the next loads of this file need
        no lookup and no thread.
        """
        mine = {ref.address: trio.Event() for ref in batch}
        self._loading.update(mine)
        try:
            rest = await self._load_in_memory(batch, state) if state is not None else batch
            if rest:
                known, ahead = self._places_for(state, rest)
                loaded, places = await trio.to_thread.run_sync(self._load, rest, known, ahead,
                                                               limiter=self.limiter)
                if state is not None:
                    state.places.update(places)
                for ref, chunk in zip(rest, loaded):
                    if chunk is None:
                        self._bad.add(ref.address)
                    else:
                        self._remember(ref.address, chunk.data, (chunk.run, chunk.at))
        finally:
            for address, event in mine.items():
                if self._loading.get(address) is event:  # not a later load's of the same chunk
                    del self._loading[address]
                event.set()

    def _places_for(self, state: FileState | None, refs: list[ChunkRef]
                    ) -> tuple[dict[str, tuple[int, Place]], list[ChunkRef]]:
        """For a load of ``refs`` in a worker thread: the places of them an earlier load looked up
        (taken: each is used once, as it may go stale), and the chunks after them whose places
        to look up with it, PLACES_AHEAD at a time once fewer than half of those are known.
        Later loads of the file then need no lookup, and, their bytes in the OS's memory, no
        worker thread either (:meth:`_load_in_memory`)."""
        if state is None:
            return {}, []
        known = {}
        for ref in refs:
            place = state.places.pop(ref.address, None)
            if place is not None:
                known[ref.address] = place
        halfway = [r for r in state.refs_after(refs[-1].end, PLACES_AHEAD // 2) if self._wanted(r)]
        if not halfway or halfway[-1].address in state.places:
            return known, []
        return known, [r for r in state.refs_after(refs[-1].end, PLACES_AHEAD)
                       if r.address not in state.places and self._wanted(r)]

    async def _load_in_memory(self, batch: list[ChunkRef], state: FileState) -> list[ChunkRef]:
        """Load those of ``batch`` whose place is known and whose bytes the OS has in memory
        (never waiting for a disk), on the event loop, INLINE_BYTES at a time (a checkpoint
        before each: requests go on meanwhile); the rest, to be loaded in a worker thread.

        A worker thread costs more than such a load: it has to take the GIL back from a busy
        loop at every step, and a sequential reader's loads in threads took ~4x their CPU time
        in waiting, which the reader then waited for. Each chunk loaded here is announced at
        once to whoever waits for it. The checkpoint comes before the first load too: a reader
        whose chunks are all in memory would otherwise never let the read-ahead it started,
        nor the place lookups ahead of it, run, and their loads would go to threads."""
        rest: list[ChunkRef] = []
        start = 0
        while start < len(batch):
            end, size = start, 0
            while end < len(batch) and (end == start or size + batch[end].size <= INLINE_BYTES):
                size += batch[end].size
                end += 1
            await trio.lowlevel.checkpoint()
            piece = batch[start:end]
            start = end
            known = [state.places.pop(ref.address, None) for ref in piece]
            refs = [ref for ref, place in zip(piece, known) if place is not None]
            rest += [ref for ref, place in zip(piece, known) if place is None]
            if not refs:
                continue
            loaded = self.cache.load_many_if_in_memory(refs, [place for place in known if place is not None])
            for ref, chunk in zip(refs, loaded):
                if chunk is None:
                    rest.append(ref)
                    continue
                self._remember(ref.address, chunk.data, (chunk.run, chunk.at))
                waiting = self._loading.pop(ref.address, None)
                if waiting is not None:
                    waiting.set()
        return rest

    def _read_ahead(self, state: FileState, run: CachedHandle | FileState, offset: int) -> None:
        """Start loading the chunks after a read before the reader asks for them: once a quarter
        of the window ahead is neither loaded nor loading, that quarter is loaded.

        Called for every request of a reader going on, so the common case, where what the
        last call started still covers most of the window, is two bisections: the window is
        looked at chunk by chunk only once the reader has come within three quarters of where
        ``run``'s read-ahead reached (or has jumped outside it)."""
        window = self._window()
        quarter = max(MIN_BATCH, window // 4)
        if run.ahead_to > offset:
            ahead = bisect.bisect_left(state.offsets, run.ahead_to) - bisect.bisect_left(state.offsets, offset)
            if window - quarter < ahead <= window:
                return
        upcoming = [r for r in state.refs_after(offset, window) if self._wanted(r)]
        if len(upcoming) >= quarter or (upcoming and upcoming[0].offset == offset):
            batches = max(1, len(upcoming) // quarter)  # a whole window at the start: in quarters
            for i in range(batches):
                self.nursery.start_soon(self._prefetch, state, upcoming[i * len(upcoming) // batches:
                                                                        (i + 1) * len(upcoming) // batches])
            run.ahead_to = upcoming[-1].end
            self._look_up_places_ahead(state, offset, window, quarter)
        elif not upcoming:  # the whole window is loaded or loading already (another reader's)
            window_refs = state.refs_after(offset, window)
            run.ahead_to = window_refs[-1].end if window_refs else offset

    def _look_up_places_ahead(self, state: FileState, offset: int, window: int, quarter: int) -> None:
        """Look up, in a worker thread, where the cache keeps the PLACES_AHEAD chunks after the
        window, once fewer than three quarters of them are known: when their batches are due,
        its chunks in the OS's memory then load on the loop, and no reader waits for a thread
        that both looks up and loads.

        Started that early because a lookup in a thread beside a busy loop took 10-20 ms (the
        thread waits for the GIL at each step), in which a reader served from memory goes
        through 10-20 MiB: started with half of 16 MiB known, it came too late."""
        if state.looking_up:
            return
        beyond = state.refs_after(offset, window + PLACES_AHEAD)[window:]
        if not beyond or beyond[min(len(beyond), PLACES_AHEAD * 3 // 4) - 1].address in state.places:
            return  # three quarters of the places ahead or more are known still
        unknown = [r for r in beyond if r.address not in state.places and self._wanted(r)]
        if unknown:
            state.looking_up = True
            self.nursery.start_soon(self._look_up_places, state, unknown)

    async def _look_up_places(self, state: FileState, refs: list[ChunkRef]) -> None:
        try:
            places = await trio.to_thread.run_sync(self.cache.places, [ref.address for ref in refs],
                                                   limiter=self.limiter)
            state.places.update(places)
        finally:
            state.looking_up = False

    def _window(self) -> int:
        """Chunks kept loaded ahead of one sequential reader: READ_AHEAD, fewer while many read
        at once, so that all their windows fit in half of RECENT_BYTES and what one reader
        loaded ahead is not pushed out by the others' before it gets there.

        Counted over readers that went on front to back in the last STREAMING_FOR seconds, per
        handle (two clients of one track each read ahead): handles held open and idle (a
        media server keeps a thousand) take no memory ahead and must not shrink the window
        of the one reader actually playing.
        """
        expired = trio.current_time() - STREAMING_FOR
        while self._streaming:
            key, when = next(iter(self._streaming.items()))
            if when >= expired:
                break
            del self._streaming[key]
        fits = RECENT_BYTES // 2 // (AVG_SIZE * max(1, len(self._streaming)))
        return max(MIN_WINDOW, min(READ_AHEAD, fits))

    async def _prefetch(self, state: FileState, batch: list[ChunkRef]) -> None:
        batch = [r for r in batch if self._wanted(r)]
        if batch:
            await self._load_batch(batch, state)

    def _load(self, refs: list[ChunkRef], known: dict[str, tuple[int, Place]], ahead: list[ChunkRef]
              ) -> tuple[list[Loaded | None], dict[str, tuple[int, Place]]]:
        """(the bytes of ``refs``, where the cache keeps those of ``ahead``): one lookup for both,
        of what ``known`` (places looked up by an earlier load) does not say."""
        unknown = [ref.address for ref in refs if ref.address not in known] + [ref.address for ref in ahead]
        places = {**known, **self.cache.places(unknown)} if unknown else known
        return self.cache.load_chunks(refs, places), {
            ref.address: places[ref.address] for ref in ahead if ref.address in places}

    def _remember(self, address: str, data: bytes | memoryview,
                  span: tuple[memoryview, int] | None = None) -> None:
        """Keep a verified chunk in memory (``span``: its run's buffer and where it starts there,
        if it is a view of one); the least recently used go once RECENT_BYTES are held.

        A run's buffer is freed with the last of its chunks: a sequential reader's chunks of a
        run are read, and go, together, so what is counted is close to what is held."""
        if address in self._recent:
            self._recent.move_to_end(address)
            return
        self._recent[address] = data
        if span is not None:
            self._spans[address] = span
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES and self._recent:
            old_address, old = self._recent.popitem(last=False)
            self._spans.pop(old_address, None)
            self._recent_bytes -= len(old)

    async def _refetch(self, state: FileState, ref: ChunkRef) -> bytes:
        """A chunk is missing or corrupt on disk: fetch its range again, accepting only its own bytes.

        A replica answering with other bytes (corrupt, or the file changed
        since it was mapped) is failed over like an unreachable one; when none
        has the bytes, the read fails with EIO, and the map is kept: it is
        what the file held, and a rescan replaces it if the file did change.
        """
        failed = self._refetch_failed.get(ref.address)
        if failed is not None and trio.current_time() - failed[0] < FAIL_FAST:
            raise OriginUnavailable(f"{state.origin_id}:{state.real_path}: {failed[1]}")
        running = self._refetching.get(ref.address)
        if running is not None:  # single-flight: the kernel asks for one range in several requests
            await running.wait()
            data = self._in_memory(ref.address)
            if data is not None:
                return data
            return await self._refetch(state, ref)
        self._refetching[ref.address] = trio.Event()
        self.counters.refetched_chunks += 1

        def accept(data: bytes) -> bool:
            return len(data) == ref.size and digest(data) == ref.address

        try:
            data, _ = await self.fetcher.fetch(state, ref.offset, ref.size, accept=accept)
        except OriginUnavailable as exc:
            self._refetch_failed[ref.address] = (trio.current_time(), exc)
            if len(self._refetch_failed) > PARTIAL_KEPT:
                self._refetch_failed.pop(next(iter(self._refetch_failed)))
            raise
        finally:
            self._refetching.pop(ref.address).set()
        self._refetch_failed.pop(ref.address, None)
        self._remember(ref.address, data)
        await trio.to_thread.run_sync(self.cache.store_chunk, ref.address, data, limiter=self.limiter)
        self._bad.discard(ref.address)
        return data

    async def _direct(self, state: FileState, start: int, end: int) -> bytes:
        self.counters.direct_reads += 1
        return await self._fetch(state, start, end - start)

    async def _fetch(self, state: FileState, offset: int, size: int) -> bytes:
        return (await self.fetcher.fetch(state, offset, size))[0]

    # -- lifecycle --------------------------------------------------------
    async def flush_periodically(self, every: float = 5.0) -> None:
        """Write gathered last-access times to the chunk index now and then."""
        while True:
            await trio.sleep(every)
            await trio.to_thread.run_sync(self.cache.flush, limiter=self.limiter)
            if self.headers is not None:
                await trio.to_thread.run_sync(self.headers.flush, limiter=self.limiter)

    async def give_back_memory_when_idle(self, after: float = IDLE_TRIM_AFTER) -> None:
        """Once no file has been open for ``after`` seconds, hand what the reads freed back to
        the system (:mod:`musicfs.memtrim`): once per busy spell. The wait keeps short pauses
        (a player between tracks, a scanner between files, a client that stops for a moment)
        from trimming memory the next reads would only take back, page fault by page fault."""
        while True:
            await self._went_idle.wait()
            self._went_idle = trio.Event()
            await trio.sleep(after)
            if self._states:  # busy again: the end of that spell trims
                continue
            await trio.to_thread.run_sync(release_free_memory, limiter=self.limiter)
            self.memory_trims += 1

    async def drain(self, timeout: float) -> None:
        """Let running fills finish (bounded), so what was read is kept for next time.

        A fill waiting after its first block for a reader to read on has nothing
        under way: it is not waited for.
        """
        with trio.move_on_after(timeout):
            while any(state.filling and not state.parked for state in self._states.values()):
                await trio.sleep(0.02)

    def close(self) -> None:
        self.cache.close()

    def statistics(self) -> dict:
        return {**self.counters.__dict__, "bytes_by_origin": dict(self.counters.bytes_by_origin),
                "open_files": len(self._states), "partial_files": len(self._partial),
                "memory_chunk_bytes": self._recent_bytes, "memory_trims": self.memory_trims,
                **self.filler.budget.statistics()}
