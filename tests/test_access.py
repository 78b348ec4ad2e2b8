"""Listening activity in process: opens, bytes read and transitions, kept in batches and bounded (CAS-4)."""

from __future__ import annotations

import sqlite3

import pytest

from musicfs.index.library import LibraryIndex
from musicfs.vfs import access as access_module
from musicfs.vfs.access import RECENT, TRANSITION_GAP, TRANSITION_WINDOW, AccessTracker

pytestmark = pytest.mark.req("CAS-4")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def library(tmp_path):
    """An index with five tracks of two albums (ids 1-5)."""
    path = tmp_path / "index.db"
    with LibraryIndex(path) as index, index.transaction():
        for n in range(1, 6):
            index.conn.execute(
                "INSERT INTO tracks (id, origin_id, real_path, size, mtime_ns, title, artist, album, format,"
                " scan_id, indexed_at) VALUES (?, 'o', ?, 1000, 1, ?, 'A', ?, 'flac', 1, 0)",
                (n, f"t{n}.flac", f"Song {n}", "One" if n <= 3 else "Two"))
    return path


def rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_opens_and_bytes_are_written_in_one_batch_and_add_up(library):
    clock = Clock()
    tracker = AccessTracker(library, clock=clock)
    tracker.opened(1, "A/One/01.flac")
    tracker.closed(1, 4096)
    assert rows(library, "SELECT * FROM heat") == []  # nothing written on the FUSE path
    assert tracker.flush()
    clock.now += 10
    tracker.opened(1, "A/One/01.flac")
    tracker.closed(1, 1000)
    tracker.flush()
    assert rows(library, "SELECT track_id, opens, bytes_read, last_access FROM heat") == [(1, 2, 5096, clock.now)]
    tracker.close()


def test_a_transition_is_an_open_of_another_track_soon_after(library):
    clock = Clock()
    tracker = AccessTracker(library, clock=clock)
    for track in (1, 2, 1, 2):
        tracker.opened(track, f"t{track}")
        clock.now += 30
    tracker.opened(2, "t2")  # the same track again: no transition
    clock.now += TRANSITION_WINDOW + 1
    tracker.opened(3, "t3")  # too long after: no transition
    for track in (4, 5, 6):  # a scan: opens closer together than TRANSITION_GAP, no transition
        clock.now += TRANSITION_GAP / 10
        tracker.opened(track, f"t{track}")
    tracker.flush()
    assert sorted(rows(library, "SELECT from_track, to_track, count FROM transitions")) == [(1, 2, 2), (2, 1, 1)]
    assert tracker.next_tracks(1) == [2] and tracker.next_tracks(2) == []  # at least twice
    assert tracker.next_tracks(2, least=1) == [1]
    tracker.close()


def test_transitions_stay_bounded_least_recent_first(library, monkeypatch):
    monkeypatch.setattr(access_module, "MAX_TRANSITIONS", 3)
    clock = Clock()
    tracker = AccessTracker(library, clock=clock)
    for track in (1, 2, 3, 4, 5):
        tracker.opened(track, f"t{track}")
        clock.now += 1
        tracker.flush()
    assert sorted(rows(library, "SELECT from_track, to_track FROM transitions")) == [(2, 3), (3, 4), (4, 5)]
    tracker.close()


def test_the_access_log_is_the_recent_opens_newest_last(library):
    clock = Clock()
    tracker = AccessTracker(library, clock=clock)
    for n in range(RECENT + 5):
        tracker.opened(1 + n % 5, f"A/{n}.flac")
        clock.now += 1
    lines = tracker.access_log().splitlines()
    assert len(lines) == RECENT
    assert lines[-1].split("\t")[1:] == [str(1 + (RECENT + 4) % 5), f"A/{RECENT + 4}.flac"]
    assert lines[0].endswith("\tA/5.flac") and lines[0] < lines[-1]  # ISO times sort
    tracker.close()


def test_heat_lists_the_hottest_tracks_and_albums(library):
    clock = Clock()
    tracker = AccessTracker(library, clock=clock)
    for track, times in ((4, 3), (1, 1), (2, 2)):
        for _ in range(times):
            tracker.opened(track, f"t{track}")
            tracker.closed(track, 100)
            clock.now += 1
    heat = tracker.heat()  # written first: what was just opened is in it
    assert [t["track_id"] for t in heat["tracks"]] == [4, 2, 1]
    assert heat["tracks"][0] | {"last_access": None} == {
        "track_id": 4, "opens": 3, "bytes_read": 300, "last_access": None, "title": "Song 4", "artist": "A",
        "album": "Two", "origin": "o", "real_path": "t4.flac"}
    assert [(a["album"], a["opens"], a["tracks_played"]) for a in heat["albums"]] == [("One", 3, 2), ("Two", 3, 1)]
    assert heat["opens"] == 6 and heat["tracks_played"] == 3
    tracker.close()


def test_a_busy_index_keeps_the_activity_for_the_next_write(library):
    tracker = AccessTracker(library)
    tracker.opened(1, "t1")
    blocker = sqlite3.connect(library, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    tracker._connection().execute("PRAGMA busy_timeout=50")
    assert not tracker.flush()
    tracker.opened(1, "t1")
    blocker.rollback()
    blocker.close()
    assert tracker.flush()
    assert rows(library, "SELECT opens FROM heat") == [(2,)]
    assert tracker.statistics()["flush_failures"] == 1
    tracker.close()


def test_a_track_gone_takes_its_activity_along(library):
    tracker = AccessTracker(library)
    tracker.opened(1, "t1")
    tracker.opened(2, "t2")
    tracker.opened(9, "t9")  # not (any more) in the index: not written
    tracker.flush()
    with LibraryIndex(library) as index, index.transaction():
        index.conn.execute("DELETE FROM tracks WHERE id = 2")
    assert rows(library, "SELECT track_id FROM heat") == [(1,)]
    assert rows(library, "SELECT COUNT(*) FROM transitions") == [(0,)]
    tracker.close()
