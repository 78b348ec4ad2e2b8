"""Search over a small index: the query language, the engine's answers, and the table kept in step.

A handful of tracks chosen so that each rule of the language has a track that
must match and one that must not: accents and case (Björk, Café Ñoño),
prefixes (Metallica), phrases, each field filter, years and ranges,
exclusions, two origins. Hostile text checks the promise the parser makes:
whatever a user types is either searched for or refused with a
:class:`QueryError` naming the problem, never an SQLite error.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from musicfs.cli.main import main as musicfs_main
from musicfs.errors import QueryError
from musicfs.index import db as index_db
from musicfs.index import fts
from musicfs.index.bulk import load_tracks
from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Scanner
from musicfs.index.schema import MIGRATIONS, ROOT_ID
from musicfs.index.template import PathTemplate
from musicfs.origins.local import LocalOrigin
from musicfs.search.collections import CollectionStore
from musicfs.search.engine import SearchEngine
from musicfs.search.query import parse

pytestmark = pytest.mark.req("FS-9")

TEMPLATE = PathTemplate()


def track(n: int, title: str, artist: str, album: str, year: int | None = 2000, *, genre: str | None = "Rock",
          fmt: str = "flac", album_artist: str | None = None) -> dict:
    return {"real_path": f"{artist}/{album}/{n:02d}.{fmt}", "size": 1000 + n, "mtime_ns": n, "title": title,
            "artist": artist, "album": album, "album_artist": album_artist, "genre": genre, "year": year,
            "track": n, "disc": 1, "duration_ms": 200_000, "bitrate": 900_000, "sample_rate": 44100,
            "format": fmt}


NAS = [
    track(1, "Jóga", "Björk", "Homogenic", 1997, genre="Electronic"),
    track(2, "Hunter", "Björk", "Homogenic", 1997, genre="Electronic"),
    track(3, "Enter Sandman", "Metallica", "Metallica", 1991, genre="Metal"),
    track(4, "Sad but True", "Metallica", "Metallica", 1991, genre="Metal"),
    track(5, "Battery", "Metallica", "Master of Puppets", 1986, genre="Metal"),
    track(6, "Petit déjeuner", "Café Ñoño", "Desayuno", 2005, genre="Latin", fmt="mp3"),
    track(7, "Sandman Live", "Metallica", "Live Shit", 1993, genre="Metal"),
    track(8, "Untitled", "Nobody", "No Year", None, genre="Podcast", fmt="mp3"),
    track(9, "Ballad", "Various", "Hits", 1979, genre="Pop", album_artist="The Compilers"),
]
B2 = [
    track(21, "Fuel", "Metallica", "Reload", 1997, genre="Metal", fmt="m4a"),
    track(22, "Army of Me", "Björk", "Post", 1995, genre="Electronic", fmt="m4a"),
]


def titles(page) -> list[str]:
    return [hit.title for hit in page.hits]


def found(engine: SearchEngine, text: str, **kwargs) -> set[str]:
    return {hit.title for hit in engine.search(text, limit=1000, **kwargs).hits}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "index.db"
    with LibraryIndex(path) as index:
        load_tracks(index, "nas", NAS, TEMPLATE)
        load_tracks(index, "b2", B2, TEMPLATE)
    conn = index_db.connect(path, readonly=True)
    yield path, conn
    conn.close()


@pytest.fixture(scope="module")
def engine(library) -> SearchEngine:
    return SearchEngine(library[1])


# -- the language -------------------------------------------------------------------------


def test_case_and_diacritics_fold_both_ways(engine):
    assert found(engine, "bjork") == {"Jóga", "Hunter", "Army of Me"}
    assert found(engine, "BJÖRK") == found(engine, "bjork")
    assert found(engine, "cafe nono") == {"Petit déjeuner"}
    assert found(engine, "Café Ñoño") == {"Petit déjeuner"}
    assert found(engine, "dejeuner") == {"Petit déjeuner"}
    assert found(engine, "joga") == {"Jóga"}


def test_words_are_prefixes_and_all_must_match(engine):
    assert found(engine, "metal") >= {"Enter Sandman", "Battery", "Fuel"}  # type-ahead: Metallica
    assert found(engine, "me") >= found(engine, "metal")
    assert found(engine, "metallica sand") == {"Enter Sandman", "Sandman Live"}
    assert found(engine, "metallica homogenic") == set()


def test_quoted_phrases_are_whole_words_in_order(engine):
    assert found(engine, '"enter sandman"') == {"Enter Sandman"}
    assert found(engine, '"sandman enter"') == set()
    assert found(engine, '"sandm"') == set()  # a phrase is not a prefix
    assert found(engine, '"master of puppets"') == {"Battery"}


@pytest.mark.parametrize(("query", "titles_found"), [
    ("artist:metallica", {"Enter Sandman", "Sad but True", "Battery", "Sandman Live", "Fuel"}),
    ("artist:compilers", {"Ballad"}),  # artist: looks in the album artist too
    ("albumartist:compilers", {"Ballad"}),
    ("album:metallica", {"Enter Sandman", "Sad but True"}),
    ('album:"master of puppets"', {"Battery"}),
    ("title:sandman", {"Enter Sandman", "Sandman Live"}),
    ("genre:electronic", {"Jóga", "Hunter", "Army of Me"}),
    ("format:mp3", {"Petit déjeuner", "Untitled"}),
    ("origin:b2", {"Fuel", "Army of Me"}),
    ("origin:b2 bjork", {"Army of Me"}),
    ("ARTIST:Björk title:hunter", {"Hunter"}),
    ("path:homogenic", {"Jóga", "Hunter"}),  # the virtual path is searchable: folder names
])
def test_each_field_filter_looks_only_there(engine, query, titles_found):
    assert found(engine, query) == titles_found


def test_a_word_in_another_field_does_not_pass_a_field_filter(engine):
    assert found(engine, "title:metallica") == set()  # Metallica is an artist and an album, no title
    assert found(engine, "artist:homogenic") == set()


@pytest.mark.parametrize(("query", "titles_found"), [
    ("year:1991", {"Enter Sandman", "Sad but True"}),
    ("year:1990..1999 metallica", {"Enter Sandman", "Sad but True", "Sandman Live", "Fuel"}),
    ("year:..1986", {"Battery", "Ballad"}),
    ("year:2000..", {"Petit déjeuner"}),
    ("year:1997..1997 bjork", {"Jóga", "Hunter"}),
    ("metallica -year:1991", {"Battery", "Sandman Live", "Fuel"}),
])
def test_years_and_ranges(engine, query, titles_found):
    assert found(engine, query) == titles_found


def test_a_track_without_a_year_matches_no_year_filter(engine):
    assert "Untitled" not in found(engine, "year:0..9999")


@pytest.mark.parametrize(("query", "titles_found"), [
    ("metallica -live", {"Enter Sandman", "Sad but True", "Battery", "Fuel"}),
    ('sandman -"sandman live"', {"Enter Sandman"}),
    ("metallica -album:metallica -origin:b2", {"Battery", "Sandman Live"}),
    ("bjork -origin:nas", {"Army of Me"}),
    ("-genre:metal -genre:electronic", {"Petit déjeuner", "Untitled", "Ballad"}),  # only exclusions
])
def test_minus_excludes(engine, query, titles_found):
    assert found(engine, query) == titles_found


def test_origin_argument_and_fields_restriction(engine):
    assert found(engine, "bjork", origin="nas") == {"Jóga", "Hunter"}
    assert found(engine, "metallica", origin="b2") == {"Fuel"}
    assert found(engine, "origin:nas", origin="b2") == set()  # both must hold
    assert found(engine, "metallica", fields=["album"]) == {"Enter Sandman", "Sad but True"}
    assert found(engine, "metallica", fields=["title"]) == set()
    assert found(engine, "sandman", fields=["title", "album"]) == {"Enter Sandman", "Sandman Live"}
    with pytest.raises(QueryError, match="unknown field 'colour' to search in"):
        engine.search("x", fields=["colour"])


def test_title_and_artist_outrank_album_genre_and_path(tmp_path):
    """One word in one field of each track, every field of the same length, paths without it: the
    title's and the artist's matches come first (BM25 weights), then the album's, then the genre's."""
    tracks = [
        track(1, "Zephyr", "Aaaa", "Bbbb", genre="Cccc"),
        track(2, "Aaaa", "Bbbb", "Zephyr", genre="Cccc"),
        track(3, "Aaaa", "Bbbb", "Cccc", genre="Zephyr"),
        track(4, "Aaaa", "Zephyr", "Cccc", genre="Bbbb"),
    ]
    with LibraryIndex(tmp_path / "rank.db") as index:
        load_tracks(index, "nas", tracks, PathTemplate("$track.$format"))
        index.conn.row_factory = None
        page = SearchEngine(index.conn).search("zephyr")
    order = ["title" if h.title == "Zephyr" else "artist" if h.artist == "Zephyr" else
             "album" if h.album == "Zephyr" else "genre" for h in page.hits]
    assert sorted(order[:2]) == ["artist", "title"], order
    assert order[2:] == ["album", "genre"], order
    assert [h.score for h in page.hits] == sorted((h.score for h in page.hits), reverse=True)
    assert page.hits[1].score > page.hits[2].score  # ranked apart, not tied


def test_pages_totals_and_highlights(engine):
    first = engine.search("metallica", limit=2)
    rest = engine.search("metallica", limit=10, offset=2)
    assert first.total == rest.total == 5 and len(first.hits) == 2 and len(rest.hits) == 3
    assert not {h.track_id for h in first.hits} & {h.track_id for h in rest.hits}
    assert engine.search("metallica", limit=0).hits == [] and engine.search("metallica", limit=0).total == 5
    (joga,) = engine.search("bjork joga").hits
    assert joga.highlights["artist"] == [(0, 5)] and joga.highlights["title"] == [(0, 4)]
    (cafe,) = engine.search("nono").hits
    assert [cafe.artist[a:b] for a, b in cafe.highlights["artist"]] == ["Ñoño"]
    assert first.elapsed_ms > 0 and first.as_dict()["results"][0]["virtual_path"] == first.hits[0].virtual_path


def test_virtual_paths_are_the_tree_s(library, engine):
    """Each hit's path walks the tree to the hit's own node (the file a player opens)."""
    conn = library[1]
    for hit in engine.search("-genre:nothing", limit=100).hits:
        node = ROOT_ID
        for name in hit.virtual_path.split("/"):
            node = conn.execute("SELECT id FROM nodes WHERE parent = ? AND name = ?", (node, name)).fetchone()[0]
        assert node == hit.node_id
        assert conn.execute("SELECT track_id FROM nodes WHERE id = ?", (node,)).fetchone()[0] == hit.track_id


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "words"), [
    ('"enter sandman', "unbalanced quote: the \" at position 1"),
    ('artist:"metallica', "unbalanced quote"),
    ("colour:red", "unknown field 'colour' at position 1"),
    ("metal bogus:x", "unknown field 'bogus' at position 7"),
    ("year:1999..1990", "runs backwards: 1999 is after 1990"),
    ("year:nineties", "year:nineties is not a year or a range"),
    ("year:..", "needs at least one end"),
    ("year:19999", "is not a year"),
    ("artist:", "artist: at position 1 needs a value"),
    ("", "nothing to search for"),
    ("   ", "nothing to search for"),
    ("!!! ???", "nothing to search for"),
    ("a\x00b", "NUL"),
    ("x" * 10_000, "query too long: 10000 characters"),
    (" ".join(f"w{i}" for i in range(40)), "too many terms"),
    ('ab"cd', "a quote inside a word at position 3"),
])
def test_malformed_queries_name_the_problem(engine, query, words):
    with pytest.raises(QueryError) as refused:
        engine.search(query)
    assert words in str(refused.value)
    assert "sqlite" not in str(refused.value).lower() and "fts5" not in str(refused.value).lower()
    with pytest.raises(QueryError):
        parse(query)


HOSTILE = [
    "metal*", "*", "**", "^metal", "^", "metal^", "NEAR(metal sandman)", "NEAR", "near/2", "metal AND sandman",
    "metal OR bjork", "NOT metal", "AND", "OR", "(metal", "metal)", "()", "{title}: x", "title : x", ":",
    "::", "a:b:c", "artist::x", '"', '""', '"""', '" "', '"a" "b', "'", "''", "metal'", "-", "--", "- -",
    "-\"\"", "-metal", "--metal", "-artist:", "+metal", "metal+", "col:", "rowid:1", "rank:1", "search:x",
    "\\", "\\\\\"", "%", "_", ";", "'; DROP TABLE tracks; --", "metal; SELECT 1", "\x01\x02\x03", "\t\n\r",
    "\u200f\u05e9\u05dc\u05d5\u05dd\u200e", "\u202eevil\u202c", "🤘 metal 🤘", "🎸", "\U0001f600" * 500,
    "ﾒﾀﾙ", "金属", "\ufeffmetal", "\udcff", "e\u0301", "ǅ", "ß", "İ", "x" * 999, "a " * 31, "year:0", "year:9999",
    "year:0000..9999", "year:-1", "year:1e3", "year:١٩٩١", "origin:", "origin:*", "origin:'", "format:\"*\"",
    "title:\"NEAR(a b)\"", "-year:1990..", "ALBUM:x", "Artist:\"\"", "artist:\"\"\"",
]


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_searched_or_refused_never_an_sqlite_error(engine, query):
    for kwargs in ({}, {"fields": ["title", "path"]}, {"origin": "b2"}):
        try:
            page = engine.search(query, **kwargs)
        except QueryError as exc:
            assert str(exc) and "sqlite" not in str(exc).lower() and "fts5" not in str(exc).lower()
        else:
            assert page.total >= len(page.hits)


