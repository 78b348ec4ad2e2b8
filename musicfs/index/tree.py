"""The persisted virtual tree: directories and files derived from tags by the template.

The scanner keeps the tree up to date as it writes tracks, inside the same
transaction, so a mount reads a finished tree and does no per-file work
(NFR-3.3). Node ids are inode numbers: an unchanged track keeps its node, and
so its inode, on every rescan; ids are never reused (AUTOINCREMENT).

Names that collide after sanitising are numbered ``Title (2).flac``,
``Title (3).flac`` in the order the tracks were placed. The scanner places
tracks sorted by path, so the same library always gets the same names, and a
track that keeps its node keeps its name.

Every file node has its row in the search table (:mod:`.fts`), written and
removed with it, so search and tree never disagree.

The writer also says what it changed (:class:`TreeChanges`): every node it
added or removed, and every file node kept in place whose file changed. A
live rescan hands that report to the mount after each commit, so the kernel
is told about exactly those entries, without comparing the tree before and
after (which would cost a read of every node on every rescan).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import fts
from .names import with_suffix_number
from .schema import ROOT_ID
from .template import PathTemplate


@dataclass(frozen=True, slots=True)
class NodeChange:
    """A node as it was when added or removed: where the kernel may know it, and under what name."""

    id: int
    parent: int
    name: str
    kind: str  # 'dir' | 'file'


@dataclass
class TreeChanges:
    """What one or more transactions of a :class:`TreeWriter` changed in the tree.

    ``removed`` is in the order of removal: a file before the directories pruned
    after it, so children always come before their parents. ``modified`` holds
    file nodes that kept their id (and so their inode) while their file changed
    (its bytes, size or mtime: the kernel's attributes and pages of it are stale).
    ``rebuilt`` says every node was replaced (a template change): then the lists
    are left empty, and everything the kernel knows of the tree is stale.
    """

    added: list[NodeChange] = field(default_factory=list)
    removed: list[NodeChange] = field(default_factory=list)
    modified: list[int] = field(default_factory=list)
    rebuilt: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.modified or self.rebuilt)

    def take(self) -> TreeChanges:
        """The changes recorded so far, netted out, and start afresh.

        A node both added and removed since the last ``take`` was never in a
        committed tree: it is left out of both lists. A modified node that was
        removed is only removed.
        """
        added_ids = {n.id for n in self.added}
        born_and_gone = added_ids & {n.id for n in self.removed}
        gone = {n.id for n in self.removed}
        taken = TreeChanges(
            added=[n for n in self.added if n.id not in born_and_gone],
            removed=[n for n in self.removed if n.id not in born_and_gone],
            modified=list(dict.fromkeys(i for i in self.modified if i not in gone and i not in added_ids)),
            rebuilt=self.rebuilt,
        )
        self.added, self.removed, self.modified, self.rebuilt = [], [], [], False
        return taken


class TreeWriter:
    """Adds, moves and removes file nodes; creates and prunes directories.

    Must be used inside a write transaction of ``conn``. Directory ids are
    cached, so placing a million tracks costs a few queries per track. With
    ``record``, what it changes is kept in ``changes`` (the caller takes them
    after each commit); bulk loads leave it off and keep no list.
    """

    def __init__(self, conn: sqlite3.Connection, template: PathTemplate, *, record: bool = False):
        self.conn = conn
        self.template = template
        self.record = record
        self.changes = TreeChanges()
        self._dirs: dict[tuple[int, str], int] = {}

    @property
    def _recording(self) -> bool:
        """Nodes are listed unless nobody asked, or a rebuild already says all changed."""
        return self.record and not self.changes.rebuilt

    # -- directories ------------------------------------------------------
    def _dir_id(self, parent: int, name: str, *, create: bool) -> int | None:
        key = (parent, name)
        cached = self._dirs.get(key)
        if cached is not None:
            return cached
        row = self.conn.execute(
            "SELECT id, kind FROM nodes WHERE parent = ? AND wanted = ? AND kind = 'dir'"
            " ORDER BY id LIMIT 1",
            key,
        ).fetchone()
        if row is not None:
            self._dirs[key] = row[0]
            return row[0]
        if not create:
            return None
        node_id = self._insert(parent, name, "dir", None, "")
        self._dirs[key] = node_id
        return node_id

    def _insert(self, parent: int, wanted: str, kind: str, track_id: int | None, ext: str) -> int:
        """Insert a node under the first free name: ``wanted``, then ``wanted (2)``, ..."""
        name, number = wanted, 1
        while True:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO nodes (parent, name, kind, track_id, wanted)"
                " VALUES (?, ?, ?, ?, ?)",
                (parent, name, kind, track_id, wanted),
            )
            if cur.rowcount == 1:
                node_id = int(cur.lastrowid)
                if self._recording:
                    self.changes.added.append(NodeChange(node_id, parent, name, kind))
                return node_id
            number += 1
            name = with_suffix_number(wanted, number, ext)

    def _dir_chain(self, components: Iterable[str], *, create: bool) -> int | None:
        parent: int | None = ROOT_ID
        for name in components:
            parent = self._dir_id(parent, name, create=create)
            if parent is None:
                return None
        return parent

    def _prune(self, dir_id: int) -> None:
        """Remove ``dir_id`` and its ancestors while they are empty (never the root)."""
        while dir_id != ROOT_ID:
            if self.conn.execute("SELECT 1 FROM nodes WHERE parent = ? LIMIT 1", (dir_id,)).fetchone():
                return
            row = self.conn.execute("SELECT parent, wanted, name FROM nodes WHERE id = ?",
                                    (dir_id,)).fetchone()
            if row is None:
                return
            self.conn.execute("DELETE FROM nodes WHERE id = ?", (dir_id,))
            if self._recording:
                self.changes.removed.append(NodeChange(dir_id, row[0], row[2], "dir"))
            self._dirs.pop((row[0], row[1]), None)
            dir_id = row[0]

    # -- files ------------------------------------------------------------
    def _replica_shown(self, track_id: int, track: Mapping[str, Any]) -> bool:
        """True if the same file (same path and size) from another origin already has a node.

        Origins federate: one relative path on several origins is one file with
        several replicas, shown once; the reader picks the replica to read.
        """
        return self.conn.execute(
            "SELECT 1 FROM tracks t JOIN nodes n ON n.track_id = t.id"
            " WHERE t.real_path = ? AND t.size = ? AND t.id != ? LIMIT 1",
            (track["real_path"], track["size"], track_id)).fetchone() is not None

    def place(self, track_id: int, track: Mapping[str, Any]) -> int | None:
        """Make sure the track has a file node at its template path; return the node id.

        A track whose node already sits at the right place keeps it (and its
        inode); one whose tags moved it gets a new node and the old one goes.
        A replica of a file already shown gets no node (None).
        """
        *dirs, filename = self.template.render(track)
        existing = self.conn.execute(
            "SELECT id, parent, wanted FROM nodes WHERE track_id = ?", (track_id,)
        ).fetchone()
        if existing is not None:
            parent = self._dir_chain(dirs, create=False)
            if parent == existing[1] and existing[2] == filename:
                if self._recording:  # placed again where it was: its file changed
                    self.changes.modified.append(int(existing[0]))
                fts.put(self.conn, track_id, track, [*dirs, filename])  # tags the path omits may differ
                return int(existing[0])
            self.remove(track_id)
        return self.place_new(track_id, track)

    def place_new(self, track_id: int, track: Mapping[str, Any], *, replicas: bool = True) -> int | None:
        """Like :meth:`place` for a track known to have no node yet (bulk loads). ``replicas=False``:
        the caller knows no other origin holds tracks, so none can be a replica of this one."""
        if replicas and self._replica_shown(track_id, track):
            return None
        *dirs, filename = self.template.render(track)
        ext = "." + filename.rsplit(".", 1)[1] if "." in filename else ""
        parent = self._dir_chain(dirs, create=True)
        assert parent is not None
        node_id = self._insert(parent, filename, "file", track_id, ext)
        fts.add_new(self.conn, track_id, track, [*dirs, filename])  # searchable in the same transaction
        return node_id

    def remove(self, track_id: int) -> None:
        row = self.conn.execute(
            "SELECT id, parent, name FROM nodes WHERE track_id = ?", (track_id,)
        ).fetchone()
        if row is None:
            return
        self.conn.execute("DELETE FROM nodes WHERE id = ?", (row[0],))
        fts.remove(self.conn, track_id)
        if self._recording:
            self.changes.removed.append(NodeChange(row[0], row[1], row[2], "file"))
        self._prune(row[1])
        # a replica of the same file on another origin takes its place in the tree
        track = self.conn.execute("SELECT real_path, size FROM tracks WHERE id = ?", (track_id,)).fetchone()
        if track is not None:
            heir = self.conn.execute(
                "SELECT * FROM tracks t WHERE t.real_path = ? AND t.size = ? AND t.id != ? AND NOT EXISTS"
                " (SELECT 1 FROM nodes n WHERE n.track_id = t.id) ORDER BY t.origin_id LIMIT 1",
                (track[0], track[1], track_id)).fetchone()
            if heir is not None:
                self.place_new(heir["id"], dict(heir))

    def rebuild(self) -> int:
        """Drop every node but the root and place all tracks again, sorted by path.

        Used when the template changes; returns the number of files placed.
        The changes say ``rebuilt`` instead of listing every node.
        """
        self.changes = TreeChanges(rebuilt=self.record)
        self.conn.execute("DELETE FROM nodes WHERE id != ?", (ROOT_ID,))
        fts.clear(self.conn)
        self._dirs.clear()
        count = 0
        rows = self.conn.execute("SELECT * FROM tracks ORDER BY origin_id, real_path").fetchall()
        for row in rows:  # the index opens connections with sqlite3.Row rows
            self.place_new(row["id"], dict(row))
            count += 1
        return count
