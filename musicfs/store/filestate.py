"""What the reader knows of one file version being read, shared by its handles and its fill.

``covered`` grows as a fill cuts chunks; readers wait on ``changed`` for it.
The counters are the reader's and its fills' together (``statistics()``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import trio

from .chunkdb import ChunkRef


@dataclass
class FileState:
    origin_id: str
    real_path: str
    size: int
    version: str
    replicas: list[str] = field(default_factory=list)  # origins holding the same file, any order
    chunks: list[ChunkRef] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    covered: int = 0  # bytes [0, covered) are stored as chunks
    complete: bool = False
    filling: bool = False
    error: BaseException | None = None
    failed_at: float = float("-inf")  # trio time of the last failed fill
    filled_from: str | None = None  # the replica whose bytes the last block taken was cut from
    agreeing: set[str] = field(default_factory=set)  # replicas proven to hold the bytes cut so far
    handles: int = 0
    last_end: int = -1  # where the last read of this file ended: sequential access detection
    wanted: int = 0  # the furthest byte a reader has waited for the fill to reach
    changed: trio.Event = field(default_factory=trio.Event)

    def add(self, ref: ChunkRef) -> None:
        self.chunks.append(ref)
        self.offsets.append(ref.offset)
        self.covered = ref.end

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def refs_after(self, offset: int, count: int) -> list[ChunkRef]:
        """Up to ``count`` known chunks starting at or after ``offset``."""
        first = bisect.bisect_left(self.offsets, offset)
        return self.chunks[first:first + count]

    def refs_for(self, start: int, end: int) -> list[ChunkRef]:
        first = max(bisect.bisect_right(self.offsets, start) - 1, 0)
        refs = []
        for ref in self.chunks[first:]:
            if ref.offset >= end:
                break
            refs.append(ref)
        return refs


@dataclass
class ReaderCounters:
    fills_started: int = 0
    fills_completed: int = 0
    fills_failed: int = 0
    fills_stopped: int = 0  # ended early: nobody had the file open any more
    direct_reads: int = 0
    origin_requests: int = 0
    origin_bytes: int = 0
    refetched_chunks: int = 0
    store_errors: int = 0
    failovers: int = 0  # reads served by a replica other than the track's own origin
    replica_mismatches: int = 0  # a fill moved to a replica that held other bytes (and stopped)
