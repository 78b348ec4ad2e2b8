"""Checking a filled file against its origin's checksum of the whole file, and what a mismatch costs.

Chunks are addressed by their own hash, so a chunk can only be checked
against bytes known before; the first fill of a file has nothing to check
its bytes against but what the origin vouches for. An S3 object uploaded in
one part carries the MD5 of its body as its ETag (and the index keeps the
ETag as the file's version), so a fill hashes the chunks it cuts, in order,
and compares once the file is complete. Only then is the chunk map saved as
complete.

On a mismatch nothing of that fill stays: its chunks (those no other file's
map lists) and any partial map are removed, the error is logged, readers
waiting get EIO, and the replicas that served the bytes become *suspects*,
for that file and, for ``DISTRUST_FOR`` seconds, for every file: fills try
the other replicas first, and a fill that may still have to use a suspect is
"verify first": its chunks become readable only after the whole file has
passed. So a second read is exact, or EIO when every replica is bad, never
wrong again; and an origin caught corrupting one file streams no unchecked
byte of another until a file it served has passed its check again.

What remains exposed: bytes streamed to readers of a file's *first* fill
before the file could be checked (its end had not arrived), and the head of
a file read only in part (a tag scanner), which is checked when the file is
first read to its end. The same holds for a file's header (the header tier:
what the scanner read of it): a part cannot be checked against a checksum of
the whole, so it is served as the origin sent it. It goes with the file's
chunks when they are dropped as wrong, and once the file has been read whole
a header whose bytes differ from the file's is dropped (:meth:`check_header`). Origins without a whole-file checksum (local folders,
SFTP, multipart S3 uploads whose ETag is not an MD5) are trusted on a first
fill; once a file's chunk map is known, every later fetch of it is checked
chunk by chunk (:mod:`musicfs.store.fetch`).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from ..digest import digest
from ..errors import OriginUnavailable
from ..events import ChecksumMismatch, EventBus
from .cache import ContentCache
from .chunkdb import ChunkRef
from .filestate import FileState, ReaderCounters
from .headers import Header, HeaderTier

log = logging.getLogger(__name__)

SUSPECTS_KEPT = 1024  # files whose replicas served wrong bytes, remembered (oldest forgotten first)
DISTRUST_FOR = 600.0  # seconds an origin caught serving wrong bytes is a suspect for every file
REHASH_BATCH = 4 * 1024 * 1024  # bytes of chunks hashed per thread hop when a hash is rebuilt


class ChecksumMismatchError(OriginUnavailable):
    """A whole file did not match the checksum its origin gave for it."""


def new_hasher(state: FileState) -> Any:
    return hashlib.new(state.expected.algorithm) if state.expected is not None else None


def hash_chunks(hasher: Any, pieces: Iterable[bytes]) -> int:
    """Feed ``pieces`` to ``hasher`` in order (in a worker thread); returns the bytes hashed."""
    total = 0
    for piece in pieces:
        hasher.update(piece)
        total += len(piece)
    return total


class Verifier:
    def __init__(self, cache: ContentCache, bus: EventBus, counters: ReaderCounters, *,
                 limiter: trio.CapacityLimiter,
                 load_chunk: Callable[[FileState, ChunkRef], Awaitable[bytes]],
                 headers: HeaderTier | None = None):
        """``load_chunk(state, ref)`` gives a chunk's bytes, checked against its address
        (from memory, disk, or fetched again): used to rebuild a hash over chunks cut
        by an earlier fill. ``headers``: the header tier, whose headers follow the files'
        chunks when those are found wrong."""
        self.cache = cache
        self.headers = headers
        self.bus = bus
        self.counters = counters
        self.limiter = limiter
        self.load_chunk = load_chunk
        self._suspects: OrderedDict[tuple[str, str, str], frozenset[str]] = OrderedDict()
        self._distrusted: dict[str, float] = {}  # origin id -> trio time its distrust ends

    @staticmethod
    def _key(state: FileState) -> tuple[str, str, str]:
        return state.origin_id, state.real_path, state.version

    def suspects(self, state: FileState) -> frozenset[str]:
        """Replicas of this file not to trust: they served it (or, lately, any file) wrong bytes."""
        now = trio.current_time()
        for origin_id in [o for o, until in self._distrusted.items() if until <= now]:
            del self._distrusted[origin_id]
        replicas = set(state.replicas) | {state.origin_id}
        return self._suspects.get(self._key(state), frozenset()) | frozenset(replicas & self._distrusted.keys())

    def suspected(self, state: FileState) -> bool:
        """True if the file's bytes could have come from a suspect: the kernel must not keep them."""
        return bool(self.suspects(state))

    async def prepare(self, state: FileState, start: int) -> None:
        """Before a fill from ``start``: who is suspect, whether to verify first, the running hash.

        A fill that must verify first cannot build on chunks cut before
        without a check: they are dropped and the file is fetched whole.
        """
        state.suspects = self.suspects(state)
        if state.expected is None:
            return
        if state.suspects and not state.verify_first:
            state.verify_first = True
            if state.chunks:
                await self.discard(state, "its replicas served wrong bytes before")
                start = 0
        if start == 0:
            state.hasher, state.hashed = new_hasher(state), 0

    async def check(self, state: FileState) -> None:
        """The fill reached the end: compare with the origin's checksum, or raise after cleaning up."""
        expected = state.expected
        if expected is None:
            return
        if state.hasher is None or state.hashed != state.size:
            await self._rehash(state)
        got = state.hasher.hexdigest()
        key = self._key(state)
        served = sorted(state.agreeing | ({state.filled_from} if state.filled_from else set()))
        if got == expected.hexdigest:
            self.counters.verified_files += 1
            self._suspects.pop(key, None)
            for origin_id in served:
                if self._distrusted.pop(origin_id, None) is not None:
                    log.warning("origin %s served %s:%s that passed its %s check: trusted again",
                                origin_id, state.origin_id, state.real_path, expected.source)
            return
        self.counters.checksum_mismatches += 1
        if state.seeded:  # the head came from what the scan read: the header goes too (in discard)
            self.counters.headers_dropped += 1
        detail = (f"{expected.algorithm} of the bytes served by {', '.join(served) or '?'} is {got}, "
                  f"the {expected.source} says {expected.hexdigest}")
        log.error("%s:%s does not match its origin's checksum (%s): its cached chunks%s are dropped and "
                  "the file will be fetched again%s", state.origin_id, state.real_path, detail,
                  ", and the header its scan kept (its first bytes were taken from it)" if state.seeded else "",
                  ", from another replica first" if len(state.replicas) > 1 else "")
        for origin_id in served:
            self.bus.publish(ChecksumMismatch(origin_id, state.real_path, detail))
        self._suspects[key] = self._suspects.get(key, frozenset()) | frozenset(served)
        self._suspects.move_to_end(key)
        for origin_id in served:
            self._distrusted[origin_id] = trio.current_time() + DISTRUST_FOR
        while len(self._suspects) > SUSPECTS_KEPT:
            self._suspects.popitem(last=False)
        await self.discard(state, "it failed its checksum")
        raise ChecksumMismatchError(f"{state.real_path}: the bytes served failed the origin's "
                                    f"{expected.source} check ({', '.join(served)})")

    async def discard(self, state: FileState, why: str) -> None:
        """Forget and remove every chunk the state holds, and its saved map (wrong or unverified)."""
        dropped = state.reset()
        state.header = None  # dropped with the chunks (in _remove): read from the same origins
        self.cache.unhold(ref.address for ref in dropped)
        log.info("dropping %d cached chunk(s) of %s:%s: %s", len(dropped), state.origin_id,
                 state.real_path, why)
        await trio.to_thread.run_sync(self._remove, state.origin_id, state.real_path,
                                      [ref.address for ref in dropped], limiter=self.limiter)

    def _remove(self, origin_id: str, real_path: str, addresses: list[str]) -> None:
        self.cache.drop_manifest(origin_id, real_path)
        self.cache.purge(addresses)
        if self.headers is not None:  # read from the same origins: no more trusted than the chunks
            self.headers.drop(origin_id, real_path)

    async def check_header(self, state: FileState) -> None:
        """The file was read whole: drop its header if a piece of it differs from the file's bytes
        (the origin sent the scanner wrong bytes, or the file changed since under the same version)."""
        header, state.header = state.header, None  # the file is cached whole: reads need it no more
        if header is None or self.headers is None:
            return
        differs = await trio.to_thread.run_sync(self._differs, header, list(state.chunks), limiter=self.limiter)
        if differs is not None:
            log.warning("the header of %s:%s (what its scan read) differs from the file's bytes at %d: "
                        "dropped", state.origin_id, state.real_path, differs)
            self.counters.headers_dropped += 1
            await trio.to_thread.run_sync(self.headers.drop, state.origin_id, state.real_path,
                                          limiter=self.limiter)

    def _differs(self, header: Header, chunks: list[ChunkRef]) -> int | None:
        """The offset of the first header piece whose bytes are not the file's there, or None."""
        starts = [ref.offset for ref in chunks]
        for piece in header.pieces:
            first = bisect.bisect_right(starts, piece.offset) - 1
            last = bisect.bisect_left(starts, piece.end)
            covering = chunks[max(first, 0):last]
            loaded = self.cache.read_chunks(covering)
            if any(data is None for data in loaded):
                continue  # not on disk any more: nothing to compare with
            joined = b"".join(loaded)
            at = piece.offset - covering[0].offset
            if digest(joined[at:at + piece.size]) != piece.address:
                return piece.offset
        return None

    async def _rehash(self, state: FileState) -> None:
        """Hash the file from its chunks (a fill resumed without the hash of what came before)."""
        hasher = new_hasher(state)
        batch: list[bytes] = []
        size = hashed = 0
        for ref in list(state.chunks):
            batch.append(await self.load_chunk(state, ref))
            size += ref.size
            if size >= REHASH_BATCH:
                hashed += await trio.to_thread.run_sync(hash_chunks, hasher, batch, limiter=self.limiter)
                batch, size = [], 0
        hashed += await trio.to_thread.run_sync(hash_chunks, hasher, batch, limiter=self.limiter)
        state.hasher, state.hashed = hasher, hashed
