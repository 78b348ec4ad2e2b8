"""Read-only views of a cache directory for ``musicfs-inspect`` (daemon running or not).

SQLite's WAL lets these read the chunk index while a daemon writes it. Only
:func:`clear_cache` changes anything, and it says what it would do first
when asked for a dry run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from ..index.db import transaction
from .cas import TMP_PREFIX, ChunkFiles
from .chunkdb import ChunkIndex
from .digest import digest


def _index(cache_dir: Path) -> ChunkIndex:
    if not (cache_dir / "chunks.db").exists():
        raise FileNotFoundError(f"no cache at {cache_dir}")
    return ChunkIndex(cache_dir / "chunks.db")


def chunk_summary(cache_dir: Path) -> dict:
    index = _index(cache_dir)
    try:
        stats = index.statistics()
    finally:
        index.close()
    on_disk = list(ChunkFiles(cache_dir).scan())
    stats["files_on_disk"] = len(on_disk)
    stats["bytes_on_disk"] = sum(size for _, size in on_disk)
    stats["directory"] = str(cache_dir)
    return stats


def verify_chunks(cache_dir: Path, progress: Callable[[int, int], None] | None = None) -> dict:
    """Read every chunk file and check it against its address; list indexed chunks with no file.

    Changes nothing (a running daemon may be using the cache): ``corrupt``
    files fail their hash or are unreadable, ``missing`` ones are in the
    chunk index but not on disk. A shard folder that cannot be listed (a
    failing disk) is named in ``unlisted``, and its chunks are counted in
    neither. :func:`repair_chunks` acts on the report.
    """
    files = ChunkFiles(cache_dir)
    entries = list(files.scan())
    bad = []
    for done, (address, _size) in enumerate(entries, start=1):
        try:
            data = files.path(address).read_bytes()
        except OSError:
            bad.append(address)
            continue
        if digest(data) != address:
            bad.append(address)
        if progress:
            progress(done, len(entries))
    on_disk = {address for address, _ in entries}
    missing = []
    if (cache_dir / "chunks.db").exists():
        conn = sqlite3.connect(f"file:{cache_dir / 'chunks.db'}?mode=ro", uri=True)
        try:
            missing = sorted(a for (a,) in conn.execute("SELECT address FROM chunks")
                             if a not in on_disk and a[:2] not in files.unlisted)
        finally:
            conn.close()
    return {"checked": len(entries), "corrupt": len(bad), "corrupt_chunks": bad,
            "missing": len(missing), "missing_chunks": missing, "unlisted": list(files.unlisted)}


def repair_chunks(cache_dir: Path, report: dict) -> dict:
    """Remove the corrupt chunk files of a :func:`verify_chunks` report and the index rows of
    corrupt and missing ones. Chunk maps stay: their chunks are fetched again when read."""
    files = ChunkFiles(cache_dir)
    index = _index(cache_dir)
    try:
        for address in report["corrupt_chunks"]:
            files.discard(address)
        with transaction(index.conn):
            for address in report["corrupt_chunks"] + report["missing_chunks"]:
                index.forget_chunk(address)
    finally:
        index.close()
    return {"files_removed": report["corrupt"], "rows_dropped": report["corrupt"] + report["missing"]}


def manifest_map(cache_dir: Path, origin_id: str, real_path: str) -> dict | None:
    """The chunk map of one file: offsets, sizes, addresses, and which are on disk."""
    index = _index(cache_dir)
    try:
        manifest = index.manifest(origin_id, real_path)
    finally:
        index.close()
    if manifest is None:
        return None
    files = ChunkFiles(cache_dir)
    chunks = [{"offset": c.offset, "size": c.size, "address": c.address,
               "cached": files.exists(c.address)} for c in manifest.chunks]
    cached_bytes = sum(c["size"] for c in chunks if c["cached"])
    return {"origin": origin_id, "real_path": real_path, "size": manifest.size,
            "version": manifest.version, "complete": manifest.complete, "chunks": chunks,
            "percent_cached": round(100 * cached_bytes / manifest.size, 2) if manifest.size else 100.0}


def cached_files(cache_dir: Path) -> Iterator[tuple[str, str, int, bool]]:
    """(origin id, real path, size, complete) of every file with a chunk map; partial maps cover a prefix."""
    conn = sqlite3.connect(f"file:{cache_dir / 'chunks.db'}?mode=ro", uri=True)
    try:
        for origin_id, real_path, size, complete in conn.execute(
                "SELECT origin_id, real_path, size, complete FROM manifests ORDER BY 1, 2"):
            yield origin_id, real_path, size, bool(complete)
    finally:
        conn.close()


def partial_files(cache_dir: Path) -> dict[tuple[str, str], int]:
    """(origin id, real path) -> bytes covered, of every partial chunk map (a fill that stopped)."""
    if not (cache_dir / "chunks.db").exists():
        return {}
    conn = sqlite3.connect(f"file:{cache_dir / 'chunks.db'}?mode=ro", uri=True)
    try:
        return {(origin_id, real_path): covered for origin_id, real_path, covered in conn.execute(
            "SELECT m.origin_id, m.real_path, COALESCE(SUM(c.size), 0) FROM manifests m"
            " JOIN manifest_chunks c ON c.manifest_id = m.id WHERE m.complete = 0 GROUP BY m.id")}
    finally:
        conn.close()


def clear_cache(cache_dir: Path, *, dry_run: bool) -> dict:
    index = _index(cache_dir)
    try:
        stats = index.statistics()
        result = {"chunks": stats["chunks"], "bytes": stats["bytes"], "manifests": stats["manifests"],
                  "dry_run": dry_run}
        if not dry_run:
            files = ChunkFiles(cache_dir)
            freed = sum(files.discard(address) for address in index.addresses())
            freed += sum(files.discard(address) for address, _ in files.scan())  # strays too
            for temp in files.root.glob(f"*/{TMP_PREFIX}*"):  # clear is explicit: temps go too
                temp.unlink(missing_ok=True)
            index.clear()
            result["bytes_freed"] = freed
    finally:
        index.close()
    return result
