"""Whole listings of ordinary directories, kept between readdirs (MM-5.3).

The kernel keeps the tag tree's listings (FOPEN_CACHE_DIR, see
:mod:`musicfs.fuse.dircache`) until a rescan changes them, so most repeated
``ls`` never reach the daemon. The ones that do (a listing the kernel dropped
under memory pressure or after a change, a mount where ``_replyopen`` was not
built) would each be an index query without this cache: the daemon keeps the
last listings it built and answers those repeats from memory.

Only directories of up to ``max_children`` entries are kept: a 100K-entry
directory pages straight from the index (its listing would evict hundreds of
albums, and it is listed rarely). A 10K-entry one (a big compilation, a
"singles" folder) is kept: paging it from the index cost ~13 us an entry
against ~4 us from memory, and listing it 3x faster puts ``ls -l`` of it ahead
of rclone's (``make perf-compare``); it takes at most a fifth of the default
bound. The cache is bounded by the number of nodes
it holds, least recently used first out, and it is emptied of whatever a rescan
changed before the kernel is told (see :meth:`forget`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .node import Node

DEFAULT_MAX_NODES = 50_000  # ~200 bytes each: about 10 MB at most, within the metadata bound
DEFAULT_MAX_CHILDREN = 10_000  # ~2 MB of nodes when kept


@dataclass
class ListingCounts:
    hits: int = 0  # readdir pages answered from a kept listing
    misses: int = 0  # pages that queried the index
    evictions: int = 0
    invalidations: int = 0  # listings dropped because a rescan changed them


class ListingCache:
    """``dir id -> its children in id order``, for directories small enough to keep."""

    def __init__(self, max_nodes: int = DEFAULT_MAX_NODES, max_children: int = DEFAULT_MAX_CHILDREN):
        if max_nodes < 0 or max_children < 0:
            raise ValueError("listing cache bounds must not be negative")
        self.max_nodes = max_nodes
        self.max_children = min(max_children, max_nodes)
        self.counts = ListingCounts()
        self._listings: OrderedDict[int, tuple[Node, ...]] = OrderedDict()
        self._nodes = 0

    def get(self, parent: int) -> tuple[Node, ...] | None:
        listing = self._listings.get(parent)
        if listing is None:
            self.counts.misses += 1
            return None
        self._listings.move_to_end(parent)
        self.counts.hits += 1
        return listing

    def keep(self, parent: int, children: tuple[Node, ...]) -> None:
        """Remember a complete listing (the caller read every child); larger ones are not kept."""
        if len(children) > self.max_children:
            return
        self._drop(parent)
        self._listings[parent] = children
        self._nodes += len(children) + 1
        while self._nodes > self.max_nodes and self._listings:
            oldest = next(iter(self._listings))
            self._drop(oldest)
            self.counts.evictions += 1

    def forget(self, parents: Iterable[int] | None = None) -> None:
        """Drop the listings of ``parents`` (all of them when ``None``): their children changed."""
        if parents is None:
            self.counts.invalidations += len(self._listings)
            self._listings.clear()
            self._nodes = 0
            return
        for parent in parents:
            if parent in self._listings:
                self._drop(parent)
                self.counts.invalidations += 1

    def _drop(self, parent: int) -> None:
        listing = self._listings.pop(parent, None)
        if listing is not None:
            self._nodes -= len(listing) + 1

    def statistics(self) -> dict[str, Any]:
        pages = self.counts.hits + self.counts.misses
        return {"listings": len(self._listings), "nodes": self._nodes, "max_nodes": self.max_nodes,
                "max_children": self.max_children, "hits": self.counts.hits,
                "misses": self.counts.misses, "evictions": self.counts.evictions,
                "invalidations": self.counts.invalidations,
                "hit_rate": round(self.counts.hits / pages, 4) if pages else None}
