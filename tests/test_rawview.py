"""Raw views list an origin's names as they are, each once."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from musicfs.index.names import NAME_MAX
from musicfs.origins.base import Entry
from musicfs.vfs.rawview import RawView, raw_name, unique_names


@pytest.mark.req("FAULT-30", "B2-6")
def test_an_object_and_a_folder_of_one_name_are_both_listed_once():
    # a bucket with the object "a" and objects under "a/"; names made legal that coincide
    entries = [("a", False, "a"), ("a", True, "a"), (raw_name(".."), True, ".."), (raw_name("_."), False, "_."),
               ("b.flac", False, "x/b.flac"), ("b.flac", False, "y/b.flac")]
    assert unique_names(entries) == ["a (2)", "a", "_.", "_. (2)", "b.flac", "b (2).flac"]


@pytest.mark.req("FAULT-30", "FAULT-29")
@given(st.lists(st.tuples(st.text(max_size=300), st.booleans()), max_size=30))
@settings(max_examples=200, deadline=None)
def test_raw_names_are_legal_and_unique(raw):
    entries = [(raw_name(name), is_dir, f"{n}/{name}") for n, (name, is_dir) in enumerate(raw)]
    names = unique_names(entries)
    assert len(set(names)) == len(names)
    for name in names:
        assert name not in ("", ".", "..") and "/" not in name and "\x00" not in name
        assert len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX


class _Origin:
    """An origin whose folder ``music/`` changes when told to; counts the listings asked of it."""

    def __init__(self):
        self.names = ["a.flac", "b.flac"]
        self.listings = 0

    def list_all(self, prefix):
        self.listings += 1
        return [Entry(f"{prefix}{name}", 1, 0, "v") for name in self.names], []


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _listing(view: RawView, clock: _Clock, origin: _Origin, at: float) -> list[str]:
    clock.now = 1000.0 + at
    top = trio.run(view.lookup, view.root.inode, "bucket")
    return [node.name for node in trio.run(view.children, top.inode)]


@pytest.mark.req("B2-5")
def test_listings_are_kept_for_the_ttl_and_dropped_after_it_or_when_idle():
    """Within both bounds the origin is not asked again and a change is not seen; past either, it is."""
    origin, clock = _Origin(), _Clock()
    view = RawView({"bucket": origin}, ttl=10.0, idle=4.0, clock=clock)
    assert _listing(view, clock, origin, 0) == ["a.flac", "b.flac"] and origin.listings == 1
    origin.names.append("c.flac")  # the origin changes
    for at in (1, 3, 5, 7, 9, 9.9):  # used every 2 s (< idle), up to just before the TTL
        assert _listing(view, clock, origin, at) == ["a.flac", "b.flac"]
    assert origin.listings == 1
    assert _listing(view, clock, origin, 10.0) == ["a.flac", "b.flac", "c.flac"]  # the TTL bounds it
    assert origin.listings == 2
    origin.names.append("d.flac")
    assert _listing(view, clock, origin, 13.9) == ["a.flac", "b.flac", "c.flac"]  # 3.9 s unused: kept
    assert _listing(view, clock, origin, 17.9) == ["a.flac", "b.flac", "c.flac", "d.flac"]  # 4 s: gone
    assert origin.listings == 3


def test_the_default_bounds_are_seed_000s_and_zero_keeps_nothing():
    assert (RawView({}).ttl, RawView({}).idle) == (300.0, 60.0)
    origin, clock = _Origin(), _Clock()
    view = RawView({"bucket": origin}, ttl=0, clock=clock)
    for _ in range(3):
        _listing(view, clock, origin, 0)
    assert origin.listings == 3


def test_concurrent_lookups_of_one_folder_make_one_listing():
    origin, clock = _Origin(), _Clock()
    view = RawView({"bucket": origin}, clock=clock)

    async def main():
        top = await view.lookup(view.root.inode, "bucket")
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(view.children, top.inode)

    trio.run(main)
    assert origin.listings == 1
