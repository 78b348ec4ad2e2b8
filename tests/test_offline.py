"""The offline view in process: which tracks and albums ``/.offline`` shows, and when it is worked
out again (OFF-1; the real mount, with the origin gone, is conformance/test_offline.py).

Real SQLite files throughout: a library index built by the bulk loader (no audio needed: the view
reads tracks and nodes), and a content cache holding chunks and maps as a fill leaves them.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
import trio
import trio.testing

from fixtures.synthetic import synthetic_tracks
from musicfs.digest import digest
from musicfs.errors import NotFound
from musicfs.events import CacheCleared, EventBus, FillCompleted
from musicfs.fuse.attrs import AttrPolicy
from musicfs.fuse.inodes import InodeTable
from musicfs.fuse.namespaces import OfflineNamespace, TreeNamespace
from musicfs.fuse.namespaces.offline import OFFLINE_BASE
from musicfs.index.bulk import load_tracks
from musicfs.index.db import connect
from musicfs.index.library import LibraryIndex
from musicfs.index.schema import ROOT_ID
from musicfs.index.template import PathTemplate
from musicfs.store.cache import ContentCache
from musicfs.store.chunkdb import ChunkRef
from musicfs.vfs.offline import OfflineService, compute_view
from musicfs.vfs.resolver import Resolver

pytestmark = pytest.mark.req("OFF-1")

PIECE = 64 * 1024
ALBUMS = {("A", "One"): 3, ("A", "Two"): 2, ("B", "Three"): 2}


def _records(origin: str = "local") -> list[dict]:
    records = []
    for (artist, album), count in ALBUMS.items():
        for n in range(1, count + 1):
            records.append({"real_path": f"{artist}/{album}/{n:02d}.flac", "size": 150_000 + 1000 * n,
                            "mtime_ns": 1_700_000_000_000_000_000 + n, "title": f"{album} {n}", "artist": artist,
                            "albumartist": artist, "album": album, "year": 2001, "track": n, "disc": 1,
                            "genre": "Test", "duration_ms": 1000, "bitrate": 0, "sample_rate": 44100,
                            "format": "flac"})
    return records


@pytest.fixture
def library(tmp_path):
    """The index of ALBUMS on origin ``local``, and a cache beside it: (index path, cache, tracks by path)."""
    index_path = tmp_path / "index.db"
    with LibraryIndex(index_path) as index:
        load_tracks(index, "local", _records(), PathTemplate())
        tracks = {row[1]: dict(zip(("id", "real_path", "size", "mtime_ns"), row)) for row in index.conn.execute(
            "SELECT id, real_path, size, mtime_ns FROM tracks")}
    bus = EventBus()
    cache = ContentCache(tmp_path / "cache", 10**9, bus.publish)
    yield index_path, cache, tracks
    cache.close()


def hold(cache: ContentCache, track: dict, *, complete: bool = True, version: str | None = None,
         origin: str = "local") -> list[str]:
    """Store a track's bytes as a fill would (chunks, then its map); the chunks' addresses."""
    size = track["size"]
    data = os.urandom(size)
    refs = [ChunkRef(offset, len(data[offset:offset + PIECE]), digest(data[offset:offset + PIECE]))
            for offset in range(0, size, PIECE)]
    cache.store_chunks([(ref.address, data[ref.offset:ref.end]) for ref in refs])
    kept = refs if complete else refs[:1]
    cache.save_manifest(origin, track["real_path"], size, version or f"{size}:{track['mtime_ns']}", kept,
                        complete=complete)
    return [ref.address for ref in refs]


def view_of(index_path, cache):
    conn = connect(index_path, readonly=True)
    try:
        return compute_view(conn, cache.whole_files())
    finally:
        conn.close()


def names(view, dir_id: int) -> list[str]:
    return [node.name for node in view.entries(dir_id)]


def album_dir(index_path, artist: str, album: str):
    """(artist node, album node) in the tree."""
    conn = connect(index_path, readonly=True)
    try:
        resolver = Resolver(conn)
        top = next(n for n in resolver.children(ROOT_ID) if n.name == artist)
        return top, next(n for n in resolver.children(top.id) if n.name.startswith(album + " "))
    finally:
        conn.close()


def test_an_album_shows_once_every_track_is_held_whole(library):
    index_path, cache, tracks = library
    empty = view_of(index_path, cache)
    assert empty.entries(ROOT_ID) == () and not empty.tracks and not empty.albums

    for n in (1, 2, 3):
        hold(cache, tracks[f"A/One/0{n}.flac"])
    hold(cache, tracks["A/Two/01.flac"])
    hold(cache, tracks["A/Two/02.flac"], complete=False)  # a fill that stopped: a map of its head
    view = view_of(index_path, cache)
    artist, one = album_dir(index_path, "A", "One")
    _, two = album_dir(index_path, "A", "Two")
    assert names(view, ROOT_ID) == ["A"] and names(view, artist.id) == [one.name]
    assert names(view, one.id) == ["01 - One 1.flac", "02 - One 2.flac", "03 - One 3.flac"]
    assert not view.shows(two.id) and view.entry(artist.id, two.name) is None  # one track is not whole
    assert view.albums == {one.id}
    held = {tracks[p]["id"] for p in ("A/One/01.flac", "A/One/02.flac", "A/One/03.flac", "A/Two/01.flac")}
    assert view.tracks == held  # every whole track counts, shown or not
    assert view.entry(one.id, "02 - One 2.flac").track_id == tracks["A/One/02.flac"]["id"]

    for n in (1, 2):  # a second artist's album: shown beside the first
        hold(cache, tracks[f"B/Three/0{n}.flac"])
    after = view_of(index_path, cache)
    assert names(after, ROOT_ID) == ["A", "B"] and len(after.albums) == 2


def test_a_missing_chunk_or_another_version_does_not_count(library):
    index_path, cache, tracks = library
    addresses = {p: hold(cache, tracks[p]) for p in ("A/One/01.flac", "A/One/02.flac", "A/One/03.flac")}
    _, one = album_dir(index_path, "A", "One")
    assert view_of(index_path, cache).shows(one.id)

    with cache.locked() as chunks:  # one chunk of one track gone (evicted, or found damaged)
        chunks.forget_chunk(addresses["A/One/02.flac"][1])
    view = view_of(index_path, cache)
    assert not view.shows(one.id) and view.entries(ROOT_ID) == ()
    assert tracks["A/One/02.flac"]["id"] not in view.tracks and tracks["A/One/01.flac"]["id"] in view.tracks

    hold(cache, tracks["A/One/02.flac"])  # fetched again: whole again
    assert view_of(index_path, cache).shows(one.id)
    hold(cache, tracks["A/One/03.flac"], version="another version")  # not what the index shows
    assert not view_of(index_path, cache).shows(one.id)


def test_a_replica_held_whole_does_not_count(library, tmp_path):
    """The tree shows one of a file's replicas; the reader reads that one's map, so only it counts."""
    index_path, cache, tracks = library
    with LibraryIndex(index_path) as index:
        load_tracks(index, "mirror", [r for r in _records() if r["real_path"].startswith("B/")], PathTemplate())
        shown = index.conn.execute("SELECT COUNT(*) FROM tracks t JOIN nodes n ON n.track_id = t.id"
                                   " WHERE t.origin_id = 'mirror'").fetchone()[0]
    assert shown == 0  # the same paths and sizes: replicas, not shown twice
    for n in (1, 2):
        hold(cache, tracks[f"B/Three/0{n}.flac"], origin="mirror")
    assert view_of(index_path, cache).entries(ROOT_ID) == ()
    for n in (1, 2):
        hold(cache, tracks[f"B/Three/0{n}.flac"])
    assert names(view_of(index_path, cache), ROOT_ID) == ["B"]


def test_the_work_follows_the_cache_not_the_library(library):
    """Ten times the library, the same cache: about the same SQLite work (counted in VM steps)."""
    index_path, cache, tracks = library
    for n in (1, 2, 3):
        hold(cache, tracks[f"A/One/0{n}.flac"])
    whole = cache.whole_files()

    def steps() -> int:
        conn = connect(index_path, readonly=True)
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        conn.set_progress_handler(count, 10)
        try:
            assert len(compute_view(conn, whole).tracks) == 3
        finally:
            conn.close()
        return counted[0]

    small = steps()
    with LibraryIndex(index_path) as index:
        load_tracks(index, "more", synthetic_tracks(5000, seed=3), PathTemplate())
    large = steps()
    assert large < small * 1.5 + 50, (small, large)


def run_service(library, body, **kwargs):
    index_path, cache, tracks = library

    async def main():
        bus = EventBus()  # made in the loop: events published from worker threads reach it
        cache.publish = bus.publish
        service = OfflineService(index_path, cache, **kwargs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.follow, bus)
            await trio.testing.wait_all_tasks_blocked()  # subscribed
            await body(service, bus, cache, tracks)
            nursery.cancel_scope.cancel()
        service.close()

    trio.run(main)


def test_the_view_follows_fills_evictions_and_clears(library):
    async def body(service, bus, cache, tracks):
        first = await service.view()
        assert first.entries(ROOT_ID) == () and service.computations == 1
        assert await service.view() is first and service.computations == 1  # nothing changed: kept

        paths = ["A/One/01.flac", "A/One/02.flac", "A/One/03.flac"]
        for path in paths:
            await trio.to_thread.run_sync(hold, cache, tracks[path])
        assert await service.view() is first  # chunks stored and maps saved say nothing yet
        bus.publish(FillCompleted("local", paths[-1], 1, 1, 0.1))
        await trio.testing.wait_all_tasks_blocked()  # the follower heard it
        assert service.stale
        filled = await service.view()
        assert [n.name for n in filled.entries(ROOT_ID)] == ["A"] and service.computations == 2
        assert filled.changed_ns > first.changed_ns

        # the cache over its limit: the least recently used chunk goes (One's first), announced
        await trio.to_thread.run_sync(cache.evict, cache.size - 1)
        await trio.testing.wait_all_tasks_blocked()
        evicted = await service.view()
        assert evicted.entries(ROOT_ID) == () and len(evicted.tracks) == 2

        for path in paths:  # whole again, then cleared by a user
            await trio.to_thread.run_sync(hold, cache, tracks[path])
        bus.publish(FillCompleted("local", paths[0], 1, 1, 0.1))
        await trio.testing.wait_all_tasks_blocked()  # the follower heard it
        assert len((await service.view()).tracks) == 3
        result = await trio.to_thread.run_sync(cache.clear_selected, "local")
        bus.publish(CacheCleared("local", result["manifests"], result["chunks"], result["bytes"]))
        await trio.testing.wait_all_tasks_blocked()  # the follower heard it
        cleared = await service.view()
        assert not cleared.tracks and cleared.entries(ROOT_ID) == ()
        stats = service.statistics()
        assert stats["tracks"] == 0 and stats["computations"] == 5 and not stats["stale"]

    run_service(library, body, interval=0.0)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_at_most_one_computation_per_interval_shared_by_who_asks(library):
    clock = Clock()

    async def body(service, bus, cache, tracks):
        first = await service.view()
        for n in (1, 2):
            await trio.to_thread.run_sync(hold, cache, tracks[f"B/Three/0{n}.flac"])
        bus.publish(FillCompleted("local", "B/Three/02.flac", 1, 1, 0.1))
        await trio.testing.wait_all_tasks_blocked()  # the follower heard it
        clock.now += 0.5  # within the interval: the last answer, though stale
        assert await service.view() is first and service.stale and service.computations == 1
        clock.now += 0.5
        seen = []

        async def ask():
            seen.append(await service.view())

        async with trio.open_nursery() as askers:  # many at once: one computation for all
            for _ in range(5):
                askers.start_soon(ask)
        assert service.computations == 2 and len({id(v) for v in seen}) == 1
        assert [n.name for n in seen[0].entries(ROOT_ID)] == ["B"] and not service.stale

    run_service(library, body, interval=1.0, clock=clock)


class Refusing:
    """A cache whose index refuses (locked, damaged) after the first answer."""

    def __init__(self, cache: ContentCache):
        self.cache, self.calls = cache, 0

    def whole_files(self):
        self.calls += 1
        if self.calls > 1:
            raise sqlite3.OperationalError("database is locked")
        return self.cache.whole_files()


def test_a_computation_that_fails_keeps_the_last_answer(library, caplog):
    index_path, cache, tracks = library
    for n in (1, 2):
        hold(cache, tracks[f"B/Three/0{n}.flac"])
    service = OfflineService(index_path, Refusing(cache), interval=0.0)

    async def main():
        first = await service.view()
        service.changed()
        assert await service.view() is first
        assert service.failures == 1 and service.stale and "could not be worked out" in caplog.text

    trio.run(main)
    service.close()


def test_the_namespace_lists_directories_of_its_own_and_the_trees_files(library):
    index_path, cache, tracks = library
    for n in (1, 2, 3):
        hold(cache, tracks[f"A/One/0{n}.flac"])
    index = LibraryIndex(index_path, readonly=True)
    inodes = InodeTable()
    tree = TreeNamespace(index, Resolver(index.conn), None, inodes, AttrPolicy())
    service = OfflineService(index_path, cache)
    namespace = OfflineNamespace(service, tree, AttrPolicy())
    artist, one = album_dir(index_path, "A", "One")

    async def main():
        root = namespace.root_inode
        assert (await namespace.getattr(root)).st_ino == OFFLINE_BASE + ROOT_ID
        listed = []

        def reply(name, attr, offset):
            listed.append((name, attr.st_ino, offset))
            return len(listed) < 2  # a kernel buffer with room for two entries

        await namespace.readdir(root, 0, reply)
        assert listed == [("A", OFFLINE_BASE + artist.id, artist.id)]
        entry = await namespace.lookup(root, "A")
        assert entry.st_ino == OFFLINE_BASE + artist.id and entry.entry_timeout == 1.0
        album = await namespace.lookup(entry.st_ino, one.name)
        assert album.st_ino == OFFLINE_BASE + one.id

        listed.clear()
        await namespace.readdir(album.st_ino, 0, reply)  # a page of two, and the rest from its offset
        assert len(listed) == 2
        await namespace.readdir(album.st_ino, listed[-1][2], lambda n, a, o: listed.append((n, a.st_ino, o)) or True)
        files = {name: ino for name, ino, _ in listed}
        assert list(files) == ["01 - One 1.flac", "02 - One 2.flac", "03 - One 3.flac"]
        for name, ino in files.items():  # the tree's own files: its inodes, handed out and counted
            assert tree.node(ino).track_id == tracks[f"A/One/{name[:2]}.flac"]["id"]
            assert (await namespace.lookup(album.st_ino, name)).st_ino == ino
            assert inodes.get(ino) is not None
        for missing in ((root, "B"), (entry.st_ino, "Two (2001) [FLAC]"), (album.st_ino, "04 - x.flac")):
            with pytest.raises(NotFound):
                await namespace.lookup(*missing)
        _, two = album_dir(index_path, "A", "Two")
        with pytest.raises(NotFound):
            await namespace.opendir(OFFLINE_BASE + two.id)
        assert await namespace.xattrs(album.st_ino) == {"user.musicfs.path": f"A/{one.name}"}

    trio.run(main)
    service.close()
    index.close()
