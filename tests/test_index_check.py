"""Opening the library index: when it is checked, what is set aside, what is left alone (FAULT-22).

In process, on real SQLite files. The real-mount checks are in
conformance/test_f22_index_recovery.py; these pin down the rules that keep a mount O(1): an
index nobody touched since it passed is not checked again.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys

import pytest

from musicfs.index.db import needs_check, remember
from musicfs.index.library import LibraryIndex

pytestmark = pytest.mark.req("FAULT-22")
CHECKING = "checking library index"


def open_and_close(path) -> LibraryIndex:
    index = LibraryIndex(path)
    index.close()
    return index


def test_a_checked_index_is_not_checked_again_until_it_changes(tmp_path, caplog):
    path = tmp_path / "i.db"
    with LibraryIndex(path) as index:  # new: nothing to check; its own writes, closed cleanly, neither
        index.set_meta("k", "v")
    assert not needs_check(path)
    with caplog.at_level(logging.INFO, logger="musicfs.index.db"):
        open_and_close(path)
        assert not any(CHECKING in r.getMessage() for r in caplog.records), "checked for nothing"
        (tmp_path / "i.db.verified").unlink()  # never checked (a file from before stamps)
        open_and_close(path)
        assert sum(CHECKING in r.getMessage() for r in caplog.records) == 1
        assert not needs_check(path)
        caplog.clear()
        open_and_close(path)
        assert not any(CHECKING in r.getMessage() for r in caplog.records), "checked again for nothing"
        conn = sqlite3.connect(path)  # someone else writes to it
        conn.execute("INSERT INTO meta (key, value) VALUES ('other', 'x')")
        conn.commit()
        conn.close()
        assert needs_check(path)
        open_and_close(path)
        assert any(CHECKING in r.getMessage() for r in caplog.records)


def test_a_wal_left_by_a_killed_writer_is_replayed_and_checked(tmp_path, caplog):
    path = tmp_path / "i.db"
    open_and_close(path)
    open_and_close(path)  # checked and stamped
    writer = ("import os, sqlite3, sys\n"
              "conn = sqlite3.connect(sys.argv[1]); conn.execute('PRAGMA journal_mode=WAL')\n"
              "conn.execute(\"INSERT INTO meta (key, value) VALUES ('kept', 'yes')\"); conn.commit()\n"
              "os._exit(0)  # no close: the WAL keeps the committed frames, as after SIGKILL\n")
    subprocess.run([sys.executable, "-c", writer, str(path)], check=True)
    assert (tmp_path / "i.db-wal").stat().st_size > 0
    with caplog.at_level(logging.INFO, logger="musicfs.index.db"):
        with LibraryIndex(path) as index:
            assert index.get_meta("kept") == "yes"
            assert index.set_aside_as is None
    assert any(CHECKING in r.getMessage() for r in caplog.records)
    wal = tmp_path / "i.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "closing did not checkpoint"


def test_a_file_that_is_not_a_database_is_set_aside_with_one_line(tmp_path, caplog):
    path = tmp_path / "i.db"
    path.write_bytes(b"bla\n")
    with caplog.at_level(logging.INFO, logger="musicfs.index.db"):
        with LibraryIndex(path) as index:
            assert index.set_aside_as is not None and index.set_aside_as.read_bytes() == b"bla\n"
            assert not index.is_complete()  # empty: the caller scans
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "is damaged" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()
    assert open_and_close(path).set_aside_as is None  # and it stays put


def test_an_index_that_cannot_be_opened_is_an_error_not_damage(tmp_path):
    path = tmp_path / "i.db"
    path.mkdir()  # not a file at all: SQLite cannot open it, which says nothing about its pages
    with pytest.raises(sqlite3.OperationalError):
        LibraryIndex(path)
    assert not list(tmp_path.glob("*.damaged-*"))


def test_ready_to_serve_only_a_clean_finished_index_of_the_same_template(tmp_path):
    """What lets a foreground mount skip a child to look at its index (read-only, nothing
    checked or migrated): anything less than ready sends it to the child that checks and scans."""
    from musicfs.index.library import ready_to_serve

    path = tmp_path / "i.db"
    assert not ready_to_serve(path, "$title")  # no index yet
    with LibraryIndex(path) as index:
        index.set_meta("template", "$title")
        with index.transaction() as conn:
            conn.execute("INSERT INTO scans (origin_id, started_at) VALUES ('o', 1)")
    assert not ready_to_serve(path, "$title")  # a scan that never finished
    with LibraryIndex(path) as index, index.transaction() as conn:
        conn.execute("UPDATE scans SET finished_at = 2")
    assert ready_to_serve(path, "$title")
    assert not ready_to_serve(path, "$artist/$title")  # made with another template
    (tmp_path / "i.db.verified").unlink()  # changed since it last passed its check
    assert not ready_to_serve(path, "$title")
    open_and_close(path)
    assert ready_to_serve(path, "$title")
    conn = sqlite3.connect(path)  # an index of an older musicfs: a migration to apply first
    conn.execute("DELETE FROM _migrations WHERE version = (SELECT MAX(version) FROM _migrations)")
    conn.commit()
    conn.close()
    remember(path)  # as if it had passed its check like this
    assert not needs_check(path) and not ready_to_serve(path, "$title")
    path.write_bytes(b"not a database at all" * 100)
    assert not ready_to_serve(path, "$title")
