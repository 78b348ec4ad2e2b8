"""Prefetch in process: the next track's head at once, the whole of it once a track plays, learned
successors, and the budget (PH-3.1; the measured session on a real mount is chaos/test_prefetch.py)."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from fixtures.media import short_track
from musicfs.events import EventBus
from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Scanner
from musicfs.index.tags import read_tags
from musicfs.index.template import PathTemplate
from musicfs.origins.local import LocalOrigin
from musicfs.store.cache import ContentCache
from musicfs.store.fill import FIRST_BLOCK
from musicfs.store.reader import CachedReader
from musicfs.vfs.access import AccessTracker
from musicfs.vfs.prefetch import Prefetcher, PrefetchPolicy
from musicfs.vfs.resolver import Resolver

pytestmark = pytest.mark.req("PH-3.1")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """One album of four FLAC tracks of about 1.5 MB (several fill blocks each), scanned."""
    root = tmp_path_factory.mktemp("prefetch") / "music"
    for n in range(1, 5):
        short_track(root, f"A/Album/{n:02d}.flac", "flac", n, album="Album", cover=None, seconds=8.0)
    index_path = root.parent / "index.db"
    with LibraryIndex(index_path) as index:
        Scanner(index, LocalOrigin("local", root), PathTemplate(), read=read_tags).run()
    return root, index_path


class Clock:
    """A listener's clock: each open a minute after the last (a real clock would make the
    test's back-to-back opens a scan, which teaches nothing)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 60
        return self.now


def run(library, tmp_path, body, **policy):
    root, index_path = library
    bus = EventBus()
    cache = ContentCache(tmp_path / "cache", 10**10, bus.publish)
    access = AccessTracker(index_path, clock=Clock())
    index = LibraryIndex(index_path)

    async def main():
        async with trio.open_nursery() as nursery:
            reader = CachedReader({"local": LocalOrigin("local", root)}, cache, bus, nursery)
            prefetcher = Prefetcher(index.conn, reader, access, PrefetchPolicy(**policy), nursery)
            resolver = Resolver(index.conn)
            nodes = {row[1]: resolver.get(row[0]) for row in index.conn.execute(
                "SELECT n.id, t.track FROM nodes n JOIN tracks t ON t.id = n.track_id")}
            await body(prefetcher, nodes, cache, access)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        access.close()
        index.close()
        cache.close()


