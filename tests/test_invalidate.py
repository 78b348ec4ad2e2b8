"""Which kernel notifications a committed rescan leads to: only for what the kernel holds.

The kernel's side is a recording notifier here (pyfuse3's calls need a live FUSE session);
the real calls are proven on real mounts by conformance/test_live_rescan.py and
chaos/test_f32_walk_during_rescans.py.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time

import pytest
import trio

from musicfs.fuse.inodes import InodeTable
from musicfs.fuse.invalidate import KernelInvalidator
from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Commit, Scanner
from musicfs.index.template import PathTemplate
from musicfs.index.tree import TreeChanges
from musicfs.origins.local import LocalOrigin
from musicfs.vfs.resolver import Resolver


class Recorder:
    """Stands in for the kernel: records each call, fails the ones it is told to."""

    def __init__(self, fail: dict[int, int] | None = None):
        self.calls: list[tuple] = []
        self.fail = fail or {}  # node id -> errno to raise

    def _maybe_fail(self, node_id: int) -> None:
        if node_id in self.fail:
            raise OSError(self.fail[node_id], os.strerror(self.fail[node_id]))

    def entry(self, parent: int, name: bytes, deleted: int) -> None:
        self.calls.append(("entry", parent, name, deleted))
        self._maybe_fail(deleted)

    def inode(self, inode: int) -> None:
        self.calls.append(("inode", inode))
        self._maybe_fail(inode)


@pytest.fixture
def rescanned(sample_library, good_files, tmp_path):
    """(index, nodes before by id, the rescan's changes, removed real path, touched real path)."""
    root = tmp_path / "library"
    shutil.copytree(sample_library[0], root)
    index = LibraryIndex(tmp_path / "index.db")
    origin = LocalOrigin("local", root)
    Scanner(index, origin, PathTemplate(), workers=2).run()
    resolver = Resolver(index.conn)
    before = {n.id: n for n in (resolver.get(r[0]) for r in index.conn.execute("SELECT id FROM nodes"))}
    flacs = [f["path"] for f in good_files if f["format"] == "flac" and f["tags"].get("title")]
    removed, touched = flacs[0], flacs[1]
    (root / removed).unlink()
    os.utime(root / touched, ns=(time.time_ns(), time.time_ns()))
    commits: list[Commit] = []
    Scanner(index, origin, PathTemplate(), workers=2, on_commit=commits.append).run()
    changes = TreeChanges()
    for commit in commits:
        changes.removed += commit.tree.removed
        changes.modified += commit.tree.modified
    yield index, before, changes
    index.close()


@pytest.mark.req("FS-7")
def test_only_entries_and_inodes_the_kernel_holds_are_invalidated(rescanned):
    index, before, changes = rescanned
    (gone_file,) = [n for n in changes.removed if n.kind == "file"]
    (changed,) = changes.modified
    inodes = InodeTable()
    for node_id in (gone_file.id, gone_file.parent, changed):  # what the kernel looked up
        inodes.remember(before[node_id])
    stale = inodes.get(changed)
    invalidator = KernelInvalidator(inodes, Resolver(index.conn), Recorder())
    plan = invalidator.plan(changes)

    # the removed file, then its directory if it went too, and nothing the kernel never saw
    assert plan.entries[0] == (gone_file.parent, os.fsencode(gone_file.name), gone_file.id)
    pruned = [n for n in changes.removed if n.id == gone_file.parent]
    assert plan.entries[1:] == [(n.parent, os.fsencode(n.name), n.id) for n in pruned]
    # the changed file, then the directories whose listing the kernel may keep (FOPEN_CACHE_DIR):
    # those it holds, and the root, that are still there
    assert plan.inodes[0] == changed
    gone = {n.id for n in changes.removed}
    listed = {gone_file.parent, before[changed].parent, *(n.parent for n in pruned)} - gone
    assert sorted(plan.inodes[1:]) == sorted(d for d in listed if d == 1 or inodes.lookup_count(d) > 0)
    assert gone_file.parent in gone or gone_file.parent in plan.inodes
    fresh = inodes.get(changed)
    assert fresh.mtime_ns != stale.mtime_ns, "the node kept for getattr still has the old mtime"
    assert inodes.lookup_count(changed) == 1, "refreshing a node must not change its lookup count"

    nobody = KernelInvalidator(InodeTable(), Resolver(index.conn), Recorder())
    assert not nobody.plan(changes), "the kernel holds nothing: nothing to tell it"


def test_refusals_are_counted_and_logged_once(rescanned, caplog):
    index, before, changes = rescanned
    (gone_file,) = [n for n in changes.removed if n.kind == "file"]
    (changed,) = changes.modified
    inodes = InodeTable()
    for node_id in (gone_file.id, changed):
        inodes.remember(before[node_id])
    recorder = Recorder(fail={gone_file.id: errno.ENOENT, changed: errno.EPERM})
    invalidator = KernelInvalidator(inodes, Resolver(index.conn), recorder)
    with caplog.at_level(logging.WARNING, logger="musicfs.fuse.invalidate"):
        counts = trio.run(invalidator, changes)
    assert recorder.calls == [("entry", gone_file.parent, os.fsencode(gone_file.name), gone_file.id),
                              ("inode", changed)]
    assert (counts.entries, counts.inodes, counts.unknown, counts.failed) == (0, 0, 1, 1)
    assert len(caplog.records) == 1 and "refused 1 of 2" in caplog.records[0].getMessage()
    assert invalidator.statistics() == {"commits": 1, "entries": 0, "inodes": 0, "unknown": 1, "failed": 1}


def test_a_rebuilt_tree_drops_every_entry_the_kernel_holds_children_first(rescanned):
    index, before, _ = rescanned
    inodes = InodeTable()
    held = [n for n in before.values() if n.id != 1][:12] + [before[1]]
    for node in held:
        inodes.remember(node)
    recorder = Recorder()
    counts = trio.run(KernelInvalidator(inodes, Resolver(index.conn), recorder), TreeChanges(rebuilt=True))
    told = [call[3] for call in recorder.calls if call[0] == "entry"]
    assert sorted(told) == sorted(n.id for n in held if n.id != 1), "the root has no entry to drop"
    assert recorder.calls[-1] == ("inode", 1), "the root's kept listing is dropped last"
    kinds = [before[i].kind for i in told]
    assert kinds == sorted(kinds, key=lambda k: k == "dir"), "files first"
    dirs = [i for i in told if before[i].kind == "dir"]
    assert dirs == sorted(dirs, reverse=True), "deeper (newer) directories first"
    assert counts.entries == len(told)
