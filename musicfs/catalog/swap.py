"""Taking a new catalog into a running mount: what changed, then the index's content replaced.

A catalog is the publisher's index, and node ids are inode numbers that the publisher's
rescans keep for unchanged tracks; so a new catalog names every unchanged track and
folder with the id it had, and what differs between the two databases is exactly what
the kernel must forget: nodes gone or moved, nodes new, files whose bytes changed. That
difference is computed with both databases attached, before anything is replaced.

The new content then goes into the live index file through SQLite's backup API, on a
connection of its own: one write transaction, so every other connection of the mount
(lookups, listings, search) sees the old tree or the new one, never a mix, and keeps
working without being reopened. What is this machine's own and not the publisher's
(saved searches made here, listening activity) is copied into the new content first.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..index.tree import NodeChange, TreeChanges

# tables that hold this machine's own data, kept across catalogs (the rest is the publisher's)
LOCAL_TABLES = ("collections", "heat", "transitions")


def carry_local(new: Path, live: Path) -> None:
    """Copy this machine's own rows from the index at ``live`` into the database at ``new``."""
    conn = sqlite3.connect(new)
    try:
        conn.execute("ATTACH DATABASE ? AS live", (str(live),))
        with conn:
            for table in LOCAL_TABLES:
                if not _has(conn, "main", table) or not _has(conn, "live", table):
                    continue
                theirs = {row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")}
                names = ", ".join(row[1] for row in conn.execute(f"PRAGMA live.table_info({table})")
                                  if row[1] in theirs)
                conn.execute(f"DELETE FROM main.{table}")
                conn.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} FROM live.{table}")
            # listening activity of tracks the new catalog no longer has is of no use
            if _has(conn, "main", "heat"):
                conn.execute("DELETE FROM main.heat WHERE track_id NOT IN (SELECT id FROM main.tracks)")
        conn.execute("DETACH DATABASE live")
    finally:
        conn.close()


def _has(conn: sqlite3.Connection, schema: str, table: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?",
                        (table,)).fetchone() is not None


def differences(live: sqlite3.Connection, new: Path) -> TreeChanges:
    """What the kernel must forget when the tree of ``live`` becomes that of the database at ``new``."""
    live.execute("ATTACH DATABASE ? AS new", (f"file:{new}?mode=ro",))
    try:
        same_place = "n.id = o.id AND n.parent = o.parent AND n.name = o.name AND n.kind = o.kind"
        removed = [NodeChange(*row) for row in live.execute(
            f"SELECT o.id, o.parent, o.name, o.kind FROM main.nodes o WHERE NOT EXISTS "
            f"(SELECT 1 FROM new.nodes n WHERE {same_place}) "
            "ORDER BY o.kind = 'dir', o.id DESC")]  # files first, then folders, deepest (newest) first
        added = [NodeChange(*row) for row in live.execute(
            f"SELECT n.id, n.parent, n.name, n.kind FROM new.nodes n WHERE NOT EXISTS "
            f"(SELECT 1 FROM main.nodes o WHERE {same_place}) ORDER BY n.id")]
        modified = [row[0] for row in live.execute(
            f"SELECT n.id FROM new.nodes n JOIN main.nodes o ON {same_place} "
            "JOIN new.tracks nt ON nt.id = n.track_id JOIN main.tracks ot ON ot.id = o.track_id "
            "WHERE n.kind = 'file' AND (nt.size != ot.size OR nt.mtime_ns != ot.mtime_ns "
            "OR nt.indexed_at != ot.indexed_at OR nt.origin_id != ot.origin_id OR nt.real_path != ot.real_path)")]
    finally:
        live.execute("DETACH DATABASE new")
    return TreeChanges(added=added, removed=removed, modified=modified)


def replace_content(new: Path, live: sqlite3.Connection) -> None:
    """Make the live index's content that of the database at ``new``, in one transaction."""
    source = sqlite3.connect(f"file:{new}?mode=ro", uri=True)
    try:
        source.backup(live)
    finally:
        source.close()
