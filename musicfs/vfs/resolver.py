"""Reading the virtual tree: (parent, name) -> node, node -> children pages, path -> node.

The FUSE layer and the inspection tools both ask this class; neither writes SQL
for the tree itself. Children are paged by node id (``id > after``), which is
also the readdir offset, so listing a directory of 100K entries is one index
range scan per page and offsets stay valid across remounts.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import NotADirectory, NotFound
from ..index.schema import ROOT_ID
from .listings import ListingCache
from .node import Node

if TYPE_CHECKING:
    from ..index.tree import TreeChanges

__all__ = ["Node", "Resolver"]

_NODE_SQL = (
    "SELECT n.id, n.parent, n.name, n.kind, n.track_id, t.size, t.mtime_ns"
    " FROM nodes n LEFT JOIN tracks t ON t.id = n.track_id"
)


def _node(row: tuple | None) -> Node | None:
    if row is None:
        return None
    return Node(row[0], row[1], row[2], row[3], row[4], row[5] or 0, row[6] or 0)


class Resolver:
    """Read-only queries over ``nodes``; safe to call while a scan writes (WAL).

    With a :class:`~musicfs.vfs.listings.ListingCache`, listings of ordinary
    directories are answered from memory after the first; whoever applies a
    rescan's changes to the mount calls :meth:`changed` so none is stale.
    """

    def __init__(self, conn: sqlite3.Connection, listings: ListingCache | None = None):
        self.conn = conn
        self.listings = listings

    def get(self, node_id: int) -> Node:
        node = _node(self.conn.execute(f"{_NODE_SQL} WHERE n.id = ?", (node_id,)).fetchone())
        if node is None:
            raise NotFound(f"no node {node_id}")
        return node

    def lookup(self, parent: int, name: str) -> Node:
        node = _node(
            self.conn.execute(f"{_NODE_SQL} WHERE n.parent = ? AND n.name = ?", (parent, name)).fetchone()
        )
        if node is None:
            raise NotFound(name)
        return node

    def children(self, parent: int, after: int = 0, limit: int = 1000) -> list[Node]:
        """Up to ``limit`` children of ``parent`` with id > ``after``, in id order."""
        if self.listings is None:
            return self._query_children(parent, after, limit)
        listing = self.listings.get(parent)
        if listing is None:
            if after:  # a later page of a directory too big to keep
                return self._query_children(parent, after, limit)
            first = self._query_children(parent, 0, self.listings.max_children + 1)
            self.listings.keep(parent, tuple(first))
            return first[:limit]
        start = bisect_right(listing, after, key=lambda node: node.id)
        return list(listing[start:start + limit])

    def _query_children(self, parent: int, after: int, limit: int) -> list[Node]:
        rows = self.conn.execute(
            f"{_NODE_SQL} WHERE n.parent = ? AND n.id > ? ORDER BY n.id LIMIT ?", (parent, after, limit)
        ).fetchall()
        return [_node(r) for r in rows]  # type: ignore[misc]

    def changed(self, changes: TreeChanges) -> None:
        """A rescan committed ``changes``: drop the kept listings they touch."""
        if self.listings is None or not changes:
            return
        if changes.rebuilt:
            self.listings.forget()
            return
        parents = {node.parent for node in changes.added} | {node.parent for node in changes.removed}
        parents |= {node.id for node in changes.removed if node.kind == "dir"}
        for node_id in changes.modified:  # a file changed in place: its size and mtime are listed
            try:
                parents.add(self.get(node_id).parent)
            except NotFound:  # removed again since: its parent is forgotten with the removal
                continue
        self.listings.forget(parents)

    def iter_children(self, parent: int, page: int = 1000) -> Iterator[Node]:
        after = 0
        while True:
            batch = self._query_children(parent, after, page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].id

    def child_count(self, parent: int) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM nodes WHERE parent = ?", (parent,)).fetchone()[0]

    def resolve(self, path: str) -> Node:
        """The node at a '/'-separated virtual path ('' or '/' is the root)."""
        node = self.get(ROOT_ID)
        for part in (p for p in path.split("/") if p):
            if not node.is_dir:
                raise NotADirectory(path)
            node = self.lookup(node.id, part)
        return node

    def path_of(self, node_id: int) -> str:
        parts = []
        node = self.get(node_id)
        while node.id != ROOT_ID:
            parts.append(node.name)
            node = self.get(node.parent)
        return "/".join(reversed(parts))
