"""The header tier: what a tag scan read of each file version, kept for the next reader of tags.

Why: a media server (Plex, Jellyfin, Navidrome) scans a library by reading the
tags of every track and probing it with ffprobe. Through a mount whose cache
only keeps what was played, such a scan fetches the start, and often the end,
of every file from the origin, and again after every eviction. musicfs's own
scanner has read those bytes already: kept, they make the next scan through the
mount cost the origin nothing.

What is kept: every byte range the scanner's tag reader fetched
(:class:`~musicfs.origins.rangefile.RangeFile` records them; it fetches at
least the first ``HEAD`` bytes). The range from byte 0 is cut into
content-defined chunks exactly as a fill cuts the file, so a track played later
stores those bytes once; the unfinished end of that range, and every other
range (ID3v1 and APEv2 at the end, Ogg's last page, an MP4 ``moov`` atom after
the audio), are kept in pieces of at most one chunk's size. Every piece is a
chunk of the content cache: in a pack, checked against its hash on every read,
so a damaged piece costs the header (it is dropped and the read goes to the
origin), never a wrong byte.

How it stays apart from the LRU: its pieces carry the ``PIN_HEADER`` bit, which
the cache's eviction passes over. The tier evicts whole headers, least recently
read first, once they hold more than its own limit (``[cache] headers_size``);
a piece no header holds any more goes back to the LRU. A header belongs to one
file version (size and mtime, or ETag): the next version's replaces it, and a
reader of another version does not use it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass

from ..digest import digest
from ..index.layout import AudioRegion
from . import headerdb
from .cache import ContentCache
from .chunkdb import PIN_HEADER, ChunkRef
from .chunker import MAX_SIZE, StreamChunker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Header:
    origin_id: str
    real_path: str
    size: int
    version: str
    pieces: tuple[ChunkRef, ...]  # in file order, never overlapping

    @property
    def bytes(self) -> int:
        return sum(piece.size for piece in self.pieces)

    def covering(self, start: int, end: int) -> list[ChunkRef] | None:
        """The pieces holding every byte of [start, end), in order; None if one byte is not held."""
        found: list[ChunkRef] = []
        position = start
        for piece in self.pieces:
            if piece.end <= position:
                continue
            if piece.offset > position:
                return None
            found.append(piece)
            position = piece.end
            if position >= end:
                return found
        return None

    def head_chunks(self) -> list[ChunkRef]:
        """The pieces that run without a gap from byte 0, which :func:`cut` cut as a fill cuts the
        file: a fill can start from their end instead of fetching them again. The last is left
        out unless it ends the file (it is the unfinished rest of the run, not a final chunk)."""
        run: list[ChunkRef] = []
        for piece in self.pieces:
            if piece.offset != (run[-1].end if run else 0):
                break
            run.append(piece)
        if run and run[-1].end < self.size:
            run.pop()
        return run

    def problem(self) -> str | None:
        """Why these pieces cannot be parts of the file (a damaged or hostile index), or None."""
        position = 0
        for piece in self.pieces:
            if piece.offset < position:
                return f"piece at {piece.offset} overlaps the one before (ending at {position})"
            if not 0 < piece.size <= MAX_SIZE:
                return f"piece of impossible size {piece.size} at {piece.offset}"
            position = piece.end
        if position > self.size:
            return f"pieces reach {position}, past the file's {self.size} bytes"
        return None


def cut(parts: list[tuple[int, bytes]], size: int) -> list[tuple[int, bytes]]:
    """The pieces (offset, bytes) a header keeps of the ranges a tag reader fetched, in file order.

    Overlapping and adjacent ranges are merged first. The range starting at 0
    is cut as a fill would cut it (a fill's chunks of the same bytes are then
    the same chunks); what is past its last final chunk boundary, and every
    other range, is split every ``MAX_SIZE`` bytes.
    """
    extents: list[tuple[int, bytearray]] = []
    for offset, data in sorted(parts, key=lambda part: part[0]):
        data = data[:max(0, size - offset)]
        if not data:
            continue
        if extents and offset <= extents[-1][0] + len(extents[-1][1]):
            start, merged = extents[-1]
            merged += data[start + len(merged) - offset:]
        else:
            extents.append((offset, bytearray(data)))
    pieces: list[tuple[int, bytes]] = []
    for start, merged in extents:
        if start == 0:
            chunker = StreamChunker()
            whole = len(merged) >= size
            chunks = chunker.feed(bytes(merged)) + (chunker.finish() if whole else [])
            pieces += [(chunk.offset, chunk.data) for chunk in chunks]
            if chunker.buffered and not whole:  # shorter than a chunk: the chunker never emits more
                pieces.append((chunker.position, chunker.buffered))
            continue
        for at in range(0, len(merged), MAX_SIZE):
            pieces.append((start + at, bytes(merged[at:at + MAX_SIZE])))
    return pieces


@dataclass
class HeaderCounters:
    kept: int = 0  # headers stored
    hits: int = 0  # reads answered from a header
    evictions: int = 0  # headers evicted for the tier's limit
    evicted_bytes: int = 0
    dropped: int = 0  # headers dropped because a piece was missing or damaged
    failures: int = 0  # headers that could not be stored (the cache could not be written)


class HeaderTier:
    """Headers of file versions in ``cache``, at most ``limit`` bytes of them.

    Blocking (SQLite and the disk): :meth:`keep` runs in a scanner's threads,
    :meth:`lookup` in the reader's. ``hits`` is counted by the reader, on the
    trio side.
    """

    def __init__(self, cache: ContentCache, limit: int):
        self.cache = cache
        self.limit = limit
        self.counters = HeaderCounters()
        self._lock = threading.Lock()  # counters and access times, from several threads
        self._access: dict[int, float] = {}  # header id -> last read, written at flush()

    def keep(self, origin_id: str, real_path: str, size: int, version: str,
             parts: list[tuple[int, bytes]], region: AudioRegion | None = None) -> Header | None:
        """Keep what a tag reader fetched of one file version as its header; None if not kept.

        A cache that cannot be written keeps nothing (the cache logs why): the
        scan goes on, and the next reader of those tags asks the origin.
        """
        pieces = cut(parts, size)
        if not pieces:
            return None
        items = [(digest(data), data) for _, data in pieces]
        header = Header(origin_id, real_path, size, version,
                        tuple(ChunkRef(offset, len(data), address)
                              for (offset, data), (address, _) in zip(pieces, items)))
        if self.cache.store_chunks(items, pin=PIN_HEADER) != len(items):
            with self._lock:
                self.counters.failures += 1
            return None
        try:
            with self.cache.locked() as index:
                headerdb.replace(index.conn, origin_id, real_path, size, version, header.pieces, region)
                self._evict_to(index.conn, self.limit)
        except sqlite3.Error as exc:
            log.warning("the header of %s:%s was not kept: %s", origin_id, real_path, exc)
            with self._lock:
                self.counters.failures += 1
            return None
        with self._lock:
            self.counters.kept += 1
        return header

    def region(self, origin_id: str, real_path: str) -> tuple[str, AudioRegion | None] | None:
        """(version, audio region) of the header kept for a file: what its next version is compared with."""
        try:
            with self.cache.locked() as index:
                return headerdb.region(index.conn, origin_id, real_path)
        except sqlite3.OperationalError:  # a read-only cache made before the header tier
            return None

    def lookup(self, origin_id: str, real_path: str, size: int, version: str) -> Header | None:
        """The header of this version of the file, if the tier holds one."""
        try:
            with self.cache.locked() as index:
                found = headerdb.load(index.conn, origin_id, real_path)
        except sqlite3.OperationalError:  # a read-only cache made before headers were kept
            return None
        if found is None:
            return None
        header_id, stored_size, stored_version, pieces = found
        if (stored_size, stored_version) != (size, version):
            return None
        header = Header(origin_id, real_path, size, version, pieces)
        problem = header.problem()
        if problem is not None:
            log.warning("the header of %s:%s is not usable (%s): dropped", origin_id, real_path, problem)
            self.drop(origin_id, real_path)
            return None
        with self._lock:
            self._access[header_id] = time.time()
        return header

    def drop(self, origin_id: str, real_path: str) -> None:
        """Forget a file's header (a piece of it was found missing or damaged)."""
        try:
            with self.cache.locked() as index:
                gone = headerdb.drop(index.conn, origin_id, real_path)
        except sqlite3.Error as exc:  # a read-only cache: the header stays, and keeps missing
            log.debug("cannot drop the header of %s:%s: %s", origin_id, real_path, exc)
            return
        if gone:
            with self._lock:
                self.counters.dropped += 1

    def clear(self, origin_id: str | None = None, *, dry_run: bool = False) -> dict:
        """Drop the headers of one origin's files, or of all (``musicfs cache clear --tier headers``);
        their pieces go back to the cache's LRU. The same keys as the cache's own clear."""
        with self.cache.locked() as index:
            found = headerdb.held(index.conn, origin_id)
            if not dry_run:
                headerdb.drop(index.conn, origin_id)
        return {"origin": origin_id, "dry_run": dry_run, "manifests": found[0], "chunks": found[1],
                "bytes": found[2]}

    def flush(self) -> None:
        """Write the read times gathered since the last flush (the tier's LRU order)."""
        with self._lock:
            stamps, self._access = self._access, {}
        if not stamps:
            return
        try:
            with self.cache.locked() as index:
                headerdb.touch(index.conn, stamps)
        except sqlite3.Error as exc:  # only the eviction order suffers
            log.debug("header read times not written: %s", exc)

    def evict(self, limit: int | None = None) -> int:
        """Evict headers, least recently read first, until they hold at most ``limit`` bytes."""
        self.flush()
        with self.cache.locked() as index:
            return self._evict_to(index.conn, self.limit if limit is None else limit)

    def _evict_to(self, conn: sqlite3.Connection, limit: int) -> int:
        count, size = headerdb.evict(conn, limit)
        with self._lock:
            self.counters.evictions += count
            self.counters.evicted_bytes += size
        return count

    def statistics(self) -> dict:
        try:
            with self.cache.locked() as index:
                held = headerdb.statistics(index.conn)
        except sqlite3.OperationalError:
            held = {"entries": 0, "bytes": 0, "stored_bytes": 0}
        with self._lock:
            counters = asdict(self.counters)
        return {**held, "limit_bytes": self.limit, **counters}
