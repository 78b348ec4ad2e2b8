"""``/.origins``: each origin as it is (:class:`~musicfs.vfs.rawview.RawView`) as a namespace.

Listings are the origin's own, fetched in a worker thread and kept for the
view's TTL, so entries and attributes carry that TTL as their kernel timeouts:
the kernel asks again exactly when the view would. Readdir offsets are
positions in the (kept) listing. A raw file has no row in the index; the view
describes it to the reader, and its pages may be kept by the kernel.
"""

from __future__ import annotations

import pyfuse3

from ...errors import IsADirectory, NotADirectory
from ...vfs.rawview import RAW_BASE, RAW_DIR_NAME, RawNode, RawView
from ..attrs import AttrPolicy, generated_attributes
from .base import OpenFile, ReaderFile, Reply
from .tree import XATTR_PREFIX


class RawNamespace:
    dir_name = RAW_DIR_NAME
    inode_base = RAW_BASE

    def __init__(self, view: RawView, reader, policy: AttrPolicy):
        self.view = view
        self.reader = reader
        self.policy = policy
        self.root_inode = view.root.inode

    def _attributes(self, node: RawNode) -> pyfuse3.EntryAttributes:
        attr = generated_attributes(node.inode, node.size, self.policy, is_dir=node.is_dir,
                                    mtime_ns=node.mtime_ns or self.policy.dir_mtime_ns)
        attr.entry_timeout = attr.attr_timeout = self.view.ttl
        return attr

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        return self._attributes(await self.view.lookup(parent, name))

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        return self._attributes(self.view.get(inode))

    async def opendir(self, inode: int) -> bool:
        node = self.view.get(inode)
        if not node.is_dir:
            raise NotADirectory(node.name)
        return False  # what it lists changes without a tree change

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        children = await self.view.children(inode)
        for position, child in enumerate(children[start:], start=start + 1):
            if not reply(child.name, self._attributes(child), position):
                return

    async def open(self, inode: int) -> OpenFile:
        node = self.view.get(inode)
        if node.is_dir:
            raise IsADirectory(node.name)
        return ReaderFile(self.reader, await self.reader.open(self.view.track(node)), keep_cache=True)

    async def xattrs(self, inode: int) -> dict[str, str]:
        node = self.view.get(inode)
        if node.origin_id is None:
            return {}
        return {XATTR_PREFIX + "origin": node.origin_id, XATTR_PREFIX + "real_path": node.path}
