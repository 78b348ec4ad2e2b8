"""A user's pins in the chunk index (table ``pins``; schema and triggers in :mod:`.chunkdb`).

Functions over the chunk index's connection, called with the cache's lock held
(:class:`~musicfs.store.cache.ContentCache`'s pin methods). A pin names a file at
its origin (origin id, path), not a version: a new version of a pinned file (a
retag) is pinned as its map is saved. ``PIN_USER`` on a chunk means some pinned
file's map lists it; the chunk index's triggers keep that true whoever writes the
maps, and :func:`repin` puts it right after a reconcile adopted or dropped rows.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import NoRoom
from ..index.db import transaction
from .chunkdb import PIN_USER


@dataclass(frozen=True)
class PinState:
    """A pinned file, and what the cache holds of its map (the version cached, not necessarily the
    index's: the pins' keeper compares them)."""

    origin_id: str
    real_path: str
    size: int  # the pinned version's size: what the pin holds of the room
    pinned_at: float
    version: str | None  # the cached map's version; None: nothing cached yet
    held: int  # bytes of that map the cache holds
    complete: bool  # every byte of that version is in the cache


def _exists(conn: sqlite3.Connection) -> bool:
    """False for a read-only cache made before pins (read as it is)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pins'").fetchone() is not None


def size(conn: sqlite3.Connection) -> int:
    """Bytes the pins hold of their room: the sizes of the pinned files (shared chunks counted for
    each file: a pin's room does not depend on what another pin happens to share)."""
    if not _exists(conn):
        return 0
    return conn.execute("SELECT COALESCE(SUM(size), 0) FROM pins").fetchone()[0]


def add(conn: sqlite3.Connection, files: Sequence[tuple[str, str, int]], room: int) -> tuple[int, int]:
    """Pin files: (origin id, path, size of the version pinned), all or none. The chunks their maps
    list get PIN_USER at once, those of maps saved later as they are (the triggers).

    Refused with :class:`~musicfs.errors.NoRoom` when the pins would then hold more than ``room``
    bytes: checked in the transaction that adds them, so two requests cannot both take the last
    room. Returns (files newly pinned, the bytes they add).
    """
    now = time.time()
    with transaction(conn):
        new = [f for f in dict.fromkeys(files) if conn.execute(
            "SELECT 1 FROM pins WHERE origin_id = ? AND real_path = ?", f[:2]).fetchone() is None]
        held = size(conn)
        adds = sum(file_size for _, _, file_size in new)
        if held + adds > room:
            raise NoRoom(len(new), adds, held, room)
        conn.executemany("INSERT INTO pins (origin_id, real_path, size, pinned_at) VALUES (?, ?, ?, ?)",
                         [(o, p, file_size, now) for o, p, file_size in new])
    return len(new), adds


def remove(conn: sqlite3.Connection, files: Iterable[tuple[str, str]]) -> int:
    """Unpin files; their chunks are evicted like any other from then on (unless another pinned
    file lists them). Returns how many were pinned."""
    with transaction(conn):
        return conn.executemany("DELETE FROM pins WHERE origin_id = ? AND real_path = ?", list(files)).rowcount


def resize(conn: sqlite3.Connection, origin_id: str, real_path: str, file_size: int) -> None:
    """A pinned file's new version (a retag) is this big: what the pin holds from now on."""
    with transaction(conn):
        conn.execute("UPDATE pins SET size = ? WHERE origin_id = ? AND real_path = ?",
                     (file_size, origin_id, real_path))


def states(conn: sqlite3.Connection) -> list[PinState]:
    """Every pin, in origin and path order, with what the cache holds of its file."""
    if not _exists(conn):
        return []
    rows = conn.execute(
        "SELECT p.origin_id, p.real_path, p.size, p.pinned_at, m.version, m.size, COALESCE(m.complete, 0),"
        " (SELECT COALESCE(SUM(c.size), 0) FROM manifest_chunks c JOIN chunks k ON k.address = c.address"
        "  WHERE c.manifest_id = m.id),"
        " (SELECT COUNT(*) FROM manifest_chunks c LEFT JOIN chunks k ON k.address = c.address"
        "  WHERE c.manifest_id = m.id AND k.address IS NULL)"
        " FROM pins p LEFT JOIN manifests m ON m.origin_id = p.origin_id AND m.real_path = p.real_path"
        " ORDER BY p.origin_id, p.real_path").fetchall()
    return [PinState(origin_id, real_path, pin_size, pinned_at, version, held,
                     bool(complete) and not missing and map_size == held)
            for origin_id, real_path, pin_size, pinned_at, version, map_size, complete, held, missing in rows]


def repin(conn: sqlite3.Connection) -> None:
    """Set PIN_USER on exactly the chunks pinned files' maps list (after rows were adopted or
    dropped by a reconcile, which the triggers do not see)."""
    with transaction(conn):
        conn.execute(f"UPDATE chunks SET pinned = pinned & ~{PIN_USER} WHERE pinned & {PIN_USER}")
        conn.execute(
            f"UPDATE chunks SET pinned = pinned | {PIN_USER} WHERE address IN ("
            " SELECT c.address FROM pins p JOIN manifests m ON m.origin_id = p.origin_id"
            " AND m.real_path = p.real_path JOIN manifest_chunks c ON c.manifest_id = m.id)")
