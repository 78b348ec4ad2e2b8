"""What plays with the network gone: the tracks held whole in the cache, and the albums they make.

Why: a user about to lose the network (a train, a flight) wants to see exactly what will play.
``/.offline`` shows the tag tree restricted to the tracks whose every byte is in the content cache
(:mod:`musicfs.fuse.namespaces.offline`); this module works out which those are.

A track plays offline when the file the tree shows for it can be read from the cache alone, as the
reader would (:meth:`musicfs.store.reader.CachedReader.open`): the chunk map of its origin and
path is complete, for the version and size the index holds for the track, and every chunk it
lists is held. A directory is an *album* when all its files (at least one) are offline; it is
shown with every directory above it, and shows its files. So an album with one track missing is
not shown at all (half an album is not what a user means to take along), and an artist shows
once one of its albums is whole.

Cost: proportional to the cache, not the library. The cache's complete maps are read a page at a
time (:meth:`musicfs.store.cache.ContentCache.whole_files`), matched to tracks by their unique
(origin, path); only the directories holding those tracks are counted, and only their ancestors
walked. A full 10 GB cache (2,500 tracks, 160K chunks) took ~0.1 s here, in a worker thread.

When: the events that can change the answer (a fill completed, chunks evicted, found corrupt or
cleared, a rescan's changes) mark the view stale; it is worked out again when next asked for (a
listing or lookup under ``/.offline``), at most once every ``interval`` seconds, in a worker
thread on a connection of its own to the index. Between two computations it answers from the
last one, so a folder being listed while a cache fills never waits for more than one computation.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from ..events import (
    CacheCleared,
    ChecksumMismatch,
    ChunkCorrupt,
    ChunkEvicted,
    Event,
    EventBus,
    FileAdded,
    FileModified,
    FileRemoved,
    FillCompleted,
    SyncCompleted,
)
from ..index.db import connect
from ..index.schema import ROOT_ID
from .node import Node
from .resolver import Resolver

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two computations at most (a listing shows a change this soon)
_BATCH = 500  # paths per ``IN (...)`` query
_CACHE_KIB = 2048  # the view's connection's page cache: it reads a few thousand rows at a time

# what may change the answer: the cache's content, or the tree's tracks and their versions
CHANGES = (FillCompleted, ChunkEvicted, ChunkCorrupt, ChecksumMismatch, CacheCleared, FileAdded, FileModified,
           FileRemoved, SyncCompleted)

WholeFile = tuple[str, str, int, str]  # (origin_id, real_path, size, version) of a file version held whole


class WholeFiles(Protocol):
    """The content cache, as far as the view asks it (:class:`~musicfs.store.cache.ContentCache`)."""

    def whole_files(self) -> list[WholeFile]: ...


@dataclass(frozen=True)
class OfflineView:
    """One computation's answer. Immutable: handed from the worker thread to the loop whole."""

    tracks: frozenset[int]  # ids of the tracks whose tree file is held whole
    albums: frozenset[int]  # directories whose files (at least one) are all offline
    children: Mapping[int, tuple[Node, ...]]  # each directory shown -> its entries shown, in id order
    changed_ns: int  # when what is shown last changed (the directories' mtime)
    by_name: Mapping[tuple[int, str], Node] = field(default_factory=dict, compare=False, repr=False)

    def shows(self, dir_id: int) -> bool:
        return dir_id in self.children

    def entries(self, dir_id: int) -> tuple[Node, ...] | None:
        """The entries directory ``dir_id`` shows, in id order; None when it is not shown."""
        return self.children.get(dir_id)

    def entry(self, dir_id: int, name: str) -> Node | None:
        return self.by_name.get((dir_id, name))


def empty_view(changed_ns: int = 0) -> OfflineView:
    return OfflineView(frozenset(), frozenset(), {ROOT_ID: ()}, changed_ns)


def compute_view(conn: sqlite3.Connection, whole: Iterable[WholeFile], previous: OfflineView | None = None,
                 ) -> OfflineView:
    """The view of the index at ``conn`` given the file versions the cache holds whole.

    Reads the index in one transaction, so a rescan committing meanwhile is seen whole or not at
    all. ``previous``: the last view; when this one shows the same, it keeps its ``changed_ns``.
    """
    conn.execute("BEGIN")
    try:
        files = _offline_files(conn, whole)
        albums = _albums(conn, files)
        children = _shown(Resolver(conn), albums)
    finally:
        conn.execute("COMMIT")
    tracks = frozenset(track_id for track_id, _ in files.values())
    if previous is not None and previous.children == children:
        changed_ns = previous.changed_ns
    else:
        changed_ns = time.time_ns()
    by_name = {(dir_id, node.name): node for dir_id, nodes in children.items() for node in nodes}
    return OfflineView(tracks, frozenset(albums), children, changed_ns, by_name)


