"""Album artwork in process: finding covers, recording them once, keeping their bytes (ART-1).

The real mount's side (``cover.jpg`` in album directories, offline reads) is in
``conformance/test_artwork.py``.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import pytest
from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, ID3

from fixtures import images
from fixtures.media import short_track
from fixtures.tags import TagPlan, write_tags
from musicfs.digest import digest
from musicfs.index import artwork
from musicfs.index.artwork import sidecar_rank
from musicfs.index.library import LibraryIndex
from musicfs.index.pictures import front_picture, identify
from musicfs.index.scanner import Scanner
from musicfs.index.tags import read_tags
from musicfs.index.template import PathTemplate
from musicfs.origins.local import LocalOrigin
from musicfs.store.artwork import ArtShelf
from musicfs.store.cache import ContentCache
from musicfs.store.chunkdb import PIN_ART
from musicfs.store.chunker import MAX_SIZE

pytestmark = pytest.mark.req("ART-1")

COVER = images.jpeg(5, blocks=384)  # 3072 x 3072, 338 KB: past one chunk, stored in pieces
OTHER = images.png(9, size=48)


def scan(index: LibraryIndex, root: Path, shelf: ArtShelf | None):
    return Scanner(index, LocalOrigin("local", root), PathTemplate(), workers=2, read=read_tags,
                   artwork=shelf).run()


@pytest.fixture
def shelf(tmp_path):
    cache = ContentCache(tmp_path / "cache", 1 << 30, lambda *events: None)
    yield ArtShelf(cache, 64 << 20)
    cache.close()


def album_dir(index: LibraryIndex, album: str) -> int:
    return index.conn.execute("SELECT n.parent FROM nodes n JOIN tracks t ON t.id = n.track_id"
                              " WHERE t.album = ? LIMIT 1", (album,)).fetchone()[0]


# -- finding the picture -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg", "m4a"])
def test_the_embedded_front_cover_is_found_in_every_format(tmp_path, fmt):
    cover = "png" if fmt == "m4a" else "jpeg"
    path = short_track(tmp_path, f"a.{fmt}", fmt, 1, album="X", cover=cover, cover_key=3, cover_blocks=4)
    picture = read_tags(str(path))["picture"]
    expected = images.png(3) if cover == "png" else images.jpeg(3, 4)
    assert picture == expected
    image = identify(picture)
    assert image is not None and image.address == digest(expected)
    assert image.mime == ("image/png" if cover == "png" else "image/jpeg")
    assert image.file_name == ("cover.png" if cover == "png" else "cover.jpg")


def test_only_a_front_or_untyped_picture_is_the_cover(tmp_path):
    path = short_track(tmp_path, "a.mp3", "mp3", 1, album="X", cover=None)
    tags = ID3(path)
    tags.add(APIC(encoding=3, mime="image/png", type=4, desc="back", data=OTHER))  # a back cover
    tags.save(path)
    assert read_tags(str(path))["picture"] is None
    tags.add(APIC(encoding=3, mime="image/jpeg", type=0, desc="other", data=COVER))
    tags.save(path)
    assert read_tags(str(path))["picture"] == COVER  # type 0: what many taggers write
    tags.add(APIC(encoding=3, mime="image/png", type=3, desc="front", data=images.png(4)))
    tags.save(path)
    assert read_tags(str(path))["picture"] == images.png(4)  # the front cover wins


def test_bytes_that_are_no_image_cost_the_cover_not_the_track(tmp_path, shelf):
    path = short_track(tmp_path / "lib", "A/X/01.flac", "flac", 1, album="X", cover=None)
    flac = FLAC(path)
    junk = Picture()
    junk.type, junk.mime, junk.data = 3, "image/jpeg", b"\xff\xd8\xff" + b"\x00" * 5000
    flac.add_picture(junk)
    flac.save()
    assert identify(junk.data) is None and identify(b"") is None
    assert front_picture(FLAC(path)) == junk.data
    with LibraryIndex(tmp_path / "i.db") as index:
        report = scan(index, tmp_path / "lib", shelf)
        assert report.added == 1 and report.skipped == 0
        assert artwork.album_cover(index.conn, album_dir(index, "X")) is None


def test_a_hostile_ogg_picture_block_is_ignored():
    class Tags(dict):
        pass

    class Audio:
        tags = Tags(metadata_block_picture=[base64.b64encode(b"\x00\x00\x00\x03garbage").decode(), "!!"])

    assert front_picture(Audio()) is None


def test_sidecar_names_and_their_order():
    assert sidecar_rank("A/B/cover.jpg") < sidecar_rank("A/B/folder.jpg") < sidecar_rank("A/B/front.png")
    assert sidecar_rank("A/B/Cover.JPEG") == sidecar_rank("x/cover.png")
    assert sidecar_rank("cover.webp") > sidecar_rank("cover.jpg")
    for name in ("A/back.jpg", "A/cover.txt", "A/cover", "A/covers.jpg", "A/cover.jpg/x.flac"):
        assert sidecar_rank(name) is None


# -- recorded once, kept once --------------------------------------------------------------------
def test_the_same_picture_in_twelve_tracks_is_stored_once(tmp_path, shelf):
    lib = tmp_path / "lib"
    for n in range(1, 13):
        short_track(lib, f"A/Twelve/{n:02d}.flac", "flac", n, album="Twelve")
    with LibraryIndex(tmp_path / "i.db") as index:
        scan(index, lib, shelf)
        conn = index.conn
        assert conn.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM artwork WHERE source = 'embedded'").fetchone()[0] == 12
        cover = artwork.album_cover(conn, album_dir(index, "Twelve"))
        assert cover is not None and cover.image.address == digest(COVER) and cover.image.size == len(COVER)
        assert (cover.image.width, cover.image.height) == (3072, 3072)
    stats = shelf.statistics()
    assert stats["images"] == 1 and stats["bytes"] == len(COVER)
    assert stats["kept"] == 1 and stats["deduplicated"] == 11
    assert stats["stored_bytes"] == len(COVER) and stats["chunks"] == -(-len(COVER) // MAX_SIZE) > 1
    assert shelf.load(digest(COVER)) == COVER


def test_a_folder_image_covers_the_tracks_that_embed_none(tmp_path, shelf):
    lib = tmp_path / "lib"
    short_track(lib, "A/Plain/01.mp3", "mp3", 1, album="Plain", cover=None)
    short_track(lib, "A/Plain/02.mp3", "mp3", 2, album="Plain", cover=None)
    short_track(lib, "A/Mixed/01.flac", "flac", 3, album="Mixed")  # embeds COVER
    short_track(lib, "A/Mixed/02.flac", "flac", 4, album="Mixed", cover=None)
    short_track(lib, "A/Bare/01.ogg", "ogg", 5, album="Bare", cover=None)
    (lib / "A/Plain/folder.png").write_bytes(OTHER)
    (lib / "A/Plain/cover.jpg").write_bytes(images.jpeg(8, 4))  # cover.* before folder.*
    (lib / "A/Mixed/cover.png").write_bytes(OTHER)
    (lib / "A/Bare/cover.jpg").write_bytes(b"not an image at all")
    with LibraryIndex(tmp_path / "i.db") as index:
        report = scan(index, lib, shelf)
        assert report.images == 4 and report.added == 5 and report.skipped == 0
        plain = artwork.album_cover(index.conn, album_dir(index, "Plain"))
        assert plain.image.address == digest(images.jpeg(8, 4))
        sources = dict(index.conn.execute(
            "SELECT t.real_path, a.source FROM artwork a JOIN tracks t ON t.id = a.track_id"))
        assert sources == {"A/Plain/01.mp3": "folder", "A/Plain/02.mp3": "folder",
                           "A/Mixed/01.flac": "embedded", "A/Mixed/02.flac": "folder"}
        assert artwork.album_cover(index.conn, album_dir(index, "Bare")) is None
        # a tie (one embedded, one folder image): the first track's
        assert artwork.album_cover(index.conn, album_dir(index, "Mixed")).image.address == digest(COVER)

        # the folder's cover.jpg goes: folder.png takes over; its bytes are let go when nothing shows it
        (lib / "A/Plain/cover.jpg").unlink()
        (lib / "A/Mixed/cover.png").unlink()
        report = scan(index, lib, shelf)
        assert report.images == 0
        assert artwork.album_cover(index.conn, album_dir(index, "Plain")).image.address == digest(OTHER)
        (lib / "A/Plain/folder.png").unlink()
        scan(index, lib, shelf)
        assert artwork.album_cover(index.conn, album_dir(index, "Plain")) is None
        left = {row[0] for row in index.conn.execute("SELECT address FROM images")}
        assert left == {digest(COVER)}
    assert shelf.load(digest(images.jpeg(8, 4))) is None and shelf.load(digest(OTHER)) is None
    assert shelf.statistics()["images"] == 1 and shelf.statistics()["released"] == 2


def test_a_retagged_track_gets_its_new_cover_and_the_old_one_goes(tmp_path, shelf):
    lib = tmp_path / "lib"
    path = short_track(lib, "A/X/01.flac", "flac", 1, album="X", cover_key=5)
    with LibraryIndex(tmp_path / "i.db") as index:
        scan(index, lib, shelf)
        write_tags(path, "flac", TagPlan("vorbis", {"title": "t", "album": "X", "albumartist": "A", "year": 2001,
                                                    "track": 1}, cover="png", cover_key=6))
        scan(index, lib, shelf)
        cover = artwork.album_cover(index.conn, album_dir(index, "X"))
        assert cover.image.address == digest(images.png(6)) and cover.image.file_name == "cover.png"
        removed = path.unlink()
        assert removed is None
        scan(index, lib, shelf)
        assert index.conn.execute("SELECT COUNT(*) FROM artwork").fetchone()[0] == 0
        assert index.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
    with shelf.cache.locked() as chunks:
        assert chunks.conn.execute(f"SELECT COUNT(*) FROM chunks WHERE pinned & {PIN_ART}").fetchone()[0] == 0


def test_images_past_the_limit_are_not_kept_and_are_read_from_the_origin(tmp_path):
    lib = tmp_path / "lib"
    short_track(lib, "A/X/01.flac", "flac", 1, album="X")
    cache = ContentCache(tmp_path / "cache", 1 << 30, lambda *events: None)
    origin = LocalOrigin("local", lib)
    tight = ArtShelf(cache, len(COVER) - 1, {"local": origin})
    try:
        with LibraryIndex(tmp_path / "i.db") as index:
            scan(index, lib, tight)
            cover = artwork.album_cover(index.conn, album_dir(index, "X"))
            assert tight.statistics()["over_limit"] == 1 and tight.load(cover.image.address) is None
            sources = artwork.sources(index.conn, cover.id)
            assert [s.embedded for s in sources] == [True]
            assert tight.fetch(cover.image.address, sources) == COVER
            assert tight.statistics()["fetched"] == 1
    finally:
        cache.close()


def test_a_damaged_piece_is_a_miss_then_read_again_from_the_origin(tmp_path):
    from tests.cachefiles import flip_bit, stored_chunks

    lib = tmp_path / "lib"
    short_track(lib, "A/X/01.flac", "flac", 1, album="X")
    (lib / "A/X/cover.jpg").write_bytes(COVER)
    cache = ContentCache(tmp_path / "cache", 1 << 30, lambda *events: None)
    shelf = ArtShelf(cache, 64 << 20, {"local": LocalOrigin("local", lib)})
    try:
        with LibraryIndex(tmp_path / "i.db") as index:
            scan(index, lib, shelf)
            cover = artwork.album_cover(index.conn, album_dir(index, "X"))
            for chunk in stored_chunks(tmp_path / "cache").values():
                flip_bit(chunk)
            assert shelf.load(cover.image.address) is None  # never the damaged bytes
            sources = artwork.sources(index.conn, cover.id)
            assert not sources[0].embedded  # the image file first: it costs its bytes only
            assert shelf.fetch(cover.image.address, sources) == COVER
            assert shelf.load(cover.image.address) == COVER
    finally:
        cache.close()


def test_an_index_before_artwork_gains_the_tables(tmp_path, monkeypatch):
    from musicfs.index import db as index_db
    from musicfs.index.schema import MIGRATIONS

    with monkeypatch.context() as before:
        before.setattr(index_db, "MIGRATIONS", [m for m in MIGRATIONS if m[0] <= 4])
        before.setattr(index_db, "LATEST", 4)
        LibraryIndex(tmp_path / "old.db").close()
    with LibraryIndex(tmp_path / "old.db") as index:
        tables = {row[0] for row in index.conn.execute("SELECT name FROM sqlite_master")}
        assert {"images", "artwork", "sidecars"} <= tables
    with pytest.raises(sqlite3.IntegrityError):
        with LibraryIndex(tmp_path / "old.db") as index, index.transaction():
            index.conn.execute("INSERT INTO artwork (track_id, art_type, image_id, source) VALUES (1, 'front', 1, 'x')")
            index.conn.execute("INSERT INTO artwork (track_id, art_type, image_id, source) VALUES (1, 'front', 2, 'x')")
