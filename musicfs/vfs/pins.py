"""Pinning: the tracks a user asked to keep are fetched whole and stay in the cache (issue 15).

Why: a mount that travels (a laptop, a car) must still play what its user
chose once the network is gone; the LRU keeps what was played lately, not
what was wanted. A pin names a file at its origin (origin id, path), so it
outlives restarts, remounts and rescans: when a rescan finds a pinned file
changed (a retag), the new version is fetched in full (or rebuilt by delta
sync) and its chunks are pinned as its map is saved, while the old version's
are let go (the chunk index's triggers keep that true).

Pins hold room: the sizes of the pinned files may add up to ``room`` bytes
(``[cache] pins_size``). A pin past it is refused as a whole, before anything
is fetched, so nothing cached is dropped for a pin that then fails.

The keeper (:meth:`Pinner.run`) makes every pin whole: at start, after each
rescan, when an origin comes back and when a chunk is found damaged; one file
at a time, giving way to any listener waiting for an origin (like prefetch).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import trio

from ..errors import MusicFSError, OriginUnavailable, Uncacheable
from ..events import ChunkCorrupt, EventBus, OriginConnected, SyncCompleted
from ..store.pindb import PinState
from .prefetch import GIVE_WAY, Prefetcher, PrefetchReader
from .resolver import Resolver

log = logging.getLogger(__name__)

PIN_TIMEOUT = 600.0  # seconds one pinned file's fetch may take before the request moves on
KEEP_EVERY = 600.0  # seconds between the keeper's rounds when nothing asks for one
KEEPER_EVENTS = (SyncCompleted, OriginConnected, ChunkCorrupt)  # what may leave a pin less than whole


class PinStore(Protocol):
    """The content cache's side of pins (:class:`~musicfs.store.cache.ContentCache`)."""

    def pin(self, files: list[tuple[str, str, int]], room: int) -> tuple[int, int]: ...

    def unpin(self, files: list[tuple[str, str]]) -> int: ...

    def pins(self) -> list[PinState]: ...

    def resize_pin(self, origin_id: str, real_path: str, size: int) -> None: ...


@dataclass(frozen=True)
class PinnedFile:
    """One pin as ``musicfs pin list`` shows it."""

    path: str  # where the mount shows it; '' while the library does not hold it
    origin_id: str
    real_path: str
    size: int  # what the pin holds of the room
    cached: int  # bytes of the library's version in the cache
    state: str  # 'cached' (whole, this version), 'fetching', 'waiting' (the keeper will), 'missing'
    pinned_at: float

    def as_dict(self) -> dict:
        return {"path": self.path, "origin": self.origin_id, "real_path": self.real_path, "size": self.size,
                "cached": self.cached, "state": self.state, "pinned_at": self.pinned_at}


def version_of(track: dict) -> str:
    """The version a file's chunk map is saved under (as the reader names it)."""
    return track.get("version") or f"{track['size']}:{track['mtime_ns']}"


