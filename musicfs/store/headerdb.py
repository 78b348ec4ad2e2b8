"""The header tier's rows in the chunk index (tables ``headers`` and ``header_pieces``).

Functions over the chunk index's connection, called with the cache's lock held
(:meth:`ContentCache.locked`): the header tier, and the cache when it clears an
origin, share them. A piece's chunk carries ``PIN_HEADER`` while some header
lists it; :func:`_release` takes the bit off once none does.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

from ..index.db import transaction
from ..index.layout import AudioRegion
from .chunkdb import IN_BATCH, PIN_HEADER, ChunkRef


def replace(conn: sqlite3.Connection, origin_id: str, real_path: str, size: int, version: str,
            pieces: Sequence[ChunkRef], region: AudioRegion | None = None) -> None:
    """Save a file version's header (its pieces, in file order, and where its audio lies) in place
    of any header of the file."""
    with transaction(conn):
        old = _remove(conn, "origin_id = ? AND real_path = ?", (origin_id, real_path))
        cur = conn.execute(
            "INSERT INTO headers (origin_id, real_path, size, version, bytes, last_access, audio_start,"
            " audio_end, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (origin_id, real_path, size, version, sum(p.size for p in pieces), time.time(),
             region.start if region else None, region.end if region else None,
             region.fingerprint if region else ""))
        header_id = int(cur.lastrowid)
        conn.executemany(
            "INSERT INTO header_pieces (header_id, seq, offset, size, address) VALUES (?, ?, ?, ?, ?)",
            [(header_id, seq, p.offset, p.size, p.address) for seq, p in enumerate(pieces)])
        # set again: another header's eviction may have taken the bit off a shared piece
        # between the pieces' store and this transaction
        conn.executemany(f"UPDATE chunks SET pinned = pinned | {PIN_HEADER} WHERE address = ?",
                         [(p.address,) for p in pieces])
        _release(conn, old - {p.address for p in pieces})


def load(conn: sqlite3.Connection, origin_id: str, real_path: str
         ) -> tuple[int, int, str, tuple[ChunkRef, ...]] | None:
    """(id, size, version, pieces) of the file's header, or None."""
    row = conn.execute("SELECT id, size, version FROM headers WHERE origin_id = ? AND real_path = ?",
                       (origin_id, real_path)).fetchone()
    if row is None:
        return None
    pieces = tuple(ChunkRef(offset, size, address) for offset, size, address in conn.execute(
        "SELECT offset, size, address FROM header_pieces WHERE header_id = ? ORDER BY seq", (row[0],)))
    return row[0], row[1], row[2], pieces


def _where(origin_id: str | None, real_path: str | None) -> tuple[str, tuple]:
    if origin_id is None:
        return "1", ()
    if real_path is None:
        return "origin_id = ?", (origin_id,)
    return "origin_id = ? AND real_path = ?", (origin_id, real_path)


def held(conn: sqlite3.Connection, origin_id: str | None) -> tuple[int, int, int]:
    """(headers, pieces, bytes) of one origin's files, or of all (``origin_id`` None)."""
    where, args = _where(origin_id, None)
    count, size = conn.execute(f"SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM headers WHERE {where}",
                               args).fetchone()
    pieces = conn.execute(f"SELECT COUNT(*) FROM header_pieces WHERE header_id IN"
                          f" (SELECT id FROM headers WHERE {where})", args).fetchone()[0]
    return count, pieces, size


def region(conn: sqlite3.Connection, origin_id: str, real_path: str) -> tuple[str, AudioRegion | None] | None:
    """(version, audio region) of the header kept for a file, or None if there is none."""
    row = conn.execute("SELECT version, audio_start, audio_end, fingerprint FROM headers"
                       " WHERE origin_id = ? AND real_path = ?", (origin_id, real_path)).fetchone()
    if row is None:
        return None
    version, start, end, fingerprint = row
    known = isinstance(start, int) and isinstance(end, int) and 0 <= start < end
    return version, AudioRegion(start, end, fingerprint or "") if known else None


def drop(conn: sqlite3.Connection, origin_id: str | None, real_path: str | None = None) -> int:
    """Forget the header of one file, of every file of an origin (``real_path`` None), or of
    every file (both None)."""
    where, args = _where(origin_id, real_path)
    with transaction(conn):
        count = conn.execute(f"SELECT COUNT(*) FROM headers WHERE {where}", args).fetchone()[0]
        _release(conn, _remove(conn, where, args))
    return count


def touch(conn: sqlite3.Connection, stamps: dict[int, float]) -> None:
    with transaction(conn):
        conn.executemany("UPDATE headers SET last_access = ? WHERE id = ?",
                         [(stamp, header_id) for header_id, stamp in stamps.items()])


def evict(conn: sqlite3.Connection, limit: int) -> tuple[int, int]:
    """Remove headers, least recently read first, until they hold at most ``limit`` bytes:
    (headers removed, their bytes)."""
    total = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM headers").fetchone()[0]
    count = freed = 0
    while total > limit:
        rows = conn.execute("SELECT id, bytes FROM headers ORDER BY last_access LIMIT 256").fetchall()
        if not rows:
            break
        chosen = []
        for header_id, size in rows:
            chosen.append(header_id)
            total -= size
            freed += size
            if total <= limit:
                break
        with transaction(conn):
            released: set[str] = set()
            for start in range(0, len(chosen), IN_BATCH):
                batch = chosen[start:start + IN_BATCH]
                released |= _remove(conn, f"id IN ({','.join('?' * len(batch))})", batch)
            _release(conn, released)
        count += len(chosen)
    return count, freed


def statistics(conn: sqlite3.Connection) -> dict[str, int]:
    entries, held = conn.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM headers").fetchone()
    stored = conn.execute(
        f"SELECT COALESCE(SUM(size), 0) FROM chunks WHERE pinned & {PIN_HEADER}").fetchone()[0]
    return {"entries": entries, "bytes": held, "stored_bytes": stored}


def _remove(conn: sqlite3.Connection, where: str, args: Iterable) -> set[str]:
    """Delete the headers matching ``where`` and their pieces; the addresses they listed."""
    ids = [row[0] for row in conn.execute(f"SELECT id FROM headers WHERE {where}", tuple(args))]
    addresses: set[str] = set()
    for header_id in ids:
        addresses.update(row[0] for row in conn.execute(
            "SELECT address FROM header_pieces WHERE header_id = ?", (header_id,)))
        conn.execute("DELETE FROM header_pieces WHERE header_id = ?", (header_id,))
        conn.execute("DELETE FROM headers WHERE id = ?", (header_id,))
    return addresses


def _release(conn: sqlite3.Connection, addresses: Iterable[str]) -> None:
    """Give the pieces no header lists any more back to the cache's LRU."""
    conn.executemany(
        f"UPDATE chunks SET pinned = pinned & ~{PIN_HEADER} WHERE address = ?"
        " AND NOT EXISTS (SELECT 1 FROM header_pieces WHERE address = ?)",
        [(address, address) for address in addresses])
