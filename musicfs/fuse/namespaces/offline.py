"""``/.offline``: the tag tree restricted to what plays with the network gone.

The same directories and names as the tree, showing only the tracks whose every byte is in the
cache, an album once all its tracks are (:mod:`musicfs.vfs.offline` works out which). A user
about to lose the network lists it and sees exactly what will play.

A directory's inode is this namespace's base plus the tree node's id: the same for that directory
every time it shows, across remounts too, with no table to keep. A file is the tree's own file,
as in a search folder (:mod:`.results`): the same inode and attributes, remembered in the inode
table like any lookup, so opening it is the tree's business and reads go through the cached reader
(which serves it from the cache with the origin gone). Listing offsets are node ids, as in the
tree. Entries carry short kernel timeouts (``timeout``): a fill or an eviction shows within a
second or two (the view itself is computed again at most once a second). Album covers are not
shown here: they are readable offline in the tree's own album directories.
"""

from __future__ import annotations

from bisect import bisect_right

import pyfuse3

from ...errors import IsADirectory, NotFound
from ...index.schema import ROOT_ID
from ...vfs.hidden import HIDDEN_BASE
from ...vfs.node import Node
from ...vfs.offline import OfflineService, OfflineView
from ..attrs import AttrPolicy, generated_attributes
from .base import OpenFile, Reply
from .tree import XATTR_PREFIX, TreeNamespace

OFFLINE_DIR_NAME = ".offline"
OFFLINE_BASE = HIDDEN_BASE + (5 << 40)
TIMEOUT = 1.0  # seconds the kernel keeps a name or attributes of this folder: what changes shows this soon


class OfflineNamespace:
    dir_name = OFFLINE_DIR_NAME
    inode_base = OFFLINE_BASE
    root_inode = OFFLINE_BASE + ROOT_ID

    def __init__(self, service: OfflineService, tree: TreeNamespace, policy: AttrPolicy, *,
                 timeout: float = TIMEOUT):
        self.service = service
        self.tree = tree
        self.policy = policy
        self.timeout = timeout

    def _dir_attributes(self, dir_id: int, view: OfflineView) -> pyfuse3.EntryAttributes:
        attr = generated_attributes(OFFLINE_BASE + dir_id, 0, self.policy, is_dir=True, mtime_ns=view.changed_ns)
        attr.entry_timeout = attr.attr_timeout = self.timeout
        return attr

    def _file(self, node: Node) -> tuple[Node, pyfuse3.EntryAttributes] | None:
        """The tree's node of an offline file as it is now, with this folder's timeouts (None:
        removed by a rescan since the view was computed)."""
        try:
            current = self.tree.node(node.id)
        except NotFound:
            return None
        attr = self.tree.attributes(current)
        attr.entry_timeout = attr.attr_timeout = self.timeout
        return current, attr

    async def _shown(self, inode: int) -> tuple[int, OfflineView]:
        """The tree directory of ``inode`` and the view, if the view shows it (else NotFound)."""
        view = await self.service.view()
        dir_id = inode - OFFLINE_BASE
        if not view.shows(dir_id):
            raise NotFound(f"{OFFLINE_DIR_NAME}: directory {dir_id} is not (or no longer) wholly cached")
        return dir_id, view

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        dir_id, view = await self._shown(parent)
        node = view.entry(dir_id, name)
        if node is None:
            raise NotFound(name)
        if node.is_dir:
            return self._dir_attributes(node.id, view)
        found = self._file(node)
        if found is None:
            raise NotFound(name)
        current, attr = found
        self.tree.remember(current)
        return attr

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        dir_id, view = await self._shown(inode)
        return self._dir_attributes(dir_id, view)

    async def opendir(self, inode: int) -> bool:
        await self._shown(inode)
        return False  # what it lists changes without a tree change

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        dir_id, view = await self._shown(inode)
        entries = view.entries(dir_id) or ()
        for node in entries[bisect_right(entries, start, key=lambda n: n.id):]:
            if node.is_dir:
                if not reply(node.name, self._dir_attributes(node.id, view), node.id):
                    return
                continue
            found = self._file(node)
            if found is None:
                continue
            current, attr = found
            if not reply(current.name, attr, node.id):
                return
            self.tree.remember(current)  # readdirplus counts as a lookup

    async def open(self, inode: int) -> OpenFile:
        raise IsADirectory(OFFLINE_DIR_NAME)

    async def xattrs(self, inode: int) -> dict[str, str]:
        dir_id, _ = await self._shown(inode)
        return {} if dir_id == ROOT_ID else {XATTR_PREFIX + "path": self.tree.resolver.path_of(dir_id)}
