"""A directory whose entries are the hits of a search: the shared half of ``/.search`` and ``/.collections``.

Each hit is listed as the tag tree's own file: the same inode number and
attributes as in the tree (so a player sees the same file, and opening it is
the tree's business, routed by that inode), under a name of its own that
says its rank: ``001 Artist - Title.flac``, zero-padded so that ``ls``'s
sorting shows rank order, made legal by :func:`~musicfs.index.names.legal_name`,
keeping the tree file's extension. Entries handed to the kernel are
remembered in the inode table like any lookup, so FORGETs balance.

Every listing (readdir from offset 0) runs the search again, in the search
service's worker threads, never on the loop: a folder of results is always
current, and listing it never holds up other requests. Its results are kept
for ``keep`` seconds: the later pages of that listing, and lookups of its
names (a player opening a path it was given, with no listing before), are
answered from them; past that a lookup runs the search again. Entries carry
short kernel timeouts (``timeout``), so a rescan's new matches show within a
second even in a folder the kernel has cached.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from ...errors import NotFound
from ...index.names import legal_name, with_suffix_number
from .base import Reply
from .tree import TreeNamespace

_RANKED = re.compile(r"^\d{3,} ")  # every name these folders hand out begins with its rank


@dataclass
class Results:
    fetched: float  # clock time the search answered
    names: list[str]  # in rank order
    hits: dict[str, object]  # name -> Hit


def entry_names(hits: list) -> list[str]:
    """Legal, unique names in rank order: ``<rank> <artist> - <title><extension of the tree file>``."""
    width = max(3, len(str(len(hits))))
    names, taken = [], set()
    for rank, hit in enumerate(hits, start=1):
        base = hit.virtual_path.rsplit("/", 1)[-1]
        stem, extension = os.path.splitext(base)
        title = hit.title or stem
        label = f"{hit.artist} - {title}" if hit.artist else title
        name = legal_name(f"{rank:0{width}d} {label}", extension=extension)
        number = 1
        while name in taken:  # cannot happen while ranks differ; kept so that it never can
            number += 1
            name = with_suffix_number(name, number, extension)
        taken.add(name)
        names.append(name)
    return names


class ResultDirs:
    """Runs searches for result folders and keeps each folder's latest results briefly.

    ``search(text, limit)`` is the search service's; at most ``max_results`` hits are listed.
    At most ``max_dirs`` folders' results are kept (least recently used out first), each for
    ``keep`` seconds.
    """

    def __init__(self, search: Callable, tree: TreeNamespace, *, max_results: int = 1000, keep: float = 5.0,
                 timeout: float = 1.0, max_dirs: int = 32, clock: Callable[[], float] = time.monotonic):
        self._search = search
        self.tree = tree
        self.max_results = max_results
        self.keep, self.timeout, self.max_dirs, self.clock = keep, timeout, max_dirs, clock
        self._kept: OrderedDict[int, Results] = OrderedDict()
        self._running: dict[int, trio.Lock] = {}
        self.searches = 0

    async def _fetch(self, directory: int, text: str) -> Results:
        lock = self._running.setdefault(directory, trio.Lock())
        before = self._kept.get(directory)
        async with lock:
            kept = self._kept.get(directory)
            if kept is not None and kept is not before:  # searched by another request while this one waited
                return kept
            page = await self._search(text, limit=self.max_results)
            hits = [hit for hit in page.hits if hit.virtual_path]  # '' : removed since the search
            names = entry_names(hits)
            results = Results(self.clock(), names, dict(zip(names, hits)))
            self.searches += 1
            self._kept.pop(directory, None)
            self._kept[directory] = results
            while len(self._kept) > self.max_dirs:
                self._kept.popitem(last=False)
        if not lock.statistics().tasks_waiting:
            self._running.pop(directory, None)
        return results

    def _attributes(self, hit) -> tuple[object, pyfuse3.EntryAttributes] | None:
        """The tree node of a hit and its attributes with this folder's timeouts (None: gone)."""
        try:
            node = self.tree.node(hit.node_id)
        except NotFound:  # removed by a rescan after the search
            return None
        attr = self.tree.attributes(node)
        attr.entry_timeout = attr.attr_timeout = self.timeout
        return node, attr

    async def lookup(self, directory: int, text: str, name: str) -> pyfuse3.EntryAttributes:
        if not _RANKED.match(name):  # a file manager's probe (.hidden, desktop.ini): not ours, no search
            raise NotFound(name)
        kept = self._kept.get(directory)
        if kept is None or self.clock() - kept.fetched >= self.keep:
            kept = await self._fetch(directory, text)
        else:
            self._kept.move_to_end(directory)
        hit = kept.hits.get(name)
        found = self._attributes(hit) if hit is not None else None
        if found is None:
            raise NotFound(name)
        node, attr = found
        self.tree.remember(node)
        return attr

    async def readdir(self, directory: int, text: str, start: int, reply: Reply) -> None:
        """Offsets are ranks: a listing from 0 searches again, later pages read its results."""
        kept = self._kept.get(directory) if start else None
        if kept is None:
            kept = await self._fetch(directory, text)
        for position, name in enumerate(kept.names[start:], start=start + 1):
            found = self._attributes(kept.hits[name])
            if found is None:
                continue
            node, attr = found
            if not reply(name, attr, position):
                return
            self.tree.remember(node)  # readdirplus counts as a lookup

    def statistics(self) -> dict:
        return {"searches": self.searches, "folders_kept": len(self._kept), "max_results": self.max_results}
