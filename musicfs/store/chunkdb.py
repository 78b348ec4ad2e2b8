"""The chunk index: which chunks the cache holds, and the chunk map (manifest) of each file version.

A separate SQLite file inside the cache directory, so the cache can be
cleared or moved without touching the library index. If it is unreadable or
fails SQLite's own integrity check it is set aside and rebuilt from the chunk
files (manifests are lost; files are fetched again), instead of failing the mount.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..index.db import transaction
from .cas import LOOSE, PACKS, Place
from .chunker import MAX_SIZE

log = logging.getLogger(__name__)

PIN_USER = 1  # kept by a user's pin
PIN_HEADER = 2  # a piece of some file's header (the header tier evicts it, not the LRU)
PIN_ART = 4  # a piece of an album's artwork (kept while the index shows the image)

IN_BATCH = 500  # addresses per ``IN (...)`` query: well under SQLite's limit on parameters

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS chunks (
        address     TEXT PRIMARY KEY,           -- xxh3-128 of the bytes, 32 hex digits
        size        INTEGER NOT NULL,           -- bytes
        refs        INTEGER NOT NULL DEFAULT 0, -- manifests that list it (dedup: one file, many refs)
        last_access REAL NOT NULL,              -- unix time of the last read or write (LRU eviction)
        pinned      INTEGER NOT NULL DEFAULT 0, -- bits: PIN_USER, PIN_HEADER, PIN_ART; any set = not evicted
        pack        TEXT,                       -- the pack holding it; NULL: its own (loose) file
        pack_offset INTEGER NOT NULL DEFAULT 0  -- where its bytes start in the pack
    )""",
    "CREATE INDEX IF NOT EXISTS chunks_lru ON chunks(pinned, last_access)",
    """CREATE TABLE IF NOT EXISTS manifests (
        id           INTEGER PRIMARY KEY,  -- manifest id
        origin_id    TEXT NOT NULL,        -- origin of the file
        real_path    TEXT NOT NULL,        -- path inside the origin
        size         INTEGER NOT NULL,     -- file size in bytes
        version      TEXT NOT NULL,        -- size:mtime_ns, or an ETag: a new version replaces the map
        created_at   REAL NOT NULL,        -- unix time the map was saved
        complete     INTEGER NOT NULL DEFAULT 1,  -- 0: the chunks cover a prefix (a fill stopped or was cut off)
        obtained     TEXT NOT NULL DEFAULT 'fetched',  -- 'fetched': read from the origin by a fill;
                                                       -- 'delta': rebuilt by delta sync from the previous version
        reused_bytes INTEGER NOT NULL DEFAULT 0  -- bytes of the map taken from the previous version's chunks
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS manifests_file ON manifests(origin_id, real_path)",
    """CREATE TABLE IF NOT EXISTS manifest_chunks (
        manifest_id INTEGER NOT NULL,  -- manifests.id
        seq         INTEGER NOT NULL,  -- position of the chunk in the file, from 0
        offset      INTEGER NOT NULL,  -- byte offset of the chunk in the file
        size        INTEGER NOT NULL,  -- chunk size in bytes
        address     TEXT NOT NULL,     -- chunks.address
        PRIMARY KEY (manifest_id, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS manifest_chunks_address ON manifest_chunks(address)",
    # the header tier (musicfs.store.headers): the bytes a tag scan read of each file version
    """CREATE TABLE IF NOT EXISTS headers (
        id          INTEGER PRIMARY KEY,
        origin_id   TEXT NOT NULL,
        real_path   TEXT NOT NULL,
        size        INTEGER NOT NULL,  -- the file version's size
        version     TEXT NOT NULL,     -- as in manifests: a new version's header replaces the old one
        bytes       INTEGER NOT NULL,  -- bytes of the file the header holds
        last_access REAL NOT NULL,     -- the tier's own LRU
        audio_start INTEGER,           -- where the version's audio lies (musicfs.index.layout), NULL if
        audio_end   INTEGER,           -- not known: what delta sync compares the next version with
        fingerprint TEXT NOT NULL DEFAULT ''  -- the format's fingerprint of the audio (FLAC: samples, MD5)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS headers_file ON headers(origin_id, real_path)",
    "CREATE INDEX IF NOT EXISTS headers_lru ON headers(last_access)",
    """CREATE TABLE IF NOT EXISTS header_pieces (
        header_id INTEGER NOT NULL,  -- headers.id
        seq       INTEGER NOT NULL,  -- pieces in file order, from 0
        offset    INTEGER NOT NULL,  -- where the piece's bytes are in the file
        size      INTEGER NOT NULL,
        address   TEXT NOT NULL,     -- chunks.address: a piece is stored as a chunk
        PRIMARY KEY (header_id, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS header_pieces_address ON header_pieces(address)",
    # album artwork (musicfs.store.artwork): images by content, kept apart from the LRU
    """CREATE TABLE IF NOT EXISTS art_images (
        address   TEXT PRIMARY KEY,  -- xxh3-128 of the whole image (the index's images.address)
        size      INTEGER NOT NULL,  -- bytes
        stored_at REAL NOT NULL      -- unix time it was kept
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS art_pieces (
        image   TEXT NOT NULL,     -- art_images.address
        seq     INTEGER NOT NULL,  -- pieces in order, from 0
        size    INTEGER NOT NULL,
        address TEXT NOT NULL,     -- chunks.address: an image is stored as chunks of at most MAX_SIZE
        PRIMARY KEY (image, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS art_pieces_address ON art_pieces(address)",
    # a user's pins (musicfs.store.pins): files kept whole in the cache, by origin path, so that a
    # new version of a pinned file (a retag) is pinned too
    """CREATE TABLE IF NOT EXISTS pins (
        origin_id TEXT NOT NULL,
        real_path TEXT NOT NULL,
        size      INTEGER NOT NULL,  -- the pinned version's size: what the pin holds of the cache
        pinned_at REAL NOT NULL,     -- unix time of the pin
        PRIMARY KEY (origin_id, real_path)
    ) WITHOUT ROWID""",
    # PIN_USER on a chunk means: some pinned file's map lists it. The triggers keep that true
    # whoever writes the maps (fills, delta sync, a cache clear), so no path can forget a pin
    f"""CREATE TRIGGER IF NOT EXISTS pins_listed AFTER INSERT ON manifest_chunks
        WHEN EXISTS (SELECT 1 FROM manifests m JOIN pins p ON p.origin_id = m.origin_id
                     AND p.real_path = m.real_path WHERE m.id = NEW.manifest_id)
        BEGIN UPDATE chunks SET pinned = pinned | {PIN_USER} WHERE address = NEW.address; END""",
    f"""CREATE TRIGGER IF NOT EXISTS pins_unlisted AFTER DELETE ON manifest_chunks
        BEGIN UPDATE chunks SET pinned = pinned & ~{PIN_USER}
              WHERE address = OLD.address AND pinned & {PIN_USER} AND NOT EXISTS (
                  SELECT 1 FROM manifest_chunks c JOIN manifests m ON m.id = c.manifest_id
                  JOIN pins p ON p.origin_id = m.origin_id AND p.real_path = m.real_path
                  WHERE c.address = OLD.address); END""",
    f"""CREATE TRIGGER IF NOT EXISTS pins_added AFTER INSERT ON pins
        BEGIN UPDATE chunks SET pinned = pinned | {PIN_USER} WHERE address IN (
                  SELECT c.address FROM manifests m JOIN manifest_chunks c ON c.manifest_id = m.id
                  WHERE m.origin_id = NEW.origin_id AND m.real_path = NEW.real_path); END""",
    f"""CREATE TRIGGER IF NOT EXISTS pins_removed AFTER DELETE ON pins
        BEGIN UPDATE chunks SET pinned = pinned & ~{PIN_USER} WHERE address IN (
                  SELECT c.address FROM manifests m JOIN manifest_chunks c ON c.manifest_id = m.id
                  WHERE m.origin_id = OLD.origin_id AND m.real_path = OLD.real_path) AND NOT EXISTS (
                  SELECT 1 FROM manifest_chunks c JOIN manifests m ON m.id = c.manifest_id
                  JOIN pins p ON p.origin_id = m.origin_id AND p.real_path = m.real_path
                  WHERE c.address = chunks.address); END""",
]

# how a file version's map came to be: read from the origin by a fill, or rebuilt by delta sync
# (musicfs.store.delta) from the previous version's cached chunks
Obtained = Literal["fetched", "delta"]



@dataclass(frozen=True, slots=True)
class ChunkRef:
    offset: int
    size: int
    address: str

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Manifest:
    id: int
    origin_id: str
    real_path: str
    size: int
    version: str
    chunks: tuple[ChunkRef, ...]
    complete: bool = True  # False: the chunks cover the file's first bytes only
    obtained: Obtained = "fetched"  # how the content was obtained (see the manifests table)
    reused_bytes: int = 0  # bytes taken from the previous version's cached chunks (delta sync)

    @property
    def covered(self) -> int:
        return self.chunks[-1].end if self.chunks else 0

    def problem(self) -> str | None:
        """Why this map cannot describe its file (a damaged or hostile index), or None.

        The chunks must tile the file from byte 0 without gaps or overlaps,
        each no larger than the chunker ever cuts, and end at the file's size
        when complete. Anything else would make a read assemble the wrong
        bytes, or ask for an absurd amount of memory.
        """
        if self.size < 0:
            return f"negative size {self.size}"
        position = 0
        for ref in self.chunks:
            if ref.offset != position:
                return f"chunk at {ref.offset} where {position} was expected"
            if not 0 < ref.size <= MAX_SIZE:
                return f"chunk of impossible size {ref.size} at {ref.offset}"
            position = ref.end
        if position > self.size or (self.complete and position != self.size):
            return f"chunks cover {position} bytes of {self.size}"
        return None


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    row = conn.execute("PRAGMA quick_check").fetchone()
    if row[0] != "ok":
        conn.close()
        raise sqlite3.DatabaseError(f"integrity check: {row[0]}")
    for statement in _SCHEMA:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(manifests)")}
    if "complete" not in columns:  # a cache made before partial maps were kept
        conn.execute("ALTER TABLE manifests ADD COLUMN complete INTEGER NOT NULL DEFAULT 1")
    if "obtained" not in columns:  # a cache made before delta sync: every map was fetched
        conn.execute("ALTER TABLE manifests ADD COLUMN obtained TEXT NOT NULL DEFAULT 'fetched'")
        conn.execute("ALTER TABLE manifests ADD COLUMN reused_bytes INTEGER NOT NULL DEFAULT 0")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
    if "pack" not in columns:  # a cache made before packs: every chunk has its own file
        conn.execute("ALTER TABLE chunks ADD COLUMN pack TEXT")
        conn.execute("ALTER TABLE chunks ADD COLUMN pack_offset INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX IF NOT EXISTS chunks_pack ON chunks(pack) WHERE pack IS NOT NULL")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(headers)")}
    if "audio_start" not in columns:  # headers kept before delta sync: their regions are unknown
        for column in ("audio_start INTEGER", "audio_end INTEGER", "fingerprint TEXT NOT NULL DEFAULT ''"):
            conn.execute(f"ALTER TABLE headers ADD COLUMN {column}")
    return conn


def _open_lookups(path: Path) -> sqlite3.Connection:
    """A second connection to the chunk index, for lookups only: in WAL mode it reads the last
    commit while the writing connection commits the next."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=1")
    return conn


def _open_readonly(path: Path) -> sqlite3.Connection:
    """The index of a cache that cannot be written, read as it is; an empty one if unusable."""
    try:
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, check_same_thread=False,
                               isolation_level=None)
        if conn.execute("PRAGMA quick_check").fetchone()[0] == "ok" and conn.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('chunks', 'manifests', 'manifest_chunks')"
        ).fetchone()[0] == 3:
            return conn
        conn.close()
    except sqlite3.DatabaseError as exc:
        log.warning("chunk index %s cannot be read (%s): the cache starts empty", path, exc)
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    for statement in _SCHEMA:
        conn.execute(statement)
    return conn


def _drop_impossible_rows(conn: sqlite3.Connection, path: Path) -> None:
    """Chunk rows whose size no chunk can have (a damaged or hostile index) are dropped at open.

    Their size would count towards the cache's total and drive eviction, or
    be used as a read length (a place, as a path or offset); the chunk, if
    whole on disk, is adopted again by reconciliation.
    """
    dropped = conn.execute("DELETE FROM chunks WHERE size <= 0 OR size > ? OR typeof(size) != 'integer'"
                           " OR length(address) != 32 OR (pack IS NOT NULL AND (length(pack) != 16"
                           " OR typeof(pack_offset) != 'integer' OR pack_offset < 0))", (MAX_SIZE,)).rowcount
    if dropped:
        log.error("chunk index %s: dropped %d row(s) with impossible sizes or addresses", path, dropped)


class ChunkIndex:
    _place = "pack, pack_offset"  # the columns of a chunk's place, as selected
    _obtained = ("obtained", "reused_bytes")  # the columns of how a map's content was obtained, as selected

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rebuilt = False
        # a cache on a filesystem turned read-only (disk errors) is still read: every write fails,
        # and the cache says so once (ContentCache) instead of failing the mount
        self.readonly = not os.access(self.path.parent, os.W_OK)
        self._has_pins = True  # False: a read-only cache made before pins
        self._lookup_lock = threading.Lock()  # one lookup at a time on the lookup connection
        if self.readonly:
            self.conn = self._lookups = _open_readonly(self.path)
            self._has_pins = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pins'").fetchone() is not None
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(chunks)")}
            if "pack" not in columns:  # an older cache, read as it is: every chunk in its own file
                self._place = "NULL, 0"
            if "obtained" not in {row[1] for row in self.conn.execute("PRAGMA table_info(manifests)")}:
                self._obtained = ("'fetched'", "0")  # made before delta sync: every map was fetched
            return
        try:
            self.conn = _open(self.path)
        except sqlite3.DatabaseError as exc:
            self._set_aside(exc)
            self.conn = _open(self.path)
            self.rebuilt = True
        try:
            _drop_impossible_rows(self.conn, self.path)
        except sqlite3.OperationalError as exc:  # a read-only cache (said once by the cache): sizes
            log.debug("chunk index %s: cannot drop damaged rows: %s", self.path, exc)  # are checked on use
        self._lookups = _open_lookups(self.path)

    def _set_aside(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log.error("chunk index %s is damaged (%s); moved aside and rebuilt from the chunk files",
                  self.path, exc)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.rename(f"{self.path}.damaged-{stamp}{suffix}")

    def close(self) -> None:
        if self._lookups is not self.conn:
            self._lookups.close()
        self.conn.close()

    # -- chunks -----------------------------------------------------------
    def add_chunks(self, chunks: list[tuple[str, int, Place]], pin: int = 0) -> None:
        """Rows for chunks just stored (address, size, place), in one transaction, with the pin
        bits ``pin`` set (see :meth:`add_stores`)."""
        self.add_stores([(chunks, pin)])

    def add_stores(self, stores: Sequence[tuple[Sequence[tuple[str, int, Place]], int]]) -> None:
        """The rows of several stores, each (chunks, pin bits), in one transaction.

        A chunk already known takes the place given (the same bytes, written
        again because the copy it had was found damaged, or by two stores at
        once: either copy is right); its last access is brought forward, and
        the pins it had stay.
        """
        rows = json.dumps([(address, size, place.pack, place.offset, pin)
                           for chunks, pin in stores for address, size, place in chunks])
        # one statement step for every row (see places: a step per row gave up and took back the
        # GIL each time, and eight cold readers' commits spent most of their time doing that);
        # "WHERE true" lets SQLite parse the upsert of an INSERT ... SELECT
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO chunks (address, size, last_access, pack, pack_offset, pinned)"
                " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?,"
                " json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]')"
                " FROM json_each(?) WHERE true"
                " ON CONFLICT(address) DO UPDATE SET last_access = excluded.last_access, size = excluded.size,"
                " pack = excluded.pack, pack_offset = excluded.pack_offset,"
                " pinned = pinned | excluded.pinned", (time.time(), rows))

    def places(self, addresses: Iterable[str]) -> dict[str, tuple[int, Place]]:
        """address -> (size, place) of those of ``addresses`` the cache holds, as last committed.

        Asked on a connection of its own (:attr:`_lookups`), so that the lookups of reads and of
        stores checking what is there already never queue behind another store's commit.
        """
        wanted = list(dict.fromkeys(addresses))
        found: dict[str, tuple[int, Place]] = {}
        if not wanted:
            return found
        # one statement step for the lot, its rows folded into one JSON text: Python's sqlite3
        # gives up the GIL around every step, and a worker taking it back while the event loop
        # is busy waits for it each time (a row per step made a 34-chunk lookup 4 ms of waiting)
        with self._lookup_lock:
            (rows,) = self._lookups.execute(
                f"SELECT json_group_array(json_array(address, size, {self._place})) FROM chunks"
                " WHERE address IN (SELECT value FROM json_each(?))", (json.dumps(wanted),)).fetchone()
        for address, size, pack, offset in json.loads(rows):
            found[address] = (size, LOOSE if pack is None else Place(pack, offset))
        return found

    def empty_packs(self, names: Iterable[str]) -> list[str]:
        """Those of the packs ``names`` that no chunk row places anything in any more."""
        return [name for name in dict.fromkeys(names) if self.conn.execute(
            "SELECT 1 FROM chunks WHERE pack = ? LIMIT 1", (name,)).fetchone() is None]

    def packs(self) -> set[str]:
        """Every pack some chunk row places a chunk in."""
        return {row[0] for row in self.conn.execute("SELECT DISTINCT pack FROM chunks WHERE pack IS NOT NULL")}

    def forget_chunk(self, address: str, place: Place | None = None) -> None:
        """Drop a chunk's row; with ``place``, only if the row still places it there (a place
        remembered by a reader may be stale: the chunk stored again elsewhere keeps its row)."""
        if place is None:
            self.conn.execute("DELETE FROM chunks WHERE address = ?", (address,))
        elif place.pack is None:
            self.conn.execute("DELETE FROM chunks WHERE address = ? AND pack IS NULL", (address,))
        else:
            self.conn.execute("DELETE FROM chunks WHERE address = ? AND pack = ? AND pack_offset = ?",
                              (address, place.pack, place.offset))

    def unreferenced(self, addresses: Iterable[str]) -> list[str]:
        """Those of ``addresses`` that no saved chunk map lists (safe to purge)."""
        return [a for a in addresses if self.conn.execute(
            "SELECT 1 FROM manifest_chunks WHERE address = ? LIMIT 1", (a,)).fetchone() is None]

    def touch(self, stamps: dict[str, float]) -> None:
        """Record last-access times gathered in memory (one write per flush, not per read)."""
        if stamps:
            with transaction(self.conn):
                self.conn.executemany("UPDATE chunks SET last_access = ? WHERE address = ?",
                                      [(t, a) for a, t in stamps.items()])

    def total_bytes(self) -> int:
        return self.conn.execute("SELECT COALESCE(SUM(size), 0) FROM chunks").fetchone()[0]

    def eviction_candidates(self, limit: int = 256) -> list[tuple[str, int, Place]]:
        """Least recently used unpinned chunks, oldest first: (address, size, place)."""
        return [(address, size, LOOSE if pack is None else Place(pack, offset))
                for address, size, pack, offset in self.conn.execute(
                    f"SELECT address, size, {self._place} FROM chunks WHERE pinned = 0"
                    " ORDER BY last_access LIMIT ?", (limit,))]

    def addresses(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT address FROM chunks")}

    def every_chunk(self) -> list[tuple[str, int, Place]]:
        """(address, size, place) of every chunk row."""
        return [(address, size, LOOSE if pack is None else Place(pack, offset))
                for address, size, pack, offset in self.conn.execute(
                    f"SELECT address, size, {self._place} FROM chunks")]

    # -- manifests --------------------------------------------------------
    def manifest(self, origin_id: str, real_path: str) -> Manifest | None:
        """The file's chunk map, complete or a prefix; None if there is none or it is damaged.

        A map that cannot describe its file (see :meth:`Manifest.problem`) is
        dropped with a log line: the file is then fetched again, as if it had
        never been cached.
        """
        row = self.conn.execute(
            f"SELECT id, size, version, complete, {', '.join(self._obtained)} FROM manifests"
            " WHERE origin_id = ? AND real_path = ?", (origin_id, real_path),
        ).fetchone()
        if row is None:
            return None
        chunks = tuple(ChunkRef(*r) for r in self.conn.execute(
            "SELECT offset, size, address FROM manifest_chunks WHERE manifest_id = ? ORDER BY seq",
            (row[0],)))
        manifest = Manifest(row[0], origin_id, real_path, row[1], row[2], chunks, bool(row[3]), row[4], row[5])
        problem = manifest.problem()
        if problem is not None:
            log.error("chunk map of %s:%s is damaged (%s); dropped, the file will be fetched again",
                      origin_id, real_path, problem)
            try:
                self.drop_manifest(origin_id, real_path)
            except sqlite3.OperationalError as exc:  # read-only: ignored all the same
                log.warning("cannot drop the damaged chunk map: %s", exc)
            return None
        return manifest

    def save_manifest(self, origin_id: str, real_path: str, size: int, version: str,
                      chunks: Sequence[ChunkRef], *, complete: bool = True, obtained: Obtained = "fetched",
                      reused_bytes: int = 0) -> Manifest:
        """Save the file's chunk map; ``complete=False`` saves the prefix a fill has stored so far.

        A prefix saved before for the same version is extended in place (a
        fill saves its progress many times; rewriting the whole map each time
        would cost quadratic time on long files), and keeps how it was
        obtained; any other map of the file is replaced. ``obtained`` and
        ``reused_bytes`` record where a new map's content came from, so that
        a user can tell a file rebuilt by delta sync from one read in full.
        Chunk refs follow.
        """
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT id, version, complete, obtained, reused_bytes FROM manifests"
                " WHERE origin_id = ? AND real_path = ?", (origin_id, real_path)).fetchone()
            start = 0
            if row is not None and row[1] == version and row[2] and not complete:
                # progress saved late: the map is already complete, and stays so
                return Manifest(row[0], origin_id, real_path, size, version, tuple(chunks), True, row[3], row[4])
            if row is not None and row[1] == version and not row[2]:
                manifest_id = row[0]
                start = self.conn.execute("SELECT COUNT(*) FROM manifest_chunks WHERE manifest_id = ?",
                                          (manifest_id,)).fetchone()[0]
                known = self.conn.execute(
                    "SELECT address FROM manifest_chunks WHERE manifest_id = ? AND seq = ?",
                    (manifest_id, start - 1)).fetchone()
                if start > len(chunks) or (start and (known is None or known[0] != chunks[start - 1].address)):
                    self._drop_manifest(origin_id, real_path)  # not a prefix of this map: start over
                    row, start = None, 0
                else:
                    self.conn.execute("UPDATE manifests SET complete = ?, created_at = ? WHERE id = ?",
                                      (int(complete), time.time(), manifest_id))
                    obtained, reused_bytes = row[3], row[4]
            elif row is not None:
                self._drop_manifest(origin_id, real_path)
                row = None
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO manifests (origin_id, real_path, size, version, created_at, complete, obtained,"
                    " reused_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (origin_id, real_path, size, version, time.time(), int(complete), obtained, reused_bytes))
                manifest_id = int(cur.lastrowid)
            added = chunks[start:]
            self.conn.executemany(
                "INSERT INTO manifest_chunks (manifest_id, seq, offset, size, address) VALUES (?, ?, ?, ?, ?)",
                [(manifest_id, start + i, c.offset, c.size, c.address) for i, c in enumerate(added)])
            self.conn.executemany("UPDATE chunks SET refs = refs + 1 WHERE address = ?",
                                  [(c.address,) for c in added])
        return Manifest(manifest_id, origin_id, real_path, size, version, tuple(chunks), complete, obtained,
                        reused_bytes)

    def drop_manifest(self, origin_id: str, real_path: str) -> None:
        with transaction(self.conn):
            self._drop_manifest(origin_id, real_path)

    def _drop_manifest(self, origin_id: str, real_path: str) -> None:
        row = self.conn.execute("SELECT id FROM manifests WHERE origin_id = ? AND real_path = ?",
                                (origin_id, real_path)).fetchone()
        if row is None:
            return
        self.conn.execute(
            "UPDATE chunks SET refs = MAX(refs - 1, 0) WHERE address IN"
            " (SELECT address FROM manifest_chunks WHERE manifest_id = ?)", (row[0],))
        self.conn.execute("DELETE FROM manifest_chunks WHERE manifest_id = ?", (row[0],))
        self.conn.execute("DELETE FROM manifests WHERE id = ?", (row[0],))

    def clearable(self, origin_id: str | None, spare: set[str]) -> tuple[list[int], list[tuple[str, int]]]:
        """What clearing ``origin_id``'s cache (every origin's if None) would remove, sparing ``spare``.

        Returns (manifest ids, [(chunk address, size)]): the origin's chunk maps
        that list no spared chunk, and the chunks only those maps list (a chunk
        another origin's file shares stays). With no origin, chunks no map lists
        (strays of stopped fills) go too. Pieces of kept headers stay.
        """
        q = self.conn.execute
        where, args = ("", ()) if origin_id is None else (" WHERE m.origin_id = ?", (origin_id,))
        listed: dict[int, set[str]] = {}
        for manifest_id, address in q("SELECT m.id, c.address FROM manifests m LEFT JOIN manifest_chunks c"
                                      " ON c.manifest_id = m.id" + where, args):
            listed.setdefault(manifest_id, set()).update([address] if address else [])
        pinned = {row[0] for row in q("SELECT m.id FROM manifests m JOIN pins p ON p.origin_id = m.origin_id"
                                      " AND p.real_path = m.real_path")}
        # open files stay whole, pinned ones too (unpinning is how they go)
        chosen = [m for m, addresses in listed.items() if not addresses & spare and m not in pinned]
        addresses = set().union(*(listed[m] for m in chosen)) if chosen else set()
        kept = set(listed) - set(chosen)
        others = {row[0] for row in q("SELECT DISTINCT address FROM manifest_chunks c JOIN manifests m"
                                      " ON c.manifest_id = m.id" + ("" if origin_id is None else
                                                                    " WHERE m.origin_id != ?"), args)}
        if origin_id is None:
            marks = ",".join("?" * len(kept))  # the maps of open files: a few
            others = {row[0] for row in q(f"SELECT address FROM manifest_chunks WHERE manifest_id IN ({marks})",
                                          tuple(kept))} if kept else set()
            addresses |= {row[0] for row in q(
                "SELECT address FROM chunks WHERE address NOT IN (SELECT address FROM manifest_chunks)")}
        else:
            others |= set().union(*(listed[m] for m in kept)) if kept else set()
        if addresses:  # a header's pieces are the header tier's to clear (musicfs.store.headers), and
            # artwork stays while the index shows it (musicfs.store.artwork)
            others |= {row[0] for row in q(f"SELECT address FROM chunks WHERE pinned & {PIN_HEADER | PIN_ART}")}
        sizes = dict(q("SELECT address, size FROM chunks").fetchall()) if addresses else {}
        chunks = [(a, sizes[a]) for a in sorted(addresses - others - spare) if a in sizes]
        return chosen, chunks

    def forget(self, manifest_ids: list[int], addresses: list[str]) -> None:
        """Drop chunk maps and chunk rows (what :meth:`clearable` chose), in one transaction."""
        with transaction(self.conn):
            for manifest_id in manifest_ids:
                self.conn.execute(
                    "UPDATE chunks SET refs = MAX(refs - 1, 0) WHERE address IN"
                    " (SELECT address FROM manifest_chunks WHERE manifest_id = ?)", (manifest_id,))
                self.conn.execute("DELETE FROM manifest_chunks WHERE manifest_id = ?", (manifest_id,))
                self.conn.execute("DELETE FROM manifests WHERE id = ?", (manifest_id,))
            self.conn.executemany("DELETE FROM chunks WHERE address = ?", [(a,) for a in addresses])

    def clear(self) -> None:
        """Drop every chunk and map; the pins stay (a user's wish: the daemon fetches them again)."""
        with transaction(self.conn):
            for table in ("art_pieces", "art_images", "header_pieces", "headers", "manifest_chunks", "manifests",
                          "chunks"):
                self.conn.execute(f"DELETE FROM {table}")

    # -- start-up ---------------------------------------------------------
    def reconcile(self, on_disk: dict[str, int], older_than: float | None = None,
                  unlisted: Sequence[str] = (), packs: set[str] | None = None,
                  packed: Sequence[tuple[str, int, Place]] = ()) -> dict[str, int]:
        """Make the index agree with the chunks found on disk.

        ``on_disk``: the loose chunk files (address -> size); ``packs``: the pack
        files (None: not looked at, their rows stay); ``packed``: chunks listed by
        the tables of packs no row places anything in. Rows whose file or pack is
        gone are dropped; chunks without a row are adopted (their address is their
        checksum, so a bad one is caught on first read). Rows touched after
        ``older_than`` (the moment the disk scan began) belong to chunks written
        meanwhile and are left alone, and so are rows of chunks in ``unlisted``
        folders (the scan could not see what they hold; ``packs`` for the packs).
        """
        cutoff = time.time() if older_than is None else older_than
        packs_seen = packs is not None and PACKS not in unlisted
        gone = []
        for address, pack in self.conn.execute(
                f"SELECT address, {self._place.split(',')[0]} FROM chunks WHERE last_access < ?", (cutoff,)):
            if pack is None:
                if address not in on_disk and address[:2] not in unlisted:
                    gone.append(address)
            elif packs_seen and pack not in packs:
                gone.append(address)
        every = {row[0] for row in self.conn.execute("SELECT address FROM chunks")}
        adopted = [(a, s, LOOSE) for a, s in on_disk.items() if a not in every]
        for address, size, place in packed:
            if address not in every:
                every.add(address)
                adopted.append((address, size, place))
        now = time.time()
        with transaction(self.conn):
            self.conn.executemany("DELETE FROM chunks WHERE address = ?", [(a,) for a in gone])
            self.conn.executemany(
                "INSERT INTO chunks (address, size, last_access, pack, pack_offset) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(address) DO NOTHING",
                [(a, s, now, place.pack, place.offset) for a, s, place in adopted])
            self.conn.execute(
                "UPDATE chunks SET refs = (SELECT COUNT(*) FROM manifest_chunks m"
                " WHERE m.address = chunks.address)")
        return {"rows_dropped": len(gone), "files_adopted": len(adopted)}

    def statistics(self) -> dict:
        q = self.conn.execute
        chunks, stored = q("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM chunks").fetchone()
        logical = q("SELECT COALESCE(SUM(size), 0) FROM manifest_chunks").fetchone()[0]
        referenced = q("SELECT COALESCE(SUM(c.size), 0) FROM chunks c WHERE c.refs > 0").fetchone()[0]
        obtained, reused = self._obtained
        # one pass over the maps (this runs for every read of status.json)
        manifests, partial, delta, reused_bytes = q(
            f"SELECT COUNT(*), COALESCE(SUM(complete = 0), 0), COALESCE(SUM({obtained} = 'delta'), 0),"
            f" COALESCE(SUM({reused}), 0) FROM manifests").fetchone()
        return {
            "chunks": chunks,
            "bytes": stored,
            "manifests": manifests,
            "partial_manifests": partial,
            "manifests_fetched": manifests - delta,  # read from the origin by a fill
            "manifests_delta": delta,  # rebuilt by delta sync from the previous version's chunks
            "reused_bytes": reused_bytes,  # bytes of those maps taken from the previous versions' chunks
            "logical_bytes": logical,  # bytes of all mapped files, counting shared chunks each time
            "dedup_ratio": round(1 - referenced / logical, 4) if logical else 0.0,
            "pinned": q(f"SELECT COUNT(*) FROM chunks WHERE pinned & {PIN_USER}").fetchone()[0],
            "pinned_bytes": q(f"SELECT COALESCE(SUM(size), 0) FROM chunks WHERE pinned & {PIN_USER}").fetchone()[0],
            "pins": q("SELECT COUNT(*) FROM pins").fetchone()[0] if self._has_pins else 0,
            # the pinned files' sizes: what pins hold of their room (musicfs.store.pindb)
            "pins_size": q("SELECT COALESCE(SUM(size), 0) FROM pins").fetchone()[0] if self._has_pins else 0,
            "packs": q("SELECT COUNT(DISTINCT pack) FROM chunks WHERE pack IS NOT NULL").fetchone()[0],
        }

    # -- whole files (the offline view, musicfs.vfs.offline) --------------
    def whole_files(self, after: int = 0, limit: int = 256) -> tuple[list[tuple[str, str, int, str]], int | None]:
        """The file versions the cache holds every byte of, a page at a time.

        Looks at the complete maps with an id above ``after`` (at most ``limit``, in id order) and
        returns ``(origin_id, real_path, size, version)`` of those whose every chunk has its row,
        of the size the map gives it (a row of another size is not that chunk, as for a read),
        and the id to pass as ``after`` for the next page (None: that was the last). Paged so
        that a caller taking the cache's lock for each page lets reads in between: a whole 10 GB
        cache (160K chunk rows) takes ~80 ms in one query.
        """
        rows = self.conn.execute(
            "SELECT m.id, m.origin_id, m.real_path, m.size, m.version, NOT EXISTS ("
            " SELECT 1 FROM manifest_chunks mc WHERE mc.manifest_id = m.id AND NOT EXISTS ("
            " SELECT 1 FROM chunks c WHERE c.address = mc.address AND c.size = mc.size))"
            " FROM manifests m WHERE m.id > ? AND m.complete = 1 ORDER BY m.id LIMIT ?", (after, limit)).fetchall()
        whole = [(origin_id, real_path, size, version) for _, origin_id, real_path, size, version, held in rows
                 if held]
        return whole, (rows[-1][0] if len(rows) == limit else None)
