"""Listening activity: which tracks are opened, how much of each is read, and which follows which.

Why: prefetch learns from it what a listener plays next, and a user sees it in
``/.musicfs/heat.json`` (the hottest tracks and albums) and
``/.musicfs/access.log`` (the recent opens, newest last) (CAS-3, CAS-4).

How it stays off the FUSE path: an open or a close only adds to counters in
memory (under a lock: the generated files read them from worker threads).
:meth:`AccessTracker.run` writes them to the index every few seconds, in a
worker thread on a connection of its own, in one short transaction; a
write the index refuses (a scan holding it longer than the busy timeout)
leaves them for the next one. What is kept is bounded: one heat row per
track, at most :data:`MAX_TRANSITIONS` transitions (the least recent go),
and the last :data:`RECENT` opens in memory for the access log.

A transition is an open of track B within :data:`TRANSITION_WINDOW` seconds
of an open of track A (another track), but not within :data:`TRANSITION_GAP`
(a scan): what a listener did next, whether the album's order, a playlist's
or a shuffle's.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ..index.db import connect, transaction

log = logging.getLogger(__name__)

TRANSITION_WINDOW = 300.0  # seconds between two opens that make a transition
# ... and at least this many: opens closer together are a media server's or a file manager's scan,
# not a choice of what to hear next (a listener skipping on takes longer). Thousands a second would
# push what listeners did out of MAX_TRANSITIONS, and cost a write each.
TRANSITION_GAP = 0.05
RECENT = 1000  # opens kept for the access log
MAX_TRANSITIONS = 100_000  # transition rows kept in the index
FLUSH_EVERY = 5.0  # seconds between writes to the index
HOTTEST = 50  # tracks and albums heat.json lists
# the rows of a write, from one JSON array of 4-element arrays (json_extract: SQLite 3.9 and later)
_ROWS = ("(SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b,"
         " json_extract(value, '$[2]') AS c, json_extract(value, '$[3]') AS d FROM json_each(?))")


@dataclass(frozen=True)
class Access:
    at: float
    track_id: int
    path: str  # the track's path in the mount, at the open


@dataclass
class _Pending:
    """What was seen since the last write, by track (and by pair of tracks)."""

    opens: Counter
    bytes_read: Counter
    last: dict
    transitions: dict  # (from, to) -> (count, last time)

    @classmethod
    def empty(cls) -> _Pending:
        return cls(Counter(), Counter(), {}, {})

    def __bool__(self) -> bool:
        return bool(self.opens or self.bytes_read or self.transitions)


class AccessTracker:
    def __init__(self, index_path: Path | str, *, clock: Callable[[], float] = time.time):
        self.index_path = Path(index_path)
        self.clock = clock
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one write at a time (the timer's, a generated file's)
        self._recent: deque[Access] = deque(maxlen=RECENT)
        self._pending = _Pending.empty()
        self._previous: tuple[int, float] | None = None
        self._conn: sqlite3.Connection | None = None
        self.opens = self.transitions = self.flushes = self.flush_failures = 0

    # -- the FUSE side: cheap ---------------------------------------------------------------
    def opened(self, track_id: int, path: str) -> None:
        now = self.clock()
        with self._lock:
            self.opens += 1
            self._recent.append(Access(now, track_id, path))
            pending = self._pending
            pending.opens[track_id] += 1
            pending.last[track_id] = now
            previous = self._previous
            if (previous is not None and previous[0] != track_id
                    and TRANSITION_GAP <= now - previous[1] <= TRANSITION_WINDOW):
                count, _ = pending.transitions.get((previous[0], track_id), (0, now))
                pending.transitions[previous[0], track_id] = (count + 1, now)
                self.transitions += 1
            self._previous = (track_id, now)

    def closed(self, track_id: int, bytes_read: int) -> None:
        """A handle on the track was released after ``bytes_read`` bytes were read through it."""
        if bytes_read:
            with self._lock:
                self._pending.bytes_read[track_id] += bytes_read

    # -- writing, in a worker thread ----------------------------------------------------------
    def flush(self) -> bool:
        """Write what was seen since the last write; False (kept for the next) if the index refused."""
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, _Pending.empty()
            if not pending:
                return True
            try:
                self._write(pending)
            except sqlite3.Error as exc:
                self.flush_failures += 1
                log.warning("listening activity not written yet (kept for the next try): %s", exc)
                with self._lock:
                    self._pending = _merge(pending, self._pending)
                return False
            self.flushes += 1
            return True

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.index_path)
        return self._conn

    def _write(self, pending: _Pending) -> None:
        """One statement per table, its rows passed as one JSON array: SQLite walks them itself.

        Why not executemany: it binds each row with the GIL held and takes it back after each
        row's step, so a write after a media server opened a thousand tracks held the event
        loop off the GIL in thousands of short turns, beside the reads (NFR-2.4). One
        statement runs with the GIL let go from start to end.
        """
        conn = self._connection()
        tracks = set(pending.opens) | set(pending.bytes_read)
        heat = json.dumps([(t, pending.opens.get(t, 0), pending.bytes_read.get(t, 0), pending.last.get(t, 0.0))
                           for t in tracks])
        transitions = json.dumps([(a, b, count, at) for (a, b), (count, at) in pending.transitions.items()])
        with transaction(conn):
            conn.execute(
                f"INSERT INTO heat (track_id, opens, bytes_read, last_access) SELECT a, b, c, d FROM {_ROWS}"
                " WHERE EXISTS (SELECT 1 FROM tracks WHERE id = a) ON CONFLICT(track_id) DO UPDATE SET"
                " opens = opens + excluded.opens, bytes_read = bytes_read + excluded.bytes_read,"
                " last_access = MAX(last_access, excluded.last_access)", (heat,))
            conn.execute(
                f"INSERT INTO transitions (from_track, to_track, count, last_at) SELECT a, b, c, d FROM {_ROWS}"
                " WHERE (SELECT COUNT(*) FROM tracks WHERE id IN (a, b)) = 2 ON CONFLICT(from_track, to_track)"
                " DO UPDATE SET count = count + excluded.count, last_at = MAX(last_at, excluded.last_at)",
                (transitions,))
            over = conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] - MAX_TRANSITIONS
            if over > 0:  # the least recent go first
                conn.execute("DELETE FROM transitions WHERE id IN (SELECT id FROM transitions"
                             " ORDER BY last_at LIMIT ?)", (over,))

    async def run(self, every: float = FLUSH_EVERY) -> None:
        """Write every ``every`` seconds until cancelled, then once more (the mount is stopping)."""
        try:
            while True:
                await trio.sleep(every)
                await trio.to_thread.run_sync(self.flush)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.flush)

    def close(self) -> None:
        with self._writing:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- what it learned ---------------------------------------------------------------------
    def next_tracks(self, track_id: int, limit: int = 3, least: int = 2) -> list[int]:
        """The tracks most often opened after ``track_id`` (at least ``least`` times), most first, as
        last written (up to a few seconds behind: an open is no reason for a write)."""
        with self._writing:
            rows = self._connection().execute(
                "SELECT to_track FROM transitions WHERE from_track = ? AND count >= ?"
                " ORDER BY count DESC, last_at DESC LIMIT ?", (track_id, least, limit)).fetchall()
        return [row[0] for row in rows]

    def heat(self) -> dict:
        """``heat.json``: the hottest tracks and albums (most opened, then most recent)."""
        self.flush()
        with self._writing:
            conn = self._connection()
            tracks = conn.execute(
                "SELECT h.track_id, h.opens, h.bytes_read, h.last_access, t.title, t.artist, t.album,"
                " t.origin_id, t.real_path FROM heat h JOIN tracks t ON t.id = h.track_id"
                " ORDER BY h.opens DESC, h.last_access DESC LIMIT ?", (HOTTEST,)).fetchall()
            albums = conn.execute(
                "SELECT COALESCE(t.album_artist, t.artist), t.album, SUM(h.opens), SUM(h.bytes_read),"
                " MAX(h.last_access), COUNT(*) FROM heat h JOIN tracks t ON t.id = h.track_id"
                " GROUP BY 1, 2 ORDER BY 3 DESC, 5 DESC LIMIT ?", (HOTTEST,)).fetchall()
            totals = conn.execute("SELECT COUNT(*), COALESCE(SUM(opens), 0) FROM heat").fetchone()
        return {
            "tracks_played": totals[0], "opens": totals[1],
            "tracks": [{"track_id": r[0], "opens": r[1], "bytes_read": r[2], "last_access": _iso(r[3]),
                        "title": r[4], "artist": r[5], "album": r[6], "origin": r[7], "real_path": r[8]}
                       for r in tracks],
            "albums": [{"album_artist": r[0], "album": r[1], "opens": r[2], "bytes_read": r[3],
                        "last_access": _iso(r[4]), "tracks_played": r[5]} for r in albums],
        }

    def access_log(self) -> str:
        """``access.log``: the recent opens, one per line, newest last (time, track id, path)."""
        with self._lock:
            recent = list(self._recent)
        return "".join(f"{_iso(a.at)}\t{a.track_id}\t{a.path}\n" for a in recent)

    def statistics(self) -> dict:
        with self._lock:
            pending = len(self._pending.opens) + len(self._pending.transitions)
        return {"opens": self.opens, "transitions": self.transitions, "flushes": self.flushes,
                "flush_failures": self.flush_failures, "pending": pending}


def _merge(older: _Pending, newer: _Pending) -> _Pending:
    merged = _Pending(older.opens + newer.opens, older.bytes_read + newer.bytes_read,
                      {**older.last, **newer.last}, dict(older.transitions))
    for pair, (count, at) in newer.transitions.items():
        had, _ = merged.transitions.get(pair, (0, at))
        merged.transitions[pair] = (had + count, at)
    return merged


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
