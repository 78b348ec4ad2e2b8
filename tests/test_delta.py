"""Delta sync on its own: a retagged version rebuilt from the old one's chunks, or refused (NFR-6.4)."""

from __future__ import annotations

import hashlib
import io
import shutil
import sqlite3

import pytest

from fixtures.media import tag_plan, write_media_library
from fixtures.tags import write_tags
from musicfs.digest import digest
from musicfs.index.layout import audio_region
from musicfs.origins.base import Checksum
from musicfs.origins.local import LocalOrigin
from musicfs.store.cache import ContentCache
from musicfs.store.chunkdb import ChunkRef
from musicfs.store.chunker import StreamChunker
from musicfs.store.delta import DeltaSync, _from_parts, _sample_offsets

pytestmark = pytest.mark.req("NFR-6.4")


class VouchingOrigin(LocalOrigin):
    """A folder whose files come with an MD5 of the whole, as an S3 ETag vouches for an object."""

    def __init__(self, origin_id, root, wrong: bool = False):
        super().__init__(origin_id, root)
        self.wrong = wrong

    def whole_checksum(self, version: str) -> Checksum | None:
        return Checksum("md5", "0" * 32 if self.wrong else version, "ETag")


def cache_whole(cache: ContentCache, origin_id: str, path: str, data: bytes, version: str) -> None:
    chunker = StreamChunker()
    pieces = chunker.feed(data) + chunker.finish()
    cache.store_chunks([(digest(p.data), p.data) for p in pieces])
    refs = [ChunkRef(p.offset, len(p.data), digest(p.data)) for p in pieces]
    assert cache.save_manifest(origin_id, path, len(data), version, refs)


def rebuilt_bytes(cache: ContentCache, origin_id: str, path: str) -> bytes:
    manifest = cache.manifest(origin_id, path)
    return b"".join(cache.read_chunks(list(manifest.chunks)))


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "origin"
    tracks = write_media_library(root, albums=2, per_album=1, seconds=20)  # a FLAC and an MP3
    cache = ContentCache(tmp_path / "cache", 10**9, lambda *events: None)
    yield root, tracks, cache
    cache.close()


@pytest.mark.parametrize("vouched", [False, True])
def test_a_retagged_version_is_rebuilt_byte_for_byte_from_the_old_chunks(setup, vouched):
    root, tracks, cache = setup
    for track in tracks:
        path = root / track.path
        old = path.read_bytes()
        cache_whole(cache, "o", track.path, old, "v1")
        old_region = audio_region(io.BytesIO(old), len(old), track.fmt)
        write_tags(path, track.fmt, tag_plan(track, cover_key=99, comment_pad=1500))
        new = path.read_bytes()
        region = audio_region(io.BytesIO(new), len(new), track.fmt)
        entry = LocalOrigin("o", root).stat(track.path)
        version = hashlib.md5(new).hexdigest() if vouched else entry.version_key
        entry = type(entry)(entry.path, entry.size, entry.mtime_ns, version if vouched else "")
        origin = VouchingOrigin("o", root) if vouched else LocalOrigin("o", root)
        parts = [(0, new[:region.start]), (region.end, new[region.end:])]  # what a tag scan read
        result = DeltaSync(cache).rebuild(origin, entry, old_region, region, parts)
        assert result.done, result.reason
        assert rebuilt_bytes(cache, "o", track.path) == new
        assert result.reused > 0.8 * region.length and result.fetched <= 16 * 4096


def test_other_audio_a_wrong_checksum_or_an_unknown_region_is_refused(setup, tmp_path):
    root, tracks, cache = setup
    flac, mp3 = tracks
    for track in tracks:
        cache_whole(cache, "o", track.path, (root / track.path).read_bytes(), "v1")
    # the MP3 with other audio of the same length: the samples differ
    old = (root / mp3.path).read_bytes()
    old_region = audio_region(io.BytesIO(old), len(old), "mp3")
    other = write_media_library(tmp_path / "other", albums=2, per_album=2, seconds=20)[3]
    shutil.copyfile(tmp_path / "other" / other.path, root / mp3.path)
    new = (root / mp3.path).read_bytes()
    region = audio_region(io.BytesIO(new), len(new), "mp3")
    entry = LocalOrigin("o", root).stat(mp3.path)
    delta = DeltaSync(cache)
    result = delta.rebuild(LocalOrigin("o", root), entry, old_region, region, [])
    assert not result.done and ("differs" in result.reason or "audio is" in result.reason), result.reason
    assert cache.manifest("o", mp3.path).version == "v1", "a refused rebuild left the old map"
    # the FLAC retagged, but its origin's checksum of the whole disagrees with the rebuilt file
    old = (root / flac.path).read_bytes()
    old_region = audio_region(io.BytesIO(old), len(old), "flac")
    write_tags(root / flac.path, "flac", tag_plan(flac, comment_pad=100))
    new = (root / flac.path).read_bytes()
    region = audio_region(io.BytesIO(new), len(new), "flac")
    entry = LocalOrigin("o", root).stat(flac.path)
    wrong = delta.rebuild(VouchingOrigin("o", root, wrong=True), entry, old_region, region, [])
    assert "checksum" in wrong.reason or "ETag" in wrong.reason, wrong.reason
    unknown = delta.rebuild(LocalOrigin("o", root), entry, None, region, [])
    assert "region" in unknown.reason
    assert delta.statistics()["refused"] == 3 and delta.statistics()["rebuilt"] == 0


