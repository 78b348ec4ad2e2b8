"""The beets source reads a beets library's items: absolute and relative paths, old and new columns."""

from __future__ import annotations

import sqlite3

from musicfs_beets_metadata import BeetsMetadata


def library(path, columns: str, rows: list[tuple]) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE items (id INTEGER PRIMARY KEY, path BLOB, {columns})")
        names = ", ".join(["path", *(c.split()[0] for c in columns.split(", "))])
        conn.executemany(f"INSERT INTO items ({names}) VALUES ({', '.join('?' * (len(rows[0])))})", rows)
    return str(path)


COLUMNS_2 = "title TEXT, artist TEXT, album TEXT, albumartist TEXT, genres TEXT, year INT, track INT, disc INT"


def test_relative_paths_of_beets_2_and_its_list_of_genres(tmp_path):
    db = library(tmp_path / "library.db", COLUMNS_2,
                 [(b"A/Kind/01.flac", "So What", "Miles Davis", "Kind of Blue", "Miles Davis", "Jazz\\␀Modal",
                   1959, 1, 1)])
    source = BeetsMetadata(db)
    source.refresh()
    assert source.fields("nas", "A/Kind/01.flac", None) == {
        "title": "So What", "artist": "Miles Davis", "album": "Kind of Blue", "album_artist": "Miles Davis",
        "genre": "Jazz", "year": 1959, "track": 1, "disc": 1}
    assert source.fields("nas", "A/Kind/02.flac", None) is None
    rooted = BeetsMetadata(db, directory=str(tmp_path / "music"))
    rooted.refresh()
    assert rooted.fields("nas", "elsewhere.flac", str(tmp_path / "music" / "A/Kind/01.flac"))["title"] == "So What"


def test_absolute_paths_and_the_single_genre_of_older_beets(tmp_path):
    track = tmp_path / "music" / "01.flac"
    db = library(tmp_path / "old.db", COLUMNS_2.replace("genres", "genre"),
                 [(str(track).encode(), "T", "Ar", "Al", "AA", "Rock", 0, 0, 0)])
    source = BeetsMetadata(db)
    source.refresh()
    assert source.fields("local", "01.flac", str(track))["genre"] == "Rock"


def test_a_library_that_cannot_be_read_leaves_the_files_tags(tmp_path, caplog):
    (tmp_path / "broken.db").write_bytes(b"not a database at all" * 100)
    source = BeetsMetadata(str(tmp_path / "broken.db"))
    source.refresh()
    assert source.fields("local", "01.flac", "/x/01.flac") is None
    assert "cannot be read" in caplog.text