def _offline_files(conn: sqlite3.Connection, whole: Iterable[WholeFile]) -> dict[int, tuple[int, int]]:
    """file node id -> (track id, parent directory) of the tracks shown in the tree that are held
    whole: same origin and path, and the same version and size as the reader would ask for."""
    by_origin: dict[str, dict[str, tuple[int, str]]] = {}
    for origin_id, real_path, size, version in whole:
        by_origin.setdefault(origin_id, {})[real_path] = (size, version)
    found: dict[int, tuple[int, int]] = {}
    for origin_id, held in by_origin.items():
        paths = list(held)
        for start in range(0, len(paths), _BATCH):
            batch = paths[start:start + _BATCH]
            marks = ",".join("?" * len(batch))
            for track_id, real_path, size, mtime_ns, version, node_id, parent in conn.execute(
                    "SELECT t.id, t.real_path, t.size, t.mtime_ns, t.version, n.id, n.parent FROM tracks t"
                    f" JOIN nodes n ON n.track_id = t.id WHERE t.origin_id = ? AND t.real_path IN ({marks})",
                    (origin_id, *batch)):
                # the version the reader opens (CachedReader._open_cached): an ETag, else size:mtime
                if held[real_path] == (size, version or f"{size}:{mtime_ns}"):
                    found[node_id] = (track_id, parent)
    return found


def _albums(conn: sqlite3.Connection, files: Mapping[int, tuple[int, int]]) -> set[int]:
    """The directories holding offline files whose files are all offline."""
    offline = Counter(parent for _, parent in files.values())
    return {parent for parent, count in offline.items()
            if conn.execute("SELECT COUNT(*) FROM nodes WHERE parent = ? AND kind = 'file'",
                            (parent,)).fetchone()[0] == count}


def _shown(resolver: Resolver, albums: set[int]) -> dict[int, tuple[Node, ...]]:
    """Every directory shown (the albums, their ancestors, the root) -> its entries: the
    directories shown below it, and an album's files."""
    entries: dict[int, list[Node]] = {ROOT_ID: []}
    placed = {ROOT_ID}  # directories already among their parent's entries (the root has none)
    for album in albums:
        entries.setdefault(album, []).extend(node for node in resolver.iter_children(album) if not node.is_dir)
        node_id = album
        while node_id not in placed:  # up to the first directory already placed: the rest are too
            node = resolver.get(node_id)
            entries.setdefault(node.parent, []).append(node)
            placed.add(node_id)
            node_id = node.parent
    return {dir_id: tuple(sorted(nodes, key=lambda n: n.id)) for dir_id, nodes in entries.items()}


class OfflineService:
    """The mount's offline view: kept, marked stale by events, computed again when asked for."""

    def __init__(self, index_path: Path | str, cache: WholeFiles, *, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.index_path = Path(index_path)
        self.cache = cache
        self.interval = interval
        self.clock = clock
        self._view: OfflineView | None = None
        self._changes = 0  # events that may have changed the answer, counted
        self._computed_changes = -1  # the count the current view was computed after
        self._computed_at = float("-inf")  # clock() when the current view's computation began
        self._computing = trio.Lock()
        self._conn: sqlite3.Connection | None = None  # opened in a worker thread, used by one at a time
        self.computations = self.failures = 0
        self.last_seconds = 0.0

    @property
    def stale(self) -> bool:
        return self._changes != self._computed_changes

    def changed(self) -> None:
        """Something the view depends on may have changed: work it out again when next asked."""
        self._changes += 1

    def _kept(self) -> OfflineView | None:
        """The kept view, unless it is stale and the last computation began ``interval`` ago."""
        view = self._view
        if view is not None and (not self.stale or self.clock() - self._computed_at < self.interval):
            return view
        return None

    async def view(self) -> OfflineView:
        """The current view: the kept one unless it is stale and the last computation began at
        least ``interval`` seconds ago; then computed again (once, for all who ask meanwhile)."""
        kept = self._kept()
        if kept is not None:
            return kept
        async with self._computing:
            kept = self._kept()
            if kept is not None:  # computed for another request while this one waited
                return kept
            changes, started = self._changes, self.clock()
            self._computed_at = started
            try:
                view = await trio.to_thread.run_sync(self._compute, self._view)
            except sqlite3.Error as exc:  # the index or the chunk index refused: the last answer stands
                self.failures += 1
                log.warning("the offline view could not be worked out (the last one is shown): %s", exc)
                if self._view is None:
                    self._view = empty_view(time.time_ns())
                return self._view
            self._view, self._computed_changes = view, changes
            self.computations += 1
            self.last_seconds = self.clock() - started
            return view

    def _compute(self, previous: OfflineView | None) -> OfflineView:
        """In a worker thread: the cache's whole files, then the index's tracks and directories."""
        whole = self.cache.whole_files()
        if self._conn is None:
            self._conn = connect(self.index_path, readonly=True, cache_kib=_CACHE_KIB)
        return compute_view(self._conn, whole, previous)

    async def follow(self, bus: EventBus) -> None:
        """Mark the view stale on each event that may change it, until the bus closes. A feed that
        fell behind lost some of those: that marks it stale too."""
        with bus.subscribe(wants=_changes_the_view) as feed:
            async for _ in feed:  # an event, or where events were lost: either way, stale
                self.changed()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def statistics(self) -> dict[str, Any]:
        view = self._view
        return {
            "tracks": len(view.tracks) if view else None,  # None: nobody asked yet, nothing computed
            "albums": len(view.albums) if view else None,
            "directories": len(view.children) - 1 if view else None,  # shown below /.offline
            "stale": self.stale,
            "computations": self.computations,
            "failures": self.failures,
            "last_computation_seconds": round(self.last_seconds, 4),
        }


def _changes_the_view(event: Event) -> bool:
    return isinstance(event, CHANGES)
