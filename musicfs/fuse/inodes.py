"""Lookup counts: which inodes the kernel holds, and their nodes kept in memory meanwhile.

Every entry the filesystem hands to the kernel (lookup, readdirplus) adds one
to its count; ``forget`` subtracts. While the count is above zero the node is
kept here, so getattr and open need no query; at zero it is dropped, which is
what keeps memory per file small (NFR-4.4).

The counts are also how a live rescan knows which entries the kernel holds:
only those need telling that they changed (:mod:`musicfs.fuse.invalidate`).
"""

from __future__ import annotations

from ..vfs.resolver import Node


class InodeTable:
    def __init__(self) -> None:
        self._nodes: dict[int, Node] = {}
        self._counts: dict[int, int] = {}
        self.forgotten = 0

    def remember(self, node: Node) -> None:
        self._nodes[node.id] = node
        self._counts[node.id] = self._counts.get(node.id, 0) + 1

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def forget(self, inode: int, count: int) -> None:
        left = self._counts.get(inode, 0) - count
        if left > 0:
            self._counts[inode] = left
            return
        self._counts.pop(inode, None)
        self._nodes.pop(inode, None)
        self.forgotten += 1

    def lookup_count(self, inode: int) -> int:
        return self._counts.get(inode, 0)

    def refresh(self, node: Node) -> bool:
        """Replace the kept node of an inode the kernel holds (its file changed); the count stays."""
        if node.id not in self._nodes:
            return False
        self._nodes[node.id] = node
        return True

    def held(self) -> list[Node]:
        """Every node the kernel holds now."""
        return list(self._nodes.values())

    def statistics(self) -> dict[str, int]:
        return {"known_inodes": len(self._nodes), "forgotten": self.forgotten}
