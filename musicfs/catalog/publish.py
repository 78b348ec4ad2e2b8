"""``musicfs publish``: a consistent snapshot of the index, compressed, into an origin.

The order is what makes it safe for readers: the snapshot object first (named by the
SHA-256 of its bytes, so an object of that name is always those bytes, and publishing
the same index twice uploads nothing), the pointer naming it last, then the oldest
snapshots beyond ``keep`` are removed (never the one just named). A client that read
the previous pointer a moment ago still finds its snapshot.

The snapshot is SQLite's online backup of the index (consistent even while a mount
writes to it), then zstd-compressed; both live in a temporary folder beside the index
and are streamed to the origin, never held in memory whole.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..config import CatalogSettings
from ..errors import CatalogRefused, IndexError_, NotFound
from ..origins.base import Origin
from .pointer import FORMAT, POINTER_NAME, SNAPSHOTS, Pointer

log = logging.getLogger(__name__)

ZSTD_LEVEL = 6  # an index compresses ~4-5x; higher levels cost much more time for a few per cent


@dataclass(frozen=True)
class PublishReport:
    pointer: Pointer
    uploaded: bool  # False when an object of that content was there already
    removed: list[str] = field(default_factory=list)  # old snapshots removed
    seconds: float = 0.0
    dry_run: bool = False


class _Hashing:
    """A writable file that hashes and counts what goes through it."""

    def __init__(self, target: BinaryIO):
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)


def snapshot(index: Path, target: Path) -> tuple[int, str]:
    """Copy the index at ``index`` to ``target`` with SQLite's backup API; (tracks, template).

    Refuses an index no scan has finished: a catalog of half a library would be mounted
    as the whole of it elsewhere.
    """
    if not index.exists():
        raise IndexError_(f"no index at {index}: scan the library first")
    source = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no WAL beside it
        if copy.execute("SELECT 1 FROM scans WHERE finished_at IS NOT NULL LIMIT 1").fetchone() is None:
            raise IndexError_(f"the index at {index} is not complete (no scan has finished): nothing to publish")
        tracks = copy.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
        row = copy.execute("SELECT value FROM meta WHERE key = 'template'").fetchone()
    finally:
        copy.close()
        source.close()
    return tracks, row[0] if row else ""


def compress(source: Path, target: Path) -> tuple[int, str]:
    """zstd-compress ``source`` into ``target``; (size, SHA-256 hex) of the compressed bytes."""
    with open(source, "rb") as raw, open(target, "wb") as out:
        hashing = _Hashing(out)
        zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1).copy_stream(raw, hashing)
    return hashing.size, hashing.sha.hexdigest()


def publish(index: Path, origin: Origin, settings: CatalogSettings, library: str, *,
            dry_run: bool = False) -> PublishReport:
    """Publish the index at ``index`` into ``origin`` under ``settings.prefix``."""
    started = time.monotonic()
    key = settings.key()
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=index.parent) as work:
        db, packed = Path(work) / "snapshot.db", Path(work) / "snapshot.db.zst"
        tracks, template = snapshot(index, db)
        size, digest = compress(db, packed)
        pointer = Pointer(FORMAT, digest, size, db.stat().st_size, library, template, tracks,
                          round(time.time(), 3)).signed(key)
        if dry_run:
            return PublishReport(pointer, uploaded=False, seconds=time.monotonic() - started, dry_run=True)
        target = f"{settings.prefix}/{pointer.snapshot_name}"
        uploaded = not _present(origin, target, size)
        if uploaded:
            with open(packed, "rb") as body:
                origin.put(target, body)
    with tempfile.SpooledTemporaryFile() as body:
        body.write(pointer.encode())
        body.seek(0)
        origin.put(f"{settings.prefix}/{POINTER_NAME}", body)  # last: now clients see it
    removed = prune(origin, settings, keep_hash=pointer.hash)
    log.info("published %s: %d tracks, %d bytes (%s)", target, tracks, size,
             "uploaded" if uploaded else "already there")
    return PublishReport(pointer, uploaded, removed, time.monotonic() - started)


def _present(origin: Origin, path: str, size: int) -> bool:
    """An object of that name and size is there already (the name is its content's hash)."""
    try:
        return origin.stat(path).size == size
    except NotFound:
        return False


def prune(origin: Origin, settings: CatalogSettings, *, keep_hash: str) -> list[str]:
    """Remove the snapshots beyond the newest ``settings.keep``, never ``keep_hash``'s; their paths."""
    folder = f"{settings.prefix}/{SNAPSHOTS}"
    try:
        files, _ = origin.list_all(folder + "/")
    except NotFound:
        return []
    snapshots = sorted((f for f in files if f.path.endswith(".db.zst")), key=lambda f: f.mtime_ns, reverse=True)
    current = f"{folder}/{keep_hash}.db.zst"
    kept = [f.path for f in snapshots if f.path == current] + [f.path for f in snapshots if f.path != current]
    removed = []
    for path in kept[max(settings.keep, 1):]:
        origin.remove(path)
        removed.append(path)
    return removed


__all__ = ["CatalogRefused", "PublishReport", "compress", "prune", "publish", "snapshot"]
