"""Events: one small frozen dataclass per kind, published on the mount's one bus (FR-18.1).

Publishing never blocks and never fails: each subscriber has a bounded
channel, and a subscriber that falls behind loses events (counted) rather
than slowing a read. The bus also keeps a short history and per-kind counts,
which ``statistics()``, tests and the control API read.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

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


class EventBus:
    """Owned by the mount. ``publish`` may be called from the trio thread or a worker thread."""

    def __init__(self, history: int = 1000, queue: int = 1000):
        self.history: deque[Event] = deque(maxlen=history)
        self.counts: Counter[str] = Counter()
        self.dropped = 0
        self._queue = queue
        self._subscribers: list[trio.MemorySendChannel] = []
        self._loop_thread: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        try:
            self._token = trio.lowlevel.current_trio_token()
            self._loop_thread = threading.get_ident()
        except RuntimeError:  # built outside trio (tools, tests): delivery is synchronous
            pass

    def publish(self, event: Event) -> None:
        if self._token is not None and threading.get_ident() != self._loop_thread:
            try:
                self._token.run_sync_soon(self._deliver, event)
            except trio.RunFinishedError:
                pass
            return
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        self.history.append(event)
        self.counts[event.kind] += 1
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)

    def subscribe(self) -> trio.MemoryReceiveChannel:
        send, receive = trio.open_memory_channel(self._queue)
        self._subscribers.append(send)
        return receive

    def recent(self, kind: type[Event] | None = None) -> list[Event]:
        return [e for e in self.history if kind is None or isinstance(e, kind)]

    def statistics(self) -> dict:
        return {"published": dict(self.counts), "dropped": self.dropped,
                "subscribers": len(self._subscribers)}
