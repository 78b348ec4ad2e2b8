"""The WavPack format reads real WavPack files (ffmpeg's encoder, APEv2 tags written with mutagen)
through musicfs's tag reading: tags, stream, cover; a damaged file is said to be one."""

from __future__ import annotations

import pytest
from musicfs_wavpack_format import COVER, WavPackFormat

from fixtures import images
from fixtures.audio import unavailable_formats
from fixtures.media import short_track
from fixtures.tags import TagPlan, write_tags
from musicfs.index.formats import FORMAT_GROUP, MalformedAudio, build, builtins, load
from musicfs.index.tags import read_tags
from musicfs.plugins import Provider

pytestmark = pytest.mark.skipif("wv" in unavailable_formats(), reason="WavPack files are made with ffmpeg")

PROVIDER = Provider(FORMAT_GROUP, "wv", "musicfs_wavpack_format:WavPackFormat", "musicfs-wavpack-format", "0.1.0",
                    "here")


@pytest.fixture(scope="module")
def formats():
    return build([*builtins(), (PROVIDER, False)])


def test_it_loads_as_musicfs_loads_a_format():
    assert load(PROVIDER) is WavPackFormat


def test_tags_stream_and_front_cover(tmp_path, formats):
    path = short_track(tmp_path, "A/Album/03.wv", "wv", 3, album="Album", cover="jpeg", seconds=2.0)
    got = read_tags(path, formats)
    assert {k: got[k] for k in ("title", "artist", "album", "album_artist", "year", "track", "format")} == {
        "title": "Song 3", "artist": "A", "album": "Album", "album_artist": "A", "year": 2001, "track": 3,
        "format": "wv"}
    assert got["duration_ms"] == 2000 and got["sample_rate"] == 44100
    assert 0 < got["bitrate"] < 44100 * 2 * 16  # lossless, smaller than PCM
    assert got["picture"] == images.jpeg(5, 384)


def test_spellings_taggers_use_and_a_file_without_tags(tmp_path, formats):
    path = short_track(tmp_path, "x.wv", "wv", 4, album="X", cover=None)
    write_tags(path, "wv", TagPlan("apev2", {"title": "T", "track": 4, "disc": 2}, track_total=12, disc_total=2,
                                   date="1999-05-01", number_style="slash"))
    got = read_tags(path, formats)
    assert (got["title"], got["track"], got["disc"], got["year"], got["picture"]) == ("T", 4, 2, 1999, None)
    write_tags(path, "wv", TagPlan("none"))
    bare = read_tags(path, formats)
    assert bare["title"] is None and bare["duration_ms"] == 500


def test_a_cover_item_that_is_not_an_image_item_is_no_cover(tmp_path, formats):
    from mutagen.apev2 import APEv2

    path = short_track(tmp_path, "x.wv", "wv", 5, album="X", cover=None)
    tags = APEv2(path)
    tags[COVER] = "cover.jpg"  # a text item under the cover's key
    tags.save(path)
    assert read_tags(path, formats)["picture"] is None


@pytest.mark.parametrize("cut", [4, 20, 31])  # inside the first block's 32-byte header
def test_a_damaged_file_is_corrupt_audio(tmp_path, formats, cut):
    whole = short_track(tmp_path, "whole.wv", "wv", 6, album="X", cover=None).read_bytes()
    damaged = tmp_path / "damaged.wv"
    damaged.write_bytes(whole[:cut])
    with pytest.raises(MalformedAudio) as info:
        read_tags(damaged, formats)
    assert info.value.reason in ("corrupt audio", "no audio stream"), info.value
    (tmp_path / "noise.wv").write_bytes(bytes(range(256)) * 64)
    with pytest.raises(MalformedAudio) as noise:
        read_tags(tmp_path / "noise.wv", formats)
    assert noise.value.reason == "corrupt audio", noise.value
