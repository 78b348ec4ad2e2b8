"""The content cache: chunk files plus their index, with LRU eviction and counters.

Everything here is blocking (disk and SQLite) and runs in worker threads,
called from the reader. Eviction never removes a chunk that is pinned or that
belongs to a file currently open (``in_use``); it runs after each store that
takes the cache over its limit (NFR-5.2, default 10 GB).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..events import ChunkCorrupt, ChunkEvicted, ChunkStored, Event
from .cas import ChunkFiles
from .chunkdb import ChunkIndex, ChunkRef

log = logging.getLogger(__name__)


@dataclass
class CacheCounters:
    hits: int = 0  # reads served wholly from chunks on disk
    misses: int = 0  # reads that needed the origin
    evictions: int = 0
    evicted_bytes: int = 0
    corruptions: int = 0  # chunk files missing or failing their checksum on read
    stored: int = 0
    deduplicated: int = 0  # chunks not written because the same bytes were already there


class ContentCache:
    def __init__(self, directory: Path | str, limit_bytes: int, publish: Callable[[Event], None]):
        self.directory = Path(directory)
        self.limit = limit_bytes
        self.publish = publish
        self.files = ChunkFiles(self.directory)
        self.index = ChunkIndex(self.directory / "chunks.db")
        self.counters = CacheCounters()
        self.opened_at = time.time()  # temp files older than this are crash leftovers
        self._lock = threading.Lock()  # one writer at a time on the SQLite connection
        self._access: dict[str, float] = {}
        self._in_use: dict[str, int] = {}
        self.size = self.index.total_bytes()

    # -- start-up ---------------------------------------------------------
    def reconcile(self) -> dict[str, int]:
        """Align index and disk after an unclean stop (NFR-8.2); removes temp files."""
        started = time.time()
        on_disk = dict(self.files.scan(remove_temp_before=self.opened_at))
        with self._lock:
            result = self.index.reconcile(on_disk, older_than=started)
            self.size = self.index.total_bytes()
        if any(result.values()):
            log.info("cache reconciled: %s", result)
        return result

    # -- reading and writing ----------------------------------------------
    def read_chunk(self, ref: ChunkRef) -> bytes | None:
        data = self.files.read(ref.address, ref.size)
        if data is None:
            self.counters.corruptions += 1
            self.publish(ChunkCorrupt(ref.address))
            with self._lock:
                self.index.forget_chunk(ref.address)
            return None
        self._access[ref.address] = time.time()
        return data

    def store_chunk(self, address: str, data: bytes) -> None:
        written = self.files.write(address, data)
        with self._lock:
            self.index.add_chunk(address, len(data))
            if written:
                self.size += len(data)
        if written:
            self.counters.stored += 1
            self.publish(ChunkStored(address, len(data)))
        else:
            self.counters.deduplicated += 1
        if self.size > self.limit:
            self.evict()

    def manifest(self, origin_id: str, real_path: str):
        with self._lock:
            return self.index.manifest(origin_id, real_path)

    def save_manifest(self, origin_id: str, real_path: str, size: int, version: str,
                      chunks: list[ChunkRef]):
        with self._lock:
            return self.index.save_manifest(origin_id, real_path, size, version, chunks)

    def drop_manifest(self, origin_id: str, real_path: str) -> None:
        with self._lock:
            self.index.drop_manifest(origin_id, real_path)

    def store_chunks(self, items: list[tuple[str, bytes]]) -> None:
        """Store several chunks: each file written and fsynced, then one index transaction."""
        written = [(address, data) for address, data in items if self.files.write(address, data)]
        with self._lock:
            self.index.add_chunks([(address, len(data)) for address, data in items])
            self.size += sum(len(data) for _, data in written)
        self.counters.stored += len(written)
        self.counters.deduplicated += len(items) - len(written)
        for address, data in written:
            self.publish(ChunkStored(address, len(data)))
        if self.size > self.limit:
            self.evict()

    def has(self, ref: ChunkRef) -> bool:
        return self.files.exists(ref.address)

    # -- protection and eviction ------------------------------------------
    def hold(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            self._in_use[address] = self._in_use.get(address, 0) + 1

    def unhold(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            left = self._in_use.get(address, 0) - 1
            if left > 0:
                self._in_use[address] = left
            else:
                self._in_use.pop(address, None)

    def evict(self, target: int | None = None) -> int:
        """Remove least-recently-used chunks until the cache is at most ``target`` bytes."""
        target = self.limit if target is None else target
        freed = 0
        with self._lock:
            self._flush_access()
            while self.size > target:
                candidates = [c for c in self.index.eviction_candidates(512) if c[0] not in self._in_use]
                if not candidates:
                    break
                for address, size in candidates:
                    self.files.discard(address)
                    self.index.forget_chunk(address)
                    self.size -= size
                    freed += size
                    self.counters.evictions += 1
                    self.counters.evicted_bytes += size
                    self.publish(ChunkEvicted(address, size))
                    if self.size <= target:
                        break
                else:
                    continue
                break
        return freed

    def _flush_access(self) -> None:
        stamps, self._access = self._access, {}
        self.index.touch(stamps)

    def flush(self) -> None:
        with self._lock:
            self._flush_access()

    def clear(self) -> int:
        """Drop every chunk and manifest (``musicfs-inspect cache clear``)."""
        with self._lock:
            freed = 0
            for address in self.index.addresses():
                freed += self.files.discard(address)
            self.index.clear()
            self.size = 0
        return freed

    def close(self) -> None:
        with self._lock:
            self._flush_access()
            self.index.close()

    def statistics(self) -> dict:
        with self._lock:
            stored = self.index.statistics()
        counters = self.counters
        total = counters.hits + counters.misses
        return {
            **stored,
            "limit_bytes": self.limit,
            "hits": counters.hits,
            "misses": counters.misses,
            "hit_rate": round(counters.hits / total, 4) if total else None,
            "evictions": counters.evictions,
            "evicted_bytes": counters.evicted_bytes,
            "corruptions": counters.corruptions,
            "stored": counters.stored,
            "deduplicated": counters.deduplicated,
            "directory": str(self.directory),
        }