async def settle(prefetcher: Prefetcher, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        await trio.sleep(0.05)
        while prefetcher.statistics()["queued"]:
            await trio.sleep(0.02)
    await fills_ended(prefetcher.reader, timeout)


async def fills_ended(reader, timeout: float = 10.0) -> None:
    """Until no fill runs: a fill stopped after a head saves its map once its writes are done,
    a moment after the request that asked for the head has answered."""
    counters = reader.counters
    with trio.fail_after(timeout):
        while counters.fills_started > counters.fills_completed + counters.fills_stopped + counters.fills_failed:
            await trio.sleep(0.01)


def cached(cache: ContentCache, node) -> tuple[int, bool]:
    """(bytes mapped, complete) of a track's chunk map."""
    manifest = cache.manifest("local", f"A/Album/{node.name[:2]}.flac")
    return (manifest.covered, manifest.complete) if manifest else (0, False)


def test_the_next_tracks_head_at_once_and_all_of_it_once_a_track_plays(library, tmp_path):
    async def body(prefetcher, nodes, cache, access):
        prefetcher.opened(nodes[1])
        await settle(prefetcher)
        covered, complete = cached(cache, nodes[2])
        assert FIRST_BLOCK // 2 <= covered < nodes[2].size and not complete  # its head only
        assert cached(cache, nodes[3]) == (0, False)
        await trio.sleep(0.3)  # still open past whole_after: played, so the next is fetched whole
        await settle(prefetcher)
        assert cached(cache, nodes[2]) == (nodes[2].size, True)
        prefetcher.opened(nodes[2])  # the listener gets there: a hit
        prefetcher.closed(nodes[2].track_id)
        stats = prefetcher.statistics()
        assert stats["hits"] == 1 and stats["heads"] >= 1 and stats["wholes"] == 1 and stats["bytes"] > 0

    run(library, tmp_path, body, whole_after=0.2)


def test_a_skipped_track_does_not_fetch_the_next_whole(library, tmp_path):
    async def body(prefetcher, nodes, cache, access):
        prefetcher.opened(nodes[1])
        prefetcher.closed(nodes[1].track_id)  # skipped at once
        await trio.sleep(0.4)
        await settle(prefetcher)
        assert not cached(cache, nodes[2])[1]
        assert prefetcher.statistics()["wholes"] == 0 and prefetcher.statistics()["unused_bytes"] > 0

    run(library, tmp_path, body, whole_after=0.2)


@pytest.mark.req("NFR-2.4")
def test_many_opens_leave_no_task_waiting_each(library, tmp_path):
    """A media server opens every track and keeps them open: the wait for ``whole_after`` is one
    timer for all of them, not a task asleep per open (thousands of timers woke beside reads)."""
    async def body(prefetcher, nodes, cache, access):
        living = trio.lowlevel.current_statistics().tasks_living
        for _ in range(300):
            prefetcher.opened(nodes[1])
        await settle(prefetcher)
        waiting = trio.lowlevel.current_statistics().tasks_living - living
        assert prefetcher.statistics()["due"] == 1  # one track, opened 300 times
        assert waiting <= 3, f"{waiting} tasks left waiting after 300 opens"
        await trio.sleep(2.0)  # past whole_after, all still open: the next fetched whole once
        await settle(prefetcher)
        stats = prefetcher.statistics()
        assert stats["due"] == 0 and stats["wholes"] == 1
        assert trio.lowlevel.current_statistics().tasks_living <= living

    run(library, tmp_path, body, whole_after=1.5)


def test_an_index_that_cannot_be_read_costs_the_prefetch_not_the_mount(library, tmp_path):
    async def body(prefetcher, nodes, cache, access):
        prefetcher.conn = sqlite3.connect(":memory:")  # no tables: every query fails
        prefetcher.opened(nodes[1])
        await settle(prefetcher)
        assert prefetcher.statistics()["failures"] == 1 and prefetcher.statistics()["heads"] == 0

    run(library, tmp_path, body, whole_after=0.2)


def test_learned_successors_are_fetched_before_the_albums_order(library, tmp_path):
    async def body(prefetcher, nodes, cache, access):
        for _ in range(2):  # a playlist that goes from track 1 to track 4
            access.opened(nodes[1].track_id, "1")
            access.opened(nodes[4].track_id, "4")
        access.opened(nodes[3].track_id, "3")  # so that 3 -> 1 below is no transition either way
        await trio.to_thread.run_sync(access.flush)
        prefetcher.opened(nodes[1])
        await trio.sleep(0.3)
        await settle(prefetcher)
        assert cached(cache, nodes[4]) == (nodes[4].size, True)  # the learned one, whole
        assert 0 < cached(cache, nodes[2])[0] < nodes[2].size  # the album's next: its head

    run(library, tmp_path, body, whole_after=0.2)


def test_nothing_is_prefetched_when_off_or_past_the_budget(library, tmp_path):
    async def off(prefetcher, nodes, cache, access):
        prefetcher.opened(nodes[1])
        await trio.sleep(0.3)
        assert cached(cache, nodes[2]) == (0, False) and prefetcher.statistics()["bytes"] == 0

    run(library, tmp_path / "off", off, enabled=False, whole_after=0.1)

    async def tight(prefetcher, nodes, cache, access):
        prefetcher.opened(nodes[1])
        await trio.sleep(0.3)
        await settle(prefetcher)
        stats = prefetcher.statistics()
        assert stats["wholes"] == 0 and stats["over_budget"] >= 1  # a head fits, a whole track does not
        assert not cached(cache, nodes[2])[1]

    run(library, tmp_path / "tight", tight, whole_after=0.1, budget=FIRST_BLOCK * 2)


def test_a_request_fetches_what_it_names_with_progress_per_file(library, tmp_path):
    from musicfs.errors import NotFound

    async def body(prefetcher, nodes, cache, access):
        files = prefetcher.files_under(["A"])
        assert [path.rsplit("/", 1)[1][:2] for _, path in files] == ["01", "02", "03", "04"]
        assert prefetcher.files_under([files[1][1], "A/Album (2001) [FLAC]"]) == files  # no file twice
        with pytest.raises(NotFound):
            prefetcher.files_under(["A/Nothing"])
        documents = [d async for d in prefetcher.request(files[:2], "full")]
        summary = documents[-1]
        assert summary == {"done": True, "strategy": "full", "files": 2, "complete": 2, "failed": 0,
                           "fetched": nodes[1].size + nodes[2].size}
        last = {d["path"]: d for d in documents[:-1]}
        assert all(d["complete"] and d["cached"] == d["total"] and d["error"] is None for d in last.values())
        assert len(documents) > 3  # progress came between a file's first and last documents
        assert cached(cache, nodes[1]) == (nodes[1].size, True)
        heads = [d async for d in prefetcher.request(files[2:], "headers")]
        await fills_ended(prefetcher.reader)
        assert heads[-1]["complete"] == 2 and not cached(cache, nodes[3])[1] and cached(cache, nodes[3])[0] > 0
        nothing = [d async for d in prefetcher.request(files, "metadata")]
        assert nothing[-1]["fetched"] == 0 and nothing[-1]["complete"] == 4

    run(library, tmp_path, body, enabled=False)