class Pinner:
    def __init__(self, conn: sqlite3.Connection, store: PinStore, reader: PrefetchReader, prefetch: Prefetcher,
                 room: int, resolver: Resolver | None = None, uncached: frozenset[str] = frozenset()):
        """``conn``: the index, read on the loop as the tree reads it; ``reader`` fetches the keeper's
        files; ``prefetch`` runs a pin request's fetches (one queue of requested work, with progress);
        ``room``: bytes the pinned files may add up to; ``uncached``: origins whose files are never
        cached (``cache = "never"``), which no pin could keep."""
        self.conn = conn
        self.uncached = uncached
        self.resolver = resolver or Resolver(conn)
        self.store = store
        self.reader = reader
        self.prefetch = prefetch
        self.room = room
        self.fetching: set[tuple[str, str]] = set()  # the keeper's file under way
        self.kept = self.keeper_rounds = self.keeper_failures = 0
        self._wake = trio.Event()

    def _track(self, track_id: int) -> dict | None:
        row = self.conn.execute("SELECT * FROM tracks WHERE id = ?", (track_id,)).fetchone()
        return dict(row) if row is not None else None

    # -- requests ---------------------------------------------------------------------------------
    async def pin(self, files: list[tuple[int, str]]) -> AsyncIterator[dict]:
        """Pin ``files`` (track id, path) as a whole or not at all (NoRoom, raised before the first
        document), then fetch each in full: the prefetch documents, the summary saying how many
        files were newly pinned and the bytes of room they took."""
        tracks = [t for t in (self._track(track_id) for track_id, _ in files) if t is not None]
        never = sorted({t["origin_id"] for t in tracks} & self.uncached)
        if never:
            raise Uncacheable(f"origin {', '.join(never)} is read without caching (cache = \"never\" in the "
                              "config): its files cannot be pinned; nothing was pinned")
        wanted = [(t["origin_id"], t["real_path"], t["size"]) for t in tracks]
        pinned, adds = await trio.to_thread.run_sync(self.store.pin, wanted, self.room)
        self._wake.set()  # a fetch below that fails is the keeper's to finish
        return self._progress(files, pinned, adds)

    async def _progress(self, files: list[tuple[int, str]], pinned: int, adds: int) -> AsyncIterator[dict]:
        async for document in self.prefetch.request(files, "full", timeout=PIN_TIMEOUT):
            if document.get("done"):
                document = {**document, "pinned": pinned, "pinned_bytes": adds}
            yield document

    async def unpin(self, files: list[tuple[int, str]]) -> dict:
        """Let ``files`` go: their chunks are evicted like any other's from then on."""
        tracks = [t for t in (self._track(track_id) for track_id, _ in files) if t is not None]
        gone = await trio.to_thread.run_sync(self.store.unpin, [(t["origin_id"], t["real_path"]) for t in tracks])
        return {"files": len(files), "unpinned": gone}

    async def listing(self) -> list[PinnedFile]:
        """Every pin, where the mount shows it and how much of the library's version is cached."""
        states = await trio.to_thread.run_sync(self.store.pins)
        return [self._described(state) for state in states]

    def _described(self, pin: PinState) -> PinnedFile:
        row = self.conn.execute("SELECT t.*, n.id AS node_id FROM tracks t LEFT JOIN nodes n ON n.track_id = t.id"
                                " WHERE t.origin_id = ? AND t.real_path = ?", (pin.origin_id, pin.real_path)).fetchone()
        if row is None:
            return PinnedFile("", pin.origin_id, pin.real_path, pin.size, 0, "missing", pin.pinned_at)
        track = dict(row)
        current = pin.version == version_of(track)
        cached = pin.held if current else 0
        if current and pin.complete:
            state = "cached"
        elif (pin.origin_id, pin.real_path) in self.fetching:
            state = "fetching"
        else:
            state = "waiting"
        path = self.resolver.path_of(track["node_id"]) if track["node_id"] is not None else ""
        return PinnedFile(path, pin.origin_id, pin.real_path, pin.size, cached, state, pin.pinned_at)

    # -- the keeper -------------------------------------------------------------------------------
    async def run(self, bus: EventBus, every: float = KEEP_EVERY) -> None:
        """Make every pin whole now, then again whenever something may have left one less than
        whole (a rescan, an origin back, a damaged chunk), or every ``every`` seconds."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen, bus)
            while True:
                self._wake = trio.Event()
                await self.keep()
                with trio.move_on_after(every):
                    await self._wake.wait()

    async def _listen(self, bus: EventBus) -> None:
        with bus.subscribe(queue=64, wants=lambda event: isinstance(event, KEEPER_EVENTS)) as feed:
            async for _ in feed:
                self._wake.set()

    async def keep(self) -> int:
        """One round: fetch in full each pinned file whose library version is not whole in the cache.
        Returns how many were made whole."""
        self.keeper_rounds += 1
        made = 0
        for pin in await trio.to_thread.run_sync(self.store.pins):
            row = self.conn.execute("SELECT * FROM tracks WHERE origin_id = ? AND real_path = ?",
                                    (pin.origin_id, pin.real_path)).fetchone()
            if row is None:  # not in the library now: the pin waits for it to come back
                continue
            track = dict(row)
            if pin.complete and pin.version == version_of(track):
                continue
            made += await self._make_whole(track, pin)
        self.kept += made
        return made

    async def _make_whole(self, track: dict, pin: PinState) -> int:
        key = (pin.origin_id, pin.real_path)
        self.fetching.add(key)
        try:
            while self.reader.busy():  # a listener waits for an origin: it goes first
                await trio.sleep(GIVE_WAY)
            cut = [0]
            await self.reader.prefetch(track, whole=True, timeout=PIN_TIMEOUT,
                                       progress=lambda n: cut.__setitem__(0, n))
            if track["size"] != pin.size:  # a new version: the pin holds its size from now on
                await trio.to_thread.run_sync(self.store.resize_pin, pin.origin_id, pin.real_path, track["size"])
            if cut[0] < track["size"]:
                raise OriginUnavailable(f"{cut[0]:,} of {track['size']:,} bytes after {PIN_TIMEOUT:g} s")
        except (MusicFSError, OSError, sqlite3.Error) as exc:
            self.keeper_failures += 1
            log.info("pinned %s:%s is not whole yet (%s); tried again after the next rescan, when its "
                     "origin is back, or in %g s", pin.origin_id, pin.real_path, exc, KEEP_EVERY)
            return 0
        finally:
            self.fetching.discard(key)
        return 1

    def statistics(self) -> dict:
        return {"room": self.room, "keeper_rounds": self.keeper_rounds, "made_whole": self.kept,
                "keeper_failures": self.keeper_failures, "fetching": len(self.fetching)}
