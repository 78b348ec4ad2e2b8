"""``/.musicfs``: the generated files (``status.json``, ``errors.json``) as a namespace.

A generated file's size is the length of its current document, so getattr
renders it, and open renders it once more into a snapshot that every read of
that handle serves (``direct_io``: the kernel neither keeps pages nor trusts
the size it saw earlier). Rendering runs SQL and gathers every component's
statistics, work that must not hold the loop: it runs in a worker thread
(ASYNC-3). Attributes carry short timeouts, as the content changes.
"""

from __future__ import annotations

import time

import pyfuse3
import trio

from ...errors import IsADirectory, NotADirectory, NotFound
from ...vfs.hidden import HIDDEN_BASE, HIDDEN_DIR_NAME, HiddenFile, HiddenFiles
from ..attrs import AttrPolicy, generated_attributes
from .base import OpenFile, Reply, Snapshot


class HiddenNamespace:
    dir_name = HIDDEN_DIR_NAME
    inode_base = HIDDEN_BASE

    def __init__(self, files: HiddenFiles, policy: AttrPolicy):
        self.files = files
        self.policy = policy
        self.root_inode = files.dir_inode

    def _item(self, inode: int) -> HiddenFile:
        item = self.files.by_inode(inode)
        if item is None:
            if inode == self.root_inode:
                raise IsADirectory(HIDDEN_DIR_NAME)
            raise NotFound(f"no hidden inode {inode}")
        return item

    @staticmethod
    async def _render(item: HiddenFile) -> bytes:
        return await trio.to_thread.run_sync(item.render)

    async def _attributes(self, item: HiddenFile) -> pyfuse3.EntryAttributes:
        size = len(await self._render(item))
        return generated_attributes(item.inode, size, self.policy, is_dir=False, mtime_ns=time.time_ns())

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        item = self.files.by_name(name) if parent == self.root_inode else None
        if item is None:
            raise NotFound(name)
        return await self._attributes(item)

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        if inode == self.root_inode:
            return generated_attributes(inode, 0, self.policy, is_dir=True, mtime_ns=time.time_ns())
        return await self._attributes(self._item(inode))

    async def opendir(self, inode: int) -> bool:
        if inode != self.root_inode:
            raise NotADirectory(self._item(inode).name)
        return False  # what it lists changes without a tree change

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        items = [item for item in self.files.files() if item.inode > start]  # offsets: the inodes
        attrs = [await self._attributes(item) for item in items]
        for item, attr in zip(items, attrs):
            if not reply(item.name, attr, item.inode):
                return

    async def open(self, inode: int) -> OpenFile:
        return Snapshot(await self._render(self._item(inode)))  # reads see one consistent document

    async def xattrs(self, inode: int) -> dict[str, str]:
        return {}
