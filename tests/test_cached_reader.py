"""The cached reader in-process (no kernel): fills, single-flight, seeks, offline, corruption."""

from __future__ import annotations

import functools
import os
import random
import threading
import time

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs.errors import OriginUnavailable
from musicfs.events import EventBus
from musicfs.origins.local import LocalOrigin
from musicfs.store.cache import ContentCache
from musicfs.store.chunker import MAX_SIZE
from musicfs.store.fill import FETCH_WINDOW, FILL_BLOCK, FIRST_BLOCK
from musicfs.store.reader import READ_AHEAD, RECENT_BYTES, CachedReader
from tests.cachefiles import cut_short, flip_bit, stored_chunks

SIZE = 5 * 1024 * 1024 + 12345


class CountingOrigin(LocalOrigin):
    """A local origin that counts the bytes asked of it, per offset, and the calls in flight at once."""

    def __init__(self, *args, delay: float = 0.0):
        super().__init__(*args)
        self.requests: list[tuple[int, int]] = []
        self.delay = delay
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def read_range(self, path, offset, size):
        with self._lock:
            self.requests.append((offset, size))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            return super().read_range(path, offset, size)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def origin_dir(tmp_path):
    root = tmp_path / "origin"
    root.mkdir()
    data = random.Random(11).randbytes(SIZE)
    (root / "song.flac").write_bytes(data)
    (root / "other.flac").write_bytes(data[::-1])
    return root, data


def track(root, name="song.flac", track_id=1):
    st_ = os.stat(root / name)
    return {"id": track_id, "origin_id": "local", "real_path": name, "size": st_.st_size,
            "mtime_ns": st_.st_mtime_ns}


async def with_reader(cache_dir, origin, body, *, read_timeout=5.0, limit=10**10):
    bus = EventBus()
    cache = ContentCache(cache_dir, limit, bus.publish)
    try:
        async with trio.open_nursery() as nursery:
            reader = CachedReader({"local": origin}, cache, bus, nursery, read_timeout=read_timeout)
            result = await body(reader, bus)
            nursery.cancel_scope.cancel()
        return result
    finally:
        cache.close()  # only once every task using it has finished


async def fills_done(reader, count=1):
    with trio.fail_after(10):  # readers may finish before the last chunks are on disk
        while reader.counters.fills_completed < count:
            await trio.sleep(0.01)


async def read_all(reader, handle, size, step=128 * 1024):
    parts = []
    for offset in range(0, size, step):
        parts.append(await reader.read(handle, offset, step))
    return b"".join(parts)


@given(ranges=st.lists(st.tuples(st.integers(0, SIZE + 1000), st.integers(0, 400_000)), min_size=1,
                       max_size=25))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_read_equals_the_origin(origin_dir, tmp_path, ranges):
    root, data = origin_dir
    cache_dir = tmp_path / f"cache-{random.random()}"

    async def body(reader, bus):
        handle = await reader.open(track(root))
        for offset, size in ranges:
            assert await reader.read(handle, offset, size) == data[offset:offset + size]
        reader.release(handle)

    trio.run(with_reader, cache_dir, LocalOrigin("local", root), body)


@pytest.mark.req("NFR-7.1", "FR-18.1")
def test_fifty_concurrent_readers_share_one_fetch(origin_dir, tmp_path):
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.01)

    async def body(reader, bus):
        results = {}

        async def one(i):
            handle = await reader.open(track(root))
            results[i] = await read_all(reader, handle, SIZE)
            reader.release(handle)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert all(r == data for r in results.values())
        await fills_done(reader)
        fetched = sum(size for _, size in origin.requests)
        assert fetched == SIZE, "every byte fetched once"
        assert len({offset for offset, _ in origin.requests}) == len(origin.requests)
        assert bus.counts["FillCompleted"] == 1 and bus.counts["ChunkFetched"] > 50

    trio.run(with_reader, tmp_path / "cache", origin, body)


