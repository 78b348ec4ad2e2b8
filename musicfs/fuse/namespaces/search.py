"""``/.search/<query>/``: any query typed as a folder name lists the matching tracks.

``ls "/mnt/.search/artist:metallica year:1991/"`` is a lookup of that name in
``/.search``: the text is parsed there (cheap, no I/O), so a malformed query
answers EINVAL at once with one log line naming the problem, and a good one
gets a folder inode of its own, the same for that text for the life of the
mount (a small counter from this namespace's base; the texts are kept, a few
hundred bytes each). Listing the folder runs the search (see
:mod:`.results`). ``/.search`` itself lists the queries looked up lately in
this mount (at most ``recent``), so a shell completes them. Names beginning
with a dot are refused without parsing: file managers probe every folder for
``.hidden`` and the like, and those are not queries.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import pyfuse3

from ...errors import IsADirectory, NotFound, QueryError
from ...vfs.hidden import HIDDEN_BASE
from ..attrs import AttrPolicy, generated_attributes
from .base import OpenFile, Reply
from .results import ResultDirs
from .tree import XATTR_PREFIX

log = logging.getLogger(__name__)

SEARCH_DIR_NAME = ".search"
SEARCH_BASE = HIDDEN_BASE + (2 << 40)


class SearchNamespace:
    dir_name = SEARCH_DIR_NAME
    inode_base = root_inode = SEARCH_BASE

    def __init__(self, service, results: ResultDirs, policy: AttrPolicy, *, recent: int = 64):
        """``service`` parses queries (its ``parse``); ``results`` runs them and lists the hits."""
        self.service = service
        self.results = results
        self.policy = policy
        self.recent = recent
        self._inodes: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        self._recent: OrderedDict[str, int] = OrderedDict()  # looked up lately, oldest first
        self.refused = 0

    def _folder(self, text: str) -> int:
        inode = self._inodes.get(text)
        if inode is None:
            inode = self.inode_base + len(self._inodes) + 1
            self._inodes[text], self._texts[inode] = inode, text
        self._recent.pop(text, None)
        self._recent[text] = inode
        while len(self._recent) > self.recent:
            self._recent.popitem(last=False)
        return inode

    def _text(self, inode: int) -> str:
        text = self._texts.get(inode)
        if text is None:
            raise NotFound(f"no search folder {inode}")
        return text

    def _dir_attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        return generated_attributes(inode, 0, self.policy, is_dir=True, mtime_ns=time.time_ns())

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        if parent != self.root_inode:
            return await self.results.lookup(parent, self._text(parent), name)
        if name.startswith("."):
            raise NotFound(name)
        try:
            self.service.parse(name)
        except QueryError as exc:
            self.refused += 1
            log.warning("search %r refused: %s", name, exc)
            raise
        return self._dir_attributes(self._folder(name))

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        if inode != self.root_inode:
            self._text(inode)
        return self._dir_attributes(inode)

    async def opendir(self, inode: int) -> bool:
        if inode != self.root_inode:
            self._text(inode)
        return False  # what it lists changes without a tree change

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        if inode != self.root_inode:
            await self.results.readdir(inode, self._text(inode), start, reply)
            return
        recent = list(self._recent.items())  # offsets: positions in this list
        for position, (text, folder) in enumerate(recent[start:], start=start + 1):
            if not reply(text, self._dir_attributes(folder), position):
                return

    async def open(self, inode: int) -> OpenFile:
        raise IsADirectory(self._texts.get(inode, SEARCH_DIR_NAME))

    async def xattrs(self, inode: int) -> dict[str, str]:
        return {} if inode == self.root_inode else {XATTR_PREFIX + "query": self._text(inode)}

    def statistics(self) -> dict:
        return {"queries": len(self._inodes), "refused": self.refused, **self.results.statistics()}
