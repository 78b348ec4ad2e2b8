"""What the reader knows of one file version being read, shared by its handles and its fill.

``covered`` grows as a fill cuts chunks; readers wait on ``changed`` for it.
The bytes a fill fetched past ``covered`` and has not cut yet (a chunk is final
only once 256 KiB past its start are known) are readable too, from ``tail``:
a request as large as the first block, which the kernel sends once its
read-ahead is raised, is answered without waiting for the second block.
When the origin offers a checksum of the whole file (``expected``), the fill
hashes the chunks it cuts, in order (``hasher`` holds the hash of the first
``hashed`` bytes), and checks it once the file is complete. A file whose
replica served bytes failing that check is filled "verify first" next time:
its chunks are cut but not readable (``covered`` stays put) until the whole
file has passed. The counters are the reader's and its fills' together
(``statistics()``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import trio

from ..origins.base import Checksum
from .cas import Place
from .chunkdb import ChunkRef
from .headers import Header


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
    tail: bytes = b""  # while a fill runs: the bytes it fetched from ``covered`` on, not cut yet
    complete: bool = False
    filling: bool = False
    error: BaseException | None = None
    failed_at: float = float("-inf")  # trio time of the last failed fill
    filled_from: str | None = None  # the replica whose bytes the last block taken was cut from
    agreeing: set[str] = field(default_factory=set)  # replicas proven to hold the bytes cut so far
    handles: int = 0
    last_end: int = -1  # where the last read of this file ended: sequential access detection
    ahead_to: int = 0  # the daemon's own reads of it: read-ahead reached up to here
    wanted: int = 0  # the furthest byte a reader has waited for the fill to reach
    read_to: int = 0  # the furthest byte read through the cache (hits and waits; seeks read on from)
    seek_end: int = -1  # where the last read served past the fill (a seek) ended
    parked: bool = False  # the fill waits, after its first block, for a reader to read on or for the close
    changed: trio.Event = field(default_factory=trio.Event)
    expected: Checksum | None = None  # the origin's checksum of the whole file, if it offers one
    hasher: Any = None  # hashlib object over the first ``hashed`` bytes of the chunks, in order
    hashed: int = 0
    verify_first: bool = False  # chunks stay unreadable until the whole file has passed its check
    suspects: frozenset[str] = frozenset()  # replicas that served this file wrong bytes before
    saved: int = 0  # chunks of ``chunks`` already in the saved partial chunk map
    saved_at: float = float("-inf")  # trio time of the last save of the partial map
    save_due: bool = False  # a save of the partial map is scheduled
    header: Header | None = None  # what the header tier holds of this version (not yet fully cached)
    seeded: int = 0  # the map's first bytes were taken from the header (FS-11), not fetched by a fill
    # where the cache keeps chunks a read will soon want (address -> (size, place)), looked up
    # with an earlier load, so that those loads need no lookup and, their bytes in the OS's
    # memory, no worker thread; each entry is dropped once used (a place can go stale)
    places: dict[str, tuple[int, Place]] = field(default_factory=dict)
    looking_up: bool = False  # places of chunks further on are being looked up (one lookup at a time)

    @property
    def readable(self) -> int:
        """Bytes [0, readable) can be read: as chunks, then from the fill's tail."""
        return self.covered + len(self.tail)

    @property
    def cut(self) -> int:
        """Bytes cut into chunks so far (readable or not)."""
        return self.chunks[-1].end if self.chunks else 0

    def add(self, ref: ChunkRef) -> None:
        self.chunks.append(ref)
        self.offsets.append(ref.offset)
        if not self.verify_first:
            self.covered = ref.end

    def reveal(self) -> None:
        """The whole file passed its check: every chunk cut becomes readable."""
        self.covered = self.cut

    def reset(self) -> list[ChunkRef]:
        """Forget every chunk (they held wrong or unverified bytes); returns them."""
        dropped = self.chunks
        self.chunks, self.offsets = [], []
        self.covered = self.hashed = self.saved = self.seeded = 0
        self.tail = b""
        self.hasher = None
        self.complete = False
        self.filled_from = None
        self.agreeing = set()
        return dropped

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
    bytes_by_origin: dict[str, int] = field(default_factory=dict)  # origin_bytes, per origin
    refetched_chunks: int = 0
    store_errors: int = 0
    failovers: int = 0  # reads served by a replica other than the track's own origin
    replica_mismatches: int = 0  # a fill moved to a replica that held other bytes (and stopped)
    checksum_mismatches: int = 0  # bytes an origin served failed its own checksum or the chunk map
    verified_files: int = 0  # fills checked against the origin's whole-file checksum and passed
    headers_dropped: int = 0  # headers found to differ from their file read whole (wrong at scan time)
    seeded_bytes: int = 0  # bytes of files' heads a fill took from their headers instead of the origin
