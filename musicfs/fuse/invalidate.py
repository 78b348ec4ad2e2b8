"""Telling the kernel what a live rescan changed, exactly, once it is committed.

The kernel keeps names (entries) and attributes for the mount's timeouts
(300 s) and the pages of files it read (``keep_cache``). When a rescan commits,
the tree writer's report (:class:`~musicfs.index.tree.TreeChanges`) says which
nodes went and which files changed in place. Of those, only the ones the
kernel holds (a lookup count above zero in the :class:`InodeTable`) are told,
so a rescan that changed ten files costs ten notifications whatever the size
of the library:

* a removed node: ``invalidate_entry(parent, name, deleted=node)``. The kernel
  drops the name at once (and tells inotify watchers it was deleted); a file
  still open keeps working on its handle, as an unlinked file would. Children
  come before their directories.
* a file changed in place (same node, so the same inode): ``invalidate_inode``
  drops its attributes (size, mtime) and its cached pages. The node kept for
  the kernel's getattr calls is replaced by the new one first.
* an added node: its name needs nothing. A name this daemon answered ENOENT for
  is not kept by the kernel (FUSE keeps a negative entry only when told to,
  with inode 0).
* the directory an added, removed or changed node is in: ``invalidate_inode``.
  The kernel keeps the listings of the tag tree (``FOPEN_CACHE_DIR``, see
  :mod:`musicfs.fuse.dircache`) and lists them again itself until told; this
  drops the kept listing (a changed file may bring or take an album's cover).
* a rebuilt tree (a template change): every entry the kernel holds is dropped,
  and the root's listing.

The calls block while the kernel finishes a request on the same directory or
pages, and this daemon's loop is what answers those: they run in a worker
thread, never on the loop. (pyfuse3's ``invalidate_entry_async`` also queues
them on a thread, but never says when they are done; here the rescan reports
completion only once the kernel has dropped them, so an ``ls`` or ``stat``
right after a rescan sees the new tree.)
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Protocol

import pyfuse3
import trio

from ..errors import NotFound
from ..index.schema import ROOT_ID
from ..index.tree import TreeChanges
from ..vfs.resolver import Resolver
from .inodes import InodeTable

log = logging.getLogger(__name__)


class KernelNotifier(Protocol):
    """The two kernel notifications; raise ``OSError`` as pyfuse3 does."""

    def entry(self, parent: int, name: bytes, deleted: int) -> None: ...

    def inode(self, inode: int) -> None: ...


class Pyfuse3Notifier:
    """The real thing: pyfuse3's blocking calls (run them in a worker thread)."""

    def entry(self, parent: int, name: bytes, deleted: int) -> None:
        pyfuse3.invalidate_entry(parent, name, deleted=deleted)

    def inode(self, inode: int) -> None:
        pyfuse3.invalidate_inode(inode, attr_only=False)


@dataclass(frozen=True)
class Plan:
    """What to tell the kernel about one commit: (parent, name, node) entries, then inodes."""

    entries: list[tuple[int, bytes, int]] = field(default_factory=list)
    inodes: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.inodes)


@dataclass
class InvalidationCounts:
    entries: int = 0  # names the kernel dropped
    inodes: int = 0  # inodes whose attributes and pages it dropped
    unknown: int = 0  # already forgotten by the kernel (ENOENT): nothing was left to drop
    failed: int = 0  # refused for another reason (logged)

    def add(self, other: InvalidationCounts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


class KernelInvalidator:
    """The mount's answer to "the tree changed": called by the sync service after each commit."""

    def __init__(self, inodes: InodeTable, resolver: Resolver, notifier: KernelNotifier | None = None):
        self.inodes = inodes
        self.resolver = resolver
        self.notifier = notifier or Pyfuse3Notifier()
        self.totals = InvalidationCounts()
        self.commits = 0

    def plan(self, changes: TreeChanges) -> Plan:
        """Which of the changes the kernel holds; refreshes kept nodes of files changed in place.

        Runs on the loop, after the commit: a lookup answered before it is in the
        counts already, one answered after it saw the new tree.
        """
        plan = Plan()
        if changes.rebuilt:
            held = sorted(self.inodes.held(), key=lambda n: (n.is_dir, -n.id))  # files, then deepest dirs
            plan.entries.extend((n.parent, os.fsencode(n.name), n.id) for n in held if n.id != ROOT_ID)
            plan.inodes.append(ROOT_ID)
            return plan
        listings: dict[int, None] = {}  # directories whose kept listing changed, in order, once
        for node in changes.removed:
            if self.inodes.lookup_count(node.id) > 0:
                plan.entries.append((node.parent, os.fsencode(node.name), node.id))
            listings[node.parent] = None
        for node in changes.added:
            listings[node.parent] = None
        for node_id in changes.modified:
            # one the kernel does not hold is in no listing it keeps either: a listing
            # (READDIRPLUS) hands the kernel every entry in it
            if self.inodes.lookup_count(node_id) > 0:
                try:
                    node = self.resolver.get(node_id)
                except NotFound:  # gone again since (a later commit): its removal says so
                    continue
                self.inodes.refresh(node)
                plan.inodes.append(node_id)
                listings[node.parent] = None
        removed = {node.id for node in changes.removed}
        plan.inodes.extend(d for d in listings if d not in removed
                           and (d == ROOT_ID or self.inodes.lookup_count(d) > 0))
        return plan

    def send(self, plan: Plan) -> InvalidationCounts:
        """Tell the kernel (blocking: in a worker thread)."""
        counts = InvalidationCounts()
        problems: list[str] = []
        for parent, name, node_id in plan.entries:
            self._call(counts, problems, "entries", self.notifier.entry, parent, name, node_id)
        for node_id in plan.inodes:
            self._call(counts, problems, "inodes", self.notifier.inode, node_id)
        if problems:
            log.warning("the kernel refused %d of %d cache invalidations (first: %s); those entries "
                        "show their old state until their timeout", len(problems),
                        len(plan.entries) + len(plan.inodes), problems[0])
        return counts

    @staticmethod
    def _call(counts: InvalidationCounts, problems: list[str], kind: str, call, *args) -> None:
        try:
            call(*args)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                counts.unknown += 1
            else:
                counts.failed += 1
                problems.append(f"{call.__name__}{args!r}: {os.strerror(exc.errno or 0)}")
            return
        setattr(counts, kind, getattr(counts, kind) + 1)

    async def __call__(self, changes: TreeChanges) -> InvalidationCounts:
        self.resolver.changed(changes)  # the daemon's own kept listings first, then the kernel's
        plan = self.plan(changes)
        counts = InvalidationCounts()
        if plan:
            # abandoned on cancel: at unmount the kernel may never answer, and nothing waits for it
            counts = await trio.to_thread.run_sync(self.send, plan, abandon_on_cancel=True)
        self.commits += 1
        self.totals.add(counts)
        return counts

    def statistics(self) -> dict[str, int]:
        return {"commits": self.commits, **asdict(self.totals)}