def test_a_first_read_waits_for_a_small_first_block_only(origin_dir, tmp_path):
    """The fill starts with FIRST_BLOCK and then asks FILL_BLOCK at a time; the first read
    (128 KiB, as the kernel sends) is answered from the first block alone."""
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.3)  # each origin call is slow

    async def body(reader, bus):
        handle = await reader.open(track(root))
        started = trio.current_time()
        for offset in (0, 128 * 1024):
            assert await reader.read(handle, offset, 128 * 1024) == data[offset:offset + 128 * 1024]
        assert trio.current_time() - started < 0.55, "the first reads waited for a second origin call"
        assert origin.requests[0] == (0, FIRST_BLOCK)
        assert await read_all(reader, handle, SIZE) == data  # reading on past the head: the fill goes on
        await fills_done(reader)
        sizes = [size for _, size in sorted(origin.requests)]
        assert sizes == [FIRST_BLOCK] + [FILL_BLOCK] * (len(sizes) - 2) + [SIZE - FIRST_BLOCK - FILL_BLOCK * (len(sizes) - 2)]
        reader.release(handle)

    trio.run(with_reader, tmp_path / "cache", origin, body)


@pytest.mark.req("FS-11")
def test_a_request_as_large_as_the_first_block_is_answered_from_it(origin_dir, tmp_path):
    """With the kernel's read-ahead raised, a first read becomes one request of the whole first
    block: its last 256 KiB are not cut into chunks yet (a chunk is final only once 256 KiB past
    its start are known), and are served from the bytes the fill holds, not after a second
    origin call. The file still ends up cached whole and exact."""
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.3)

    async def body(reader, bus):
        handle = await reader.open(track(root))
        started = trio.current_time()
        assert await reader.read(handle, 0, FIRST_BLOCK) == data[:FIRST_BLOCK]
        assert trio.current_time() - started < 0.55, "the request waited for a second origin call"
        state = handle.state
        assert state.covered < FIRST_BLOCK <= state.readable  # partly chunks, partly the uncut tail
        tail = FIRST_BLOCK - 100_000  # a read across the chunks' end and into the tail
        assert await reader.read(handle, tail, 100_000) == data[tail:FIRST_BLOCK]
        assert origin.requests == [(0, FIRST_BLOCK)]
        assert await read_all(reader, handle, SIZE) == data
        await fills_done(reader)
        assert state.complete and state.tail == b""  # nothing held once the fill is over
        reader.release(handle)
        handle = await reader.open(track(root))  # from the chunk cache alone
        before = len(origin.requests)
        assert await read_all(reader, handle, SIZE) == data and len(origin.requests) == before
        reader.release(handle)

    trio.run(with_reader, tmp_path / "cache", origin, body)


@pytest.mark.req("NFR-4.3")
def test_readers_outpacing_the_cache_disk_wait_for_it_instead_of_filling_memory(origin_dir, tmp_path, monkeypatch):
    """Chunk writes slower than the origin (a slow cache disk, cold readers side by side): the bytes
    cut and not yet written stay within the fills' shared bound, readers wait for the writes,
    every byte is exact and everything is written in the end."""
    root, data = origin_dir
    other = (root / "other.flac").read_bytes()
    limit = 3 * FILL_BLOCK // 2

    async def body(reader, bus):
        reader.filler.budget.limit = limit
        real_write = reader.cache.files.write_pack

        def slow_write(items):
            time.sleep(0.004 * len(items))  # ~4 ms a chunk
            return real_write(items)

        monkeypatch.setattr(reader.cache.files, "write_pack", slow_write)
        got = {}

        async def read(name, track_id):
            handle = await reader.open(track(root, name, track_id))
            got[name] = await read_all(reader, handle, SIZE)
            reader.release(handle)

        async with trio.open_nursery() as readers:
            readers.start_soon(read, "song.flac", 1)
            readers.start_soon(read, "other.flac", 2)
        await fills_done(reader, 2)
        stats = reader.statistics()
        assert got == {"song.flac": data, "other.flac": other}
        assert stats["pending_waits"] > 0, "the writes never held the readers back: nothing was tested"
        assert 0 < stats["pending_chunk_bytes_peak"] <= limit, stats
        assert stats["pending_chunk_bytes"] == 0
        assert reader.cache.statistics()["stored"] > 2 * SIZE // (256 * 1024)

    trio.run(with_reader, tmp_path / "cache", CountingOrigin("local", root), body)


