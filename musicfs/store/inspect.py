"""Read-only views of a cache directory for ``musicfs-inspect`` (daemon running or not).

SQLite's WAL lets these read the chunk index while a daemon writes it. Only
:func:`clear_cache` changes anything, and it says what it would do first
when asked for a dry run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from ..digest import digest
from ..index.db import transaction
from . import headerdb
from .cas import LOOSE, PACKS, TMP_PREFIX, ChunkFiles, Place
from .chunkdb import ChunkIndex


def _index(cache_dir: Path) -> ChunkIndex:
    if not (cache_dir / "chunks.db").exists():
        raise FileNotFoundError(f"no cache at {cache_dir}")
    return ChunkIndex(cache_dir / "chunks.db")


def chunk_rows(cache_dir: Path) -> list[tuple[str, int, Place]]:
    """Every chunk row (address, size, place), read without changing the index (a daemon may use it)."""
    if not (cache_dir / "chunks.db").exists():
        return []
    conn = sqlite3.connect(f"file:{cache_dir / 'chunks.db'}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
        place = "pack, pack_offset" if "pack" in columns else "NULL, 0"  # a cache made before packs
        return [(address, size, LOOSE if pack is None else Place(pack, offset))
                for address, size, pack, offset in conn.execute(f"SELECT address, size, {place} FROM chunks")]
    finally:
        conn.close()


def chunk_summary(cache_dir: Path) -> dict:
    """The index's figures, and what is on disk: chunks (loose files, and rows whose pack is there),
    their bytes, the files holding them, and the space those take (holes of evicted chunks not counted)."""
    index = _index(cache_dir)
    try:
        stats = index.statistics()
    finally:
        index.close()
    files = ChunkFiles(cache_dir)
    loose = list(files.scan())
    packs = files.pack_names()
    packed = [(size, place) for _, size, place in chunk_rows(cache_dir) if place.pack in packs]
    stats["chunks_on_disk"] = len(loose) + len(packed)
    stats["bytes_on_disk"] = sum(size for _, size in loose) + sum(size for size, _ in packed)
    stats["files_on_disk"] = len(loose) + len(packs)
    stats["pack_files"] = len(packs)
    stats["disk_used"] = sum(size for _, size in loose) + sum(_allocated(files.pack_path(name)) for name in packs)
    stats["directory"] = str(cache_dir)
    return stats


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _intact(files: ChunkFiles, address: str, size: int, place: Place) -> bool:
    """Whether a chunk's bytes on disk match its address (read only: nothing is removed)."""
    path, offset = files.where(address, place)
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            data = f.read(size if place.pack else size + 1)
    except OSError:
        return False
    return len(data) == size and digest(data) == address


def verify_chunks(cache_dir: Path, progress: Callable[[int, int], None] | None = None) -> dict:
    """Read every chunk and check it against its address; list indexed chunks that are not on disk.

    Changes nothing (a running daemon may be using the cache): ``corrupt``
    chunks fail their hash or are unreadable (loose files, and the chunks the
    index places in packs), ``missing`` ones are in the chunk index but their
    file or pack is not on disk. A folder that cannot be listed (a failing
    disk) is named in ``unlisted``, and its chunks are counted in neither.
    :func:`repair_chunks` acts on the report.
    """
    files = ChunkFiles(cache_dir)
    loose = list(files.scan())
    packs = files.pack_names()
    rows = chunk_rows(cache_dir)
    entries = [(address, size, LOOSE) for address, size in loose]
    entries += [row for row in rows if row[2].pack in packs]
    bad = []
    for done, (address, size, place) in enumerate(entries, start=1):
        if not _intact(files, address, size if place.pack else dict(loose)[address], place):
            bad.append(address)
        if progress:
            progress(done, len(entries))
    on_disk = {address for address, _ in loose}
    missing = sorted(address for address, _, place in rows
                     if (place.pack is None and address not in on_disk and address[:2] not in files.unlisted)
                     or (place.pack is not None and place.pack not in packs and PACKS not in files.unlisted))
    return {"checked": len(entries), "corrupt": len(bad), "corrupt_chunks": bad,
            "missing": len(missing), "missing_chunks": missing, "unlisted": list(files.unlisted)}


def repair_chunks(cache_dir: Path, report: dict) -> dict:
    """Remove the corrupt chunks of a :func:`verify_chunks` report (loose files deleted, holes punched
    in packs) and the index rows of corrupt and missing ones. Chunk maps stay: their chunks are fetched
    again when read."""
    files = ChunkFiles(cache_dir)
    index = _index(cache_dir)
    try:
        places = index.places(report["corrupt_chunks"])
        for address in report["corrupt_chunks"]:
            size, place = places.get(address, (0, LOOSE))
            files.discard(address, size, place)
        with transaction(index.conn):
            for address in report["corrupt_chunks"] + report["missing_chunks"]:
                index.forget_chunk(address)
        for name in index.empty_packs(place.pack for _, place in places.values() if place.pack):
            files.drop_pack(name)
    finally:
        index.close()
    return {"chunks_removed": report["corrupt"], "rows_dropped": report["corrupt"] + report["missing"]}


def manifest_map(cache_dir: Path, origin_id: str, real_path: str) -> dict | None:
    """The chunk map of one file: offsets, sizes, addresses, which are on disk, and how its content
    was obtained (fetched from the origin, or rebuilt by delta sync from the previous version)."""
    index = _index(cache_dir)
    try:
        manifest = index.manifest(origin_id, real_path)
    finally:
        index.close()
    if manifest is None:
        return None
    files = ChunkFiles(cache_dir)
    packs = files.pack_names()
    places = {address: place for address, _, place in chunk_rows(cache_dir)}
    chunks = [{"offset": c.offset, "size": c.size, "address": c.address,
               "cached": c.address in places and (places[c.address].pack in packs if places[c.address].pack
                                                  else files.path(c.address).exists())}
              for c in manifest.chunks]
    cached_bytes = sum(c["size"] for c in chunks if c["cached"])
    return {"origin": origin_id, "real_path": real_path, "size": manifest.size,
            "version": manifest.version, "complete": manifest.complete, "obtained": manifest.obtained,
            "reused_bytes": manifest.reused_bytes, "chunks": chunks,
            "percent_cached": round(100 * cached_bytes / manifest.size, 2) if manifest.size else 100.0}


def header_map(cache_dir: Path, origin_id: str, real_path: str) -> dict | None:
    """What the header tier holds of one file (the ranges a tag scan read), or None."""
    index = _index(cache_dir)
    try:
        found = headerdb.load(index.conn, origin_id, real_path)
    except sqlite3.OperationalError:  # a cache made before the header tier
        found = None
    finally:
        index.close()
    if found is None:
        return None
    _, size, version, pieces = found
    places = {address: place for address, _, place in chunk_rows(cache_dir)}
    return {"size": size, "version": version, "bytes": sum(p.size for p in pieces),
            "pieces": [{"offset": p.offset, "size": p.size, "address": p.address, "cached": p.address in places}
                       for p in pieces]}


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
            freed = sum(files.discard(address) if place.pack is None else size  # packs go whole, below
                        for address, size, place in index.every_chunk())
            freed += sum(files.discard(address) for address, _ in files.scan())  # strays too
            for name in files.pack_names():
                files.drop_pack(name)
            for temp in files.root.glob(f"*/{TMP_PREFIX}*"):  # clear is explicit: temps go too
                temp.unlink(missing_ok=True)
            index.clear()
            result["bytes_freed"] = freed
    finally:
        index.close()
    return result
