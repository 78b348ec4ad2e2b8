"""Opening the SQLite index: WAL, pragmas, migrations, and a check for damage.

Readers (the mount) and the writer (the scanner) may use one index at the same
time; WAL lets them, and ``busy_timeout`` makes a writer wait briefly instead
of failing on a lock.

A process killed in the middle of a write (a scan, SIGKILL) leaves a WAL behind;
SQLite replays it on the next open, so nothing is needed for that beyond
checking the result. A file damaged on disk is another matter: it may open and
then fail a query in the middle of a listing. :func:`open_checked` runs SQLite's
``quick_check`` whenever the file may have changed behind musicfs's back (it
differs from when it last passed, or a WAL was left behind) and sets a damaged
file aside so the caller can rebuild it by scanning (FAULT-22). The check reads
the whole file, so it is not run on every open: a mount must stay O(1) in the
library's size (NFR-3.3), and an index nobody touched since it passed is not
checked again.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..dirs import make_private
from ..errors import IndexError_
from .schema import LATEST, MIGRATIONS

log = logging.getLogger(__name__)

# SQLite's primary result codes that mean "the file is damaged", as opposed to locked or unreadable
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def connect(path: Path | str, *, readonly: bool = False, cache_kib: int = 16384) -> sqlite3.Connection:
    """Open the index at ``path`` with the pragmas musicfs relies on.

    ``cache_kib`` bounds SQLite's page cache of this connection (a mount passes its share of
    the metadata cache bound, :mod:`musicfs.index.metacache`); no pages are memory-mapped, so
    nothing of the file counts in the process's memory beyond that bound (NFR-5.1).
    """
    path = Path(path)
    if readonly:
        if not path.exists():
            raise IndexError_(f"no index at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        make_private(path.parent)
        conn = sqlite3.connect(path, check_same_thread=False)
    try:
        conn.isolation_level = None  # autocommit; writers use transaction() explicitly
        conn.execute("PRAGMA busy_timeout=5000")
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")  # KiB: NFR-5.1 keeps metadata bounded
        conn.execute("PRAGMA mmap_size=0")
    except BaseException:
        conn.close()  # a file that is not a database fails here: leave no connection behind
        raise
    return conn


class IndexDamaged(IndexError_):
    """SQLite's own check found the index file damaged."""


def is_damage(exc: BaseException) -> bool:
    """True when ``exc`` says the file itself is damaged (not locked, missing or unreadable)."""
    if isinstance(exc, IndexDamaged):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in _DAMAGE_CODES


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _identity(path: Path) -> dict[str, int]:
    """What changes whenever anything writes the file (ctime too, which nobody can set back)."""
    st = os.stat(path)
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _wal_left(path: Path) -> bool:
    try:
        return os.path.getsize(f"{path}-wal") > 0
    except OSError:
        return False


def needs_check(path: Path) -> bool:
    """Whether the file may have changed since it last passed :func:`check` (or never passed)."""
    if _wal_left(path):  # a writer was killed, or is at work now: the file is not what passed
        return True
    try:
        return json.loads(_stamp_path(path).read_text()) != _identity(path)
    except (OSError, ValueError):
        return True


def check(conn: sqlite3.Connection, path: Path) -> None:
    """Run SQLite's ``quick_check`` (every page, b-tree structure); raise :class:`IndexDamaged`.

    On success, remember the file as it is now, so the next open can skip the check.
    """
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if problems != ["ok"]:
        # SQLite's report runs over several lines: one line in the log is enough to say where
        text = " ".join(" ".join(problems).split()).replace("*** in database main *** ", "")
        raise IndexDamaged(text if len(text) <= 200 else text[:197] + "...")
    remember(path)


def remember(path: Path) -> None:
    """Take the file as it is now for one that passed its check: after :func:`check`, and after a
    clean close of this process's writes (a listening record, a rescan) left no WAL behind. A
    crash leaves the stamp of before, and the next open checks."""
    if not _wal_left(path):  # with frames in the WAL the file itself is not yet what passed
        _stamp_path(path).write_text(json.dumps(_identity(path)))


def set_aside(path: Path, reason: BaseException) -> Path:
    """Rename a damaged index (and its WAL) out of the way; return its new name. One log line."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    for suffix in ("-wal", "-shm", ""):  # the main file last: until then the index is still findable
        part = Path(f"{path}{suffix}")
        if part.exists():
            part.rename(f"{target}{suffix}")
    _stamp_path(path).unlink(missing_ok=True)
    log.error("library index %s is damaged (%s); set aside as %s, a new one is built by scanning the "
              "origins", path, reason, target.name)
    return target


def open_checked(path: Path | str, *, cache_kib: int = 16384) -> tuple[sqlite3.Connection, Path | None]:
    """Open the index for writing, checked and migrated.

    Returns the connection and, if the file was damaged, where it was set aside
    (the connection is then to a new, empty index that needs a scan). Locked or
    unreadable files raise as they are: only damage is set aside.
    """
    path = Path(path)
    fresh = not path.exists()
    try:
        conn = connect(path, cache_kib=cache_kib)
        try:
            if not fresh and needs_check(path):
                log.info("checking library index %s (it changed since it was last checked, or was not "
                         "closed cleanly)", path)
                check(conn, path)
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn, None
    except (sqlite3.DatabaseError, IndexDamaged) as exc:
        if not is_damage(exc):
            raise
        aside = set_aside(path, exc)
    conn = connect(path, cache_kib=cache_kib)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn, aside


def checkpoint(conn: sqlite3.Connection) -> None:
    """Move every WAL frame into the main file and empty the WAL (a clean stop leaves no WAL)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as exc:  # another process holds a read transaction: it finishes later
        log.debug("index checkpoint deferred: %s", exc)


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