class LoadWatch:
    """Wraps a cache's chunk loads: each batch takes ``delay`` (a disk that holds nothing in the
    OS's memory, so no load is served on the event loop), and what was loaded is kept."""

    def __init__(self, cache, delay: float):
        self.real, self.delay = cache.load_chunks, delay
        self.loads: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()
        cache.load_chunks = self
        cache.load_if_in_memory = lambda ref, size, place: None
        cache.load_many_if_in_memory = lambda refs, places: [None] * len(refs)

    def __call__(self, refs, places=None):
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.loads += [ref.address for ref in refs]
        try:
            time.sleep(self.delay)
            return self.real(refs, places)
        finally:
            with self._lock:
                self.in_flight -= 1


def fill_cache(cache_dir, root, names):
    async def fill(reader, bus):
        for track_id, name in enumerate(names, 1):
            handle = await reader.open(track(root, name, track_id))
            await read_all(reader, handle, os.path.getsize(root / name))
            reader.release(handle)
        await fills_done(reader, len(names))

    trio.run(with_reader, cache_dir, LocalOrigin("local", root), fill)


@pytest.mark.req("NFR-2.1", "MM-4")
def test_a_reader_of_cached_chunks_has_the_next_batch_on_its_way_while_it_reads(origin_dir, tmp_path):
    """Reading cached chunks front to back (a new daemon: nothing in memory), the loads ahead of
    the reader overlap, so a slow disk's wait is not paid once per batch; each chunk is loaded once."""
    root, data = origin_dir
    fill_cache(tmp_path / "cache", root, ["song.flac"])

    async def body(reader, bus):
        watch = LoadWatch(reader.cache, delay=0.02)
        handle = await reader.open(track(root))
        assert await read_all(reader, handle, SIZE, step=512 * 1024) == data
        reader.release(handle)
        assert watch.most_in_flight >= 2, "one load at a time: the reader waited for each batch"
        assert len(watch.loads) == len(set(watch.loads)), "a chunk was loaded twice"
        assert reader.statistics()["memory_chunk_bytes"] == 0, "chunks held after the last close"

    trio.run(with_reader, tmp_path / "cache", LocalOrigin("local", root), body)


@pytest.mark.req("NFR-2.1", "MM-4")
def test_a_cached_file_in_the_os_memory_is_read_on_the_loop_after_one_lookup_ahead(tmp_path):
    """Chunk files the OS holds in memory (a cache in use): once a worker has looked up where
    the chunks ahead are kept, the reader's loads are served on the event loop, a run of them
    per read, and worker threads only look up places further on. A worker taking the GIL back
    from a busy loop at every step made each 2 MiB load wait ~4x its own time."""
    root = tmp_path / "origin"
    root.mkdir()
    size = 64 * 1024 * 1024  # some 1,000 chunks: several windows of read-ahead
    data = random.Random(5).randbytes(size)
    (root / "long.flac").write_bytes(data)
    fill_cache(tmp_path / "cache", root, ["long.flac"])

    async def body(reader, bus):
        threaded: list[int] = []
        real = reader.cache.load_chunks

        def counted(refs, places=None):
            threaded.append(len(refs))
            return real(refs, places)

        reader.cache.load_chunks = counted
        handle = await reader.open(track(root, "long.flac"))
        assert await read_all(reader, handle, size, step=512 * 1024) == data
        chunks = len(handle.state.chunks)
        reader.release(handle)
        if sum(threaded) == chunks:
            pytest.skip("this kernel or filesystem refuses reads that must not wait (RWF_NOWAIT)")
        # the first window, whose places nobody knew yet, and at most half a window more
        assert sum(threaded) <= READ_AHEAD * 3 // 2, (
            f"{sum(threaded)} of {chunks} chunks were loaded in worker threads ({threaded})")

    trio.run(with_reader, tmp_path / "cache", LocalOrigin("local", root), body)


