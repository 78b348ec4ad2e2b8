"""The index schema, as numbered migrations.

Each table is created by plain SQL with a comment on every column, so that
``sqlite3 index.db .schema`` documents itself. Migrations run in order inside
one transaction each and are recorded in ``_migrations``; an index written by
a newer musicfs (a version we do not know) is refused instead of guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import fts  # the search table's definition and upkeep live together

if TYPE_CHECKING:  # only migrations need it, at run time they get it from db.migrate
    import sqlite_utils

ROOT_ID = 1  # node id of the mount's root directory: FUSE's ROOT_INODE

_V1_TABLES = [
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,  -- setting name, e.g. 'template'
        value TEXT               -- its value, as text
    )""",
    """
    CREATE TABLE origins (
        id       TEXT PRIMARY KEY,  -- the origin id from the config ('local', 'b2', ...)
        kind     TEXT NOT NULL,     -- origin type: 'local', 's3', 'sftp'
        location TEXT NOT NULL,     -- where it is: a folder, a bucket URL, host:path (no secrets)
        added_at REAL NOT NULL      -- unix time the origin first appeared in this index
    )""",
    """
    CREATE TABLE tracks (
        id           INTEGER PRIMARY KEY,  -- track id; file nodes point here
        origin_id    TEXT NOT NULL,        -- origin that holds the file (origins.id)
        real_path    TEXT NOT NULL,        -- path inside the origin, '/'-separated, no leading '/'
        size         INTEGER NOT NULL,     -- file size in bytes at scan time
        mtime_ns     INTEGER NOT NULL,     -- modification time in ns at scan time (change detection)
        title        TEXT,                 -- FR-6 title tag
        artist       TEXT,                 -- FR-6 track artist
        album        TEXT,                 -- FR-6 album name
        album_artist TEXT,                 -- FR-6 album artist (compilations: 'Various Artists')
        genre        TEXT,                 -- FR-6 genre
        year         INTEGER,              -- FR-6 release year (first 4 digits of the date tag)
        track        INTEGER,              -- FR-6 track number within its disc
        disc         INTEGER,              -- FR-6 disc number
        duration_ms  INTEGER,              -- FR-6 duration in milliseconds, from the stream info
        bitrate      INTEGER,              -- FR-6 bitrate in bits per second (0 when unknown)
        sample_rate  INTEGER,              -- FR-6 sample rate in Hz
        format       TEXT NOT NULL,        -- FR-6 format: flac, mp3, ogg, opus, wav, m4a, aiff
        scan_id      INTEGER NOT NULL,     -- last scan that saw the file (scans.id)
        indexed_at   REAL NOT NULL         -- unix time the tags were last read
    )""",
    "CREATE UNIQUE INDEX tracks_origin_path ON tracks(origin_id, real_path)",
    """
    CREATE TABLE skipped (
        id        INTEGER PRIMARY KEY,  -- row id
        origin_id TEXT NOT NULL,        -- origin that holds the file
        real_path TEXT NOT NULL,        -- path inside the origin
        size      INTEGER NOT NULL,     -- size when it was tried (a change makes the scanner retry)
        mtime_ns  INTEGER NOT NULL,     -- mtime when it was tried
        reason    TEXT NOT NULL,        -- short reason: 'empty file', 'unrecognised format', ...
        detail    TEXT NOT NULL,        -- the parser's own message, for the log and errors.json
        scan_id   INTEGER NOT NULL,     -- last scan that saw the file
        seen_at   REAL NOT NULL         -- unix time of that attempt
    )""",
    "CREATE UNIQUE INDEX skipped_origin_path ON skipped(origin_id, real_path)",
    """
    CREATE TABLE nodes (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- inode number; never reused
        parent   INTEGER NOT NULL,                   -- parent node id (0 for the root)
        name     TEXT NOT NULL,                      -- legal component shown in the mount
        kind     TEXT NOT NULL CHECK (kind IN ('dir', 'file')),  -- directory or track file
        track_id INTEGER,                            -- tracks.id for files, NULL for directories
        wanted   TEXT NOT NULL                       -- name before collision numbering (' (2)')
    )""",
    "CREATE UNIQUE INDEX nodes_parent_name ON nodes(parent, name)",
    "CREATE INDEX nodes_parent ON nodes(parent)",
    "CREATE UNIQUE INDEX nodes_track ON nodes(track_id) WHERE track_id IS NOT NULL",
    """
    CREATE TABLE scans (
        id          INTEGER PRIMARY KEY,  -- scan number
        origin_id   TEXT NOT NULL,        -- origin walked
        started_at  REAL NOT NULL,        -- unix time the walk began
        finished_at REAL,                 -- unix time it completed; NULL if interrupted
        stats       TEXT                  -- JSON counts: indexed, unchanged, skipped, removed
    )""",
]


def _v1_initial(db: sqlite_utils.Database) -> None:
    for statement in _V1_TABLES:
        db.execute(statement)
    db.execute(
        "INSERT INTO nodes (id, parent, name, kind, track_id, wanted) VALUES (?, 0, '', 'dir', NULL, '')",
        [ROOT_ID],
    )


def _v2_replicas(db: sqlite_utils.Database) -> None:
    db.execute("CREATE INDEX tracks_path_size ON tracks(real_path, size)")  # replicas across origins


def _v3_versions(db: sqlite_utils.Database) -> None:
    # the origin's version of the file (an S3 ETag: the MD5 of a one-part upload, which reads are
    # checked against); '' when size and mtime are the version (local folders, SFTP)
    db.execute("ALTER TABLE tracks ADD COLUMN version TEXT NOT NULL DEFAULT ''")