def test_fts_syntax_is_plain_text(engine):
    """Operators a user types are words like any other: not an SQLite expression."""
    assert found(engine, "metal AND sandman") == set()  # "and" is a word no track has
    assert found(engine, "metallica*") == found(engine, "metallica")
    assert found(engine, "(metallica) ^sandman)") == found(engine, "metallica sandman") != set()
    assert found(engine, "NEAR(metallica sandman)") == set()  # "near" is a word, followed by "metallica"


# -- the table in step with the tree --------------------------------------------------------


def _fts_rows(conn: sqlite3.Connection) -> dict[int, str]:
    return dict(conn.execute(f"SELECT rowid, path FROM {fts.FTS_TABLE}").fetchall())


def _tree_files(conn: sqlite3.Connection) -> dict[int, str]:
    """track id -> path of every file node, walked from the root."""
    rows = conn.execute("SELECT id, parent, name, track_id FROM nodes").fetchall()
    by_id = {r[0]: r for r in rows}

    def path(node: int) -> str:
        parts = []
        while node != ROOT_ID:
            _, parent, name, _ = by_id[node]
            parts.append(name)
            node = parent
        return "/".join(reversed(parts))

    return {r[3]: path(r[0]) for r in rows if r[3] is not None}


def schema_3_index(path: Path, monkeypatch) -> Path:
    """The library as a musicfs of schema 3 wrote it: migrations 1-3 only, and a tree writer that
    kept no search rows (there was no table)."""
    with monkeypatch.context() as before_search:
        before_search.setattr(index_db, "MIGRATIONS", [m for m in MIGRATIONS if m[0] <= 3])
        before_search.setattr(index_db, "LATEST", 3)
        for name in ("put", "add_new", "remove", "clear"):
            before_search.setattr(fts, name, lambda *args, **kwargs: None)
        with LibraryIndex(path) as index:
            load_tracks(index, "nas", NAS, TEMPLATE)
            assert index_db.schema_version(index.conn) == 3
            tables = {r[0] for r in index.conn.execute("SELECT name FROM sqlite_master")}
            assert fts.FTS_TABLE not in tables and "collections" not in tables
    return path