@pytest.mark.req("FS-5")
def test_a_request_inside_one_run_of_chunks_is_one_slice_of_it_and_repeated_chunks_read_right(tmp_path):
    """Chunks loaded side by side share one buffer, and a request inside such a run is answered
    with one slice of it (no join, no copy). A file that repeats itself holds the same chunks
    at several offsets, kept from whichever run loaded them first: every request, at any
    step, still gets exactly the file's bytes."""
    root = tmp_path / "origin"
    root.mkdir()
    block = random.Random(8).randbytes(3 * 1024 * 1024 + 777)
    data = block * 3 + block[:100_000]  # the second and third copies are mostly the same chunks
    (root / "loop.flac").write_bytes(data)
    fill_cache(tmp_path / "cache", root, ["loop.flac"])

    async def body(reader, bus):
        answers = {"slice": 0, "other": 0}
        real = reader._one_slice

        def counted(refs, start, end):
            whole = real(refs, start, end)
            answers["slice" if whole is not None else "other"] += 1
            return whole

        reader._one_slice = counted
        for step in (512 * 1024, 300_001, 1 << 20):
            handle = await reader.open(track(root, "loop.flac"))
            assert await read_all(reader, handle, len(data), step=step) == data, step
            reader.release(handle)
        # loads in worker threads and on the loop alike read runs into one buffer; requests that
        # straddle two runs (a 1 MiB one mostly does) are joined
        assert answers["slice"] >= (answers["slice"] + answers["other"]) // 4, answers

    trio.run(with_reader, tmp_path / "cache", LocalOrigin("local", root), body)


@pytest.mark.req("NFR-2.1", "NFR-4.3")
def test_many_cached_files_read_side_by_side_load_each_chunk_once_within_the_memory_bound(tmp_path):
    """Eight files read in turn, a request of each at a time: what one reader loaded ahead is not
    pushed out of memory by the others before it gets there (which would read it from disk twice),
    and the chunks held stay within the reader's memory bound."""
    root = tmp_path / "origin"
    root.mkdir()
    names = [f"take{i}.flac" for i in range(8)]
    wanted = {name: random.Random(i).randbytes(SIZE) for i, name in enumerate(names)}
    for name, data in wanted.items():
        (root / name).write_bytes(data)
    fill_cache(tmp_path / "cache", root, names)

    async def body(reader, bus):
        watch = LoadWatch(reader.cache, delay=0.002)
        handles = [await reader.open(track(root, name, i)) for i, name in enumerate(names, 1)]
        got = {name: [] for name in names}
        most = 0
        for offset in range(0, SIZE, 512 * 1024):
            for name, handle in zip(names, handles):
                got[name].append(await reader.read(handle, offset, 512 * 1024))
                most = max(most, reader.statistics()["memory_chunk_bytes"])
        for handle in handles:
            reader.release(handle)
        assert {name: b"".join(parts) for name, parts in got.items()} == wanted
        assert len(watch.loads) == len(set(watch.loads)), \
            f"{len(watch.loads) - len(set(watch.loads))} chunk loads were repeated"
        assert most <= RECENT_BYTES, most

    trio.run(with_reader, tmp_path / "cache", LocalOrigin("local", root), body)


async def fills_ended(reader):
    """Every fill has ended and, every handle being closed, wrapped up: its file is forgotten (kept
    among the partial files if it stopped early). A fill is counted before it wraps up."""
    with trio.fail_after(10):
        while reader.counters.fills_started > (reader.counters.fills_completed + reader.counters.fills_failed
                                               + reader.counters.fills_stopped) or reader.statistics()["open_files"]:
            await trio.sleep(0.01)


