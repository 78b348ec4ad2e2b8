"""The full-text search table: one FTS5 row per track shown in the tree.

Why FTS5 inside the index rather than a search engine beside it: the rows are
written in the same transactions as the tracks and nodes they describe, so a
search never sees a track the tree does not show (or misses one it does), a
crash leaves both or neither, and there is no second store to rebuild, back up
or keep in step (FR-14, G7).

A row exists for every track that has a file node (a replica of a file shown
from another origin has none: it is the same file). Its rowid is the track id.
The ``path`` column holds the virtual path as the template renders it, so words
that only the path shows (a folder name) are found too; ``origin`` holds the
origin id as one token, so ``origin:`` and ``format:`` filters are answered by
the table alone (a filter matching most of a million tracks is counted from
its posting list instead of a walk of the tracks table).

Tokenising: ``unicode61`` with ``remove_diacritics 2`` folds case and accents
(``bjork`` finds Björk, ``cafe nono`` finds Café Ñoño); the ``prefix`` index on
2- and 3-character prefixes keeps type-ahead queries (``metal*``) from walking
the whole term list. Ranking is BM25 with title and artist weighted above the
rest, stored as the table's default ``rank`` so every query ranks alike.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

FTS_TABLE = "search"
# column order is the table's: bm25 weights and highlight() refer to columns by position
FTS_COLUMNS = ("title", "artist", "album_artist", "album", "genre", "year", "format", "path", "origin")
_WEIGHTS = {"title": 10.0, "artist": 10.0, "album_artist": 4.0, "album": 4.0, "genre": 1.5,
            "year": 1.0, "format": 0.5, "path": 0.5, "origin": 0.0}


def origin_token(origin_id: str) -> str:
    """The origin column's one token for an origin id.

    Ids may hold ``-``, ``_`` and ``.``, which the tokenizer splits on (``b2-eu``
    and ``b2.eu`` would both read as "b2 eu"); hex keeps every id one exact token.
    """
    return "o" + origin_id.encode("utf-8").hex()
RANK = "bm25(" + ", ".join(str(_WEIGHTS[c]) for c in FTS_COLUMNS) + ")"
# the same ranking spelled out for ORDER BY: FTS5 parses a configured ``rank`` again for every
# row, which made ranking a 350K-track match ~40 % slower than naming the function directly
RANK_SQL = f"bm25({FTS_TABLE}, " + ", ".join(str(_WEIGHTS[c]) for c in FTS_COLUMNS) + ")"

CREATE_SQL = (
    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5("
    + ", ".join(FTS_COLUMNS)
    + ", tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')"
)

_INSERT = (f"INSERT INTO {FTS_TABLE} (rowid, {', '.join(FTS_COLUMNS)})"
           f" VALUES (?, {', '.join('?' for _ in FTS_COLUMNS)})")


def create(conn: sqlite3.Connection) -> None:
    """Create the table and set its ranking (inside the caller's transaction)."""
    conn.execute(CREATE_SQL)
    conn.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}, rank) VALUES ('rank', ?)", (RANK,))


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def row_values(track: Mapping[str, Any], path: str) -> list[str | None]:
    """The searchable values of ``track``, in column order (``album_artist`` read either way)."""
    values = []
    for column in FTS_COLUMNS:
        if column == "path":
            values.append(path)
        elif column == "origin":
            values.append(origin_token(str(track.get("origin_id") or "")))
        elif column == "album_artist":
            values.append(_text(track.get("album_artist", track.get("albumartist"))))
        else:
            values.append(_text(track.get(column)))
    return values


def put(conn: sqlite3.Connection, track_id: int, track: Mapping[str, Any], path_parts: Sequence[str]) -> None:
    """Index (or index again) one track; ``path_parts`` are its rendered path components."""
    conn.execute(f"DELETE FROM {FTS_TABLE} WHERE rowid = ?", (track_id,))
    conn.execute(_INSERT, (track_id, *row_values(track, "/".join(path_parts))))


def add_new(conn: sqlite3.Connection, track_id: int, track: Mapping[str, Any], path_parts: Sequence[str]) -> None:
    """Index a track known to have no row yet (bulk loads: one statement instead of two)."""
    conn.execute(_INSERT, (track_id, *row_values(track, "/".join(path_parts))))


def remove(conn: sqlite3.Connection, track_id: int) -> None:
    conn.execute(f"DELETE FROM {FTS_TABLE} WHERE rowid = ?", (track_id,))


def clear(conn: sqlite3.Connection) -> None:
    """Empty the table (a tree rebuild): dropped and made again, which is a fraction of the cost
    of deleting a million rows one by one from FTS5's posting lists."""
    conn.execute(f"DROP TABLE {FTS_TABLE}")
    create(conn)


def fill_from_tree(conn: sqlite3.Connection) -> int:
    """Index every track that has a file node, paths taken from the tree (a migration).

    One statement: the tree gives each file its path with a recursive walk from
    the root, so an existing index gains its search table without a rescan.
    """
    columns = ", ".join(FTS_COLUMNS)
    values = ", ".join(f"NULLIF(CAST(t.{c} AS TEXT), '')" for c in FTS_COLUMNS if c not in ("path", "origin"))
    conn.execute(
        "WITH RECURSIVE p(id, path) AS ("
        "  SELECT id, '' FROM nodes WHERE parent = 0"
        "  UNION ALL SELECT n.id, CASE WHEN p.path = '' THEN n.name ELSE p.path || '/' || n.name END"
        "  FROM nodes n JOIN p ON n.parent = p.id WHERE n.kind = 'dir' OR n.track_id IS NOT NULL)"
        f" INSERT INTO {FTS_TABLE} (rowid, {columns})"
        f" SELECT t.id, {values}, p.path, 'o' || lower(hex(t.origin_id)) FROM p JOIN nodes n ON n.id = p.id JOIN tracks t ON t.id = n.track_id"
    )
    # a statement starting with WITH reports no rowcount (and total_changes counts FTS5's own rows)
    return conn.execute(f"SELECT count(*) FROM {FTS_TABLE}").fetchone()[0]


def size_bytes(conn: sqlite3.Connection) -> int | None:
    """Bytes the search table's shadow tables take on disk (None without SQLite's dbstat)."""
    try:
        row = conn.execute("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE ?", (f"{FTS_TABLE}_%",)).fetchone()
    except sqlite3.OperationalError:  # dbstat is compiled out of some SQLite builds
        return None
    return int(row[0] or 0)
