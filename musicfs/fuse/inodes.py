"""Lookup counts and open handles: which inodes the kernel holds, and their nodes kept meanwhile.

Every entry the filesystem hands to the kernel (lookup, readdirplus) adds one
to its count; ``forget`` subtracts what the kernel says. Every open file
handle on an inode holds it too, until its release. While either holds, the
node is kept here, so getattr and open need no query; once the count is zero
*and* the last handle is released (whichever comes last) it is dropped, which
is what keeps memory per file small (NFR-4.4). The inode number itself is
never reused: it is the node's id in the index (CAS-2, B2-8).

Why handles count: the kernel sends RELEASE asynchronously after a close,
while FORGET travels on its own queue, so the two reach the daemon in either
order, and pyfuse3 runs them as concurrent tasks besides. Dropping a node at
FORGET while a handle still reads it would lose the state the handle was
opened on (and, with a rescan meanwhile, answer its fstat from a newer tree).

The counts are also how a live rescan knows which entries the kernel holds:
only those need telling that they changed (:mod:`musicfs.fuse.invalidate`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..index.schema import ROOT_ID
from ..vfs.resolver import Node


class InodeTable:
    """``max_nodes`` bounds the nodes kept (NFR-5.1; None: unbounded). Past it, the least
    recently handed out node not open is dropped and ``let_go(node)`` asks the kernel to forget
    its entry, so that its count goes with the FORGET that follows; until then, getattr of it
    is answered from the index."""

    def __init__(self, max_nodes: int | None = None, let_go: Callable[[Node], None] | None = None) -> None:
        self.max_nodes = max_nodes
        self._let_go = let_go
        self.let_go = 0  # nodes dropped to stay within max_nodes
        self._nodes: dict[int, Node] = {}
        self._counts: dict[int, int] = {}  # inode -> lookups the kernel has not forgotten
        self._open: dict[int, int] = {}  # inode -> file handles not yet released
        self.forgotten = 0  # nodes dropped (count zero and no handle left)

    def remember(self, node: Node) -> None:
        """An entry handed to the kernel: one lookup more (and the most recently used node)."""
        self._nodes.pop(node.id, None)
        self._nodes[node.id] = node
        self._counts[node.id] = self._counts.get(node.id, 0) + 1
        if self.max_nodes is not None and len(self._nodes) > self.max_nodes:
            self._shrink()

    def _shrink(self) -> None:
        """Drop the least recently handed out nodes down to 90% of ``max_nodes`` (a margin, so
        that this runs once per many lookups, not on each)."""
        keep = self.max_nodes * 9 // 10
        skipped = 0
        while len(self._nodes) > keep and skipped < len(self._nodes):
            inode = next(iter(self._nodes))
            node = self._nodes.pop(inode)
            if inode in self._open or inode == ROOT_ID:  # kept while open; the root always
                self._nodes[inode] = node
                skipped += 1
                continue
            self.let_go += 1
            if self._let_go is not None:
                self._let_go(node)

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def forget(self, inode: int, count: int) -> None:
        left = self._counts.get(inode, 0) - count
        if left > 0:
            self._counts[inode] = left
            return
        self._counts.pop(inode, None)
        self._drop_if_unused(inode)

    def opened(self, node: Node) -> None:
        """A file handle on ``node`` was opened: its node stays at least until :meth:`released`."""
        self._nodes.setdefault(node.id, node)
        self._open[node.id] = self._open.get(node.id, 0) + 1

    def released(self, inode: int) -> None:
        """A file handle on ``inode`` was released: the node goes if the kernel forgot it too."""
        left = self._open.get(inode, 0) - 1
        if left > 0:
            self._open[inode] = left
            return
        self._open.pop(inode, None)
        self._drop_if_unused(inode)

    def _drop_if_unused(self, inode: int) -> None:
        if inode in self._counts or inode in self._open:
            return
        if self._nodes.pop(inode, None) is not None:
            self.forgotten += 1

    def lookup_count(self, inode: int) -> int:
        return self._counts.get(inode, 0)

    def open_count(self, inode: int) -> int:
        return self._open.get(inode, 0)

    def refresh(self, node: Node) -> bool:
        """Replace the kept node of an inode the kernel holds (its file changed); the count stays."""
        if node.id not in self._nodes:
            return False
        self._nodes[node.id] = node
        return True

    def held(self) -> list[Node]:
        """Every node the kernel holds now (looked up, or open)."""
        return list(self._nodes.values())

    def statistics(self) -> dict[str, int]:
        return {"known_inodes": len(self._nodes), "open_inodes": len(self._open), "forgotten": self.forgotten,
                "counted_inodes": len(self._counts), "let_go": self.let_go}