@pytest.mark.req("FS-11")
def test_a_fill_stops_after_the_last_close_and_the_next_read_resumes_it(origin_dir, tmp_path):
    """Reading a file's head fetches its head, not the file; reading on picks up where the fill stopped."""
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.05)

    async def body(reader, bus):
        handle = await reader.open(track(root))
        assert await reader.read(handle, 0, 4096) == data[:4096]  # a tag scanner reads the head...
        reader.release(handle)  # ...and closes
        await fills_ended(reader)
        assert reader.counters.fills_stopped == 1 and bus.counts["FillStopped"] == 1
        assert origin.requests == [(0, FIRST_BLOCK)]  # the first block alone
        assert reader.statistics()["partial_files"] == 1

        handle = await reader.open(track(root))  # a player starts the track
        assert await read_all(reader, handle, SIZE) == data
        await fills_done(reader)
        # resumed at the last chunk boundary: only the uncut tail of the first fill is fetched again
        assert origin.requests[1][0] > 0
        assert sum(size for _, size in origin.requests) < SIZE + MAX_SIZE
        reader.release(handle)
        assert reader.statistics()["partial_files"] == 0

        handle = await reader.open(track(root))  # complete now: the manifest serves it
        before = len(origin.requests)
        assert await read_all(reader, handle, SIZE) == data
        assert len(origin.requests) == before
        reader.release(handle)

    trio.run(with_reader, tmp_path / "cache", origin, body)


@pytest.mark.req("FS-11")
def test_a_head_read_costs_the_first_block_however_late_the_close_comes(origin_dir, tmp_path):
    """A scanner whose close reaches the daemon long after its read (a busy machine, a slow
    process) still costs the first block: the fill waits for a reader to read past the head
    instead of fetching on, and stops when the close comes. A lone seek to the end (tags kept
    there) is no reading on either; reading on from the seek is."""
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.02)

    async def body(reader, bus):
        handle = await reader.open(track(root))
        for offset, size in ((0, 16384), (16384, 32768), (49152, 65536), (114688, 131072)):
            assert await reader.read(handle, offset, size) == data[offset:offset + size]  # the kernel's ramp
        assert await reader.read(handle, SIZE - 128, 128) == data[-128:]  # an ID3v1 tag at the end
        await trio.sleep(20 * origin.delay)  # time for many blocks, had the fill gone on
        assert sorted(origin.requests) == [(0, FIRST_BLOCK), (SIZE - 128, 128)]
        assert reader.counters.direct_reads == 1
        assert reader.counters.fills_stopped == 0  # waiting, with the file open: not over yet
        reader.release(handle)
        await fills_ended(reader)
        assert reader.counters.fills_stopped == 1 and len(origin.requests) == 2

        handle = await reader.open(track(root))  # a player seeks far ahead and plays from there
        for offset in range(SIZE - 4 * 128 * 1024, SIZE, 128 * 1024):
            assert await reader.read(handle, offset, 128 * 1024) == data[offset:offset + 128 * 1024]
        assert reader.counters.direct_reads >= 1 + 2  # ahead of the fill: fetched on their own...
        await fills_done(reader)  # ...and the fill went on to catch up with it
        reader.release(handle)

    trio.run(with_reader, tmp_path / "cache", origin, body)


def test_a_reader_reading_on_past_the_head_at_its_own_pace_is_no_copy(origin_dir, tmp_path):
    """The fill waits at the head for a reader to go on; a player that does so later than the
    first block took to come may wait for the second block once, but is not taken for a copy
    outpacing the origin (no window of blocks in flight for it); one that goes on at once is."""
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.05)

    async def body(reader, bus):
        handle = await reader.open(track(root))
        assert await reader.read(handle, 0, 128 * 1024) == data[:128 * 1024]
        await trio.sleep(0.3)  # a player: its next read comes later than a block takes
        for offset in range(128 * 1024, 3 * FILL_BLOCK, 128 * 1024):
            assert await reader.read(handle, offset, 128 * 1024) == data[offset:offset + 128 * 1024]
            await trio.sleep(0.05)
        assert origin.most_in_flight == 1
        reader.release(handle)
        await fills_ended(reader)

    trio.run(with_reader, tmp_path / "cache", origin, body)