def test_migration_4_makes_an_old_index_searchable(tmp_path, monkeypatch):
    """An index made at schema 3 (before search: no table, no collections) is opened by this
    version: it gains the table with a row for every track the tree shows, its true paths."""
    old = schema_3_index(tmp_path / "v3.db", monkeypatch)
    with LibraryIndex(old) as index:
        conn = index.conn
        conn.row_factory = None
        assert index_db.schema_version(conn) == index_db.LATEST
        files = _tree_files(conn)
        assert len(files) == len(NAS) and _fts_rows(conn) == files
        engine = SearchEngine(conn)
        assert found(engine, "bjork") == {"Jóga", "Hunter"}
        assert found(engine, "cafe nono year:2005") == {"Petit déjeuner"}
        assert CollectionStore(conn).list() == []


def test_the_cli_upgrades_an_old_index_it_searches(tmp_path, monkeypatch, capsys):
    """``musicfs search --index`` on a schema-3 index with no daemon: migrated, then searched."""
    old = schema_3_index(tmp_path / "v3.db", monkeypatch)
    code = musicfs_main(["--state-dir", str(tmp_path / "state"), "search", "--index", str(old), "--json",
                         "artist:metallica", "year:1991"])
    page = json.loads(capsys.readouterr().out)
    assert code == 0 and page["total"] == 2
    assert {r["title"] for r in page["results"]} == {"Enter Sandman", "Sad but True"}
    assert all(r["virtual_path"].startswith("Metallica/Metallica (1991)") for r in page["results"])


