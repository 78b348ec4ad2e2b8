"""The header tier on its own: what it keeps of a tag scan's reads, its limit, and damage (HDR-1)."""

from __future__ import annotations

import random

import pytest
from fastcdc.fastcdc_cy import fastcdc_cy
from hypothesis import given, settings
from hypothesis import strategies as st

from musicfs.origins.rangefile import RangeFile
from musicfs.store.cache import ContentCache
from musicfs.store.chunkdb import PIN_HEADER
from musicfs.store.chunker import AVG_SIZE, MAX_SIZE, MIN_SIZE
from musicfs.store.headers import Header, HeaderTier, cut
from tests.cachefiles import flip_bit, stored_chunks

FILE = random.Random(7).randbytes(3 * 1024 * 1024)
SIZE = len(FILE)

pytestmark = pytest.mark.req("HDR-1")


def reassembled(pieces: list[tuple[int, bytes]]) -> dict[int, int]:
    """offset -> byte of every byte the pieces hold (checked against FILE by the caller)."""
    held = {}
    for offset, data in pieces:
        for i in range(0, len(data), 4099):  # sampled: every byte would be slow
            held[offset + i] = data[i]
        held[offset + len(data) - 1] = data[-1]
    return held


@given(ranges=st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 600_000)), min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_pieces_hold_exactly_the_bytes_read(ranges):
    parts = [(start, FILE[start:start + length]) for start, length in ranges]
    pieces = cut(parts, SIZE)
    offsets = [offset for offset, _ in pieces]
    assert offsets == sorted(offsets)
    position = 0
    for offset, data in pieces:
        assert offset >= position, "pieces overlap"
        assert 0 < len(data) <= MAX_SIZE
        assert data == FILE[offset:offset + len(data)]
        position = offset + len(data)
    wanted = set()
    for start, length in ranges:
        wanted.update(range(start, min(SIZE, start + length), 997))
    held = reassembled(pieces)
    assert all(b in held or any(o <= b < o + len(d) for o, d in pieces) for b in wanted)


def test_the_head_is_cut_as_a_fill_cuts_the_file():
    """The run from byte 0 gives the same chunks as the whole file: a track played later stores
    those bytes once."""
    whole = [(c.offset, c.length) for c in fastcdc_cy(FILE, MIN_SIZE, AVG_SIZE, MAX_SIZE, False, None)]
    pieces = cut([(0, FILE[:700_000])], SIZE)
    final = [(offset, len(data)) for offset, data in pieces[:-1]]
    assert final == whole[:len(final)]
    assert pieces[-1][0] + len(pieces[-1][1]) == 700_000  # the unfinished end is kept as it is
    assert [(o, len(d)) for o, d in cut([(0, FILE)], SIZE)] == whole


def test_covering_finds_whole_ranges_only():
    header = Header("o", "a.flac", 1000, "v", tuple(
        ref for ref in (_ref(0, 300), _ref(300, 200), _ref(900, 100))))
    assert [r.offset for r in header.covering(0, 500)] == [0, 300]
    assert [r.offset for r in header.covering(950, 1000)] == [900]
    assert header.covering(400, 600) is None
    assert header.covering(800, 1000) is None


def _ref(offset: int, size: int):
    from musicfs.store.chunkdb import ChunkRef
    return ChunkRef(offset, size, f"{offset:032x}")


@pytest.fixture
def tier(tmp_path):
    cache = ContentCache(tmp_path / "cache", 100 * 1024 * 1024, lambda *events: None)
    yield HeaderTier(cache, 4 * 1024 * 1024)
    cache.close()


def keep_file(tier: HeaderTier, name: str, data: bytes, head: int = 256 * 1024, tail: int = 128) -> Header:
    """What a tag reader's RangeFile fetches of ``data``: its head and its last bytes."""
    source = RangeFile(None, name, len(data), read=lambda _p, o, n: data[o:o + n], keep=True, head=head)
    source.read(4096)
    source.seek(-tail, 2)
    source.read()
    header = tier.keep("o", name, len(data), f"{len(data)}:1", source.fetched)
    assert header is not None
    return header


def test_a_kept_header_is_found_for_its_version_only(tier):
    kept = keep_file(tier, "a.mp3", FILE)
    assert kept.covering(0, 256 * 1024) and kept.covering(SIZE - 128, SIZE)
    found = tier.lookup("o", "a.mp3", SIZE, f"{SIZE}:1")
    assert found is not None and found.pieces == kept.pieces
    assert tier.lookup("o", "a.mp3", SIZE, f"{SIZE}:2") is None, "another version used this header"
    loaded = tier.cache.read_chunks(list(found.pieces))
    assert all(data == FILE[p.offset:p.end] for p, data in zip(found.pieces, loaded))
    stats = tier.statistics()
    assert stats["entries"] == 1 and stats["bytes"] == kept.bytes and stats["kept"] == 1