def test_samples_cover_the_audio_ends_included_and_parts_join():
    offsets = _sample_offsets(1000, 101_000, 16, 4096)
    assert offsets[0] == 1000 and offsets[-1] + 4096 == 101_000 and len(offsets) == 16
    parts = [(0, b"a" * 10), (10, b"b" * 10), (30, b"c" * 5)]
    assert _from_parts(parts, 5, 15) == b"a" * 5 + b"b" * 5
    assert _from_parts(parts, 15, 32) is None
    assert _from_parts(parts, 31, 33) == b"cc"


def test_a_cache_that_fails_under_a_scan_costs_the_header_never_the_scan(setup, caplog):
    from musicfs.store.delta import ScanKeeper
    from musicfs.store.headers import HeaderTier

    root, tracks, cache = setup
    keeper = ScanKeeper(HeaderTier(cache, 10**8), DeltaSync(cache))
    entry = LocalOrigin("o", root).stat(tracks[0].path)
    cache.index.close()  # every query of the chunk index now fails
    keeper.keep(LocalOrigin("o", root), entry, [(0, b"x" * 100)], None)
    assert "was not kept in the cache" in caplog.text


def test_a_filled_map_says_fetched_and_a_rebuilt_one_says_delta_with_the_bytes_it_reused(setup, tmp_path):
    """How a version's content was obtained is kept with its map: what ``musicfs-inspect manifest``
    and the cache's statistics show to tell a retag that cost a few KiB from a file read again."""
    from musicfs.store.inspect import manifest_map
    from tests.test_cached_reader import fill_cache

    root, tracks, cache = setup
    cache.close()
    flac = tracks[0]
    fill_cache(tmp_path / "filled", root, [flac.path])  # a reader's fill, origin "local"
    cache = ContentCache(tmp_path / "filled", 10**9, lambda *events: None)
    try:
        old = cache.manifest("local", flac.path)
        assert old.complete and (old.obtained, old.reused_bytes) == ("fetched", 0)
        stats = cache.statistics()
        assert (stats["manifests_fetched"], stats["manifests_delta"], stats["reused_bytes"]) == (1, 0, 0)

        path = root / flac.path
        before = path.read_bytes()
        old_region = audio_region(io.BytesIO(before), len(before), "flac")
        write_tags(path, "flac", tag_plan(flac, cover_key=99, comment_pad=1500))
        new = path.read_bytes()
        region = audio_region(io.BytesIO(new), len(new), "flac")
        entry = LocalOrigin("local", root).stat(flac.path)
        parts = [(0, new[:region.start]), (region.end, new[region.end:])]
        result = DeltaSync(cache).rebuild(LocalOrigin("local", root), entry, old_region, region, parts)
        assert result.done, result.reason
        moved = [c for c in old.chunks if c.offset >= old_region.start and c.end <= old_region.end]
        shift = region.start - old_region.start
        rebuilt = cache.manifest("local", flac.path)
        assert {(c.offset + shift, c.address) for c in moved} <= {(c.offset, c.address) for c in rebuilt.chunks}
        assert rebuilt.obtained == "delta" and rebuilt.reused_bytes == sum(c.size for c in moved) == result.reused
        stats = cache.statistics()
        assert (stats["manifests_fetched"], stats["manifests_delta"]) == (0, 1)
        assert stats["reused_bytes"] == result.reused
    finally:
        cache.close()
    shown = manifest_map(tmp_path / "filled", "local", flac.path)
    assert (shown["obtained"], shown["reused_bytes"], shown["size"]) == ("delta", result.reused, len(new))


def test_a_cache_made_before_maps_said_how_they_were_obtained_reads_them_as_fetched(tmp_path):
    """An older cache's maps were all fetched (delta sync did not exist): its index is migrated in
    place, its maps read as fetched, and new maps record how they were obtained."""
    from musicfs.store.chunkdb import ChunkIndex

    data = [b"a" * 30_000, b"b" * 20_000]
    conn = sqlite3.connect(tmp_path / "chunks.db")
    conn.execute("CREATE TABLE manifests (id INTEGER PRIMARY KEY, origin_id TEXT NOT NULL, real_path TEXT NOT NULL,"
                 " size INTEGER NOT NULL, version TEXT NOT NULL, created_at REAL NOT NULL,"
                 " complete INTEGER NOT NULL DEFAULT 1)")
    conn.execute("CREATE TABLE manifest_chunks (manifest_id INTEGER NOT NULL, seq INTEGER NOT NULL, offset INTEGER"
                 " NOT NULL, size INTEGER NOT NULL, address TEXT NOT NULL, PRIMARY KEY (manifest_id, seq))"
                 " WITHOUT ROWID")
    conn.execute("INSERT INTO manifests VALUES (1, 'o', 'old.flac', 50000, 'v1', 1000.0, 1)")
    conn.executemany("INSERT INTO manifest_chunks VALUES (1, ?, ?, ?, ?)",
                     [(0, 0, 30_000, digest(data[0])), (1, 30_000, 20_000, digest(data[1]))])
    conn.commit()
    conn.close()
    index = ChunkIndex(tmp_path / "chunks.db")
    try:
        old = index.manifest("o", "old.flac")
        assert old is not None and (old.obtained, old.reused_bytes) == ("fetched", 0) and len(old.chunks) == 2
        refs = [ChunkRef(0, 30_000, digest(data[0])), ChunkRef(30_000, 20_000, digest(data[1]))]
        index.save_manifest("o", "new.flac", 50_000, "v2", refs, obtained="delta", reused_bytes=20_000)
        assert (index.manifest("o", "new.flac").obtained, index.manifest("o", "new.flac").reused_bytes) == \
            ("delta", 20_000)
        stats = index.statistics()
        assert (stats["manifests"], stats["manifests_fetched"], stats["manifests_delta"], stats["reused_bytes"]) == \
            (2, 1, 1, 20_000)
    finally:
        index.close()