class SidecarTags:
    """Tags read from the file's own text (JSON): rescans see edits without audio encoders."""

    def __call__(self, path: str) -> dict:
        values = json.loads(Path(path).read_text())
        return {"title": None, "artist": None, "album": None, "album_artist": None, "genre": None,
                "year": None, "track": None, "disc": None, "duration_ms": 1000, "bitrate": 1000,
                "sample_rate": 44100, "format": "flac", **values}


def _write(root: Path, rel: str, **tags) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tags))


def test_scans_and_rescans_keep_the_table_in_step_with_the_tree(tmp_path):
    root = tmp_path / "music"
    _write(root, "a.flac", title="Enter Sandman", artist="Metallica", album="Metallica", year=1991)
    _write(root, "b.flac", title="Jóga", artist="Björk", album="Homogenic", year=1997)
    _write(root, "c.flac", title="Hunter", artist="Björk", album="Homogenic", year=1997)

    def rescan(index: LibraryIndex) -> None:
        Scanner(index, LocalOrigin("nas", root), TEMPLATE, workers=1, read=SidecarTags()).run()

    with LibraryIndex(tmp_path / "index.db") as index:
        conn = index.conn
        rescan(index)
        conn.row_factory = None
        engine = SearchEngine(conn)
        assert _fts_rows(conn) == _tree_files(conn) and len(_tree_files(conn)) == 3
        assert found(engine, "bjork") == {"Jóga", "Hunter"}

        # tags edited (the artist moves the file to another folder), a file removed, one added
        _write(root, "b.flac", title="Jóga (remix)", artist="Björk & Friends", album="Homogenic Remixed",
               year=1998)
        (root / "c.flac").unlink()
        _write(root, "d.flac", title="Army of Me", artist="Björk", album="Post", year=1995)
        os.utime(root / "b.flac", ns=(10**18, 10**18))
        rescan(index)
        conn.row_factory = None
        assert _fts_rows(conn) == _tree_files(conn) and len(_tree_files(conn)) == 3
        assert found(engine, "bjork") == {"Jóga (remix)", "Army of Me"}
        assert found(engine, "hunter") == set()  # removed: gone from the search too
        assert found(engine, "remixed year:1998") == {"Jóga (remix)"}
        assert found(engine, "year:1997") == set()  # the old tags are not searchable any more
        (hit,) = engine.search("friends").hits
        assert hit.virtual_path == _tree_files(conn)[hit.track_id]

        for name in ("a.flac", "b.flac", "d.flac"):  # everything gone: nothing found, nothing left over
            (root / name).unlink()
        rescan(index)
        conn.row_factory = None
        assert _fts_rows(conn) == {} and engine.search("-genre:x").total == 0
