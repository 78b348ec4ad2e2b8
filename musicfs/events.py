"""Events: one small frozen dataclass per kind, published on the mount's one bus (FR-18.1).

Publishing never blocks and never fails: each subscriber has a bounded
feed, and a subscriber that falls behind loses events (counted, and marked
where they were lost) rather than slowing a read. The bus also keeps a short history and per-kind counts,
which ``statistics()``, tests and the control API read.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import trio


@dataclass(frozen=True)
class Event:
    at: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class FetchStarted(Event):
    origin_id: str
    path: str
    offset: int


@dataclass(frozen=True)
class ChunkFetched(Event):
    """Bytes of one chunk came from an origin."""

    origin_id: str
    path: str
    offset: int
    size: int


@dataclass(frozen=True)
class ChunkStored(Event):
    address: str
    size: int


@dataclass(frozen=True)
class FillCompleted(Event):
    """A file version is wholly in the cache; its manifest is saved."""

    origin_id: str
    path: str
    size: int
    chunks: int
    seconds: float


@dataclass(frozen=True)
class FillStopped(Event):
    """A fill ended early because nobody has the file open; reads resume it from ``covered``."""

    origin_id: str
    path: str
    covered: int
    size: int


@dataclass(frozen=True)
class ChunkEvicted(Event):
    address: str
    size: int


@dataclass(frozen=True)
class ChunkCorrupt(Event):
    """A chunk on disk failed its checksum or was missing; it will be fetched again."""

    address: str


@dataclass(frozen=True)
class CacheCleared(Event):
    """A user cleared cached files (``musicfs cache clear``): one origin's, or every origin's (None).

    Eviction announces each chunk it removes; a clear removes maps and chunks at once and says
    so here, so that whoever follows what the cache holds (the offline view) knows it changed.
    """

    origin_id: str | None
    manifests: int
    chunks: int
    bytes: int


@dataclass(frozen=True)
class ChecksumMismatch(Event):
    """An origin served bytes that fail a checksum: its own (ETag) or the file's known chunk map."""

    origin_id: str
    path: str
    detail: str


@dataclass(frozen=True)
class OriginError(Event):
    origin_id: str
    path: str
    error: str
    attempt: int


# -- the design's event types (FR-18.1): what a user watching a mount wants to know -----------


@dataclass(frozen=True)
class FileAccessed(Event):
    """A track was opened (once per open, not per read)."""

    origin_id: str
    path: str  # the origin's path (real_path)
    size: int


@dataclass(frozen=True)
class FileAdded(Event):
    """A rescan found a new track; it shows in the mount from now on."""

    origin_id: str
    path: str
    size: int


@dataclass(frozen=True)
class FileRemoved(Event):
    origin_id: str
    path: str


@dataclass(frozen=True)
class FileModified(Event):
    """A rescan found a track changed (its bytes, or its tags: its place in the tree may have moved)."""

    origin_id: str
    path: str
    size: int


@dataclass(frozen=True)
class OriginConnected(Event):
    """An origin answers again (or for the first time): a health transition."""

    origin_id: str
    latency_ms: float | None = None


@dataclass(frozen=True)
class OriginDisconnected(Event):
    origin_id: str
    error: str = ""


@dataclass(frozen=True)
class SyncStarted(Event):
    origin_id: str


@dataclass(frozen=True)
class SyncCompleted(Event):
    origin_id: str
    added: int = 0
    removed: int = 0
    modified: int = 0
    unchanged: int = 0
    skipped: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class CatalogUpdated(Event):
    """A mount took a newly published catalog (musicfs.catalog): its tree changed by this much."""

    origin_id: str
    hash: str
    tracks: int
    added: int = 0  # nodes (tracks and folders) new in the tree
    removed: int = 0
    modified: int = 0  # tracks whose bytes changed


@dataclass(frozen=True)
class CatalogRejected(Event):
    """A newly published catalog was not taken (the one in use stays); ``reason`` says why."""

    origin_id: str
    reason: str


# what a feed carries when no type is named: the design's events (FR-18.1), not the per-chunk ones
FEED_DEFAULT = ("FileAccessed", "FileAdded", "FileRemoved", "FileModified", "OriginConnected",
                "OriginDisconnected", "SyncStarted", "SyncCompleted", "ChunkEvicted", "CatalogUpdated",
                "CatalogRejected")


def event_types() -> dict[str, type[Event]]:
    """Every kind of event, by name (the names the control API's ``type`` filter takes)."""
    found: dict[str, type[Event]] = {}
    pending = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class Dropped:
    """In a feed, where ``count`` events were lost because its reader fell behind."""

    count: int


