"""Delta sync on its own: a retagged version rebuilt from the old one's chunks, or refused (NFR-6.4)."""

from __future__ import annotations

import hashlib
import io
import shutil

import pytest

from fixtures.media import tag_plan, write_media_library
from fixtures.tags import write_tags
from musicfs.index.layout import audio_region
from musicfs.origins.base import Checksum
from musicfs.origins.local import LocalOrigin
from musicfs.store.cache import ContentCache
from musicfs.store.chunkdb import ChunkRef
from musicfs.store.chunker import StreamChunker
from musicfs.store.delta import DeltaSync, _from_parts, _sample_offsets
from musicfs.store.digest import digest

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
