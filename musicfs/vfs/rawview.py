"""Raw views: ``/.origins/<id>/...`` shows each origin as it is, read-only, without tags.

A bucket or a server can be browsed like a folder, whatever its files are.
Listings come from the origin's paged listing in a worker thread and are kept
for ``ttl`` seconds, and no longer than ``idle`` seconds unused (B2-5, seed
000's metadata cache: 5 minutes, 1 minute idle; ``[raw]`` in the config):
browsing stays fast, a bucket that charges and throttles per request is not
asked again for every ``ls``, a listing nobody looks at is not kept for the
whole TTL, and a change in the origin shows within ``ttl`` seconds. A
listing's entries carry the objects' sizes and times, so the object metadata
is cached with it. Concurrent lookups of one folder wait for one listing. Inode
numbers for raw entries are handed out as entries are first seen, in a range
of their own; they are stable for the life of the mount.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from ..errors import MusicFSError, NotADirectory, NotFound
from ..index.names import NAME_MAX, legal_name, with_suffix_number
from .hidden import HIDDEN_BASE


def raw_name(name: str) -> str:
    """An origin's own name, kept as it is unless the kernel could not take it."""
    if name in ("", ".", "..") or "\x00" in name or "/" in name or len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return legal_name(name)
    return name


def unique_names(entries: list[tuple[str, bool, str]]) -> list[str]:
    """Names for (raw name, is a folder, path) entries, each listed once in a folder.

    Names can meet: a bucket holds an object ``a`` and objects under ``a/``;
    names made legal can coincide. A folder keeps the name, then the first
    path in sorted order; the others are numbered like colliding tracks.
    """
    order = sorted(range(len(entries)), key=lambda i: (entries[i][0], not entries[i][1], entries[i][2]))
    taken: set[str] = set()
    names = [""] * len(entries)
    for i in order:
        name, is_dir, _path = entries[i]
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            stem, _, tail = name.rpartition(".")
            candidate = with_suffix_number(name, number, f".{tail}" if stem and tail and not is_dir else "")
        taken.add(candidate)
        names[i] = candidate
    return names

RAW_DIR_NAME = ".origins"
RAW_BASE = HIDDEN_BASE + (1 << 40)


@dataclass(frozen=True)
class RawNode:
    inode: int
    origin_id: str | None  # None for /.origins itself
    path: str  # '' for an origin's root; directories end without '/'
    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    version: str = ""


@dataclass
class _Listing:
    fetched: float  # clock time the origin answered
    used: float  # clock time it was last served
    nodes: list[RawNode]


class RawView:
    def __init__(self, origins: dict, *, ttl: float = 300.0, idle: float = 60.0, clock=time.monotonic):
        self.origins = origins
        self.ttl, self.idle, self.clock = ttl, idle, clock
        self.limiter = trio.CapacityLimiter(8)
        self.root = RawNode(RAW_BASE, None, "", RAW_DIR_NAME, True)
        self._nodes: dict[int, RawNode] = {RAW_BASE: self.root}
        self._keys: dict[tuple[str, str], int] = {}
        self._listings: dict[int, _Listing] = {}
        self._fetching: dict[int, trio.Lock] = {}  # one listing at a time per folder
        self._next = RAW_BASE + 1
        self._tops = [self._node(origin_id, "", origin_id, True) for origin_id in sorted(origins)]
        self.listings_fetched = 0

    def is_raw(self, inode: int) -> bool:
        return inode >= RAW_BASE

    def _node(self, origin_id: str, path: str, name: str, is_dir: bool, size: int = 0, mtime_ns: int = 0,
              version: str = "") -> RawNode:
        key = (origin_id, path + ("/" if is_dir else ""))
        inode = self._keys.get(key)
        if inode is None:
            inode, self._next = self._next, self._next + 1
            self._keys[key] = inode
        node = RawNode(inode, origin_id, path, name, is_dir, size, mtime_ns, version)
        self._nodes[inode] = node
        return node

    def get(self, inode: int) -> RawNode:
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"raw inode {inode}")
        return node

    async def children(self, inode: int) -> list[RawNode]:
        node = self.get(inode)
        if not node.is_dir:
            raise NotADirectory(node.name)
        if node is self.root:
            return list(self._tops)
        cached = self._fresh(inode)
        if cached is not None:
            return cached
        lock = self._fetching.setdefault(inode, trio.Lock())
        async with lock:
            cached = self._fresh(inode)  # fetched while this one waited for the lock
            if cached is not None:
                return cached
            listing = await trio.to_thread.run_sync(self._list, node, limiter=self.limiter)
            now = self.clock()
            self._listings[inode] = _Listing(now, now, listing)
        self._fetching.pop(inode, None)
        return listing

    def _fresh(self, inode: int) -> list[RawNode] | None:
        """The cached listing of ``inode`` if it is within both bounds (and now used), else None."""
        cached, now = self._listings.get(inode), self.clock()
        if cached is None:
            return None
        if now - cached.fetched >= self.ttl or now - cached.used >= self.idle:
            del self._listings[inode]
            return None
        cached.used = now
        return cached.nodes

    def _list(self, node: RawNode) -> list[RawNode]:
        origin = self.origins[node.origin_id]
        prefix = f"{node.path}/" if node.path else ""
        files, dirs = origin.list_all(prefix)
        self.listings_fetched += 1
        entries = [(raw_name(name), True, f"{prefix}{name}") for name in dirs]
        entries += [(raw_name(entry.path.rsplit("/", 1)[-1]), False, entry.path) for entry in files]
        names = unique_names(entries)
        nodes = [self._node(node.origin_id, path, name, True)
                 for name, (_, _, path) in zip(names, entries[:len(dirs)])]
        for name, entry in zip(names[len(dirs):], files):
            nodes.append(self._node(node.origin_id, entry.path, name, False, entry.size, entry.mtime_ns,
                                    entry.version))
        return sorted(nodes, key=lambda n: n.name)

    async def lookup(self, parent: int, name: str) -> RawNode:
        for child in await self.children(parent):
            if child.name == name:
                return child
        raise NotFound(name)

    def track(self, node: RawNode) -> dict:
        """What the reader needs to open a raw file (it has no row in the index)."""
        if node.is_dir or node.origin_id is None:
            raise MusicFSError(f"{node.name} is not a file")
        return {"id": -node.inode, "origin_id": node.origin_id, "real_path": node.path,
                "size": node.size, "mtime_ns": node.mtime_ns, "version": node.version}

    def statistics(self) -> dict:
        return {"raw_nodes": len(self._nodes), "listings_cached": len(self._listings),
                "listings_fetched": self.listings_fetched, "ttl": self.ttl, "idle": self.idle}