class Subscription:
    """One subscriber's feed: at most ``capacity`` events waiting, and a count of the ones lost.

    A full feed does not hold up the publisher: the event is dropped, and a
    :class:`Dropped` marker takes its place in the order (consecutive drops
    share one marker), so the reader learns how many it lost, and where,
    once it catches up. Markers are not counted against ``capacity``; at most
    one sits between two events, so the feed stays bounded.
    """

    def __init__(self, bus: EventBus, capacity: int, wants: Callable[[Event], bool] | None = None):
        self._bus = bus
        self.capacity = capacity
        self.wants = wants  # events it does not want take no room and are not counted lost
        self.dropped = 0  # events lost in all
        self.delivered = 0  # events handed to the reader
        self.closed = False
        self._items: deque[Event | Dropped] = deque()
        self._queued = 0  # events (not markers) in _items
        self._lot = trio.lowlevel.ParkingLot()

    def offer(self, event: Event) -> bool:
        """Queue ``event``, or count it lost if the feed is full (False). Never blocks."""
        if self.closed or (self.wants is not None and not self.wants(event)):
            return True
        if self._queued >= self.capacity:
            self.dropped += 1
            tail = self._items[-1] if self._items else None
            if isinstance(tail, Dropped):
                self._items[-1] = Dropped(tail.count + 1)
            else:
                self._items.append(Dropped(1))
            self._lot.unpark_all()
            return False
        self._items.append(event)
        self._queued += 1
        self._lot.unpark_all()
        return True

    async def receive(self) -> Event | Dropped:
        """The next event or drop marker; ``trio.EndOfChannel`` once closed and empty."""
        while not self._items:
            if self.closed:
                self._bus._unsubscribe(self)
                raise trio.EndOfChannel
            await self._lot.park()
        item = self._items.popleft()
        if isinstance(item, Event):
            self._queued -= 1
            self.delivered += 1
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event | Dropped:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop receiving: the bus forgets this feed at once; a waiting reader sees the end."""
        self.end()
        self._bus._unsubscribe(self)

    def end(self) -> None:
        """No more events: the reader gets what is queued, then the end (and the bus forgets it)."""
        self.closed = True
        self._lot.unpark_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Publish(Protocol):
    """What components that only announce are given: :meth:`EventBus.publish`."""

    def __call__(self, *events: Event) -> None: ...


class EventBus:
    """Owned by the mount. ``publish`` may be called from the trio thread or a worker thread.

    Publishing never waits for a subscriber: each has a bounded feed of its
    own (:class:`Subscription`), and one that falls behind loses events,
    counted per subscriber and in ``dropped`` for the bus as a whole.
    """

    def __init__(self, history: int = 1000, queue: int = 1000):
        self.history: deque[Event] = deque(maxlen=history)
        self.counts: Counter[str] = Counter()
        self.dropped = 0
        self.closed = False
        self._queue = queue
        self._subscribers: list[Subscription] = []
        self._drained = trio.lowlevel.ParkingLot()
        self._loop_thread: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        try:
            self._token = trio.lowlevel.current_trio_token()
            self._loop_thread = threading.get_ident()
        except RuntimeError:  # built outside trio (tools, tests): delivery is synchronous
            pass

    def publish(self, *events: Event) -> None:
        """Publish ``events`` in order. From a worker thread they reach the loop together, in one
        hand-over: a block of chunks stored is one wake-up of the loop, not one per chunk."""
        if not events:
            return
        if self._token is not None and threading.get_ident() != self._loop_thread:
            try:
                self._token.run_sync_soon(self._deliver, events)
            except trio.RunFinishedError:
                pass
            return
        self._deliver(events)

    def _deliver(self, events: tuple[Event, ...]) -> None:
        subscribers = list(self._subscribers)
        for event in events:
            self.history.append(event)
            self.counts[event.kind] += 1
            for subscription in subscribers:
                if not subscription.offer(event):
                    self.dropped += 1

    def subscribe(self, queue: int | None = None, wants: Callable[[Event], bool] | None = None) -> Subscription:
        """A new feed of the events published from now on that ``wants`` accepts (all by default).

        Use it as a context manager, or ``close()`` it: the bus forgets it then.
        """
        subscription = Subscription(self, queue or self._queue, wants)
        if self.closed:
            subscription.close()
        else:
            self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
        if self.closed and not self._subscribers:
            self._drained.unpark_all()

    def close(self) -> None:
        """The mount is stopping: every feed ends once its reader has taken what is queued."""
        self.closed = True
        for subscription in list(self._subscribers):
            subscription.end()

    async def drained(self) -> None:
        """After ``close()``: return once every feed has been read to its end (or closed).

        The mount waits for this (briefly) before it stops the control API, so that a client
        sees its stream finish rather than cut.
        """
        while self._subscribers:
            await self._drained.park()

    def recent(self, kind: type[Event] | None = None) -> list[Event]:
        return [e for e in self.history if kind is None or isinstance(e, kind)]

    def statistics(self) -> dict:
        return {"published": dict(self.counts), "dropped": self.dropped,
                "subscribers": len(self._subscribers)}
