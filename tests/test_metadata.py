"""Metadata sources in process: a source's fields over the files', and rescans that follow it (META-1).

The real mount with a plugin from another package (beets) is ``conformance/test_plugins.py``.
"""

from __future__ import annotations

import pytest

from fixtures.media import short_track
from musicfs.index.library import LibraryIndex
from musicfs.index.metadata import MetadataSource, clean, fields_key
from musicfs.index.scanner import Scanner
from musicfs.index.template import PathTemplate
from musicfs.origins.local import LocalOrigin

pytestmark = pytest.mark.req("META-1")


class DictSource(MetadataSource):
    """Fields by local path, from a dict the test edits; counts refreshes."""

    name = "dict"

    def __init__(self, by_path: dict[str, dict]):
        self.by_path = by_path
        self.refreshed = 0

    def refresh(self) -> None:
        self.refreshed += 1

    def fields(self, origin_id, real_path, local_path):
        return self.by_path.get(local_path)


def test_only_known_fields_with_a_value_are_taken_and_numbers_stay_numbers():
    given = {"title": "T", "artist": "", "year": "1959", "track": 0, "disc": "x", "format": "mp3", "bitrate": 1}
    assert clean(given) == {"title": "T", "year": 1959}
    assert clean(None) == {} and fields_key({}) == ""
    assert fields_key({"a": 1, "b": 2}) == fields_key({"b": 2, "a": 1}) != fields_key({"a": 2, "b": 2})


def test_a_source_replaces_the_files_tags_and_a_change_in_it_is_a_change_of_the_track(tmp_path):
    root = tmp_path / "music"
    paths = [short_track(root, f"A/Kind/{n:02d}.flac", "flac", n, album="Kind", cover=None) for n in (1, 2)]
    source = DictSource({str(paths[0].resolve()): {"artist": "Miles Davis", "album_artist": "Miles Davis",
                                                  "year": 1959, "format": "ignored"}})
    origin = LocalOrigin("music", root)
    with LibraryIndex(tmp_path / "index.db") as index:
        def scan():
            return Scanner(index, origin, PathTemplate(), workers=1, metadata=source).run()

        first = scan()
        rows = {r["real_path"]: r for r in map(dict, index.conn.execute("SELECT * FROM tracks"))}
        given, own = rows["A/Kind/01.flac"], rows["A/Kind/02.flac"]
        assert (given["artist"], given["year"], given["format"], given["title"]) == ("Miles Davis", 1959, "flac",
                                                                                       "Song 1")
        assert given["meta"] and own["meta"] == "" and own["artist"] == "A"
        assert first.added == 2 and source.refreshed == 1

        again = scan()  # nothing changed: nothing read
        assert (again.unchanged, again.updated) == (2, 0)
        source.by_path[str(paths[1].resolve())] = {"title": "So What"}
        source.by_path.pop(str(paths[0].resolve()))
        changed = scan()
        assert (changed.unchanged, changed.updated) == (0, 2) and source.refreshed == 3
        rows = {r["real_path"]: r for r in map(dict, index.conn.execute("SELECT * FROM tracks"))}
        assert rows["A/Kind/02.flac"]["title"] == "So What"
        assert rows["A/Kind/01.flac"]["artist"] == "A" and rows["A/Kind/01.flac"]["meta"] == ""
