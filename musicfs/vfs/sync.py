"""Live rescans: the scanner run inside the mounted daemon, shown in the mount as it commits.

A rescan walks one origin with :class:`~musicfs.index.scanner.Scanner` in a
thread of its own, on a connection of its own to the index. The mount keeps
reading its own connection meanwhile: SQLite's WAL gives it the tree as of
the last commit, so listings and reads never wait for the scan (FR-9.2), and
see each batch once it is committed. After each commit the scanner reports
what that transaction changed (:class:`~musicfs.index.scanner.Commit`); the
service hands the tree's part to ``tree_changed`` (the mount's kernel
invalidation, given by the composition root: this module knows nothing of
FUSE) and publishes ``FileAdded`` / ``FileModified`` / ``FileRemoved`` for the
tracks. The scan thread waits until that is done, so a rescan that says
``complete`` has shown everything in the mount.

One rescan per origin at a time. A request that arrives while one is running
does not join it (the walk may already be past the files the requester just
changed): it *queues* one more rescan, which starts when the running one ends,
and its stream says ``queued`` until then. Further requests meanwhile join
that queued rescan. So every request is answered by a rescan that started
after it, and requests in a burst cost at most two walks. Rescans of
different origins also write one at a time (two tree writers would prune
directories under each other): the later one says ``queued`` until its turn.

Progress documents (what ``rescan()`` yields, streamed as NDJSON by the API)::

    {"origin": "nas", "phase": "scanning", "files_scanned": 1200, "total": 5000,
     "changed": 3, "errors": 0, "current": "Artist/Album/01.flac", ...}

``phase`` is ``queued`` (waiting for another rescan to end),
``scanning`` (walking the origin; new and changed files have their tags read
and are committed in batches), ``comparing`` (the walk is done: tracks whose
files are gone are removed), ``indexing`` (the last commits are shown in the
mount and the scan is recorded), then ``complete`` (with counts) or ``failed``
(with ``error``). ``total`` is the number of files the index knew for the
origin before the walk (the walk's best estimate), at least the files seen.
A subscriber that reads slowly skips intermediate documents, never the last.

The scan runs in a thread of its own at a lower CPU priority (nice 10), and
reads a local origin's tags in one thread: every thread of the daemon shares
one interpreter lock with the thread answering the filesystem, which must win
it quickly for listings and reads to stay fast during a rescan.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ..errors import MusicFSError
from ..events import EventBus, FileAdded, FileModified, FileRemoved, SyncCompleted, SyncStarted
from ..index.library import LibraryIndex
from ..index.scanreport import Commit, ScanReport, ScanStopped
from ..index.template import PathTemplate
from ..index.tree import TreeChanges
from ..lifecycle import Lifecycle
from ..origins.base import Origin

if TYPE_CHECKING:
    from ..index.metadata import MetadataSource
    from ..index.scanart import ArtKeeper
    from ..index.scanner import HeaderSink

log = logging.getLogger(__name__)

TreeChanged = Callable[[TreeChanges], Awaitable[object]]
PROGRESS_EVERY = 0.1  # seconds between progress documents while scanning
FINAL = ("complete", "failed")
NICE = 10  # CPU priority of a rescan's threads, below the thread answering the filesystem
STOP_WAIT = 10.0  # seconds a stopping mount waits for a rescan to reach its next file


@dataclass
class Rescan:
    """One rescan of one origin: its latest progress document, and who waits for the next."""

    origin_id: str
    document: dict[str, Any]
    changed: trio.Event = field(default_factory=trio.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: int = 0  # files the walk could not read or found malformed, as last reported

    @property
    def done(self) -> bool:
        return self.document["phase"] in FINAL

    def post(self, document: dict[str, Any]) -> None:
        """A new document (on the trio thread); a final one is never replaced."""
        if self.done:
            return
        self.document = document
        self.changed.set()
        self.changed = trio.Event()


def _document(origin_id: str, phase: str, report: ScanReport | None, *, total: int = 0,
              current: str | None = None, errors: int = 0, **extra: Any) -> dict[str, Any]:
    seen = report.seen if report else 0
    counts = {"added": report.added, "modified": report.updated, "removed": report.removed,
              "unchanged": report.unchanged} if report else {"added": 0, "modified": 0, "removed": 0,
                                                             "unchanged": 0}
    return {"origin": origin_id, "phase": phase, "files_scanned": seen, "total": max(total, seen),
            "changed": counts["added"] + counts["modified"] + counts["removed"], "errors": errors,
            "current": current, **counts, **extra}


class SyncService:
    """Rescans of the mount's origins, on request (control API) or on a schedule.

    ``run()`` must be running (in the mount's nursery) for rescans to start:
    it is their nursery, and when the mount stops it tells running scans to
    stop at the next file (what they committed stays, as after a kill).
    """

    def __init__(self, index: LibraryIndex, origins: dict[str, Origin], template: PathTemplate, *,
                 bus: EventBus, lifecycle: Lifecycle, tree_changed: TreeChanged | None = None,
                 workers: int = 4, batch_size: int = 200, headers: dict[str, HeaderSink] | None = None,
                 artwork: ArtKeeper | None = None, metadata: MetadataSource | None = None,
                 refusal: str | None = None):
        """``workers``: tag-reading threads per rescan of a remote origin (a local one gets one);
        ``headers``: per origin id, where the bytes read for tags are kept (the header tier);
        ``artwork``: where the covers found are kept; ``metadata``: a source of tags that replace
        the files' (read again at each rescan); ``refusal``: why this mount never rescans (its
        index comes from a published catalog), said to every request."""
        self.refusal = refusal
        self.headers = headers or {}
        self.metadata = metadata
        self.artwork = artwork
        self.index = index
        self.origins = origins
        self.template = template
        self.bus = bus
        self.lifecycle = lifecycle
        self.tree_changed = tree_changed
        self.workers = workers
        self.batch_size = batch_size
        self.running: dict[str, Rescan] = {}
        self.queued: dict[str, Rescan] = {}
        self.last: dict[str, dict[str, Any]] = {}  # origin -> final document of its last rescan
        self.completed = 0
        self.failed = 0
        self._nursery: trio.Nursery | None = None
        self._writer = trio.Lock()

    def origin_ids(self) -> list[str]:
        return sorted(self.origins)

    # -- the service's life ---------------------------------------------------
    async def run(self) -> None:
        """Home of the rescans until the mount stops; then they are stopped and waited for."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                for rescan in [*self.running.values(), *self.queued.values()]:
                    rescan.stop.set()

    async def run_schedule(self, interval: float) -> None:
        """Rescan every origin, one after the other, ``interval`` seconds after the last round ended."""
        while True:
            await trio.sleep(interval)
            for origin_id in self.origin_ids():
                async for document in self.rescan(origin_id):
                    if document["phase"] in FINAL:
                        log.debug("scheduled rescan of origin %s: %s", origin_id, document["phase"])

    # -- requests --------------------------------------------------------------
    def request(self, origin_id: str) -> Rescan:
        """The rescan that answers a request made now: a new one, or the one already queued."""
        if self.refusal is not None:
            return Rescan(origin_id, _document(origin_id, "failed", None, error=self.refusal))
        if origin_id in self.queued:
            return self.queued[origin_id]
        if origin_id not in self.origins:
            return Rescan(origin_id, _document(origin_id, "failed", None, error=f"no origin {origin_id!r}"))
        if self._nursery is None:
            return Rescan(origin_id, _document(origin_id, "failed", None,
                                               error="the mount is not running rescans (starting or stopping)"))
        if origin_id in self.running:
            rescan = self.queued[origin_id] = Rescan(origin_id, _document(origin_id, "queued", None))
            return rescan
        # another origin's rescan holds (or is about to hold) the writer's lock: this one waits
        rescan = Rescan(origin_id, _document(origin_id, "queued" if self.running else "scanning", None))
        self._start(rescan)
        return rescan

    def _start(self, rescan: Rescan) -> None:
        assert self._nursery is not None
        self.running[rescan.origin_id] = rescan
        self._nursery.start_soon(self._run, rescan)

    async def rescan(self, origin_id: str) -> AsyncIterator[dict[str, Any]]:
        """Progress documents of a rescan of ``origin_id``, until it is complete or failed.

        Leaving early (a client that hangs up) leaves the rescan running.
        """
        rescan = self.request(origin_id)
        shown = None
        while True:
            document, changed = rescan.document, rescan.changed
            if document is not shown:
                shown = document
                yield document
                if document["phase"] in FINAL:
                    return
            else:
                await changed.wait()

    # -- one rescan ------------------------------------------------------------
    async def _run(self, rescan: Rescan) -> None:
        """One rescan, once no other origin's rescan is writing; then the one queued behind it."""
        origin_id = rescan.origin_id
        final: dict[str, Any] | None = None
        try:
            if self._writer.locked() and rescan.document["phase"] != "queued":
                rescan.post(_document(origin_id, "queued", None))
            async with self._writer:  # one writer: two scanners would prune directories under each other
                final = await self._scan_and_report(rescan)
        finally:
            if final is None:  # cancelled: the mount is stopping
                final = self._failed(rescan, "the mount is stopping")
            self.last[origin_id] = final
            rescan.post(final)
            del self.running[origin_id]
            waiting = self.queued.pop(origin_id, None)
            if waiting is not None:
                if self._nursery is not None:
                    self._start(waiting)
                else:
                    waiting.post(self._failed(waiting, "the mount is stopping"))

    async def _scan_and_report(self, rescan: Rescan) -> dict[str, Any]:
        """Scan, and say how it went: the final document (a failure is one too, logged once)."""
        origin_id = rescan.origin_id
        rescan.post(_document(origin_id, "scanning", None))
        self.lifecycle.sync_started()
        self.bus.publish(SyncStarted(origin_id))
        started = time.monotonic()
        try:
            report = await self._in_background_thread(rescan)
        except ScanStopped as exc:  # the mount is stopping
            return self._failed(rescan, str(exc))
        except (MusicFSError, OSError, sqlite3.Error) as exc:
            log.warning("rescan of origin %s failed: %s: %s", origin_id, type(exc).__name__, exc)
            return self._failed(rescan, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the point: a bug in a rescan must cost that rescan, never the mount
            log.exception("rescan of origin %s failed unexpectedly", origin_id)
            return self._failed(rescan, f"internal error: {type(exc).__name__}")
        finally:
            self.lifecycle.sync_ended()
        self.completed += 1
        self.bus.publish(SyncCompleted(origin_id, added=report.added, removed=report.removed,
                                       modified=report.updated, unchanged=report.unchanged,
                                       skipped=report.skipped, seconds=report.seconds))
        log.info("rescan of origin %s: %d new, %d modified, %d removed, %d unchanged (%.1f s)", origin_id,
                 report.added, report.updated, report.removed, report.unchanged, report.seconds)
        return _document(origin_id, "complete", report, total=report.seen, errors=rescan.errors,
                         skipped=report.skipped, partial=not report.complete,
                         seconds=round(time.monotonic() - started, 3))

    def _failed(self, rescan: Rescan, why: str) -> dict[str, Any]:
        self.failed += 1
        last = rescan.document
        return {**last, "phase": "failed", "error": why, "current": None}

    async def _in_background_thread(self, rescan: Rescan) -> ScanReport:
        """Run :meth:`_scan` in a thread of its own, at a lower CPU priority, and wait for it.

        Not one of trio's cached worker threads: its priority is lowered for good
        (only root may raise it again), and so is that of the tag readers it
        starts, which inherit it. The daemon's threads share one interpreter
        lock, and the kernel then hands the CPU to the thread answering the
        filesystem first: measured on two busy cores, listings during a rescan
        took a median of 1-2 ms instead of 3-5 ms, reads 2-6 ms instead of 9-13.
        """
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        result: list[Any] = []  # [report] or [None, exception]

        def body() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
            except OSError as exc:  # not allowed here (a sandbox): the rescan runs at normal priority
                log.debug("could not lower the priority of a rescan: %s", exc)
            try:
                result.append(self._scan(rescan, token))
            except BaseException as exc:  # handed to the waiting task, which handles it
                result[:] = [None, exc]
            finally:
                try:
                    token.run_sync_soon(finished.set)
                except trio.RunFinishedError:
                    pass

        threading.Thread(target=body, name=f"musicfs-rescan-{rescan.origin_id}", daemon=True).start()
        try:
            await finished.wait()
        except trio.Cancelled:  # the mount stops: the scan stops at its next file
            rescan.stop.set()
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_WAIT):
                await finished.wait()
            raise
        if len(result) == 2:
            raise result[1]
        return result[0]

    def _scan(self, rescan: Rescan, token: trio.lowlevel.TrioToken) -> ScanReport:
        """The scan itself, in its thread, on a connection of its own."""
        origin_id = rescan.origin_id
        origin = self.origins[origin_id]
        origin.health()  # an origin that cannot be reached is not walked (it would list nothing)
        writer = self.index.another_connection()
        try:
            total = writer.origin_file_count(origin_id)
            posted = 0.0

            def post(document: dict[str, Any]) -> None:
                try:
                    token.run_sync_soon(rescan.post, document)
                except trio.RunFinishedError:
                    pass

            def progress(report: ScanReport, current: str | None) -> None:
                nonlocal posted
                now = time.monotonic()
                rescan.errors = report.unreadable + report.skipped
                if scanner.phase == "scanning" and now - posted < PROGRESS_EVERY:
                    return
                posted = now
                post(_document(origin_id, scanner.phase, report, total=total, current=current,
                               errors=rescan.errors))

            def committed(commit: Commit) -> None:
                trio.from_thread.run(self._show, rescan, commit, trio_token=token)

            # a local origin's tags are parsed in Python: more threads only take the interpreter lock
            # from the filesystem's thread; a remote origin's reads wait on the network, in parallel
            workers = 1 if getattr(origin, "local_path", None) else self.workers
            from ..index.scanner import Scanner  # with the tag readers: paid by a rescan, not by a mount

            scanner = Scanner(writer, origin, self.template, workers=workers, batch_size=self.batch_size,
                              progress=progress, on_commit=committed, stop=rescan.stop,
                              headers=self.headers.get(origin_id), artwork=self.artwork, metadata=self.metadata)
            post(_document(origin_id, "scanning", None, total=total))
            report = scanner.run()
            post(_document(origin_id, "indexing", report, total=report.seen, errors=rescan.errors))
            return report
        finally:
            writer.close()

    async def _show(self, rescan: Rescan, commit: Commit) -> None:
        """One commit, in the mount: the kernel told first, then the events published.

        Skipped once the mount is stopping: the kernel's requests may no longer be
        answered (a notification would wait for them), and what it cached goes
        with the mount.
        """
        origin_id = rescan.origin_id
        if rescan.stop.is_set() or self.lifecycle.shutdown is not None:
            return
        if commit.tree and self.tree_changed is not None:
            await self.tree_changed(commit.tree)
        for path, size in commit.added:
            self.bus.publish(FileAdded(origin_id, path, size))
        for path, size in commit.modified:
            self.bus.publish(FileModified(origin_id, path, size))
        for path in commit.removed:
            self.bus.publish(FileRemoved(origin_id, path))

    def statistics(self) -> dict[str, Any]:
        return {"running": sorted(self.running), "queued": sorted(self.queued), "completed": self.completed,
                "failed": self.failed, "last": self.last}
