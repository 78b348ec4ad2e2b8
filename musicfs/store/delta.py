"""Retag-tolerant resync: a new version of a file whose audio is the old one's, built from the old chunks.

Why: after a beets import or a Picard run, every retagged file is a new
version on the origin (another size, mtime or ETag), and a cache that only
knows versions fetches each of them again in full. A tagger rewrites the tags
and leaves the audio byte for byte, only moved; the old version's chunks
already hold it.

How (when a rescan reads the tags of a changed file whose old version is
cached whole, and whose old header recorded its audio region):

1. The regions must agree: the same audio length, and for FLAC the same
   STREAMINFO total samples and MD5 of the decoded audio.
2. Sampled ranges (``SAMPLES`` of ``SAMPLE_SIZE`` bytes, spread evenly over the
   audio, ends included) are fetched from the new version on the origin and
   compared with the old bytes they should equal.
3. The new version's map is its new head (the tags, up to the first old chunk
   boundary inside the audio), the old chunks wholly inside the audio, moved by
   the tags' change in length, and its new tail (from the last such boundary to
   the end: the end of the audio and any tags there). The head and tail come
   from what the scanner read, or are fetched.
4. Where the origin vouches for the whole file (an S3 ETag that is an MD5), the
   rebuilt file is hashed from the cache and must match; then nothing is left
   to chance.

Anything that does not agree (a region missing, a length, a fingerprint, one
sampled byte, the checksum) leaves the file to be fetched in full as before,
and the reason is logged. What sampling cannot catch without a checksum: a
change confined to audio bytes between the samples that leaves the length (and
for FLAC the MD5 of the decoded audio) as it was: an edit made on purpose to
look like a retag. A re-encode, a truncation, other audio of the same length,
or a shifted stream differ at every sample.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from ..digest import digest
from ..errors import MusicFSError
from ..index.layout import AudioRegion
from ..origins.base import Entry, Origin
from .cache import ContentCache
from .chunkdb import ChunkRef
from .chunker import StreamChunker
from .headers import HeaderTier

log = logging.getLogger(__name__)

SAMPLES = 16  # ranges of the new audio compared with the old
SAMPLE_SIZE = 4096  # bytes each
NOT_CACHED = "its old version is not cached whole"
SAME_VERSION = "the cached map is of this version already"


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild did: ``reused`` bytes taken from the old version, ``fetched`` from the origin
    for it (beyond what the scanner read), or why it did not happen (``reason``)."""

    reused: int = 0
    fetched: int = 0
    reason: str = ""

    @property
    def done(self) -> bool:
        return not self.reason


class DeltaSync:
    """Rebuilds changed file versions from the chunks of their cached old versions (blocking)."""

    def __init__(self, cache: ContentCache, *, samples: int = SAMPLES, sample_size: int = SAMPLE_SIZE):
        self.cache = cache
        self.samples = samples
        self.sample_size = sample_size
        self.rebuilt = 0
        self.refused = 0
        self.reused_bytes = 0
        self.fetched_bytes = 0

    def rebuild(self, origin: Origin, entry: Entry, old_region: AudioRegion | None, region: AudioRegion | None,
                parts: list[tuple[int, bytes]]) -> Rebuilt:
        """Save a complete map for this new version from the old one's chunks, if its audio is theirs."""
        origin_id, real_path = origin.id, entry.path
        result = self._rebuild(origin, entry, old_region, region, parts)
        if result.done:
            self.rebuilt += 1
            self.reused_bytes += result.reused
            self.fetched_bytes += result.fetched
            log.info("%s:%s changed only outside its audio: %d bytes reused from the cached version, %d "
                     "fetched", origin_id, real_path, result.reused, result.fetched)
        elif result.reason in (NOT_CACHED, SAME_VERSION):  # nothing to rebuild from: as any uncached file
            log.debug("%s:%s changed: %s", origin_id, real_path, result.reason)
        else:
            self.refused += 1
            log.warning("%s:%s changed, and not only its tags: it is fetched again in full when read (%s)",
                        origin_id, real_path, result.reason)
        return result

    def _rebuild(self, origin: Origin, entry: Entry, old_region: AudioRegion | None, region: AudioRegion | None,
                 parts: list[tuple[int, bytes]]) -> Rebuilt:
        origin_id, real_path, size, version = origin.id, entry.path, entry.size, entry.version_key
        old = self.cache.manifest(origin_id, real_path)
        if old is None or not old.complete:
            return Rebuilt(reason=NOT_CACHED)
        if old.version == version:
            return Rebuilt(reason=SAME_VERSION)
        if old_region is None or region is None:
            return Rebuilt(reason="the audio region of a version is not known")
        if old_region.length != region.length:
            return Rebuilt(reason=f"the audio is {region.length} bytes, was {old_region.length}")
        if old_region.fingerprint != region.fingerprint:
            return Rebuilt(reason="the format's fingerprint of the audio changed")
        reuse = [c for c in old.chunks if c.offset >= old_region.start and c.end <= old_region.end]
        if not reuse:
            return Rebuilt(reason="no cached chunk lies wholly inside the audio")
        shift = region.start - old_region.start
        first, last = reuse[0].offset, reuse[-1].end  # old offsets
        fetched = 0

        def new_bytes(start: int, end: int) -> bytes:
            nonlocal fetched
            known = _from_parts(parts, start, end)
            if known is not None:
                return known
            data = origin.read_range(real_path, start, end - start)
            fetched += len(data)
            if len(data) != end - start:
                raise ValueError(f"the origin returned {len(data)} bytes at {start}, not {end - start}")
            return data

        try:
            for at in _sample_offsets(first, last, self.samples, self.sample_size):
                length = min(self.sample_size, last - at)
                if new_bytes(at + shift, at + shift + length) != self._old_bytes(old.chunks, at, at + length):
                    return Rebuilt(reason=f"the audio differs from the cached version's at byte {at + shift}")
            # the new head: its tags, then the audio up to the first reused chunk, which the old
            # version's chunks hold; the new tail likewise: audio from the cache, then its tags
            head = new_bytes(0, region.start) + self._old_bytes(old.chunks, old_region.start, first)
            tail = self._old_bytes(old.chunks, last, old_region.end) + new_bytes(region.end, size)
        except (OSError, ValueError, MusicFSError) as exc:  # the origin failed: the file is fetched when read
            return Rebuilt(reason=f"the origin could not be read ({exc})")
        moved = [ChunkRef(c.offset + shift, c.size, c.address) for c in reuse]
        head_chunks = _chunks(head, 0)
        tail_chunks = _chunks(tail, last + shift)
        checksum = origin.whole_checksum(version)
        if checksum is not None:
            hasher = hashlib.new(checksum.algorithm)
            hasher.update(head)
            for start in range(0, len(reuse), 64):
                for data in self.cache.read_chunks(reuse[start:start + 64]):
                    if data is None:
                        return Rebuilt(reason="a cached chunk of the old version is gone")
                    hasher.update(data)
            hasher.update(tail)
            if hasher.hexdigest() != checksum.hexdigest:
                return Rebuilt(reason=f"the rebuilt file does not match the origin's {checksum.source}")
        items = [(c.address, data) for c, data in head_chunks + tail_chunks]
        if self.cache.store_chunks(items) != len(items):
            return Rebuilt(reason="the cache could not be written")
        refs = [c for c, _ in head_chunks] + moved + [c for c, _ in tail_chunks]
        reused = sum(c.size for c in moved)
        if not self.cache.save_manifest(origin_id, real_path, size, version, refs, obtained="delta",
                                        reused_bytes=reused):
            return Rebuilt(reason="the cache could not be written")
        return Rebuilt(reused=reused, fetched=fetched)

    def _old_bytes(self, chunks: tuple[ChunkRef, ...] | list[ChunkRef], start: int, end: int) -> bytes:
        """Bytes [start, end) of the old version, from its cached chunks."""
        if start >= end:
            return b""
        covering = [c for c in chunks if c.end > start and c.offset < end]
        loaded = self.cache.read_chunks(covering)
        if any(data is None for data in loaded):
            raise ValueError("a cached chunk of the old version is gone")
        joined = b"".join(loaded)
        return joined[start - covering[0].offset:end - covering[0].offset]

    def statistics(self) -> dict:
        return {"rebuilt": self.rebuilt, "refused": self.refused, "reused_bytes": self.reused_bytes,
                "fetched_bytes": self.fetched_bytes}


