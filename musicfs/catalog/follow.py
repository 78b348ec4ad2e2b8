"""A mount from a catalog follows it: it looks at the pointer every ``[catalog] poll`` seconds
and takes a new catalog while it serves (CAT-3).

A look costs one stat of the pointer object when nothing changed (its version, an ETag or
size and time, is what the mount last saw). A new pointer is read and checked, its snapshot
downloaded and checked beside the index, and only then is the tree compared and the index's
content replaced (:mod:`musicfs.catalog.swap`); the kernel is told what changed, as after a
rescan, so new tracks show at once, removed ones go, unchanged ones keep their inode
numbers, and open files read on (their bytes come from the origin and the cache, which the
index does not hold). A catalog refused, or an origin not answering, leaves the mount on
the catalog it has; the reason is logged, counted, and published on the bus.

Blocking work (the origin, SQLite) runs in worker threads that return values; the follower's
state changes on the trio side only.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..config import CatalogSettings
from ..errors import CatalogRefused, NotFound, OriginUnavailable
from ..events import CatalogRejected, CatalogUpdated, EventBus, SyncCompleted
from ..index.library import LibraryIndex
from ..index.tree import TreeChanges
from ..origins.base import Origin
from .fetch import CatalogReader, InUse, Latest
from .swap import carry_local, differences, replace_content

log = logging.getLogger(__name__)

TreeChanged = Callable[[TreeChanges], Awaitable[Any]]


@dataclass(frozen=True)
class _Prepared:
    latest: Latest
    snapshot: Path  # downloaded, checked, with this machine's own rows in it
    changes: TreeChanges


class CatalogFollower:
    def __init__(self, index: LibraryIndex, origin: Origin, settings: CatalogSettings, *, bus: EventBus,
                 tree_changed: TreeChanged | None = None):
        self.index, self.origin, self.settings = index, origin, settings
        self.bus, self.tree_changed = bus, tree_changed
        self.reader = CatalogReader(origin, settings)
        self.in_use = InUse.load(index.path)
        self.polls = self.updates = self.rejected = self.unreachable = self.failed = 0
        self.last_poll_at: float | None = None
        self.last_result = "not polled yet"
        self._lock = trio.Lock()  # one poll at a time (the schedule, or one asked for)

    async def run(self) -> None:
        """Poll every ``settings.poll`` seconds until the mount stops."""
        while True:
            await trio.sleep(self.settings.poll)
            await self.poll()

    async def poll(self) -> str:
        """Look at the pointer now and take a new catalog; what came of it, in a few words."""
        async with self._lock:
            self.polls += 1
            self.last_poll_at = time.time()
            try:
                prepared = await trio.to_thread.run_sync(self._prepare, abandon_on_cancel=False)
            except (OriginUnavailable, NotFound) as exc:
                self.unreachable += 1
                return self._said(f"the catalog could not be read: {exc}", logging.INFO)
            except (OSError, sqlite3.Error) as exc:  # this machine's disk (full, read-only), or its index
                self.failed += 1
                return self._said(f"a new catalog could not be taken here, this mount stays on its own: "
                                  f"{type(exc).__name__}: {exc}", logging.WARNING)
            except CatalogRefused as exc:
                self.rejected += 1
                self.bus.publish(CatalogRejected(self.settings.origin, str(exc)))
                return self._said(f"a new catalog was refused, this mount stays on its own: {exc}",
                                  logging.WARNING)
            if prepared is None:
                return self._said("unchanged", logging.DEBUG)
            if isinstance(prepared, Latest):  # the pointer was written again, naming the same snapshot
                self.in_use = await trio.to_thread.run_sync(self.reader.record, prepared, self.index.path)
                return self._said("unchanged (the same catalog published again)", logging.DEBUG)
            try:
                await trio.to_thread.run_sync(self._apply, prepared, abandon_on_cancel=False)
            except (OSError, sqlite3.Error) as exc:  # the index is locked past its timeout, or its disk failed
                self.failed += 1
                return self._said(f"the new catalog could not replace the index, this mount stays on its own: "
                                  f"{type(exc).__name__}: {exc}", logging.WARNING)
            self.in_use = await trio.to_thread.run_sync(self.reader.record, prepared.latest, self.index.path)
            changes = prepared.changes
            if changes and self.tree_changed is not None:
                await self.tree_changed(changes)
            self.updates += 1
            pointer = prepared.latest.pointer
            self.bus.publish(CatalogUpdated(self.settings.origin, pointer.hash, pointer.tracks,
                                            added=len(changes.added), removed=len(changes.removed),
                                            modified=len(changes.modified)))
            # what follows a changed library (the pin keeper) listens for this, as after a rescan
            self.bus.publish(SyncCompleted(self.settings.origin, added=len(changes.added),
                                           removed=len(changes.removed), modified=len(changes.modified)))
            return self._said(f"took catalog {pointer.hash[:12]}: {pointer.tracks} tracks "
                              f"({len(changes.added)} nodes new, {len(changes.removed)} gone, "
                              f"{len(changes.modified)} changed)", logging.INFO)

    def _said(self, result: str, level: int) -> str:
        self.last_result = result
        log.log(level, "catalog: %s", result)
        return result

    def _prepare(self) -> _Prepared | Latest | None:
        """In a thread: None when the pointer is what this mount has, the pointer when it names the
        catalog in use; else the new catalog, ready."""
        version = self.reader.version()
        if self.in_use is not None and version == self.in_use.version:
            return None
        latest = self.reader.latest()
        if self.in_use is not None and latest.pointer.hash == self.in_use.pointer.hash:
            return latest
        snapshot = self.reader.download(latest, self.index.path.parent)
        try:
            carry_local(snapshot, self.index.path)
            reader = self.index.another_connection()
            try:
                changes = differences(reader.conn, snapshot)
            finally:
                reader.close()
        except BaseException:
            snapshot.unlink(missing_ok=True)
            raise
        return _Prepared(latest, snapshot, changes)

    def _apply(self, prepared: _Prepared) -> None:
        """In a thread: the live index's content becomes the new catalog's, in one transaction."""
        writer = self.index.another_connection()
        try:
            replace_content(prepared.snapshot, writer.conn)
        finally:
            writer.close()
            prepared.snapshot.unlink(missing_ok=True)

    def statistics(self) -> dict[str, Any]:
        pointer = self.in_use.pointer if self.in_use else None
        return {"origin": self.settings.origin, "prefix": self.settings.prefix, "poll_seconds": self.settings.poll,
                "in_use": None if pointer is None else {
                    "hash": pointer.hash, "tracks": pointer.tracks, "published_at": pointer.created,
                    "installed_at": self.in_use.installed_at, "signed": bool(pointer.signature)},
                "polls": self.polls, "updates": self.updates, "rejected": self.rejected,
                "unreachable": self.unreachable, "failed": self.failed, "last_poll_at": self.last_poll_at, "last_result": self.last_result}
