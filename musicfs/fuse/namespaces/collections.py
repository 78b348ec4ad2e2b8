"""``/.collections/<name>/``: every saved search (smart collection) as a folder of its matches.

The collections live in the index (the search service reads them in its
worker threads): ``/.collections`` lists them all as they are now, and a
collection's folder runs its query each time it is listed, so it is always
current (see :mod:`.results`). A folder's inode is this namespace's base plus
the collection's id, so it stays the same while the collection exists, across
remounts too. The collections handed to the kernel are kept here, so that its
getattr calls need no query (and wait for no search); a removed collection is
gone from the next listing or lookup.
"""

from __future__ import annotations

import time

import pyfuse3

from ...errors import IsADirectory, NotFound
from ...vfs.hidden import HIDDEN_BASE
from ..attrs import AttrPolicy, generated_attributes
from .base import OpenFile, Reply
from .results import ResultDirs
from .tree import XATTR_PREFIX

COLLECTIONS_DIR_NAME = ".collections"
COLLECTIONS_BASE = HIDDEN_BASE + (3 << 40)


class CollectionsNamespace:
    dir_name = COLLECTIONS_DIR_NAME
    inode_base = root_inode = COLLECTIONS_BASE

    def __init__(self, service, results: ResultDirs, policy: AttrPolicy):
        """``service``: the search service (its ``collections``, ``collection``, ``collection_by_id``)."""
        self.service = service
        self.results = results
        self.policy = policy
        self._known: dict[int, object] = {}  # folder inode -> the collection it was handed out for

    def _dir_attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        return generated_attributes(inode, 0, self.policy, is_dir=True, mtime_ns=time.time_ns())

    def _handed_out(self, collection) -> int:
        inode = self.inode_base + collection.id
        self._known[inode] = collection
        return inode

    def _kept(self, inode: int):
        collection = self._known.get(inode)
        if collection is None:
            raise NotFound(f"no collection folder {inode}")
        return collection

    async def _current(self, inode: int):
        """The collection as the index holds it now (its query may have changed); NotFound if removed."""
        collection = await self.service.collection_by_id(inode - self.inode_base)
        if collection is None:
            self._known.pop(inode, None)
            raise NotFound(f"collection folder {inode}: the collection was removed")
        self._known[inode] = collection
        return collection

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        if parent != self.root_inode:
            return await self.results.lookup(parent, (await self._current(parent)).query, name)
        collection = None if name.startswith(".") else await self.service.collection(name)
        if collection is None:
            raise NotFound(name)
        return self._dir_attributes(self._handed_out(collection))

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        if inode != self.root_inode:
            self._kept(inode)
        return self._dir_attributes(inode)

    async def opendir(self, inode: int) -> bool:
        if inode != self.root_inode:
            self._kept(inode)
        return False  # what it lists changes without a tree change

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        if inode != self.root_inode:
            await self.results.readdir(inode, (await self._current(inode)).query, start, reply)
            return
        collections = await self.service.collections()  # in name order; offsets are positions
        for position, collection in enumerate(collections[start:], start=start + 1):
            if not reply(collection.name, self._dir_attributes(self._handed_out(collection)), position):
                return

    async def open(self, inode: int) -> OpenFile:
        raise IsADirectory(getattr(self._known.get(inode), "name", COLLECTIONS_DIR_NAME))

    async def xattrs(self, inode: int) -> dict[str, str]:
        if inode == self.root_inode:
            return {}
        return {XATTR_PREFIX + "query": self._kept(inode).query}