def _sample_offsets(start: int, end: int, count: int, size: int) -> list[int]:
    """``count`` offsets spread evenly over [start, end), the first at ``start``, the last ending at ``end``."""
    span = max(0, end - start - size)
    if count <= 1:
        return [start]
    return sorted({start + span * i // (count - 1) for i in range(count)})


def _from_parts(parts: list[tuple[int, bytes]], start: int, end: int) -> bytes | None:
    """Bytes [start, end) if the ranges the scanner read (merged where they touch) hold them all."""
    if start >= end:
        return b""
    merged: list[tuple[int, bytearray]] = []
    for offset, data in sorted(parts, key=lambda part: part[0]):
        if merged and offset <= merged[-1][0] + len(merged[-1][1]):
            first, joined = merged[-1]
            joined += data[first + len(joined) - offset:]
        else:
            merged.append((offset, bytearray(data)))
    for offset, data in merged:
        if offset <= start and end <= offset + len(data):
            return bytes(data[start - offset:end - offset])
    return None


def _chunks(data: bytes, offset: int) -> list[tuple[ChunkRef, bytes]]:
    """``data`` (the file's bytes from ``offset``) cut into chunks no larger than a fill cuts."""
    if not data:
        return []
    chunker = StreamChunker(offset)
    pieces = chunker.feed(data) + chunker.finish()
    return [(ChunkRef(p.offset, len(p.data), digest(p.data)), p.data) for p in pieces]


class ScanKeeper:
    """Where a scanner hands what it read of a file for its tags: delta sync, then the header tier.

    A file whose kept header is of another version changed on the origin: if
    its old version is cached whole, delta sync tries to rebuild the new one
    from it before the new header replaces the old (whose audio region it needs).
    """

    def __init__(self, headers: HeaderTier, delta: DeltaSync | None = None):
        self.headers = headers
        self.delta = delta

    def sinks(self, origin_ids: Iterable[str]) -> dict[str, ScanKeeper]:
        """This keeper for each of ``origin_ids`` (those whose files are cached), none when the
        header tier's limit is 0."""
        return {origin_id: self for origin_id in origin_ids} if self.headers.limit > 0 else {}

    def keep(self, origin: Origin, entry: Entry, parts: list[tuple[int, bytes]], region: AudioRegion | None) -> None:
        """Never raises for the cache: a scan reads tags whether or not their bytes can be kept
        (a failure here must not turn a good file into a skipped one)."""
        try:
            old = self.headers.region(origin.id, entry.path)
            if self.delta is not None and old is not None and old[0] != entry.version_key:
                self.delta.rebuild(origin, entry, old[1], region, parts)
            self.headers.keep(origin.id, entry.path, entry.size, entry.version_key, parts, region)
        except (sqlite3.Error, OSError) as exc:
            log.warning("what the scan read of %s:%s was not kept in the cache: %s", origin.id, entry.path, exc)