def test_a_reader_waiting_on_the_fill_gets_its_blocks_fetched_side_by_side(origin_dir, tmp_path):
    """A copy reads as fast as blocks come: several are asked for at once, so round trips overlap."""
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.2)  # a far origin: every call waits 200 ms
    blocks = 1 + -(-(SIZE - FIRST_BLOCK) // FILL_BLOCK)

    async def body(reader, bus):
        handle = await reader.open(track(root))
        started = trio.current_time()
        assert await read_all(reader, handle, SIZE) == data
        elapsed = trio.current_time() - started
        assert 2 <= origin.most_in_flight <= FETCH_WINDOW
        assert elapsed < 0.6 * blocks * origin.delay, f"{blocks} blocks one after another: {elapsed:.2f} s"
        assert sum(size for _, size in origin.requests) == SIZE  # each block once
        reader.release(handle)

    trio.run(with_reader, tmp_path / "cache", origin, body)


def test_a_player_reading_at_its_own_pace_keeps_one_block_in_flight(origin_dir, tmp_path):
    """A reader slower than the fill never waits after the first block: no block is asked ahead for it."""
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.02)

    async def body(reader, bus):
        handle = await reader.open(track(root))
        for offset in range(0, 2 * FILL_BLOCK, 128 * 1024):  # 2.5 MB/s: a fast player, a slow copy
            assert await reader.read(handle, offset, 128 * 1024) == data[offset:offset + 128 * 1024]
            await trio.sleep(0.05)
        assert origin.most_in_flight == 1
        reader.release(handle)

    trio.run(with_reader, tmp_path / "cache", origin, body)


def test_a_seek_far_ahead_does_not_wait_for_the_prefix(origin_dir, tmp_path):
    root, data = origin_dir
    origin = CountingOrigin("local", root, delay=0.3)  # each origin call is slow

    async def body(reader, bus):
        handle = await reader.open(track(root))
        started = trio.current_time()
        tail = await reader.read(handle, SIZE - 1000, 1000)
        assert tail == data[-1000:]
        assert trio.current_time() - started < 1.0  # one ranged fetch, not the 5 fills before it
        assert reader.counters.direct_reads == 1

    trio.run(with_reader, tmp_path / "cache", origin, body)


@pytest.mark.req("NFR-7.1")
def test_cached_file_reads_offline_and_uncached_fails_fast(origin_dir, tmp_path):
    root, data = origin_dir
    cache_dir = tmp_path / "cache"

    async def warm(reader, bus):
        handle = await reader.open(track(root))
        assert await read_all(reader, handle, SIZE) == data
        await fills_done(reader)
        reader.release(handle)

    trio.run(with_reader, cache_dir, LocalOrigin("local", root), warm)
    song, other = track(root), track(root, "other.flac", 2)
    root.rename(root.with_name("moved-away"))

    async def offline(reader, bus):
        handle = await reader.open(song)
        assert await read_all(reader, handle, SIZE, step=100_000) == data
        cold = await reader.open(other)
        started = trio.current_time()
        with pytest.raises(OriginUnavailable):
            await reader.read(cold, 0, 4096)
        assert trio.current_time() - started <= 2.5

    trio.run(functools.partial(with_reader, read_timeout=2.0), cache_dir, LocalOrigin("local", root), offline)


@pytest.mark.req("NFR-8.1", "NFR-8.4")
def test_corrupt_or_missing_chunks_are_fetched_again(origin_dir, tmp_path):
    root, data = origin_dir
    cache_dir = tmp_path / "cache"

    async def warm(reader, bus):
        handle = await reader.open(track(root))
        await read_all(reader, handle, SIZE)
        await fills_done(reader)
        reader.release(handle)

    trio.run(with_reader, cache_dir, LocalOrigin("local", root), warm)
    chunks = sorted(stored_chunks(cache_dir).values(), key=lambda c: (c.path, c.offset))
    assert len(chunks) > 20
    removed = chunks[-1].path  # the last pack, with every chunk in it
    in_removed = sum(c.path == removed for c in chunks)
    damaged = [c for c in chunks if c.path != removed][:6]
    for i, chunk in enumerate(damaged):
        (flip_bit if i % 2 else cut_short)(chunk)
    removed.unlink()

    async def verify(reader, bus):
        handle = await reader.open(track(root))
        assert await read_all(reader, handle, SIZE, step=65536) == data
        assert reader.cache.counters.corruptions == 6  # flipped or cut short
        assert reader.cache.counters.missing == in_removed  # removed: a miss, not damage
        assert reader.counters.refetched_chunks == 6 + in_removed
        assert bus.counts["ChunkCorrupt"] == 6

    trio.run(with_reader, cache_dir, LocalOrigin("local", root), verify)


