"""Smart collections: saved searches, kept in the index's ``collections`` table.

A collection is a name and a query; its folder ``/.collections/<name>/``
lists whatever the query matches when it is listed, so it is always current.
Collections come from two places: ``musicfs collection add`` (source
``user``) and ``[[collections]]`` tables in the config (source ``config``,
replaced as a whole each time a mount starts, so editing the file is how they
change). A collection from the config cannot be removed from the command line:
the next mount would bring it back, so the refusal says where it lives.

Names become folder names: they are refused, not silently altered, when the
kernel could not show them as they are.
"""

from __future__ import annotations

import sqlite3
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import QueryError
from .query import parse

MAX_NAME_BYTES = 255
SOURCES = ("user", "config")


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    query: str
    source: str  # 'user' | 'config'
    created_at: float

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "query": self.query, "source": self.source,
                "created_at": self.created_at}


def check_name(name: str) -> str:
    """The name as it will be shown, or a :class:`QueryError` saying why it cannot be a folder."""
    if not name or not name.strip():
        raise QueryError("a collection needs a name")
    if name != name.strip():
        raise QueryError(f"collection name {name!r} starts or ends with a space")
    if "/" in name:
        raise QueryError(f"collection name {name!r} contains '/': it is a folder name")
    if name in (".", "..") or name.startswith("."):
        raise QueryError(f"collection name {name!r} starts with a dot (hidden names are musicfs' own)")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        raise QueryError(f"collection name {name!r} contains a control or format character")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise QueryError(f"collection name is over {MAX_NAME_BYTES} bytes")
    return unicodedata.normalize("NFC", name)


class CollectionStore:
    """Reads and writes the table on one connection (the caller picks the thread and the lock)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def list(self) -> list[Collection]:
        rows = self.conn.execute(
            "SELECT id, name, query, source, created_at FROM collections ORDER BY name").fetchall()
        return [Collection(*row) for row in rows]

    def get(self, name: str) -> Collection | None:
        row = self.conn.execute("SELECT id, name, query, source, created_at FROM collections WHERE name = ?",
                                (name,)).fetchone()
        return Collection(*row) if row else None

    def by_id(self, collection_id: int) -> Collection | None:
        row = self.conn.execute("SELECT id, name, query, source, created_at FROM collections WHERE id = ?",
                                (collection_id,)).fetchone()
        return Collection(*row) if row else None

    def add(self, name: str, query: str, *, source: str = "user", replace: bool = False) -> Collection:
        """Save ``query`` as ``name``; an existing name is refused unless ``replace``."""
        name = check_name(name)
        parse(query)  # a query that cannot run is refused now, not at every listing
        if source not in SOURCES:
            raise ValueError(f"unknown collection source {source!r}")
        existing = self.get(name)
        if existing is not None:
            if existing.source == "config" and source == "user":
                raise QueryError(f"collection {name!r} comes from the config file; change it there")
            if not replace:
                raise QueryError(f"a collection named {name!r} exists (query: {existing.query})")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT INTO collections (name, query, source, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET query = excluded.query, source = excluded.source",
                (name, query, source, time.time()))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        saved = self.get(name)
        assert saved is not None
        return saved

    def remove(self, name: str) -> Collection:
        existing = self.get(name)
        if existing is None:
            raise QueryError(f"no collection named {name!r}")
        if existing.source == "config":
            raise QueryError(f"collection {name!r} comes from the config file; remove it there")
        self.conn.execute("DELETE FROM collections WHERE id = ?", (existing.id,))
        return existing

    def sync_config(self, wanted: Iterable[tuple[str, str]]) -> list[Collection]:
        """Make the config's collections exactly ``wanted`` (name, query); a user's of the same
        name gives way to the config's. Bad entries were refused when the config was read."""
        wanted = [(check_name(name), query) for name, query in wanted]
        for _name, query in wanted:
            parse(query)
        kept = sorted((c.name, c.query) for c in self.list() if c.source == "config")
        if kept == sorted(wanted):  # the usual case: nothing to write, no write lock taken
            return self.list()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            names = [name for name, _query in wanted]
            self.conn.execute(  # kept names keep their row, and so their folder's inode number
                f"DELETE FROM collections WHERE source = 'config' AND name NOT IN ({', '.join('?' for _ in names)})",
                names)
            for name, query in wanted:
                self.conn.execute(
                    "INSERT INTO collections (name, query, source, created_at) VALUES (?, ?, 'config', ?)"
                    " ON CONFLICT(name) DO UPDATE SET query = excluded.query, source = 'config'",
                    (name, query, time.time()))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return self.list()
