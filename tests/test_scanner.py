"""The scanner on the generated library: tags, skipped files, rescans, resumption, the tree."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from musicfs.index.library import LibraryIndex
from musicfs.index.names import is_legal
from musicfs.index.scanner import Scanner
from musicfs.index.tags import read_tags
from musicfs.index.template import PathTemplate
from musicfs.origins.local import LocalOrigin
from musicfs.vfs.resolver import Resolver

FIELDS = {"title": "title", "artist": "artist", "album": "album", "albumartist": "album_artist",
          "genre": "genre", "year": "year", "track": "track", "disc": "disc"}


class CountingReader:
    """Wraps read_tags and counts the audio files actually opened."""

    def __init__(self, crash_after: int | None = None):
        self.paths: list[str] = []
        self.crash_after = crash_after

    def __call__(self, path: str) -> dict:
        if self.crash_after is not None and len(self.paths) >= self.crash_after:
            raise SystemExit("simulated crash in the middle of a scan")
        self.paths.append(path)
        return read_tags(path)


def scan(index: LibraryIndex, root, reader=read_tags, batch_size: int = 20):
    origin = LocalOrigin("local", root)
    return Scanner(index, origin, PathTemplate(), workers=2, batch_size=batch_size, read=reader).run()


@pytest.fixture
def library_copy(sample_library, tmp_path):
    root = tmp_path / "library"
    shutil.copytree(sample_library[0], root)
    return root


@pytest.fixture(scope="module")
def scanned(sample_library, tmp_path_factory):
    index = LibraryIndex(tmp_path_factory.mktemp("idx") / "index.db")
    report = scan(index, sample_library[0])
    yield index, report
    index.close()


def expected_value(tags: dict, key: str):
    """What the index should hold: the tag as written; blank text counts as missing."""
    value = tags.get(key)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


@pytest.mark.req("FR-6", "NFR-7.4")
def test_every_good_file_is_indexed_with_its_tags(scanned, good_files):
    index, report = scanned
    assert report.complete and report.added == len(good_files)
    for entry in good_files:
        row = index.conn.execute("SELECT * FROM tracks WHERE real_path = ?", (entry["path"],)).fetchone()
        assert row is not None, f"{entry['path']} was not indexed"
        for manifest_key, column in FIELDS.items():
            assert row[column] == expected_value(entry["tags"], manifest_key), (entry["path"], column)
        assert row["format"] == entry["format"]
        assert row["size"] == entry["size"]
        audio = entry["audio"]
        # Opus always decodes at 48 kHz (its header's input rate is informational)
        assert row["sample_rate"] == (48000 if entry["format"] == "opus" else audio["sample_rate"]), entry["path"]
        # AAC's priming frame shows in MP4's duration; no other codec may add or lose a millisecond
        slack = -(-1024 * 1000 // audio["sample_rate"]) if entry["format"] == "m4a" else 0
        assert 0 <= row["duration_ms"] - round(audio["seconds"] * 1000) <= slack + 1, entry["path"]
        if entry["format"] == "wav":
            assert row["bitrate"] == audio["sample_rate"] * audio["channels"] * 16, entry["path"]
        else:
            assert row["bitrate"] > 0, entry["path"]


@pytest.mark.req("NFR-7.4")
def test_every_broken_file_is_skipped_with_a_reason(scanned, broken_files):
    index, report = scanned
    skipped = {s.real_path: s for s in index.skipped()}
    assert {f["path"] for f in broken_files} == set(skipped)
    for entry in broken_files:
        assert skipped[entry["path"]].reason and skipped[entry["path"]].detail
        assert index.conn.execute("SELECT 1 FROM tracks WHERE real_path = ?", (entry["path"],)).fetchone() is None
    assert report.skipped == len(broken_files)


@pytest.mark.req("FS-1", "FS-3")
def test_tree_matches_the_template_for_every_track(scanned):
    index, _ = scanned
    resolver = Resolver(index.conn)
    template = PathTemplate()
    tracks = index.conn.execute("SELECT * FROM tracks").fetchall()
    files = index.conn.execute("SELECT COUNT(*) FROM nodes WHERE kind = 'file'").fetchone()[0]
    assert files == len(tracks)
    seen_paths = set()
    for track in tracks:
        node_id = index.conn.execute("SELECT id FROM nodes WHERE track_id = ?", (track["id"],)).fetchone()[0]
        path = resolver.path_of(node_id).split("/")
        expected = template.render(dict(track))
        assert path[:-1] == list(expected[:-1])
        stem, ext = os.path.splitext(expected[-1])
        assert path[-1] == expected[-1] or (path[-1].startswith(stem + " (") and path[-1].endswith(ext))
        assert all(is_legal(part) for part in path)
        seen_paths.add(tuple(path))
    assert len(seen_paths) == len(tracks)  # collisions got distinct names


@pytest.mark.req("FS-3")
def test_colliding_tag_sets_get_numbered_names(scanned):
    index, _ = scanned
    numbered = index.conn.execute(
        "SELECT name, wanted FROM nodes WHERE kind = 'file' AND name != wanted").fetchall()
    assert numbered, "the fixture library has tag sets that collide after sanitising"
    for name, wanted in numbered:
        assert name.startswith(os.path.splitext(wanted)[0] + " (")


@pytest.mark.req("NFR-8.3")
def test_rescan_of_unchanged_library_opens_no_audio_file(sample_library, tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    first = scan(index, sample_library[0])
    nodes_before = index.conn.execute("SELECT id, parent, name FROM nodes ORDER BY id").fetchall()
    counter = CountingReader()
    second = scan(index, sample_library[0], counter)
    assert counter.paths == [] and second.parsed == 0
    assert second.unchanged == first.seen and second.added == second.removed == 0
    assert index.conn.execute("SELECT id, parent, name FROM nodes ORDER BY id").fetchall() == nodes_before


@pytest.mark.req("NFR-8.3")
def test_interrupted_scan_resumes_without_redoing_work(sample_library, tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    crashing = CountingReader(crash_after=37)
    with pytest.raises(SystemExit):
        scan(index, sample_library[0], crashing, batch_size=10)
    done = {r[0] for r in index.conn.execute("SELECT real_path FROM tracks UNION SELECT real_path FROM skipped")}
    assert 0 < len(done) <= 37
    assert not index.is_complete()
    resumed = CountingReader()
    report = scan(index, sample_library[0], resumed)
    reopened = {os.path.relpath(p, sample_library[0]) for p in resumed.paths}
    assert not reopened & done, "files finished before the crash were read again"
    assert report.complete and index.is_complete()
    fresh = LibraryIndex(tmp_path / "fresh.db")
    scan(fresh, sample_library[0])
    q = "SELECT real_path, title, artist, album, track FROM tracks ORDER BY real_path"
    assert index.conn.execute(q).fetchall() == fresh.conn.execute(q).fetchall()


@pytest.mark.req("FS-6", "FS-7")
def test_rescan_follows_changes_and_keeps_inodes_of_unchanged_tracks(library_copy, good_files, tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    scan(index, library_copy)
    by_path = dict(index.conn.execute(
        "SELECT t.real_path, n.id FROM tracks t JOIN nodes n ON n.track_id = t.id").fetchall())
    flacs = [f for f in good_files if f["format"] == "flac" and f["tags"].get("title")]
    removed, retagged = flacs[0]["path"], flacs[1]["path"]
    (library_copy / removed).unlink()
    from mutagen.flac import FLAC
    audio = FLAC(library_copy / retagged)
    audio["title"] = "A Brand New Title"
    audio.save()
    os.utime(library_copy / retagged, ns=(time.time_ns(), time.time_ns() + 10**9))
    shutil.copy(library_copy / flacs[2]["path"], library_copy / "new-arrival.flac")
    counter = CountingReader()
    report = scan(index, library_copy, counter)
    assert (report.removed, report.updated, report.added) == (1, 1, 1)
    assert len(counter.paths) == 2
    after = dict(index.conn.execute(
        "SELECT t.real_path, n.id FROM tracks t JOIN nodes n ON n.track_id = t.id").fetchall())
    assert removed not in after
    assert after[retagged] != by_path[retagged]  # moved to a new name: a new node
    resolver = Resolver(index.conn)
    assert resolver.path_of(after[retagged]).endswith("A Brand New Title.flac")
    unchanged = set(by_path) - {removed, retagged}
    assert all(after[p] == by_path[p] for p in unchanged)
    # no directory is left empty
    empty = index.conn.execute(
        "SELECT COUNT(*) FROM nodes d WHERE d.kind = 'dir' AND d.id != 1 AND NOT EXISTS"
        " (SELECT 1 FROM nodes c WHERE c.parent = d.id)").fetchone()[0]
    assert empty == 0


def test_template_change_rebuilds_tree(sample_library, tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    scan(index, sample_library[0])
    origin = LocalOrigin("local", sample_library[0])
    Scanner(index, origin, PathTemplate("$genre/$artist - $title"), read=read_tags).run()
    top = {r[0] for r in index.conn.execute("SELECT name FROM nodes WHERE parent = 1")}
    genres = {r[0] or "Unknown Genre" for r in index.conn.execute("SELECT DISTINCT genre FROM tracks")}
    assert top == {g.replace("/", "_") for g in genres}


@pytest.mark.req("NFR-7.4")
def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(sample_library, good_files, tmp_path):
    """The index holds text: such a name is skipped with its bad bytes shown, the rest is indexed."""
    root = tmp_path / "library"
    root.mkdir()
    good = sample_library[0] / next(f["path"] for f in good_files if f["path"].endswith(".flac"))
    shutil.copy(good, root / "good.flac")
    shutil.copy(good, os.path.join(os.fsencode(root), b"bad-\xff-name.flac"))
    index = LibraryIndex(tmp_path / "index.db")
    report = scan(index, root)
    assert report.complete and report.skipped_reasons == {"bad-name": 1}
    rows = index.conn.execute("SELECT real_path, reason FROM skipped").fetchall()
    assert [tuple(row) for row in rows] == [("bad-\\xff-name.flac", "bad-name")]
    assert [r[0] for r in index.conn.execute("SELECT real_path FROM tracks")] == ["good.flac"]
    again = scan(index, root)
    assert again.unchanged == 2 and again.skipped_reasons == {"bad-name": 1}
    index.close()


@pytest.mark.req("FAULT-28", "NFR-7.4")
def test_whatever_a_reader_raises_costs_one_file_not_the_scan(sample_library, good_files, tmp_path):
    """mutagen on hostile bytes raises more than MutagenError (RecursionError, OverflowError, ...)."""
    root = tmp_path / "library"
    root.mkdir()
    good = sample_library[0] / next(f["path"] for f in good_files if f["path"].endswith(".flac"))
    kinds = {"recursion": RecursionError, "overflow": OverflowError, "memory": MemoryError,
             "zero": ZeroDivisionError, "attribute": AttributeError, "unicode": UnicodeDecodeError}
    for name in [*kinds, "fine"]:
        shutil.copy(good, root / f"{name}.flac")

    def reader(path: str) -> dict:
        kind = kinds.get(os.path.basename(path)[:-5])
        if kind is UnicodeDecodeError:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        if kind is not None:
            raise kind("raised by a parser on hostile bytes")
        return read_tags(path)

    index = LibraryIndex(tmp_path / "index.db")
    report = scan(index, root, reader)
    assert report.complete and report.added == 1 and report.skipped_reasons == {"parser failure": len(kinds)}
    details = dict(index.conn.execute("SELECT real_path, detail FROM skipped").fetchall())
    for name, kind in kinds.items():
        assert details[f"{name}.flac"].startswith(kind.__name__), details
    assert report.slowest_path and 0 < report.slowest_seconds < 10


@pytest.mark.req("FAULT-28")
def test_hostile_headers_are_malformed_whatever_the_parser_raises(tmp_path):
    from fixtures.broken import mp4_claiming_huge_atom, nested_mp4_atoms
    from musicfs.index.tags import MalformedAudio

    for name, data, reason in (("nested.m4a", nested_mp4_atoms(), "parser failure"),
                               ("huge.m4a", mp4_claiming_huge_atom(), "corrupt audio")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MalformedAudio) as info:
            read_tags(tmp_path / name)
        assert info.value.reason == reason, info.value
        assert info.value.__context__ is None and info.value.__cause__ is None  # no parser frames kept


@pytest.mark.req("FAULT-31")
def test_a_file_swapped_for_a_link_out_of_the_origin_is_skipped_not_fatal(sample_library, good_files, tmp_path):
    root, outside = tmp_path / "library", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    good = sample_library[0] / next(f["path"] for f in good_files if f["path"].endswith(".flac"))
    shutil.copy(good, root / "good.flac")
    shutil.copy(good, outside / "secret.flac")
    origin = LocalOrigin("local", root)
    walked = list(origin.walk())
    (root / "good.flac").unlink()  # between the walk and the read
    (root / "good.flac").symlink_to(outside / "secret.flac")

    class Replay(LocalOrigin):
        def walk(self, on_error=None):
            return iter(walked)

    index = LibraryIndex(tmp_path / "index.db")
    report = Scanner(index, Replay("local", root), PathTemplate(), workers=1, read=read_tags).run()
    assert report.complete and report.skipped_reasons == {"outside the origin": 1}
    assert index.conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0] == 0
