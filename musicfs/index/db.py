"""Opening the SQLite index: WAL, pragmas, migrations.

Readers (the mount) and the writer (the scanner) may use one index at the same
time; WAL lets them, and ``busy_timeout`` makes a writer wait briefly instead
of failing on a lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import IndexError_
from .schema import LATEST, MIGRATIONS


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the index at ``path`` with the pragmas musicfs relies on."""
    path = Path(path)
    if readonly:
        if not path.exists():
            raise IndexError_(f"no index at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.isolation_level = None  # autocommit; writers use transaction() explicitly
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache: NFR-5.1 keeps metadata bounded
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest migration applied, 0 for an empty database."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='_migrations'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT MAX(version) FROM _migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet applied; return the versions applied now."""
    current = schema_version(conn)
    if current > LATEST:
        raise IndexError_(
            f"index schema version {current} is newer than this musicfs understands ({LATEST})"
        )
    if current == LATEST:
        return []
    # Imported only when there is something to migrate: sqlite_utils pulls in numpy where it
    # is installed, which would cost every mount ~100 ms of start-up and ~12 MB of RSS.
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    if current == 0 and "_migrations" not in db.table_names():
        db.execute(
            "CREATE TABLE _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at REAL NOT NULL)"
        )
    applied = []
    for version, name, apply in MIGRATIONS:
        if version <= current:
            continue
        with transaction(conn):
            apply(db)
            conn.execute(
                "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
        applied.append(version)
    return applied


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed whole or rolled back whole.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a batch never fails
    half-way on a lock upgrade.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
