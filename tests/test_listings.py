"""Listings kept between readdirs (MM-5.3): repeats from memory, never stale after a rescan, bounded.

The real-mount figure (share of readdir pages answered from a kept listing) is measured by
conformance/test_metrics.py; here the rules: same answer as the index, pages by id, what a
rescan changed dropped before anyone can list it again, and the bounds.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import trio

from musicfs.fuse.inodes import InodeTable
from musicfs.fuse.invalidate import KernelInvalidator
from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Commit, Scanner
from musicfs.index.template import PathTemplate
from musicfs.index.tree import TreeChanges
from musicfs.origins.local import LocalOrigin
from musicfs.vfs.listings import ListingCache
from musicfs.vfs.resolver import Node, Resolver

from .test_invalidate import Recorder


@pytest.fixture
def library(sample_library, tmp_path):
    root = tmp_path / "library"
    shutil.copytree(sample_library[0], root)
    index = LibraryIndex(tmp_path / "index.db")
    origin = LocalOrigin("local", root)
    Scanner(index, origin, PathTemplate(), workers=2).run()
    yield index, origin, root
    index.close()


def _albums(resolver: Resolver) -> list[Node]:
    return [album for artist in resolver.iter_children(1) if artist.is_dir
            for album in resolver.iter_children(artist.id) if album.is_dir]


def test_repeated_listings_come_from_memory_and_match_the_index(library):
    index, _, _ = library
    plain, cached = Resolver(index.conn), Resolver(index.conn, ListingCache())
    albums = _albums(plain)
    for _ in range(3):
        for album in albums:
            assert cached.children(album.id) == plain.children(album.id)
    stats = cached.listings.statistics()
    assert stats["misses"] == len(albums) and stats["hits"] == 2 * len(albums)
    album = max(albums, key=lambda a: len(plain.children(a.id)))
    children = plain.children(album.id)
    assert len(children) >= 3
    # pages by id, as readdir asks for them (offset = the last id it got)
    assert cached.children(album.id, children[0].id, 1) == [children[1]]
    assert cached.children(album.id, children[-1].id) == []


def test_a_rescan_drops_the_listings_it_changed_before_the_kernel_is_told(library, good_files):
    index, origin, root = library
    cached = Resolver(index.conn, ListingCache())
    listed = {album.id: cached.children(album.id) for album in _albums(Resolver(index.conn))}
    flacs = [f["path"] for f in good_files if f["format"] == "flac" and f["tags"].get("title")]
    removed, touched = flacs[0], flacs[1]
    (root / removed).unlink()
    later = time.time_ns() + 10**9
    os.utime(root / touched, ns=(later, later))
    commits: list[Commit] = []
    Scanner(index, origin, PathTemplate(), workers=2, on_commit=commits.append).run()
    changes = TreeChanges()
    for commit in commits:
        changes.added += commit.tree.added
        changes.removed += commit.tree.removed
        changes.modified += commit.tree.modified
    assert changes.removed and changes.modified

    trio.run(KernelInvalidator(InodeTable(), cached, Recorder()), changes)

    plain = Resolver(index.conn)
    for album_id in listed:
        # a pruned album has no children left: [] from both
        assert cached.children(album_id) == plain.children(album_id), f"album {album_id} listed stale after the rescan"
    assert cached.listings.statistics()["invalidations"] >= 2  # the removal's album, the touched one's


def test_listings_are_bounded_and_big_directories_are_not_kept(library):
    index, _, _ = library
    albums = _albums(Resolver(index.conn))
    sizes = [len(Resolver(index.conn).children(a.id)) for a in albums]
    small = ListingCache(max_nodes=max(sizes) * 3, max_children=max(sizes))
    resolver = Resolver(index.conn, small)
    for album in albums:
        resolver.children(album.id)
    stats = small.statistics()
    assert stats["nodes"] <= small.max_nodes and stats["evictions"] > 0
    assert 0 < stats["listings"] < len(albums)

    tiny = ListingCache(max_children=0)
    resolver = Resolver(index.conn, tiny)
    resolver.children(albums[0].id)
    resolver.children(albums[0].id)
    assert tiny.statistics()["listings"] == 0 and tiny.statistics()["hits"] == 0
    with pytest.raises(ValueError):
        ListingCache(max_nodes=-1)