def test_header_pieces_survive_the_caches_eviction(tier):
    kept = keep_file(tier, "a.mp3", FILE)
    tier.cache.evict(0)
    assert all(data is not None for data in tier.cache.read_chunks(list(kept.pieces)))
    with tier.cache.locked() as index:
        pins = {a: p for a, p in index.conn.execute("SELECT address, pinned FROM chunks")}
    assert all(pins[p.address] & PIN_HEADER for p in kept.pieces)


def test_the_tier_evicts_least_recently_read_headers_beyond_its_limit(tier):
    files = {f"t{i}.flac": random.Random(i).randbytes(1024 * 1024) for i in range(18)}  # ~260 KB each
    for name, data in list(files.items())[:12]:
        keep_file(tier, name, data)
    assert tier.lookup("o", "t0.flac", 1024 * 1024, f"{1024 * 1024}:1") is not None  # read: kept longer
    tier.flush()
    for name, data in list(files.items())[12:]:
        keep_file(tier, name, data)
    stats = tier.statistics()
    assert stats["bytes"] <= tier.limit and stats["evictions"] > 0
    assert tier.lookup("o", "t0.flac", 1024 * 1024, f"{1024 * 1024}:1") is not None
    assert tier.lookup("o", "t1.flac", 1024 * 1024, f"{1024 * 1024}:1") is None
    # pieces of evicted headers are the LRU's again: the cache's own eviction can take them
    tier.cache.evict(0)
    assert tier.cache.statistics()["bytes"] == tier.statistics()["stored_bytes"] <= tier.limit


def test_a_new_version_replaces_the_header(tier):
    keep_file(tier, "a.mp3", FILE)
    changed = FILE[:1000] + b"new tags" + FILE[1008:]
    keep_file(tier, "a.mp3", changed)
    assert tier.statistics()["entries"] == 1
    found = tier.lookup("o", "a.mp3", SIZE, f"{SIZE}:1")
    assert tier.cache.read_chunks([found.pieces[0]])[0][1000:1008] == b"new tags"


def test_a_damaged_piece_is_a_miss_never_wrong_bytes(tier):
    kept = keep_file(tier, "a.mp3", FILE)
    chunks = stored_chunks(tier.cache.directory)
    flip_bit(chunks[kept.pieces[0].address])
    assert tier.cache.read_chunks([kept.pieces[0]]) == [None]


def test_a_header_cut_short_or_hostile_in_the_index_is_dropped(tier):
    keep_file(tier, "a.mp3", FILE)
    with tier.cache.locked() as index:
        index.conn.execute("UPDATE header_pieces SET offset = 0")  # every piece at 0: overlapping
    assert tier.lookup("o", "a.mp3", SIZE, f"{SIZE}:1") is None
    assert tier.statistics()["entries"] == 0 and tier.counters.dropped == 1


def test_clearing_the_chunk_tier_spares_headers_and_clearing_headers_frees_them(tier):
    kept = keep_file(tier, "a.mp3", FILE)
    tier.cache.clear_selected(None)
    assert all(data is not None for data in tier.cache.read_chunks(list(kept.pieces)))
    assert tier.clear("o", dry_run=True)["manifests"] == 1 and tier.statistics()["entries"] == 1
    result = tier.clear("o")
    assert (result["manifests"], result["chunks"], result["bytes"]) == (1, len(kept.pieces), kept.bytes)
    assert tier.statistics()["entries"] == 0
    tier.cache.clear_selected(None)  # the pieces are strays of the LRU now: a clear takes them
    assert tier.cache.statistics()["chunks"] == 0


REMOTE = '\n[[origins]]\nid = "nas"\ntype = "s3"\nbucket = "music"\n'


def test_headers_size_is_a_tenth_of_the_cache_unless_set_and_never_more_than_it():
    from musicfs.config import parse_config
    from musicfs.errors import ConfigError

    assert parse_config('[cache]\nsize = "20GB"\n' + REMOTE).header_limit == 2 * 10**9
    config = parse_config('[cache]\nheaders_size = "3GB"\n' + REMOTE)
    assert config.header_limit == 3 * 10**9 and config.header_origins() == ["nas"]
    off = parse_config('[cache]\nheaders_size = "0"\n' + REMOTE)
    assert off.header_limit == 0 and off.header_origins() == []
    local = parse_config('\n[[origins]]\nid = "a"\ntype = "local"\npath = "/music"\n')
    assert local.header_origins() == [], "a local origin's tags are read from it directly"
    for value, words in (('"lots"', "not a size"), ('"11GB"', "more than the cache's size")):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"[cache]\nheaders_size = {value}\n" + REMOTE)
        assert str(caught.value).startswith("<config>:2:") and words in str(caught.value)
