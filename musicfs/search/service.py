"""Search for the mount: the FUSE namespaces and the control API ask this one object.

Every search runs in a worker thread on a connection of its own (opened on
first use, at most ``connections`` of them), so a search never holds the trio
loop, and the filesystem's own connection never waits behind a long query
(issue 13: listing a query's results never blocks other operations). Saved
collections are read on those connections too; the rare writes (add, remove,
the config's collections at mount) open a short-lived writer connection in
their thread, since the index may be written by a rescan at the same time
(SQLite's lock and busy timeout order the two).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from ..index.db import connect
from .collections import Collection, CollectionStore
from .engine import DEFAULT_LIMIT, Hit, SearchEngine, SearchPage
from .query import Query, parse

__all__ = ["Collection", "Hit", "SearchPage", "SearchService"]

T = TypeVar("T")
_CACHE_KIB = 8192  # each search connection's page cache: searches read the FTS table, not the tree


class SearchService:
    def __init__(self, index_path: Path | str, *, connections: int = 2, deadline: float | None = None):
        self.index_path = Path(index_path)
        self.limiter = trio.CapacityLimiter(connections)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._deadline = deadline
        self.searches = 0
        self.failed = 0
        self.slowest_ms = 0.0

    # -- connections ------------------------------------------------------
    def _borrow(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            conn = connect(self.index_path, readonly=True, cache_kib=_CACHE_KIB)
            with self._lock:
                self._all.append(conn)
            return conn

    def _with_conn(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._borrow()
        try:
            return work(conn)
        finally:
            self._idle.put(conn)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(self._with_conn, work, limiter=self.limiter)

    def _engine(self, conn: sqlite3.Connection) -> SearchEngine:
        return SearchEngine(conn) if self._deadline is None else SearchEngine(conn, deadline=self._deadline)

    # -- searching --------------------------------------------------------
    @staticmethod
    def parse(text: str) -> Query:
        """Check a query without running it (raises QueryError naming the problem)."""
        return parse(text)

    async def search(self, text: str | Query, *, limit: int = DEFAULT_LIMIT, offset: int = 0,
                     fields: Sequence[str] = (), origin: str | None = None) -> SearchPage:
        try:
            page = await self._run(lambda conn: self._engine(conn).search(
                text, limit=limit, offset=offset, fields=fields, origin=origin))
        except Exception:
            self.failed += 1
            raise
        self.searches += 1
        self.slowest_ms = max(self.slowest_ms, page.elapsed_ms)
        return page

    async def stream(self, text: str | Query, *, fields: Sequence[str] = (), origin: str | None = None,
                     batch: int = 500) -> AsyncIterator[list[Hit]]:
        """Every hit in rank order, a batch at a time, each batch fetched in a worker thread."""
        query = parse(text) if isinstance(text, str) else text
        offset = 0
        while True:
            page = await self.search(query, limit=batch, offset=offset, fields=fields, origin=origin)
            if page.hits:
                yield page.hits
            if len(page.hits) < batch:
                return
            offset += batch

    # -- collections ------------------------------------------------------
    async def collections(self) -> list[Collection]:
        return await self._run(lambda conn: CollectionStore(conn).list())

    async def collection(self, name: str) -> Collection | None:
        return await self._run(lambda conn: CollectionStore(conn).get(name))

    async def collection_by_id(self, collection_id: int) -> Collection | None:
        return await self._run(lambda conn: CollectionStore(conn).by_id(collection_id))

    def _write(self, work: Callable[[CollectionStore], T]) -> T:
        conn = connect(self.index_path)
        try:
            return work(CollectionStore(conn))
        finally:
            conn.close()

    async def add_collection(self, name: str, query: str) -> Collection:
        return await trio.to_thread.run_sync(self._write, lambda store: store.add(name, query))

    async def remove_collection(self, name: str) -> Collection:
        return await trio.to_thread.run_sync(self._write, lambda store: store.remove(name))

    def sync_config(self, wanted: Iterable[tuple[str, str]]) -> list[Collection]:
        """The config's ``[[collections]]`` into the table (blocking: called before the mount serves)."""
        wanted = list(wanted)
        return self._write(lambda store: store.sync_config(wanted))

    # -- life -------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def statistics(self) -> dict:
        return {"searches": self.searches, "failed": self.failed, "slowest_ms": round(self.slowest_ms, 2),
                "connections": len(self._all)}
