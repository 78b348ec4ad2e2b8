"""Running a parsed query against the index: ranked hits, total matches, highlights.

Synchronous and bound to one SQLite connection: the service runs it in worker
threads (never on the trio loop); the CLI runs it directly on an index file
when no daemon has the library mounted.

Why the statements are shaped as they are (FR-14: p95 under 500 ms over a
million tracks): every query, its filters included, is one FTS5 expression,
so the table alone decides the order and the page (``ORDER BY bm25 LIMIT``),
and tracks and nodes are read afterwards for that page only; the total is a
separate ``count(*)`` over the match, which FTS5 answers from its posting
lists. Words are ranked; filters (``format:``, ``origin:``, years) are not: a
query of filters alone has nothing to rank, so it lists tracks in the order
they were indexed (the scanner walks each origin sorted by path), which needs
no sort: a filter matching most of the library answers as fast as a narrow one.

A progress handler stops any statement past the deadline, so no query, however
built, holds a connection (and a worker thread) for long.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import QueryError, QueryTimeout
from ..index.fts import FTS_TABLE, RANK_SQL
from ..index.schema import ROOT_ID
from .query import Query, check_fields, parse

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
DEADLINE = 10.0  # seconds any one search may run
_OPEN, _CLOSE = "\x02", "\x03"  # highlight markers: control characters no tag keeps in the index
HIGHLIGHTED = {"title": 0, "artist": 1, "album": 3}  # field -> search table column
_HIT_COLUMNS = ("t.id, n.id, t.title, t.artist, t.album, t.album_artist, t.year, t.format, t.origin_id")


@dataclass(frozen=True)
class Hit:
    track_id: int
    node_id: int  # the file's node: its inode number in the mount
    virtual_path: str  # '/'-separated, from the mount's root, no leading '/'
    title: str | None
    artist: str | None
    album: str | None
    album_artist: str | None
    year: int | None
    format: str
    origin_id: str
    score: float  # higher is better (BM25, negated); 0 for queries without words
    highlights: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # field -> [start, end)

    def as_dict(self) -> dict:
        return {"virtual_path": self.virtual_path, "title": self.title, "artist": self.artist,
                "album": self.album, "album_artist": self.album_artist, "year": self.year,
                "format": self.format, "origin": self.origin_id, "score": round(self.score, 4),
                "inode": self.node_id, "highlights": {k: [list(s) for s in v] for k, v in self.highlights.items()}}


@dataclass(frozen=True)
class SearchPage:
    query: str
    hits: list[Hit]
    total: int  # every match, not only this page
    elapsed_ms: float
    limit: int
    offset: int
    notes: tuple[str, ...] = ()  # parts of the query that were ignored, and why

    def as_dict(self) -> dict:
        return {"query": self.query, "total": self.total, "query_time_ms": round(self.elapsed_ms, 2),
                "limit": self.limit, "offset": self.offset, "notes": list(self.notes),
                "results": [hit.as_dict() for hit in self.hits]}


def spans(marked: str | None) -> list[tuple[int, int]]:
    """Character spans between highlight markers, as offsets in the unmarked text."""
    if not marked:
        return []
    result, plain, start = [], 0, None
    for ch in marked:
        if ch == _OPEN:
            start = plain
        elif ch == _CLOSE:
            if start is not None and plain > start:
                result.append((start, plain))
            start = None
        else:
            plain += 1
    return result


class SearchEngine:
    def __init__(self, conn: sqlite3.Connection, *, deadline: float = DEADLINE):
        self.conn = conn
        self.deadline = deadline

    # -- public -----------------------------------------------------------
    def search(self, query: str | Query, *, limit: int = DEFAULT_LIMIT, offset: int = 0,
               fields: Sequence[str] = (), origin: str | None = None) -> SearchPage:
        """One page of hits in rank order, with the total number of matches."""
        started = time.perf_counter()
        parsed = parse(query) if isinstance(query, str) else query
        if not 0 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit must be between 0 and {MAX_LIMIT}")
        if offset < 0:
            raise QueryError("offset must not be negative")
        columns = check_fields(tuple(fields))
        with self._deadline():
            match = parsed.match(columns, origin, self._years_present(parsed))
            total = self._count(match)
            rows = self._page(match, limit, offset, parsed.ranked) if limit else []
            hits = self._hits(rows, highlighted=parsed.ranked)
        return SearchPage(parsed.text, hits, total, (time.perf_counter() - started) * 1000, limit, offset,
                          parsed.notes)

    def iter_hits(self, query: str | Query, *, fields: Sequence[str] = (), origin: str | None = None,
                  batch: int = 500) -> Iterator[list[Hit]]:
        """Every hit in rank order, ``batch`` at a time (a stream of large result sets)."""
        parsed = parse(query) if isinstance(query, str) else query
        columns = check_fields(tuple(fields))
        offset = 0
        while True:
            page = self.search(parsed, limit=batch, offset=offset, fields=columns, origin=origin)
            if page.hits:
                yield page.hits
            if len(page.hits) < batch:
                return
            offset += batch

    # -- planning ---------------------------------------------------------
    def _years_present(self, query: Query) -> tuple[int, int] | None:
        """The library's lowest and highest year (two index lookups), when the query has years."""
        if not query.years:
            return None
        # two subqueries: SQLite reads min() or max() from the index only when it is alone
        low, high = self._run("SELECT (SELECT MIN(year) FROM tracks), (SELECT MAX(year) FROM tracks)",
                              []).fetchone()
        return None if low is None else (int(low), int(high))

    def _count(self, match: str) -> int:
        return self._run(f"SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?", [match]).fetchone()[0]

    def _page(self, match: str, limit: int, offset: int, ranked: bool) -> list:
        """(track id, rank, marked title, artist, album) for one page, best first."""
        if ranked:
            marks = ", ".join(f"highlight({FTS_TABLE}, {col}, '{_OPEN}', '{_CLOSE}')"
                              for col in HIGHLIGHTED.values())
            sql = (f"SELECT rowid, {RANK_SQL} AS rank, {marks} FROM {FTS_TABLE}"
                   f" WHERE {FTS_TABLE} MATCH ? ORDER BY rank LIMIT ? OFFSET ?")
        else:  # filters alone: nothing to rank, so index order, which needs no sort
            sql = (f"SELECT rowid, 0, NULL, NULL, NULL FROM {FTS_TABLE}"
                   f" WHERE {FTS_TABLE} MATCH ? ORDER BY rowid LIMIT ? OFFSET ?")
        return self._run(sql, [match, limit, offset]).fetchall()

    def _hits(self, rows: list, *, highlighted: bool) -> list[Hit]:
        """The page's tracks and nodes, read for these ids only, in the page's order."""
        if not rows:
            return []
        ids = [row[0] for row in rows]
        found = {r[0]: r for r in self._run(
            f"SELECT {_HIT_COLUMNS} FROM tracks t JOIN nodes n ON n.track_id = t.id"
            f" WHERE t.id IN ({', '.join('?' for _ in ids)})", ids).fetchall()}
        paths: dict[int, str] = {ROOT_ID: ""}
        hits = []
        for track_id, rank, *marked in rows:
            row = found.get(track_id)
            if row is None:  # left the tree between the two statements (a rescan committed)
                continue
            _, node_id, title, artist, album, album_artist, year, fmt, origin_id = row
            marks = dict(zip(HIGHLIGHTED, marked)) if highlighted else {}
            hits.append(Hit(track_id, node_id, self._path(node_id, paths), title, artist, album, album_artist,
                            year, fmt, origin_id, -float(rank) if rank else 0.0,
                            {name: s for name, m in marks.items() if (s := spans(m))}))
        return hits

    def _path(self, node_id: int, paths: dict[int, str]) -> str:
        """The node's path from the root; directories seen once per search are not asked again."""
        chain = []
        current = node_id
        while current not in paths:
            row = self.conn.execute("SELECT parent, name FROM nodes WHERE id = ?", (current,)).fetchone()
            if row is None:  # removed by a rescan between the page and now
                return ""
            chain.append((current, row[1]))
            current = row[0]
        prefix = paths[current]
        for nid, name in reversed(chain):
            prefix = f"{prefix}/{name}" if prefix else name
            if nid != node_id:
                paths[nid] = prefix
        return prefix

    # -- running ----------------------------------------------------------
    def _run(self, sql: str, params: list) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise QueryTimeout(f"the search took longer than {self.deadline:g} s and was stopped") from None
            raise

    class _Deadline:
        def __init__(self, conn: sqlite3.Connection, seconds: float):
            self.conn, self.until = conn, time.monotonic() + seconds

        def __enter__(self):
            self.conn.set_progress_handler(lambda: 1 if time.monotonic() > self.until else 0, 20_000)

        def __exit__(self, *exc: object) -> None:
            self.conn.set_progress_handler(None, 0)

    def _deadline(self) -> SearchEngine._Deadline:
        return SearchEngine._Deadline(self.conn, self.deadline)
