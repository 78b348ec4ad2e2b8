"""Where a track's audio lies, apart from its tags (musicfs.index.layout): what a retag keeps (NFR-6.4)."""

from __future__ import annotations

import io
import random
import shutil

import pytest

from fixtures.media import tag_plan, write_media_library
from fixtures.tags import write_tags
from musicfs.index.layout import audio_region

pytestmark = pytest.mark.req("NFR-6.4")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return root, write_media_library(root, albums=3, per_album=1, seconds=8)


def region_of(path, fmt):
    data = path.read_bytes()
    return audio_region(io.BytesIO(data), len(data), fmt), data


def test_a_retag_moves_the_audio_and_keeps_it_byte_for_byte(media, tmp_path):
    root, tracks = media
    for track in tracks:
        before, old = region_of(root / track.path, track.fmt)
        assert before is not None and 0 < before.start < before.end <= len(old), track.fmt
        retagged = tmp_path / f"retagged.{track.fmt}"
        shutil.copyfile(root / track.path, retagged)
        # what a tagger does: other values, a longer comment, another cover. Ogg keeps its audio
        # pages only while the comment fills as many pages as before: they are numbered, and a
        # tagger renumbers every page after a comment that grew by a page (then nothing is reused)
        ogg = track.fmt in ("ogg", "opus")
        plan = tag_plan(track, cover_key=track.album if ogg else track.album + 50, comment_pad=0 if ogg else 3000)
        plan.values["title"] = "Retitled by a tagger"
        write_tags(retagged, track.fmt, plan)
        after, new = region_of(retagged, track.fmt)
        assert new != old and after is not None, track.fmt
        assert after.length == before.length and after.fingerprint == before.fingerprint, track.fmt
        assert new[after.start:after.end] == old[before.start:before.end], track.fmt
        if track.fmt == "flac":
            assert before.fingerprint.startswith("flac:")


def test_other_audio_has_another_fingerprint(media, tmp_path):
    root, tracks = media
    flac = next(t for t in tracks if t.fmt == "flac")
    other = write_media_library(tmp_path, albums=1, per_album=2, seconds=8)[1]  # same length, other audio
    first, _ = region_of(root / flac.path, "flac")
    second, _ = region_of(tmp_path / other.path, "flac")
    assert first.fingerprint != second.fingerprint


@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg", "opus", "m4a", "wav", "aiff"])
def test_hostile_bytes_have_no_region_or_one_inside_the_file(fmt):
    rng = random.Random(fmt)
    for _ in range(200):
        prefix = rng.choice([b"", b"fLaC", b"ID3\x04\x00\x00", b"OggS\x00\x02", b"RIFF\x00\x00\x00\x00WAVE",
                             b"\x00\x00\x00\x08ftyp"])
        data = prefix + rng.randbytes(rng.randint(0, 4000))
        region = audio_region(io.BytesIO(data), len(data), fmt)
        assert region is None or 0 <= region.start < region.end <= len(data)
