"""Which namespace answers for an inode, and for a name in the root.

Inode numbers are split in ranges: node ids of the tag tree stay far below
:data:`~musicfs.vfs.hidden.HIDDEN_BASE`; each special namespace owns the
numbers from its ``inode_base`` up to the next one's. So the namespace of any
inode the kernel names is found by one comparison walk, with no table to keep
and nothing to forget. The special namespaces are entered from the root by
their name (``.musicfs``, ``.origins``...), which the tag tree never holds
(its names never begin with a dot), and they are never listed in the root.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import pyfuse3

from ...index.schema import ROOT_ID
from .base import Namespace, RangeNamespace, SpecialNamespace
from .tree import TreeNamespace


class Router:
    def __init__(self, tree: TreeNamespace, specials: Sequence[SpecialNamespace] = (),
                 entered: Sequence[RangeNamespace] = ()):
        """``entered``: namespaces owning an inode range whose entries are reached from another
        namespace's directories, never by a name in the root (the tree's album covers)."""
        ordered = sorted([*specials, *entered], key=lambda ns: ns.inode_base)
        bases = [ns.inode_base for ns in ordered]
        if len(set(bases)) != len(bases) or (bases and bases[0] <= ROOT_ID):
            raise ValueError(f"namespace inode ranges overlap: {bases}")
        names = [ns.dir_name for ns in specials]
        if len(set(names)) != len(names) or not all(n.startswith(".") for n in names):
            raise ValueError(f"special directory names must be distinct and begin with a dot: {names}")
        self.tree = tree
        self._bases = bases
        self._ranges: list[Namespace] = [tree, *ordered]
        self._by_name: dict[str, SpecialNamespace] = {ns.dir_name: ns for ns in specials}

    def __call__(self, inode: int) -> Namespace:
        """The namespace owning ``inode``."""
        return self._ranges[bisect_right(self._bases, inode)]

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        special = self._by_name.get(name) if parent == ROOT_ID else None
        if special is not None:
            return await special.getattr(special.root_inode)
        return await self(parent).lookup(parent, name)
