"""Pins in the chunk store, in process: which chunks a pin keeps, and when (PIN-1, PIN-2, PIN-3).

The chunk index keeps PIN_USER true by triggers, whoever writes the maps: a
fill saving a pinned file's map, delta sync saving a new version's, a cache
clear, a reconcile after a crash. The real mount's side (``musicfs pin``, the
keeper, offline reads) is in ``conformance/test_pins.py``.
"""

from __future__ import annotations

import pytest

from musicfs.digest import digest
from musicfs.errors import NoRoom
from musicfs.store.cache import ContentCache
from musicfs.store.chunkdb import PIN_USER, ChunkRef


def chunked(data: bytes, size: int = 1000) -> list[tuple[str, bytes]]:
    return [(digest(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]


def refs(parts: list[tuple[str, bytes]]) -> list[ChunkRef]:
    out, offset = [], 0
    for address, data in parts:
        out.append(ChunkRef(offset, len(data), address))
        offset += len(data)
    return out


def pinned_bits(cache: ContentCache) -> dict[str, int]:
    return dict(cache.index.conn.execute("SELECT address, pinned & ? FROM chunks", (PIN_USER,)).fetchall())


@pytest.fixture
def cache(tmp_path):
    store = ContentCache(tmp_path / "cache", 10_000_000, lambda *events: None)
    yield store
    store.close()


def cache_file(cache: ContentCache, path: str, data: bytes, version: str = "v1") -> list[tuple[str, bytes]]:
    parts = chunked(data)
    cache.store_chunks(parts)
    assert cache.save_manifest("o", path, len(data), version, refs(parts))
    return parts


@pytest.mark.req("PIN-1")
def test_a_pin_keeps_the_chunks_of_the_file_cached_before_and_after(cache):
    before = cache_file(cache, "a.flac", bytes(range(256)) * 12)
    other = cache_file(cache, "b.flac", b"b" * 3000 + bytes(range(7)))
    assert cache.pin([("o", "a.flac", 3072), ("o", "c.flac", 2000)], room=10_000) == (2, 5072)
    bits = pinned_bits(cache)
    assert all(bits[a] for a, _ in before) and not any(bits[a] for a, _ in other)
    # c.flac's map comes later (its fill): its chunks are pinned as the map is saved
    later = cache_file(cache, "c.flac", b"c" * 1999 + b"!")
    assert all(pinned_bits(cache)[a] for a, _ in later)
    # however far eviction goes, pinned chunks stay
    cache.evict(0)
    left = set(cache.index.addresses())
    assert {a for a, _ in before + later} <= left and not {a for a, _ in other} & left
    states = {p.real_path: p for p in cache.pins()}
    assert states["a.flac"].complete and states["c.flac"].complete and states["a.flac"].held == 3072


@pytest.mark.req("PIN-1")
def test_unpinning_lets_chunks_go_but_not_those_another_pin_shares(cache):
    shared = b"s" * 1000
    a = cache_file(cache, "a.flac", shared + b"a" * 1000)
    b = cache_file(cache, "b.flac", shared + b"b" * 1000)
    cache.pin([("o", "a.flac", 2000), ("o", "b.flac", 2000)], room=10_000)
    assert cache.unpin([("o", "a.flac"), ("o", "never.flac")]) == 1
    bits = pinned_bits(cache)
    assert bits[a[0][0]] and bits[b[1][0]] and not bits[a[1][0]]
    cache.evict(0)
    assert a[1][0] not in cache.index.addresses() and a[0][0] in cache.index.addresses()


@pytest.mark.req("PIN-2")
def test_a_pin_past_the_room_is_refused_whole_and_changes_nothing(cache):
    cache.pin([("o", "a.flac", 6000)], room=10_000)
    with pytest.raises(NoRoom) as refused:
        cache.pin([("o", "a.flac", 6000), ("o", "b.flac", 3000), ("o", "c.flac", 2000)], room=10_000)
    assert "2 more files" in str(refused.value) and "0.0 MB" in str(refused.value)  # a.flac is pinned already
    assert refused.value.needed == 5000 and refused.value.held == 6000
    assert [p.real_path for p in cache.pins()] == ["a.flac"]
    # what fits is taken, counting a file pinned twice once
    assert cache.pin([("o", "a.flac", 6000), ("o", "b.flac", 3000)], room=10_000) == (1, 3000)
    assert cache.statistics()["pins_size"] == 9000


@pytest.mark.req("PIN-3")
def test_a_new_version_of_a_pinned_file_is_pinned_and_the_old_one_let_go(cache):
    audio = bytes(range(256)) * 8
    old = cache_file(cache, "a.flac", b"TAGS-OLD" * 125 + audio)
    cache.pin([("o", "a.flac", 3048)], room=10_000)
    # delta sync: the new version reuses the audio chunks, with a new header chunk
    new_parts = [(digest(b"TAGS-NEW" * 125), b"TAGS-NEW" * 125)] + old[1:]
    cache.store_chunks(new_parts[:1])
    assert cache.save_manifest("o", "a.flac", 3048, "v2", refs(new_parts), obtained="delta")
    bits = pinned_bits(cache)
    assert bits[new_parts[0][0]] and all(bits[a] for a, _ in old[1:]) and not bits[old[0][0]]
    (state,) = cache.pins()
    assert state.version == "v2" and state.complete


@pytest.mark.req("PIN-3")
def test_pins_outlive_a_restart_a_cache_clear_and_a_reconcile(tmp_path):
    cache = ContentCache(tmp_path / "cache", 10_000_000, lambda *events: None)
    kept = cache_file(cache, "a.flac", b"k" * 1500 + b"eep")
    gone = cache_file(cache, "b.flac", b"g" * 1500 + b"one")
    cache.pin([("o", "a.flac", 1503)], room=10_000)
    assert cache.clear_selected()["manifests"] == 1  # b.flac's; the pinned map stays whole
    assert {a for a, _ in kept} <= cache.index.addresses() and not {a for a, _ in gone} & cache.index.addresses()
    cache.close()
    again = ContentCache(tmp_path / "cache", 10_000_000, lambda *events: None)
    try:
        # a crash lost the pin bits (rows adopted from packs come without them): reconcile restores them
        again.index.conn.execute("UPDATE chunks SET pinned = 0")
        again.reconcile()
        assert all(pinned_bits(again)[a] for a, _ in kept)
        assert [(p.real_path, p.complete) for p in again.pins()] == [("a.flac", True)]
        again.clear()  # the whole cache: the pins stay, for the daemon to fetch again
        assert [(p.real_path, p.complete, p.version) for p in again.pins()] == [("a.flac", False, None)]
    finally:
        again.close()


@pytest.mark.req("PIN-2")
def test_the_room_for_pins_is_what_the_other_tiers_and_a_tenth_leave_unless_set():
    from musicfs.config import parse_config
    from musicfs.errors import ConfigError

    origin = '\n[[origins]]\nid = "nas"\ntype = "s3"\nbucket = "music"\n'
    # 20 GB less headers (2), artwork (1) and a tenth (2)
    assert parse_config('[cache]\nsize = "20GB"\n' + origin).pin_limit == 15 * 10**9
    assert parse_config('[cache]\nsize = "20GB"\nheaders_size = "0"\n' + origin).pin_limit == 17 * 10**9
    assert parse_config('[cache]\nsize = "20GB"\npins_size = "19GB"\n' + origin).pin_limit == 19 * 10**9
    with pytest.raises(ConfigError) as caught:
        parse_config('[cache]\nsize = "20GB"\npins_size = "21GB"\n' + origin)
    assert str(caught.value).startswith("<config>:3:") and "more than the cache's size" in str(caught.value)
