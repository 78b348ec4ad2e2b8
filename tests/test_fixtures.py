"""The fixture library is what every other test trusts, so check it against mutagen.

Each good file must parse, have a real duration and carry exactly the tags the
manifest claims (read back with the container's own API, not through the
generator's code); each broken file must fail to parse; two builds from one
seed must be byte-identical; the synthetic track stream must be fast,
deterministic and unique.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import unicodedata
from pathlib import Path

import mutagen
import pytest
from mutagen.flac import Picture

from fixtures import generate as generate_module
from fixtures.generate import generate_library
from fixtures.synthetic import synthetic_tracks

SEED = 1234
MUTAGEN_TYPES = {"flac": "FLAC", "mp3": "MP3", "ogg": "OggVorbis", "opus": "OggOpus",
                 "wav": "WAVE", "m4a": "MP4"}
IMAGE_MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
VORBIS_KEYS = {"title": "TITLE", "artist": "ARTIST", "album": "ALBUM",
               "albumartist": "ALBUMARTIST", "genre": "GENRE"}
ID3_FRAMES = {"title": "TIT2", "artist": "TPE1", "album": "TALB", "albumartist": "TPE2",
              "genre": "TCON"}
MP4_ATOMS = {"title": "\xa9nam", "artist": "\xa9ART", "album": "\xa9alb",
             "albumartist": "aART", "genre": "\xa9gen"}


@pytest.fixture(scope="module")
def ci_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci-library")
    started = time.perf_counter()
    manifest = generate_library(out, "ci", seed=SEED)
    return out, manifest, time.perf_counter() - started


def _single(values) -> str:
    values = list(values)
    assert len(values) == 1, f"expected one value, got {values!r}"
    return str(values[0])


def _split_number(text: str) -> tuple[int, int | None]:
    number, _, total = text.partition("/")
    return int(number), (int(total) if total else None)


def _read_vorbis(audio, fmt: str) -> tuple[dict, dict]:
    tags = audio.tags
    out = {field: _single(tags[key]) for field, key in VORBIS_KEYS.items() if key in tags}
    extra = {"compilation": tags.get("COMPILATION") == ["1"], "date": None, "cover": None,
             "track_total": None, "disc_total": None}
    if "DATE" in tags:
        extra["date"] = _single(tags["DATE"])
        out["year"] = int(extra["date"][:4])
    for field, name in (("track", "TRACK"), ("disc", "DISC")):
        if f"{name}NUMBER" in tags:
            out[field], total = _split_number(_single(tags[f"{name}NUMBER"]))
            if f"{name}TOTAL" in tags:
                total = int(_single(tags[f"{name}TOTAL"]))
            extra[f"{field}_total"] = total
    if fmt == "flac":
        pictures = audio.pictures
    else:
        pictures = [Picture(base64.b64decode(v)) for v in tags.get("METADATA_BLOCK_PICTURE", [])]
    if pictures:
        extra["cover"] = (pictures[0].mime, pictures[0].data)
    return out, extra


def _read_id3(tags) -> tuple[dict, dict]:
    out = {field: _single(tags[frame].text) for field, frame in ID3_FRAMES.items()
           if frame in tags}
    extra = {"compilation": "TCMP" in tags and tags["TCMP"].text == ["1"], "date": None,
             "cover": None, "track_total": None, "disc_total": None}
    if "TDRC" in tags:
        extra["date"] = _single(tags["TDRC"].text)
        out["year"] = int(extra["date"][:4])
    for field, frame in (("track", "TRCK"), ("disc", "TPOS")):
        if frame in tags:
            out[field], extra[f"{field}_total"] = _split_number(_single(tags[frame].text))
    pictures = tags.getall("APIC")
    if pictures:
        extra["cover"] = (pictures[0].mime, pictures[0].data)
    return out, extra


def _read_mp4(tags) -> tuple[dict, dict]:
    out = {field: _single(tags[atom]) for field, atom in MP4_ATOMS.items() if atom in tags}
    extra = {"compilation": bool(tags.get("cpil")), "date": None, "cover": None,
             "track_total": None, "disc_total": None}
    if "\xa9day" in tags:
        extra["date"] = _single(tags["\xa9day"])
        out["year"] = int(extra["date"][:4])
    for field, atom in (("track", "trkn"), ("disc", "disk")):
        if atom in tags:
            (number, total), = tags[atom]
            out[field], extra[f"{field}_total"] = number, total or None
    if tags.get("covr"):
        cover = tags["covr"][0]
        mime = "image/png" if cover.imageformat == cover.FORMAT_PNG else "image/jpeg"
        extra["cover"] = (mime, bytes(cover))
    return out, extra


def read_back(path: Path, entry: dict):
    """(mutagen object, tags as in the manifest, the other tag facts)."""
    audio = mutagen.File(path)
    assert audio is not None, f"{entry['path']}: mutagen does not recognise it"
    style = entry["tag_style"]
    if style == "none":
        assert not audio.tags, f"{entry['path']}: expected no tags, found {audio.tags!r}"
        return audio, {}, {"compilation": False, "date": None, "cover": None,
                           "track_total": None, "disc_total": None}
    if style == "vorbis":
        return (audio, *_read_vorbis(audio, entry["format"]))
    if style == "mp4":
        return (audio, *_read_mp4(audio.tags))
    expected_version = {"id3v1": (1, 1), "id3v2.3": (2, 3, 0), "id3v2.4": (2, 4, 0)}[style]
    assert audio.tags.version == expected_version, entry["path"]
    return (audio, *_read_id3(audio.tags))


def test_ci_build_is_quick_and_sized_for_ci(ci_build):
    _, manifest, elapsed = ci_build
    good = [e for e in manifest["files"] if not e["broken"]]
    assert elapsed < 30, f"ci build took {elapsed:.1f}s"
    assert 60 <= len(good) <= 130
    assert manifest["seed"] == SEED and manifest["size"] == "ci"


def test_manifest_describes_every_file_on_disk(ci_build):
    out, manifest, _ = ci_build
    library = out / "library"
    on_disk = {p.relative_to(library).as_posix() for p in library.rglob("*") if p.is_file()}
    listed = [e["path"] for e in manifest["files"]] + [e["path"] for e in manifest["extras"]]
    assert len(listed) == len(set(listed))
    assert on_disk == set(listed)
    for entry in manifest["files"] + manifest["extras"]:
        data = (library / entry["path"]).read_bytes()
        assert len(data) == entry["size"], entry["path"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]


def test_good_files_parse_and_carry_exactly_the_manifest_tags(ci_build):
    out, manifest, _ = ci_build
    good = [e for e in manifest["files"] if not e["broken"]]
    for entry in good:
        audio, tags, extra = read_back(out / "library" / entry["path"], entry)
        where = entry["path"]
        assert type(audio).__name__ == MUTAGEN_TYPES[entry["format"]], where
        assert audio.info.length > 0, where
        if entry["format"] != "m4a":   # mutagen reports 2 channels for ffmpeg's mono AAC
            assert audio.info.channels == entry["audio"]["channels"], where
        if entry["format"] != "opus":  # Opus has no stored rate to report (always 48 kHz)
            assert audio.info.sample_rate == entry["audio"]["sample_rate"], where
        assert tags == entry["tags"], where
        assert extra["compilation"] == entry["compilation"], where
        assert extra["track_total"] == entry["track_total"], where
        assert extra["disc_total"] == entry["disc_total"], where
        if entry["date"] is not None:
            assert extra["date"] == entry["date"], where
        elif "year" in entry["tags"]:
            assert extra["date"] == str(entry["tags"]["year"]), where
        if entry["cover"] is None:
            assert extra["cover"] is None, where
        else:
            mime, data = extra["cover"]
            assert mime == entry["cover"] and data.startswith(IMAGE_MAGIC[mime]), where


def test_broken_files_do_not_parse(ci_build):
    out, manifest, _ = ci_build
    broken = [e for e in manifest["files"] if e["broken"]]
    assert {e["broken"] for e in broken} == {"zero-length", "truncated-header", "random-bytes",
                                             "absurd-frame"}
    assert {e["format"] for e in broken} == {"flac", "mp3"}
    outcome = {}
    for entry in broken:
        try:
            audio = mutagen.File(out / "library" / entry["path"])
        except Exception as exc:  # noqa: BLE001 - mutagen raises assorted types on garbage
            outcome[entry["path"]] = type(exc).__name__
        else:
            assert audio is None or not audio.info.length, f"{entry['path']} parsed: {audio!r}"
            outcome[entry["path"]] = "not recognised"
    assert set(outcome) == {e["path"] for e in broken}


def test_edge_cases_are_all_present(ci_build):
    _, manifest, _ = ci_build
    files = [e for e in manifest["files"] if not e["broken"]]
    labels = {label for e in files for label in e["edge_cases"]}
    required = {
        "missing-artist", "missing-album", "missing-title", "missing-year", "missing-track",
        "no-tags", "empty-value", "unicode-nfc", "unicode-nfd", "nfc-nfd-collision",
        "unicode-astral", "slash", "nul", "dotdot", "dot", "leading-dot", "long-utf8",
        "sanitize-collision", "case-collision", "duplicate-tags", "duplicate-audio",
        "duplicate-file", "compilation", "multi-disc", "id3v1-only", "wav-id3", "cover-png",
        "cover-jpeg", "ext-mismatch",
    }
    assert required <= labels, required - labels
    values = [v for e in files for v in e["tags"].values() if isinstance(v, str)]
    assert any("/" in v for v in values) and any("\x00" in v for v in values)
    assert ".." in values and "." in values and any(v.startswith(".") and v != "." and v != ".."
                                                    for v in values)
    assert any(len(v.encode()) > 255 and len(v) < 255 for v in values)
    nfd_only = [v for v in values if unicodedata.normalize("NFC", v) != v]
    assert any(unicodedata.normalize("NFC", v) in values for v in nfd_only)
    styles = {e["tag_style"] for e in files}
    assert {"id3v2.3", "id3v2.4", "vorbis", "none"} <= styles
    assert {e["format"] for e in files} == set(manifest["formats"]["available"])
    assert manifest["formats"]["available"][:2] == ["flac", "mp3"]
    # the same tags on different files, and the same audio stream in different files
    tag_sets = [tuple(sorted(e["tags"].items())) for e in files if e["tags"]]
    assert len(tag_sets) > len(set(tag_sets))
    copies = [e for e in files if "duplicate-file" in e["edge_cases"]]
    assert len(copies) == 2 and copies[0]["sha256"] == copies[1]["sha256"]
    # multi-disc albums reuse track numbers across discs
    reels = [e["tags"] for e in files if e["tags"].get("album") == "Double Feature"]
    assert {(t["disc"], t["track"]) for t in reels} >= {(1, 1), (2, 1)}
    # the compilation is marked as one
    comp = [e for e in files if "compilation" in e["edge_cases"]]
    assert all(e["compilation"] for e in comp)
    assert {e["tags"].get("albumartist") for e in comp} == {"Various Artists", None}


def test_same_seed_gives_identical_library(ci_build, tmp_path):
    out, manifest, _ = ci_build
    again = generate_library(tmp_path, "ci", seed=SEED)
    assert again == manifest
    for entry in manifest["files"]:
        first, second = out / "library" / entry["path"], tmp_path / "library" / entry["path"]
        assert first.read_bytes() == second.read_bytes(), entry["path"]
        assert os.stat(first).st_mtime_ns == os.stat(second).st_mtime_ns == entry["mtime_ns"]


def test_another_seed_changes_the_audio(ci_build, tmp_path):
    _, manifest, _ = ci_build
    other = generate_library(tmp_path, "ci", seed=SEED + 1)
    before = {e["path"]: e["sha256"] for e in manifest["files"] if not e["broken"]}
    after = {e["path"]: e["sha256"] for e in other["files"] if not e["broken"]}
    shared = before.keys() & after.keys()
    assert shared and sum(before[p] != after[p] for p in shared) > len(shared) // 2


def test_missing_format_is_skipped_with_a_note(ci_build, tmp_path, monkeypatch):
    _, manifest, _ = ci_build
    monkeypatch.setattr(generate_module, "unavailable_formats",
                        lambda: {"opus": "pretend libsndfile lacks OGG/OPUS"})
    reduced = generate_library(tmp_path, "ci", seed=SEED)
    assert reduced["formats"]["skipped"] == {"opus": "pretend libsndfile lacks OGG/OPUS"}
    assert any("opus" in note for note in reduced["notes"])
    assert all(e["format"] != "opus" for e in reduced["files"])
    full = {e["path"]: e for e in manifest["files"] if e["format"] != "opus"}
    assert {e["path"]: e for e in reduced["files"]} == full


def test_existing_foreign_directory_is_not_overwritten(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_library(tmp_path, "ci", seed=SEED)
    assert (tmp_path / "library" / "keep.txt").read_text() == "mine"


SYNTHETIC_KEYS = {"real_path", "size", "mtime_ns", "title", "artist", "album", "albumartist",
                  "genre", "year", "track", "disc", "duration_ms", "bitrate", "sample_rate",
                  "format"}


def test_synthetic_tracks_are_deterministic_and_unique():
    first = list(synthetic_tracks(20_000, seed=7))
    assert first == list(synthetic_tracks(20_000, seed=7))
    assert first != list(synthetic_tracks(20_000, seed=8))
    assert len(first) == 20_000
    assert len({t["real_path"] for t in first}) == 20_000
    assert all(set(t) == SYNTHETIC_KEYS for t in first)
    albums = {(t["albumartist"], t["album"]) for t in first}
    artists = {t["albumartist"] for t in first}
    assert 20_000 / 20 < len(albums) < 20_000 / 8
    assert 20_000 / 240 < len(artists) < 20_000 / 60
    assert any(not t["title"].isascii() for t in first)
    assert {t["format"] for t in first} == {"flac", "mp3", "ogg", "opus", "m4a", "wav"}
    assert all(t["duration_ms"] > 0 and t["size"] > 0 for t in first)


def test_synthetic_single_album_holds_k_tracks():
    tracks = list(synthetic_tracks(1_500, seed=3, single_album=1_000))
    huge = tracks[:1_000]
    assert len({(t["albumartist"], t["album"]) for t in huge}) == 1
    assert [t["track"] for t in huge] == list(range(1, 1_001))
    assert len({t["real_path"] for t in tracks}) == 1_500
    assert all((t["albumartist"], t["album"]) != (huge[0]["albumartist"], huge[0]["album"])
               for t in tracks[1_000:])


def test_synthetic_100k_is_fast():
    started = time.perf_counter()
    count = sum(1 for _ in synthetic_tracks(100_000, seed=1))
    elapsed = time.perf_counter() - started
    assert count == 100_000
    assert elapsed < 5, f"100K synthetic tracks took {elapsed:.2f}s"


def test_format_set_figures_are_what_an_independent_decoder_reads(tmp_path):
    """The FR-6 format set (fixtures.formats) states durations, rates and channels a real mount is
    held to; ffprobe, another decoder than the one musicfs uses, must read the same from each file
    (its MP4 duration honours the edit list, so AAC's priming frame is not counted there)."""
    import json
    import subprocess

    from fixtures.formats import FORMATS, build_format_set

    root = tmp_path / "formats"
    files = build_format_set(root)
    assert {f.format for f in files} == set(FORMATS)
    for known in files:
        done = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                               "stream=sample_rate,channels,duration", "-of", "json", str(root / known.path)],
                              check=True, capture_output=True, text=True)
        stream = json.loads(done.stdout)["streams"][0]
        assert int(stream["sample_rate"]) == known.sample_rate, known.path
        assert int(stream["channels"]) == known.channels, known.path
        if known.format != "mp3":  # ffprobe counts LAME's encoder delay and padding in; mutagen subtracts them
            assert abs(float(stream["duration"]) * 1000 - known.duration_ms) <= known.duration_slack_ms, known.path
        assert mutagen.File(root / known.path).tags is not None, f"{known.path} has no tags"
