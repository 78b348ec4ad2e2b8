"""Album artwork in the content cache: each image once, kept apart from the LRU, readable offline.

Why in the content cache: a cover is shown by every album directory of the
mount, and a music player or media server reads it first, before any track.
It must open offline as a track that was played does, and a library of
thousands of albums must not fetch one image per album each time it is
browsed. The scanner found each image already (in the tags it read, or as a
``cover.jpg`` beside the tracks): it hands the bytes here
(:class:`~musicfs.index.artwork.ArtSink`), named by their content address, so
the same picture embedded in twelve tracks is stored once.

How: an image is cut in pieces of at most one chunk's size, each stored as a
chunk (in a pack, checked against its hash on every read) carrying the
``PIN_ART`` bit, which eviction passes over. The whole image is checked
against its address once more when it is read. Images are kept while the
index shows them: a scan that drops the last track showing one calls
:meth:`ArtShelf.release`. All of them together stay under their own limit
(``[cache] artwork_size``); an image past it is not kept, and is read from
the origin when its cover is opened, as is one whose pieces went missing or
failed their check (:meth:`ArtShelf.fetch`): never a wrong byte.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from ..digest import digest
from ..errors import MusicFSError
from ..index.artwork import Source
from ..index.db import transaction
from ..origins.base import Origin
from .cache import ContentCache
from .chunkdb import IN_BATCH, PIN_ART, ChunkRef
from .chunker import MAX_SIZE

log = logging.getLogger(__name__)


@dataclass
class ArtCounters:
    kept: int = 0  # images stored
    deduplicated: int = 0  # images handed over that were stored already
    over_limit: int = 0  # images not kept: the artwork limit was reached
    failures: int = 0  # images the cache could not store
    hits: int = 0  # covers read from the cache
    fetched: int = 0  # covers read from an origin (not kept, or lost)
    unavailable: int = 0  # covers neither the cache nor an origin could give
    released: int = 0  # images dropped because nothing shows them any more


class ArtShelf:
    """Artwork images in ``cache``, at most ``limit`` bytes of them. Blocking (SQLite, the disk,
    origins): called from the scanner's threads and, for covers opened through the mount, from
    worker threads."""

    def __init__(self, cache: ContentCache, limit: int, origins: Mapping[str, Origin] | None = None):
        self.cache = cache
        self.limit = limit
        self.origins = origins or {}
        self.counters = ArtCounters()
        self._lock = threading.Lock()  # the counters, from several threads
        self._keeping = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + 1)

    def keep(self, address: str, data: bytes) -> bool:
        """Store an image under ``address`` (its digest) unless it is stored already."""
        with self._keeping:  # one at a time: the scan's threads meet the same album's cover at once
            return self._keep(address, data)

    def _keep(self, address: str, data: bytes) -> bool:
        try:
            with self.cache.locked() as index:
                if index.conn.execute("SELECT 1 FROM art_images WHERE address = ?", (address,)).fetchone():
                    self._count("deduplicated")
                    return True
                held = index.conn.execute("SELECT COALESCE(SUM(size), 0) FROM art_images").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("artwork not kept: the cache's index cannot be read: %s", exc)
            self._count("failures")
            return False
        if held + len(data) > self.limit:
            self._count("over_limit")
            return False
        pieces = [data[at:at + MAX_SIZE] for at in range(0, len(data), MAX_SIZE)]
        items = [(digest(piece), piece) for piece in pieces]
        if self.cache.store_chunks(items, pin=PIN_ART) != len(items):
            self._count("failures")  # the cache said why
            return False
        try:
            with self.cache.locked() as index:
                _record(index.conn, address, len(data), [(a, len(p)) for a, p in items])
        except sqlite3.Error as exc:
            log.warning("artwork not kept: %s", exc)
            self._count("failures")
            return False
        self._count("kept")
        return True

    def load(self, address: str) -> bytes | None:
        """The image, from the cache, whole and checked; None if it is not there (or no longer right)."""
        try:
            with self.cache.locked() as index:
                rows = index.conn.execute("SELECT size, address FROM art_pieces WHERE image = ? ORDER BY seq",
                                          (address,)).fetchall()
        except sqlite3.OperationalError:  # a read-only cache made before artwork was kept
            return None
        if not rows:
            return None
        refs, offset = [], 0
        for size, piece in rows:
            refs.append(ChunkRef(offset, size, piece))
            offset += size
        loaded = self.cache.read_chunks(refs)
        data = b"".join(part for part in loaded if part is not None)
        if any(part is None for part in loaded) or digest(data) != address:
            log.warning("artwork %s is damaged or incomplete in the cache: dropped, read from its origin", address)
            self.release([address], count=False)
            return None
        self._count("hits")
        return data

    def fetch(self, address: str, sources: Iterable[Source]) -> bytes | None:
        """The image read again from where the index says it is (an image file, or a track that
        embeds it), checked against ``address`` and kept; None if no source gives it now."""
        from ..index.tags import MalformedAudio, read_tags
        from ..origins.rangefile import RangeFile

        for source in sources:
            origin = self.origins.get(source.origin_id)
            if origin is None:
                continue
            try:
                if source.embedded:
                    with RangeFile(origin, source.real_path, source.size) as file:
                        data = read_tags(file).get("picture") or b""
                else:
                    data = origin.read_range(source.real_path, 0, source.size)
            except (MusicFSError, MalformedAudio, OSError) as exc:
                log.warning("artwork %s: %s:%s could not be read: %s", address, source.origin_id,
                            source.real_path, exc)
                continue
            if digest(data) != address:
                log.warning("artwork %s: %s:%s holds another image now (a rescan will see it)", address,
                            source.origin_id, source.real_path)
                continue
            self._count("fetched")
            self.keep(address, data)
            return data
        self._count("unavailable")
        return None

    def release(self, addresses: list[str], *, count: bool = True) -> None:
        """Images nothing shows any more: their rows go, and their pieces back to the LRU."""
        try:
            with self.cache.locked() as index:
                _release(index.conn, addresses)
        except sqlite3.Error as exc:  # they stay pinned until the next release of them
            log.warning("artwork not released: %s", exc)
            return
        if count:
            with self._lock:
                self.counters.released += len(addresses)

    def statistics(self) -> dict:
        try:
            with self.cache.locked() as index:
                images, size = index.conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM art_images").fetchone()
                stored = index.conn.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM chunks WHERE pinned & {PIN_ART}").fetchone()
        except sqlite3.OperationalError:
            images, size, stored = 0, 0, (0, 0)
        with self._lock:
            counters = asdict(self.counters)
        return {"images": images, "entries": images, "bytes": size, "chunks": stored[0], "stored_bytes": stored[1],
                "limit_bytes": self.limit, **counters}


def _record(conn: sqlite3.Connection, address: str, size: int, pieces: list[tuple[str, int]]) -> None:
    with transaction(conn):
        conn.execute("INSERT OR IGNORE INTO art_images (address, size, stored_at) VALUES (?, ?, ?)",
                     (address, size, time.time()))
        conn.executemany("INSERT OR IGNORE INTO art_pieces (image, seq, size, address) VALUES (?, ?, ?, ?)",
                         [(address, seq, length, piece) for seq, (piece, length) in enumerate(pieces)])
        # set again: a release of another image sharing a piece may have taken the bit off since
        conn.executemany(f"UPDATE chunks SET pinned = pinned | {PIN_ART} WHERE address = ?",
                         [(piece,) for piece, _ in pieces])


def _release(conn: sqlite3.Connection, addresses: list[str]) -> None:
    for start in range(0, len(addresses), IN_BATCH):
        batch = addresses[start:start + IN_BATCH]
        marks = ",".join("?" * len(batch))
        pieces = [row[0] for row in conn.execute(f"SELECT address FROM art_pieces WHERE image IN ({marks})",
                                                 batch)]
        with transaction(conn):
            conn.execute(f"DELETE FROM art_pieces WHERE image IN ({marks})", batch)
            conn.execute(f"DELETE FROM art_images WHERE address IN ({marks})", batch)
            conn.executemany(f"UPDATE chunks SET pinned = pinned & ~{PIN_ART} WHERE address = ?"
                             " AND NOT EXISTS (SELECT 1 FROM art_pieces WHERE address = ?)",
                             [(piece, piece) for piece in pieces])