def _v4_search(db: sqlite_utils.Database) -> None:
    fts.create(db.conn)
    fts.fill_from_tree(db.conn)  # an existing library becomes searchable without a rescan
    db.execute("CREATE INDEX tracks_year ON tracks(year)")  # year:1990..1999 counted from the index
    db.execute("""
    CREATE TABLE collections (
        id         INTEGER PRIMARY KEY,  -- collection id: its /.collections inode is derived from it
        name       TEXT NOT NULL UNIQUE, -- the folder name under /.collections (a legal file name)
        query      TEXT NOT NULL,        -- the saved search, in musicfs' query language
        source     TEXT NOT NULL,        -- 'user' (musicfs collection add) or 'config' ([[collections]])
        created_at REAL NOT NULL         -- unix time it was saved
    )""")


def _v5_artwork(db: sqlite_utils.Database) -> None:
    db.execute("""
    CREATE TABLE images (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- a cover file's inode is derived from it: never reused
        address TEXT NOT NULL UNIQUE,   -- xxh3-128 of the bytes: their chunk address in the content cache
        mime    TEXT NOT NULL,          -- image/jpeg, image/png, ... (from the bytes, not the tag's claim)
        size    INTEGER NOT NULL,       -- bytes
        width   INTEGER NOT NULL,       -- pixels
        height  INTEGER NOT NULL        -- pixels
    )""")
    db.execute("""
    CREATE TABLE artwork (
        id       INTEGER PRIMARY KEY,
        track_id INTEGER NOT NULL,      -- tracks.id
        art_type TEXT NOT NULL,         -- 'front'
        image_id INTEGER NOT NULL,      -- images.id
        source   TEXT NOT NULL,         -- 'embedded' in the track, or 'folder': an image file beside it
        UNIQUE (track_id, art_type)
    )""")
    db.execute("CREATE INDEX artwork_image ON artwork(image_id)")
    db.execute("""
    CREATE TABLE sidecars (
        id        INTEGER PRIMARY KEY,
        origin_id TEXT NOT NULL,        -- origin that holds the image file
        real_path TEXT NOT NULL,        -- its path inside the origin (cover.jpg, folder.png, front.*)
        folder    TEXT NOT NULL,        -- the folder it is in: its tracks show it unless they embed a cover
        rank      INTEGER NOT NULL,     -- preference among a folder's image files, lower first
        size      INTEGER NOT NULL,     -- size, mtime and version when read (change detection)
        mtime_ns  INTEGER NOT NULL,
        version   TEXT NOT NULL,
        image_id  INTEGER,              -- images.id; NULL: not an image shown as a cover
        scan_id   INTEGER NOT NULL      -- last scan that saw it
    )""")
    db.execute("CREATE UNIQUE INDEX sidecars_path ON sidecars(origin_id, real_path)")
    db.execute("CREATE INDEX sidecars_folder ON sidecars(origin_id, folder)")
    db.execute("CREATE INDEX sidecars_image ON sidecars(image_id)")
    # a track that leaves the index takes its artwork rows along, whichever code path removes it
    db.execute("CREATE TRIGGER tracks_artwork_gone AFTER DELETE ON tracks"
               " BEGIN DELETE FROM artwork WHERE track_id = OLD.id; END")


def _v6_listening(db: sqlite_utils.Database) -> None:
    db.execute("""
    CREATE TABLE heat (
        track_id    INTEGER PRIMARY KEY,  -- tracks.id
        opens       INTEGER NOT NULL,     -- times the track was opened through the mount
        bytes_read  INTEGER NOT NULL,     -- bytes read of it through those opens
        last_access REAL NOT NULL         -- unix time of the last open
    )""")
    db.execute("""
    CREATE TABLE transitions (
        id         INTEGER PRIMARY KEY,
        from_track INTEGER NOT NULL,      -- tracks.id opened first...
        to_track   INTEGER NOT NULL,      -- ...and this one within a few minutes (musicfs.vfs.access)
        count      INTEGER NOT NULL,      -- times it happened
        last_at    REAL NOT NULL,         -- unix time it last happened (the least recent go first)
        UNIQUE (from_track, to_track)
    )""")
    db.execute("CREATE INDEX transitions_to ON transitions(to_track)")
    db.execute("CREATE INDEX transitions_last ON transitions(last_at)")
    db.execute("CREATE TRIGGER tracks_heat_gone AFTER DELETE ON tracks BEGIN"
               " DELETE FROM heat WHERE track_id = OLD.id;"
               " DELETE FROM transitions WHERE from_track = OLD.id OR to_track = OLD.id; END")


def _v7_metadata(db: sqlite_utils.Database) -> None:
    # what a metadata source (musicfs.index.metadata) gave the track, as a key: '' for none; a
    # rescan that finds the source's fields changed reads the file again
    db.execute("ALTER TABLE tracks ADD COLUMN meta TEXT NOT NULL DEFAULT ''")


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial schema: tracks, skipped, nodes, scans", _v1_initial),
    (2, "index tracks by path and size to find replicas on other origins", _v2_replicas),
    (3, "keep each track's version at its origin (an S3 ETag)", _v3_versions),
    (4, "full-text search table over the tracks shown, and saved searches (collections)", _v4_search),
    (5, "album artwork: images by content, each track's front cover, image files beside tracks", _v5_artwork),
    (6, "listening activity: opens and bytes read per track, which track followed which", _v6_listening),
    (7, "what a metadata source gave each track (a key), so a rescan notices it changed", _v7_metadata),
]

LATEST = MIGRATIONS[-1][0]
