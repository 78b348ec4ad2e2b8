"""The change report of a rescan: exactly the nodes it added, removed and changed in place.

The report is what a live rescan tells the kernel about; it is checked here against the
slow, obvious oracle: the nodes table read whole before and after the rescan.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Commit, Scanner
from musicfs.index.template import PathTemplate
from musicfs.index.tree import TreeChanges, TreeWriter
from musicfs.origins.local import LocalOrigin


@pytest.fixture
def library_copy(sample_library, tmp_path):
    root = tmp_path / "library"
    shutil.copytree(sample_library[0], root)
    return root


def scan(index: LibraryIndex, root, template: PathTemplate | None = None, commits: list | None = None):
    on_commit = commits.append if commits is not None else None
    return Scanner(index, LocalOrigin("local", root), template or PathTemplate(), workers=2, batch_size=20,
                   on_commit=on_commit).run()


def nodes(index: LibraryIndex) -> dict[int, tuple[int, str, str, int | None]]:
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in index.conn.execute(
        "SELECT id, parent, name, kind, track_id FROM nodes")}


def merged(commits: list[Commit]) -> TreeChanges:
    total = TreeChanges()
    for commit in commits:
        total.added += commit.tree.added
        total.removed += commit.tree.removed
        total.modified += commit.tree.modified
        total.rebuilt |= commit.tree.rebuilt
    return total


@pytest.mark.req("FS-7", "FS-6")
def test_a_rescan_reports_exactly_the_nodes_it_changed(library_copy, good_files, tmp_path):
    from mutagen.flac import FLAC

    index = LibraryIndex(tmp_path / "index.db")
    scan(index, library_copy)
    before = nodes(index)
    flacs = [f["path"] for f in good_files if f["format"] == "flac" and f["tags"].get("title")]
    retagged, touched, copied, removed = flacs[:4]
    audio = FLAC(library_copy / retagged)
    audio["title"] = "Another Title"
    audio.save()
    os.utime(library_copy / touched, ns=(time.time_ns(), time.time_ns()))
    shutil.copy2(library_copy / copied, library_copy / "a second copy.flac")
    (library_copy / removed).unlink()
    shutil.rmtree(library_copy / "Music" / "Inés Lindqvist")  # a whole artist: directories are pruned

    commits: list[Commit] = []
    report = scan(index, library_copy, commits=commits)
    after = nodes(index)
    changes = merged(commits)

    gone, born = set(before) - set(after), set(after) - set(before)
    assert any(before[i][2] == "dir" for i in gone), "the test should prune a directory"
    assert {n.id for n in changes.removed} == gone
    assert all((n.parent, n.name, n.kind) == before[n.id][:3] for n in changes.removed)
    assert {n.id for n in changes.added} == born
    assert all((n.parent, n.name, n.kind) == after[n.id][:3] for n in changes.added)
    track_of = {path: tid for path, tid in index.conn.execute("SELECT real_path, id FROM tracks")}
    kept = next(i for i, row in after.items() if row[3] == track_of[touched])
    assert changes.modified == [kept] and kept in before, "the touched track keeps its node"
    position = {n.id: i for i, n in enumerate(changes.removed)}
    for node in changes.removed:  # children are reported before their directory
        if node.parent in position:
            assert position[node.id] < position[node.parent], (node, changes.removed)
    assert not changes.rebuilt

    assert sorted(p for c in commits for p, _ in c.added) == ["a second copy.flac"]
    assert sorted(p for c in commits for p, _ in c.modified) == sorted([retagged, touched])
    assert removed in {p for c in commits for p in c.removed}
    assert len({p for c in commits for p in c.removed}) == report.removed


def test_a_rescan_of_an_unchanged_library_reports_nothing(sample_library, tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    scan(index, sample_library[0])
    commits: list[Commit] = []
    scan(index, sample_library[0], commits=commits)
    assert commits == []


def _track(index: LibraryIndex, path: str, title: str) -> int:
    row = {"origin_id": "local", "real_path": path, "size": 1, "mtime_ns": 1, "title": title,
           "artist": "A", "album": "B", "track": 1, "format": "flac", "scan_id": 0, "indexed_at": 0.0}
    cur = index.conn.execute(f"INSERT INTO tracks ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                             list(row.values()))
    return int(cur.lastrowid)


def test_nodes_added_and_removed_before_a_commit_are_not_reported(tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    tree = TreeWriter(index.conn, PathTemplate(), record=True)
    with index.transaction():
        first = _track(index, "a.flac", "One")
        tree.place(first, index.track(first))
    taken = tree.changes.take()
    assert [n.kind for n in taken.added] == ["dir", "dir", "file"] and not taken.removed
    with index.transaction():
        second = _track(index, "b.flac", "Two")
        tree.place(second, index.track(second))
        tree.remove(second)
    assert not tree.changes.take(), "a node that never reached a commit was reported"
    assert not tree.changes, "take() starts afresh"


def test_a_template_change_reports_a_rebuild_not_every_node(sample_library, tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    scan(index, sample_library[0])
    commits: list[Commit] = []
    scan(index, sample_library[0], PathTemplate("$genre/$artist - $title"), commits=commits)
    assert commits[0].tree.rebuilt and not commits[0].tree.added and not commits[0].tree.removed


def test_a_bulk_load_keeps_no_list(tmp_path):
    index = LibraryIndex(tmp_path / "index.db")
    tree = TreeWriter(index.conn, PathTemplate())  # record=False: a million tracks cost no list
    with index.transaction():
        track = _track(index, "a.flac", "One")
        tree.place_new(track, index.track(track))
    assert tree.changes == TreeChanges()
