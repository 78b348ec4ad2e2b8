"""The library index: one SQLite file holding tracks, skipped files and the virtual tree."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .db import checkpoint, connect, needs_check, open_checked, remember, schema_version, transaction
from .metacache import MetadataBudget
from .schema import LATEST, ROOT_ID

TRACK_FIELDS = (
    "title", "artist", "album", "album_artist", "genre", "year", "track", "disc",
    "duration_ms", "bitrate", "sample_rate", "format",
)


@dataclass(frozen=True)
class SkippedFile:
    origin_id: str
    real_path: str
    size: int
    reason: str
    detail: str


def ready_to_serve(path: Path, template: str) -> bool:
    """Whether the index at ``path`` opens for serving as it is: closed cleanly, of this musicfs's
    schema, scanned to the end with ``template``. Asked read-only, so nothing is checked, migrated
    or imported for it (a daemon asks before it serves; anything else is done apart from it)."""
    if not path.exists() or needs_check(path):
        return False
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error:
        return False
    try:
        if schema_version(conn) != LATEST:
            return False
        done = conn.execute("SELECT 1 FROM scans WHERE finished_at IS NOT NULL LIMIT 1").fetchone()
        row = conn.execute("SELECT value FROM meta WHERE key = 'template'").fetchone()
        return done is not None and row is not None and row[0] == template
    except sqlite3.Error:
        return False
    finally:
        conn.close()


class LibraryIndex:
    """Owns the connection to one index file; everything else asks it.

    Opening migrates the schema and, when the file may have changed behind
    musicfs's back, checks it: a damaged file is set aside and a new, empty
    index takes its place (``set_aside_as`` says where the old one went, and
    :meth:`is_complete` is False until a scan fills it). ``readonly=True``
    never writes nor checks (inspection tools use it while a daemon may be
    mounted). Closing checkpoints the WAL, so a clean stop leaves nothing for
    the next open to recover.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False, budget: MetadataBudget | None = None):
        """``budget``: the metadata cache bound whose share SQLite's page cache gets (NFR-5.1)."""
        self.path = Path(path)
        self.readonly = readonly
        self.set_aside_as: Path | None = None
        self.budget = budget or MetadataBudget()
        kib = self.budget.sqlite_cache_kib
        if readonly:
            self.conn: sqlite3.Connection = connect(self.path, readonly=True, cache_kib=kib)
        else:
            self.conn, self.set_aside_as = open_checked(self.path, cache_kib=kib)
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        """Checkpoint and close; a writable index closed cleanly needs no check at its next open."""
        if self.readonly:
            self.conn.close()
            return
        checkpoint(self.conn)
        self.conn.close()
        remember(self.path)

    def __enter__(self) -> LibraryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self):
        return transaction(self.conn)

    def another_connection(self) -> LibraryIndex:
        """A second handle on the same file, for a writer in another thread (a live rescan).

        Its own connection, so the mount's reads go on from the last commit while
        it writes (WAL). No check and no migration: opening this index did both.
        Close it when done, in its thread: closing moves the WAL into the file
        (readers are not held up by that).
        """
        if self.readonly:
            raise ValueError("a read-only index has no writer connection")
        other = object.__new__(LibraryIndex)
        other.path, other.readonly, other.set_aside_as = self.path, False, None
        other.budget = self.budget
        other.conn = connect(self.path, cache_kib=self.budget.sqlite_cache_kib)
        other.conn.row_factory = sqlite3.Row
        return other

    # -- settings ---------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def ensure_origin(self, origin_id: str, kind: str, location: str) -> None:
        self.conn.execute(
            "INSERT INTO origins (id, kind, location, added_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, location = excluded.location",
            (origin_id, kind, location, time.time()),
        )

    # -- reading ----------------------------------------------------------
    def track(self, track_id: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM tracks WHERE id = ?", (track_id,)).fetchone()
        return dict(row) if row else None

    def skipped(self) -> list[SkippedFile]:
        rows = self.conn.execute(
            "SELECT origin_id, real_path, size, reason, detail FROM skipped"
            " ORDER BY origin_id, real_path"
        )
        return [SkippedFile(*row) for row in rows]

    def origin_file_count(self, origin_id: str) -> int:
        """Audio files of an origin the index knows (tracks and skipped): what a rescan will walk."""
        return self.conn.execute(
            "SELECT (SELECT COUNT(*) FROM tracks WHERE origin_id = ?)"
            " + (SELECT COUNT(*) FROM skipped WHERE origin_id = ?)", (origin_id, origin_id)).fetchone()[0]

    def last_scan(self) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM scans ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def is_complete(self) -> bool:
        """True when at least one scan finished: the tree is ready to mount."""
        row = self.conn.execute("SELECT 1 FROM scans WHERE finished_at IS NOT NULL LIMIT 1")
        return row.fetchone() is not None

    def origin_statistics(self) -> dict[str, dict[str, Any]]:
        """Per origin: tracks, bytes, skipped files and when its last complete scan finished."""
        q = self.conn.execute
        result: dict[str, dict[str, Any]] = {
            row[0]: {"kind": row[1], "location": row[2], "tracks": 0, "bytes": 0, "skipped": 0,
                     "last_sync": None} for row in q("SELECT id, kind, location FROM origins")}
        for origin_id, tracks, size in q("SELECT origin_id, COUNT(*), COALESCE(SUM(size), 0) FROM tracks"
                                         " GROUP BY origin_id"):
            result.setdefault(origin_id, {}).update(tracks=tracks, bytes=size)
        for origin_id, skipped in q("SELECT origin_id, COUNT(*) FROM skipped GROUP BY origin_id"):
            result.setdefault(origin_id, {})["skipped"] = skipped
        for origin_id, finished in q("SELECT origin_id, MAX(finished_at) FROM scans GROUP BY origin_id"):
            result.setdefault(origin_id, {})["last_sync"] = finished
        return result

    def statistics(self) -> dict[str, Any]:
        """Counts for status.json, ``musicfs-inspect index`` and metrics."""
        q = self.conn.execute
        by_format = dict(q("SELECT format, COUNT(*) FROM tracks GROUP BY format").fetchall())
        reasons = dict(q("SELECT reason, COUNT(*) FROM skipped GROUP BY reason").fetchall())
        last = self.last_scan()
        return {
            "index_path": str(self.path),
            "tracks": q("SELECT COUNT(*) FROM tracks").fetchone()[0],
            "bytes": q("SELECT COALESCE(SUM(size), 0) FROM tracks").fetchone()[0],
            "directories": q("SELECT COUNT(*) FROM nodes WHERE kind = 'dir'").fetchone()[0],
            "files": q("SELECT COUNT(*) FROM nodes WHERE kind = 'file'").fetchone()[0],
            "skipped": sum(reasons.values()),
            "skipped_by_reason": reasons,
            "by_format": by_format,
            "origins": [dict(r) for r in q("SELECT id, kind, location FROM origins ORDER BY id")],
            "template": self.get_meta("template"),
            "last_scan_finished_at": last["finished_at"] if last else None,
            "root_id": ROOT_ID,
        }
