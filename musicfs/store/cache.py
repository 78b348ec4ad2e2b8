"""The content cache: chunks on disk (packs) plus their index, with LRU eviction and counters.

Everything here is blocking (disk and SQLite) and runs in worker threads,
called from the reader. Eviction never removes a chunk that is pinned or that
belongs to a file currently open (``in_use``); it runs after each store that
takes the cache over its limit (NFR-5.2, default 10 GB), and before a store
that the disk has no room for, whatever the limit says.

A cache that cannot be written (its disk full with nothing left to evict,
its filesystem remounted read-only, its index refusing writes) is not an
error for readers: the bytes were fetched, they are served, they are just not
kept. The first failure is logged once; writes are skipped for
``WRITE_RETRY`` seconds, then tried again, and success is logged once too.
A disk that stays nearly full can let one retry through and refuse the next:
the same problem back within ``ERROR_REPEAT`` of its error is the same outage,
noted at INFO, so the log does not repeat the error every few seconds.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..events import CacheCleared, ChunkCorrupt, ChunkEvicted, ChunkStored, Publish
from . import pindb
from .cas import ChunkFiles, Loaded, Place
from .chunkdb import ChunkIndex, ChunkRef, Obtained
from .pindb import PinState

log = logging.getLogger(__name__)

WRITE_RETRY = 5.0  # seconds without cache writes after one failed, before trying again
ERROR_REPEAT = 60.0  # seconds within which the same write problem is not logged as an error again
# room kept free on the cache's filesystem (the index's WAL and the temp files need some)
FREE_RESERVE = 4 * 1024 * 1024
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


class CacheWriteError(Exception):
    """A chunk or the index could not be written (disk full, read-only, I/O error)."""

    def __init__(self, message: str, *, no_room: bool):
        super().__init__(message)
        self.no_room = no_room


def _describe(exc: BaseException) -> tuple[str, bool]:
    """A short reason for a failed write, and whether freeing space could help."""
    if isinstance(exc, OSError):
        return (os.strerror(exc.errno) if exc.errno else str(exc)), exc.errno in _NO_ROOM
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        # the chunk index's disk full: the same problem as a chunk file's ENOSPC, so one episode
        # of a full disk is logged once whichever write met it first
        return os.strerror(errno.ENOSPC), True
    text = str(exc)
    return text, "full" in text.lower()


@dataclass
class CacheCounters:
    hits: int = 0  # reads served wholly from chunks on disk
    misses: int = 0  # reads that needed the origin
    evictions: int = 0
    evicted_bytes: int = 0
    corruptions: int = 0  # chunks failing their checksum (or unreadable) on read
    missing: int = 0  # chunks not there on read (evicted, never stored, removed)
    stored: int = 0
    deduplicated: int = 0  # chunks not written because the same bytes were already there
    write_failures: int = 0  # stores that failed (disk full, read-only): those bytes were not kept
    skipped_writes: int = 0  # chunks not even tried while the cache was unwritable
    purged: int = 0  # chunks removed because the bytes they came with failed a checksum


@dataclass
class _Rows:
    """One store's rows, waiting for the index's writer (:meth:`ContentCache._commit`)."""

    rows: list[tuple[str, int, Place]]
    pin: int
    added: int  # bytes the store wrote (chunks the cache did not hold)
    done: bool = False
    error: sqlite3.Error | None = None


class ContentCache:
    def __init__(self, directory: Path | str, limit_bytes: int, publish: Publish, *,
                 write_retry: float = WRITE_RETRY, error_repeat: float = ERROR_REPEAT):
        self.directory = Path(directory)
        self.write_retry = write_retry
        self.error_repeat = error_repeat
        self.limit = limit_bytes
        self.publish = publish
        self.files = ChunkFiles(self.directory)
        self.index = ChunkIndex(self.directory / "chunks.db")
        self.counters = CacheCounters()
        self.opened_at = time.time()  # temp files older than this are crash leftovers
        self._lock = threading.Lock()  # one writer at a time on the SQLite connection
        self._queue_lock = threading.Lock()  # guards _queued
        self._queued: list[_Rows] = []  # stores' rows waiting for the writer (_commit)
        self._access: dict[str, float] = {}
        self._in_use: dict[str, int] = {}
        self.size = self.index.total_bytes()
        self.write_problem: str | None = None  # why the cache cannot be written now, if it cannot
        self._write_again_at = 0.0  # time.monotonic() from which writes are tried again
        self._failed_at = float("-inf")  # time.monotonic() of the last failed write
        self._logged: tuple[str, float] = ("", float("-inf"))  # the last problem logged as an error, when
        if self.index.readonly:
            self._write_failed(OSError(errno.EROFS, os.strerror(errno.EROFS)))

    # -- writability ------------------------------------------------------
    @property
    def writable(self) -> bool:
        return time.monotonic() >= self._write_again_at

    def _write_failed(self, exc: BaseException) -> None:
        reason, _ = _describe(exc)
        if self._read_only_now():
            # a disk failing under SQLite shows as "disk I/O error" as the kernel turns its
            # filesystem read-only: say what the cache's disk is now, the same for every failure
            reason = os.strerror(errno.EROFS)
        self.counters.write_failures += 1
        self._failed_at = time.monotonic()
        self._write_again_at = self._failed_at + self.write_retry
        if self.write_problem is None:
            last_reason, last_at = self._logged
            if reason != last_reason or self._failed_at - last_at >= self.error_repeat:
                log.error("cache %s cannot be written (%s): reads are served from the origins without "
                          "being kept until it can (tried again every %g s)", self.directory, reason,
                          self.write_retry)
                self._logged = (reason, self._failed_at)
            else:
                log.info("cache %s: writes fail again (%s) soon after they resumed; not kept until they work",
                         self.directory, reason)
        self.write_problem = reason

    def _read_only_now(self) -> bool:
        """The cache's filesystem is mounted read-only (as the kernel does to a failing disk)."""
        try:
            return bool(os.statvfs(self.directory).f_flag & os.ST_RDONLY)
        except OSError:
            return False

    def _write_succeeded(self, started: float) -> None:
        """A store that began at ``started`` worked; one that began before the last failure proves
        nothing (stores run in several threads: a small one may squeeze in as a big one fails)."""
        if self.write_problem is not None and started > self._failed_at:
            repeat = self._failed_at != self._logged[1]  # this failure was a repeat noted at INFO
            log.log(logging.INFO if repeat else logging.WARNING,
                    "cache %s can be written again; caching resumed", self.directory)
            self.write_problem = None

    def _make_room(self, needed: int) -> None:
        """Evict until the cache's filesystem has ``needed`` bytes free beyond the reserve, if it can."""
        try:
            fs = os.statvfs(self.directory)
        except OSError:
            return
        free = fs.f_bavail * fs.f_frsize
        short = needed + FREE_RESERVE - free
        if short > 0:
            self.evict(max(0, self.size - short))

    # -- start-up ---------------------------------------------------------
    def reconcile(self) -> dict[str, int]:
        """Align index and disk after an unclean stop (NFR-8.2); removes temp files.

        Packs no row places anything in are adopted from their tables of
        contents (their rows were lost); a pack with no whole table, or whose
        chunks are all held elsewhere, is deleted if it is older than this
        daemon (newer ones may be stores in flight).
        """
        started = time.time()
        try:
            on_disk = dict(self.files.scan(remove_temp_before=self.opened_at))
            packs_on_disk = self.files.pack_names(remove_temp_before=self.opened_at)
            with self._lock:
                placed = self.index.packs()
            packed = []
            for name in sorted(set(packs_on_disk) - placed):
                contents = self.files.pack_contents(name) or []
                packed += [(address, size, Place(name, offset)) for address, size, offset in contents]
            with self._lock:
                result = self.index.reconcile(on_disk, older_than=started, unlisted=self.files.unlisted,
                                              packs=set(packs_on_disk), packed=packed)
                pindb.repin(self.index.conn)  # adopted rows came without their pin
                placed = self.index.packs()
                self.size = self.index.total_bytes()
            unused = [n for n, changed in packs_on_disk.items() if n not in placed and changed < self.opened_at]
            for name in unused:
                self.files.drop_pack(name)
        except (OSError, sqlite3.Error) as exc:  # a read-only cache: reads check every chunk anyway
            self._write_failed(exc)
            return {}
        result["packs_removed"] = len(unused)
        if any(result.values()):
            log.info("cache reconciled: %s", result)
        return result

    # -- reading and writing ----------------------------------------------
    def _places(self, addresses: Iterable[str]) -> dict[str, tuple[int, Place]]:
        return self.index.places(addresses)  # on the index's lookup connection: no wait for a commit

    def read_chunk(self, ref: ChunkRef) -> bytes | memoryview | None:
        return self.read_chunks([ref])[0]

    def places(self, addresses: Iterable[str]) -> dict[str, tuple[int, Place]]:
        """address -> (size, place) of those of ``addresses`` the cache holds; {} (logged) if the
        chunk index cannot be read: the chunks are then fetched again."""
        try:
            return self._places(addresses)
        except sqlite3.Error as exc:
            log.warning("chunk index %s cannot be read: %s; chunks are fetched again", self.index.path, exc)
            return {}

    def read_chunks(self, refs: list[ChunkRef], places: dict[str, tuple[int, Place]] | None = None
                    ) -> list[bytes | memoryview | None]:
        """The bytes of each chunk (None: not in the cache, or damaged), their disk reads started together.

        A chunk the index has no row for is missing; one whose row says a
        different size than the map that asks for it is not the same chunk.
        ``places``: what :meth:`places` answered for them just now (not looked up again).
        """
        return [chunk.data if chunk is not None else None for chunk in self.load_chunks(refs, places)]

    def load_chunks(self, refs: list[ChunkRef], places: dict[str, tuple[int, Place]] | None = None
                    ) -> list[Loaded | None]:
        """:meth:`read_chunks`, each chunk as a view of the buffer of the run of side-by-side
        chunks it was read with (:class:`~.cas.Loaded`): for a reader that answers a request
        inside one run with one slice of it."""
        if places is None:
            places = self.places(ref.address for ref in refs)
        wanted = [(ref, places[ref.address][1]) for ref in refs
                  if ref.address in places and places[ref.address][0] == ref.size]
        loaded = dict(zip((ref.address for ref, _ in wanted),
                          self.files.load_many([(ref.address, ref.size, place) for ref, place in wanted])))
        result = []
        for ref in refs:
            data, problem = loaded.get(ref.address, (None, "missing"))
            place = places.get(ref.address, (0, None))[1]
            result.append(self._loaded(ref, place, data, problem))
        return result

    def load_if_in_memory(self, ref: ChunkRef, size: int, place: Place) -> memoryview | None:
        """A chunk's bytes if the OS holds them in memory and they match (see
        :meth:`ChunkFiles.load_if_in_memory`), counted as accessed; None, reporting nothing, if
        not: then :meth:`read_chunks` loads it. ``size`` and ``place``: from :meth:`places`."""
        if size != ref.size:
            return None
        data = self.files.load_if_in_memory(ref.address, size, place)
        if data is not None:
            self._access[ref.address] = time.time()
        return data

    def load_many_if_in_memory(self, refs: list[ChunkRef], places: list[tuple[int, Place]]
                               ) -> list[Loaded | None]:
        """:meth:`load_if_in_memory` of each of ``refs`` at its place, side by side ones read
        together, as views of their run's buffer (:meth:`ChunkFiles.load_many_if_in_memory`)."""
        wanted = [(i, ref, place) for i, (ref, (size, place)) in enumerate(zip(refs, places)) if size == ref.size]
        loaded = self.files.load_many_if_in_memory([(ref.address, ref.size, place) for _, ref, place in wanted])
        result: list[Loaded | None] = [None] * len(refs)
        now = time.time()
        for (i, ref, _), data in zip(wanted, loaded):
            if data is not None:
                self._access[ref.address] = now
                result[i] = data
        return result

    def _loaded(self, ref: ChunkRef, place: Place | None, data: Loaded | None, problem: str | None
                ) -> Loaded | None:
        """A chunk's bytes counted as accessed, or its loss counted and its row dropped."""
        if data is None:
            if problem == "corrupt":
                self.counters.corruptions += 1
                self.publish(ChunkCorrupt(ref.address))
            else:  # evicted, never stored (a full disk), or removed by hand
                self.counters.missing += 1
            if place is not None:
                try:
                    with self._lock:
                        self.index.forget_chunk(ref.address, place)
                        self._drop_empty([place])
                except (OSError, sqlite3.Error) as exc:  # a read-only cache: dropped at the next start
                    log.debug("cannot drop the row of chunk %s: %s", ref.address, exc)
            return None
        self._access[ref.address] = time.time()
        return data

    def _drop_empty(self, places: Iterable[Place]) -> None:
        """Delete the packs among ``places`` that hold no wanted chunk any more (lock held)."""
        for name in self.index.empty_packs(p.pack for p in places if p.pack is not None):
            self.files.drop_pack(name)

    def store_chunk(self, address: str, data: bytes) -> bool:
        return self.store_chunks([(address, data)]) == 1

    def store_chunks(self, items: list[tuple[str, bytes]], pin: int = 0) -> int:
        """Store chunks: written as one pack (checked on every read, so not fsynced), then one
        index transaction that also sets the pin bits ``pin`` on them (the header tier's).

        Returns how many are in the cache afterwards (written now or already
        there); 0 when the cache cannot be written, which is logged once and
        is not an error for the caller: the bytes were served, just not kept.
        A disk without room gets LRU chunks evicted and one more try.
        """
        if not items:
            return 0
        if not self.writable:
            self.counters.skipped_writes += len(items)
            return 0
        started = time.monotonic()
        self._make_room(sum(len(data) for _, data in items))
        try:
            try:
                written = self._store(items, pin)
            except CacheWriteError as exc:
                if not exc.no_room:
                    raise
                self.evict(max(0, self.size - 2 * sum(len(d) for _, d in items) - FREE_RESERVE))
                written = self._store(items, pin)
        except CacheWriteError as exc:
            self._write_failed(exc.__cause__ or exc)
            return 0
        self._write_succeeded(started)
        self.counters.stored += len(written)
        self.counters.deduplicated += len(items) - len(written)
        self.publish(*(ChunkStored(address, len(data)) for address, data in written))
        if self.size > self.limit:
            self.evict()
        return len(items)

    def _store(self, items: list[tuple[str, bytes]], pin: int) -> list[tuple[str, bytes]]:
        """Write the chunks the cache lacks as one pack, then their rows; on failure nothing new stays."""
        try:
            known = self._intact(self._places(address for address, _ in items))
            written = list({a: (a, d) for a, d in items if a not in known}.values())
            name, offsets = self.files.write_pack(written) if written else ("", [])
        except (OSError, sqlite3.Error) as exc:
            _, no_room = _describe(exc)
            raise CacheWriteError(str(exc), no_room=no_room) from exc
        rows = [(address, len(data), Place(name, offset)) for (address, data), offset in zip(written, offsets)]
        rows += [(address, size, place) for address, (size, place) in known.items()]
        try:
            self._commit(_Rows(rows, pin, sum(len(data) for _, data in written)))
        except sqlite3.Error as exc:
            if name:  # rows never made: do not leave a pack the index does not know
                self.files.drop_pack(name)
            _, no_room = _describe(exc)
            raise CacheWriteError(str(exc), no_room=no_room) from exc
        return written

    def _commit(self, mine: _Rows) -> None:
        """Add a store's rows to the index, together with those of the stores queued meanwhile.

        Stores write their packs in parallel and then queue for the index's one writer: whoever
        gets the lock commits every store queued so far in one transaction, and the others find
        theirs done. Eight cold readers' stores cost a commit or two instead of eight. A failed
        commit fails every store in it: each drops its own pack.
        """
        with self._queue_lock:
            self._queued.append(mine)
        with self._lock:
            if not mine.done:  # else a store queued after it committed it
                with self._queue_lock:
                    batch, self._queued = self._queued, []
                try:
                    self.index.add_stores([(rows.rows, rows.pin) for rows in batch])
                except sqlite3.Error as exc:
                    for rows in batch:
                        rows.error = exc
                else:
                    self.size += sum(rows.added for rows in batch)
                finally:
                    for rows in batch:
                        rows.done = True
        if mine.error is not None:
            raise mine.error

    def _intact(self, places: dict[str, tuple[int, Place]]) -> dict[str, tuple[int, Place]]:
        """Those of the chunks the index holds whose bytes on disk are whole and right.

        A chunk already held is only trusted after checking it: a crash or a
        damaged disk may have left it short or altered (a damaged one has its
        range freed by the check, and the store writes it again).
        """
        if not places:
            return places
        loaded = self.files.load_many([(address, size, place) for address, (size, place) in places.items()])
        return {address: where for (address, where), (data, _) in zip(places.items(), loaded) if data is not None}

    def purge(self, addresses: Iterable[str]) -> int:
        """Remove chunks that came with bytes found wrong: those no saved map lists and nobody holds.

        Chunks are content-addressed, so a chunk listed by another file's map
        holds that file's right bytes and stays. Returns how many were removed.
        """
        removed = 0
        try:
            with self._lock:
                candidates = [a for a in dict.fromkeys(addresses) if a not in self._in_use]
                places = self.index.places(self.index.unreferenced(candidates))
                for address, (size, place) in places.items():
                    freed = self.files.discard(address, size, place)
                    self.index.forget_chunk(address)
                    self.size -= freed
                    removed += 1
                self._drop_empty(place for _, place in places.values())
        except (OSError, sqlite3.Error) as exc:
            log.error("cannot remove chunks of bytes found wrong from the cache %s: %s; they are "
                      "unreferenced and never served for that file", self.directory, exc)
        self.counters.purged += removed
        return removed

    def manifest(self, origin_id: str, real_path: str):
        with self._lock:
            return self.index.manifest(origin_id, real_path)

    def save_manifest(self, origin_id: str, real_path: str, size: int, version: str,
                      chunks: list[ChunkRef], *, complete: bool = True, obtained: Obtained = "fetched",
                      reused_bytes: int = 0) -> bool:
        """Save a chunk map, and how its content was obtained (see :meth:`ChunkIndex.save_manifest`);
        False (logged once) if the cache cannot be written now."""
        if not self.writable:
            return False
        try:
            with self._lock:
                self.index.save_manifest(origin_id, real_path, size, version, chunks, complete=complete,
                                         obtained=obtained, reused_bytes=reused_bytes)
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return False
        return True

    def drop_manifest(self, origin_id: str, real_path: str) -> None:
        try:
            with self._lock:
                self.index.drop_manifest(origin_id, real_path)
        except sqlite3.Error as exc:
            self._write_failed(exc)

    # -- pins (musicfs.vfs.pins decides what; the chunk index keeps PIN_USER true) ----------------
    def pin(self, files: list[tuple[str, str, int]], room: int) -> tuple[int, int]:
        """Pin (origin id, path, size) files, all or none (:class:`~musicfs.errors.NoRoom` past
        ``room`` bytes of pins). Returns (files newly pinned, bytes they add). A cache that cannot be
        written raises sqlite3.Error: a pin that was not kept must not look as if it had been."""
        with self._lock:
            return pindb.add(self.index.conn, files, room)

    def unpin(self, files: list[tuple[str, str]]) -> int:
        with self._lock:
            return pindb.remove(self.index.conn, files)

    def pins(self) -> list[PinState]:
        with self._lock:
            return pindb.states(self.index.conn)

    def resize_pin(self, origin_id: str, real_path: str, size: int) -> None:
        with self._lock:
            pindb.resize(self.index.conn, origin_id, real_path, size)

    @contextmanager
    def locked(self) -> Iterator[ChunkIndex]:
        """The chunk index, this cache's lock held: for the tiers that keep rows beside the
        chunks' (the header tier), so that no store or eviction runs between their steps."""
        with self._lock:
            yield self.index

    def has(self, ref: ChunkRef) -> bool:
        return ref.address in self._places([ref.address])

    def held_prefix(self, refs: list[ChunkRef]) -> int:
        """How many of ``refs``, from the first, the cache holds (one index query)."""
        places = self._places(ref.address for ref in refs)
        for count, ref in enumerate(refs):
            if ref.address not in places:
                return count
        return len(refs)

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
        """Remove least-recently-used chunks until the cache is at most ``target`` bytes (their
        ChunkEvicted events published together, once the lock is let go)."""
        target = self.limit if target is None else target
        evicted: list[ChunkEvicted] = []
        try:
            with self._lock:
                self._flush_access()
                self._evict_to(target, evicted)
        finally:
            if evicted:
                self.publish(*evicted)
        return sum(event.size for event in evicted)

    def _evict_to(self, target: int, evicted: list[ChunkEvicted]) -> None:
        while self.size > target:
            candidates = [c for c in self.index.eviction_candidates(512) if c[0] not in self._in_use]
            if not candidates:
                return
            done: list[Place] = []
            try:
                for address, size, place in candidates:
                    self.files.discard(address, size, place)
                    self.index.forget_chunk(address)
                    done.append(place)
                    self.size -= size
                    self.counters.evictions += 1
                    self.counters.evicted_bytes += size
                    evicted.append(ChunkEvicted(address, size))
                    if self.size <= target:
                        break
                self._drop_empty(done)
            except (OSError, sqlite3.Error) as exc:  # a read-only cache evicts nothing
                self._write_failed(exc)
                return

    def _flush_access(self) -> None:
        stamps, self._access = self._access, {}
        if not self.writable:
            return  # last-access times only order eviction: losing some costs nothing
        try:
            self.index.touch(stamps)
        except sqlite3.Error as exc:
            self._write_failed(exc)

    def flush(self) -> None:
        with self._lock:
            self._flush_access()

    def clear_selected(self, origin_id: str | None = None, *, dry_run: bool = False) -> dict:
        """Remove an origin's cached files (every origin's if None), never a chunk of a file being read.

        A chunk another origin's file shares stays. Returns what was (or, with
        ``dry_run``, would be) removed: chunk maps, chunks and bytes.
        """
        with self._lock:
            manifests, chunks = self.index.clearable(origin_id, set(self._in_use))
            freed = sum(size for _, size in chunks)
            if not dry_run:
                places = self.index.places(a for a, _ in chunks)
                for address, (size, place) in places.items():
                    self.files.discard(address, size, place)
                self.index.forget(manifests, [a for a, _ in chunks])
                self._drop_empty(place for _, place in places.values())
                self.size = self.index.total_bytes()
        if not dry_run and (manifests or chunks):  # whoever follows what the cache holds (the offline view)
            self.publish(CacheCleared(origin_id, len(manifests), len(chunks), freed))
        return {"origin": origin_id, "dry_run": dry_run, "manifests": len(manifests), "chunks": len(chunks),
                "bytes": freed}

    def clear(self) -> int:
        """Drop every chunk and manifest (``musicfs-inspect cache clear``)."""
        with self._lock:
            freed = 0
            for address, size, place in self.index.every_chunk():  # packs go whole, below
                freed += self.files.discard(address) if place.pack is None else size
            for name in self.files.pack_names():
                self.files.drop_pack(name)
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
            "missing": counters.missing,
            "stored": counters.stored,
            "deduplicated": counters.deduplicated,
            "writable": self.write_problem is None,
            "write_problem": self.write_problem,
            "write_failures": counters.write_failures,
            "skipped_writes": counters.skipped_writes,
            "purged": counters.purged,
            "directory": str(self.directory),
        }

    def whole_files(self, page: int = 256) -> list[tuple[str, str, int, str]]:
        """``(origin_id, real_path, size, version)`` of every file version held whole (the offline
        view's question, :meth:`ChunkIndex.whole_files`): a page of maps per turn of the lock, so
        reads are not held up behind a query over the whole cache."""
        found: list[tuple[str, str, int, str]] = []
        after: int | None = 0
        while after is not None:
            with self._lock:
                files, after = self.index.whole_files(after, page)
            found += files
        return found