class FailingAfter(CountingOrigin):
    """A local origin that stops answering after its first ``good`` requests (a NAS dropping out)."""

    def __init__(self, *args, good: int):
        super().__init__(*args)
        self.good = good

    def read_range(self, path, offset, size):
        if len(self.requests) >= self.good:
            raise OriginUnavailable("gone")
        return super().read_range(path, offset, size)


async def with_replicas(cache_dir, origins: dict, body, *, read_timeout=2.0):
    bus = EventBus()
    cache = ContentCache(cache_dir, 10**10, bus.publish)
    try:
        async with trio.open_nursery() as nursery:
            reader = CachedReader(origins, cache, bus, nursery, read_timeout=read_timeout,
                                  replicas=lambda origin_id, path, size: list(origins))
            result = await body(reader)
            nursery.cancel_scope.cancel()
        return result
    finally:
        cache.close()


@pytest.mark.parametrize("same", [True, False], ids=["same-bytes", "different-bytes"])
def test_a_fill_moves_to_another_replica_only_if_it_holds_the_same_bytes(origin_dir, tmp_path, same):
    """Failing over mid-file is checked against the chunks already cut: two versions never mix."""
    root, data = origin_dir
    backup = tmp_path / "backup"
    backup.mkdir()
    copy = bytearray(data)
    if not same:  # the same size, other bytes from 1 MiB on: a different version of the file
        copy[1 << 20:] = bytes(len(copy) - (1 << 20))
    (backup / "song.flac").write_bytes(bytes(copy))
    primary = FailingAfter("local", str(root), good=2)
    origins = {"local": primary, "backup": CountingOrigin("backup", str(backup))}

    async def body(reader):
        handle = await reader.open(track(root))
        try:
            return await read_all(reader, handle, SIZE)
        except OriginUnavailable as exc:
            return exc
        finally:
            reader.release(handle)

    result = trio.run(with_replicas, tmp_path / "cache", origins, body)
    if same:
        assert result == data
    else:
        assert isinstance(result, OriginUnavailable) and "differs" in str(result)


@pytest.mark.req("FS-11", "HDR-1")
def test_a_track_played_after_a_scan_fetches_from_where_its_header_ends(origin_dir, tmp_path):
    """The head a tag scan kept (cut as a fill cuts it) starts the file's map: reading the head
    fetches nothing, reading on fetches from the end of its last final chunk, and the file is
    whole and exact; the header's unfinished last piece is fetched again as part of a chunk."""
    from musicfs.store.headers import HeaderTier

    root, data = origin_dir
    origin = CountingOrigin("local", root)
    meta = track(root)
    version = f"{meta['size']}:{meta['mtime_ns']}"
    bus = EventBus()
    cache = ContentCache(tmp_path / "cache", 10**10, bus.publish)
    tier = HeaderTier(cache, 10**9)
    header = tier.keep("local", "song.flac", SIZE, version, [(0, data[:1 << 20]), (SIZE - 128, data[-128:])])
    head = header.head_chunks()
    assert head and head[-1].end < 1 << 20 and head[-1].end == header.pieces[len(head)].offset

    async def body():
        async with trio.open_nursery() as nursery:
            reader = CachedReader({"local": origin}, cache, bus, nursery, headers=tier)
            handle = await reader.open(meta)
            assert await reader.read(handle, 0, 65536) == data[:65536]
            assert await reader.read(handle, SIZE - 128, 128) == data[-128:]
            assert origin.requests == []  # the head from its chunks, the end from the header
            assert await read_all(reader, handle, SIZE) == data
            await fills_done(reader)
            assert min(offset for offset, _ in origin.requests) == head[-1].end
            assert reader.statistics()["seeded_bytes"] == head[-1].end
            reader.release(handle)
            nursery.cancel_scope.cancel()

    try:
        trio.run(body)
        saved = cache.manifest("local", "song.flac")
        assert saved.complete and list(saved.chunks[:len(head)]) == head
    finally:
        cache.close()
