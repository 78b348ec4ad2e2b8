"""The scanner: walks an origin, reads tags in worker threads, keeps the index and tree current.

* A file is audio when one of the audio formats (built in, or a plugin's:
  :mod:`musicfs.index.formats`) claims its extension, and is read by that
  format's reader; any other file is counted as ignored (not audio).
* Unchanged files (same size and mtime as indexed) are not opened again.
* Tags are read by a pool of threads; results are written in the walk's order
  (so a fresh library always gets the same node ids and names) in batched
  transactions, each holding tracks and their tree nodes together.
* A malformed file is recorded in ``skipped`` with a reason, logged once, and
  the scan goes on (NFR-7.4), whatever the tag reader raised on it: hostile
  bytes must cost one file, never the scan. It is retried only when its size
  or mtime changes. So is a file whose name is not valid UTF-8 (reason
  ``bad-name``), and one whose path turned out to lead out of its origin.
* Each file's read is timed; the report names the slowest, so a file that
  costs a scan seconds shows (the tag reader bounds what one file may cost).
* Killed half-way, every finished batch is in the index; the next scan finds
  those files unchanged and carries on from there (NFR-8.3).
* Only a walk that completes removes tracks whose files are gone.
* Covers (an embedded front picture, or a ``cover.jpg`` beside the tracks) are
  found and kept as it goes (:mod:`musicfs.index.scanart`).
* Reading a remote file's tags, the scanner hands every byte range it fetched to
  ``headers`` (the content cache's header tier), with at least the first
  ``HEADER_HEAD`` bytes: whoever reads those tags next, through the mount,
  is answered without the origin.
* After each commit, ``on_commit`` is told what that transaction changed
  (:class:`Commit`: the tree writer's node changes, and tracks added, modified
  and removed), so a running mount can show exactly that at once. ``stop``
  ends a scan between two files (what was committed stays, as after a kill).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from ..errors import NotFound, OriginUnavailable
from ..origins.base import Entry, Origin
from .artwork import sidecar_rank
from .formats import FormatSet, installed
from .layout import AudioRegion, audio_region
from .library import TRACK_FIELDS, LibraryIndex
from .metadata import MetadataSource, clean, fields_key
from .scanart import ArtKeeper, ScanArt
from .scanreport import Commit, Progress, ScanReport, ScanStopped
from .tags import MalformedAudio, read_tags
from .template import PathTemplate
from .tree import TreeChanges, TreeWriter

log = logging.getLogger(__name__)

# Bytes from the start of a remote file the scanner fetches at least, for the header tier: the
# kernel reads ahead of a tag reader reading through the mount (a 4 KiB read at 0 became a
# request for up to 256 KiB), and a request past what the header holds goes to the origin.
HEADER_HEAD = 1024 * 1024
# A changed file's tags are read in smaller blocks: what is fetched for them is most of what a
# retag costs (delta sync takes the audio from the cache), and 64 KiB blocks made it a third more.
CHANGED_BLOCK = 16 * 1024


class HeaderSink(Protocol):
    """Where the byte ranges read for a file's tags, and where its audio lies, are kept (delta
    sync, then the header tier). Never raises for a cache that cannot keep them: a scan does
    not depend on it."""

    def keep(self, origin: Origin, entry: Entry, parts: list[tuple[int, bytes]],
             region: AudioRegion | None) -> object: ...


@dataclass
class _Pending:
    entry: Entry
    track_id: int | None  # existing track row to update, if any
    result: Future  # of (tags or the reason it failed, seconds the read took)


def _storable(entry: Entry) -> Entry:
    """The entry, or for a name that is not UTF-8 (the index stores text) one with the bad bytes
    written as ``\\xff``: such a file is skipped, and shows under a name that can be printed."""
    try:
        entry.path.encode("utf-8")
    except UnicodeEncodeError:
        raw = entry.path.encode("utf-8", "surrogateescape")
        return replace(entry, path=raw.decode("utf-8", "backslashreplace"))
    return entry


def _bad_name() -> Future:
    done: Future = Future()
    done.set_result((MalformedAudio("bad-name", "the file name is not valid UTF-8; rename the file"), 0.0))
    return done


class Scanner:
    """Scans one origin into one index. ``read`` is injectable for tests that count opens."""

    def __init__(
        self,
        index: LibraryIndex,
        origin: Origin,
        template: PathTemplate,
        *,
        workers: int = 4,
        batch_size: int = 200,
        progress: Progress | None = None,
        read: Callable[[str], dict] | None = None,
        on_commit: Callable[[Commit], None] | None = None,
        stop: threading.Event | None = None,
        progress_every: int = 100,
        headers: HeaderSink | None = None,
        artwork: ArtKeeper | None = None,
        metadata: MetadataSource | None = None,
        formats: FormatSet | None = None,
    ):
        """``headers``: where the bytes read for tags are kept; ``artwork``: where covers' are;
        ``metadata``: a source whose fields replace the files' (:mod:`musicfs.index.metadata`);
        ``formats``: the audio formats, which say what is audio and read it (default: those
        installed, :mod:`musicfs.index.formats`)."""
        self.index = index
        self.origin = origin
        self.template = template
        self.workers = workers
        self.batch_size = batch_size
        self.progress = progress
        self.progress_every = progress_every  # files walked between progress calls (and each batch)
        self.formats = formats
        self.read = read or functools.partial(read_tags, formats=formats)
        self.on_commit = on_commit
        self.stop = stop
        self.headers = headers
        self.metadata = metadata
        self.conn = index.conn
        self.art = ScanArt(self.conn, origin, artwork)
        self.phase = "scanning"  # then "comparing" (looking for files gone), then "done"
        self._commit = Commit(TreeChanges())  # track changes of the transaction under way
        self._unlisted = 0  # folders the origin failed to list during the walk
        self.bytes_fetched = 0  # read from a remote origin for tags (and the header tier)
        self._lock = threading.Lock()

    # -- the walk ---------------------------------------------------------
    def run(self) -> ScanReport:
        started = time.monotonic()
        report = ScanReport(self.origin.id)
        scan_id = self._begin()
        if self.metadata is not None:
            self.metadata.refresh()
        tree = TreeWriter(self.conn, self.template, record=self.on_commit is not None)
        self._prepare_tree(tree)
        # audio is what some format reads: the built-in ones' extensions and the plugins'
        audio = tuple((self.formats or installed()).extensions)
        pending: deque[_Pending] = deque()
        seen_ids: list[tuple[str, int]] = []  # ("tracks"|"skipped", row id) unchanged this scan
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="musicfs-tags") as pool:
            for entry in self.origin.walk(on_error=self._walk_error):
                if self.stop is not None and self.stop.is_set():
                    for item in pending:  # tags not read yet are not waited for
                        item.result.cancel()
                    self.art.cancel()
                    raise ScanStopped(f"scan of origin {self.origin.id} stopped after {report.seen} files")
                if not entry.path.lower().endswith(audio):
                    report.ignored += 1
                    if sidecar_rank(entry.path) is not None and _storable(entry) is entry:
                        self.art.found(entry, pool)
                    continue
                report.seen += 1
                if self.progress and report.seen % self.progress_every == 0:
                    self.progress(report, entry.path)
                named = _storable(entry)
                given = self._given(named)
                known = self._known(named, fields_key(given))
                if known is not None and known[2]:
                    report.unchanged += 1
                    seen_ids.append((known[0], known[1]))
                else:
                    track_id = known[1] if known and known[0] == "tracks" else None
                    future = (pool.submit(self._timed_read, entry, track_id is not None, given) if named is entry
                              else _bad_name())
                    pending.append(_Pending(named, track_id, future))
                if len(pending) >= self.batch_size or len(seen_ids) >= 10 * self.batch_size:
                    self._flush(pending, seen_ids, tree, scan_id, report, entry.path)
            self._flush(pending, seen_ids, tree, scan_id, report, None, last=True)
        report.unreadable += self._unlisted
        self.phase = "comparing"
        if self.progress:
            self.progress(report, None)
        if report.unreadable:
            log.warning("origin %s: %d files could not be read; removals wait for a complete scan",
                        self.origin.id, report.unreadable)
        else:
            self._finish(scan_id, tree, report)
        self.art.finish(scan_id, not report.unreadable, self.index.transaction)
        report.images = self.art.images_read
        report.seconds = time.monotonic() - started
        report.bytes_fetched = self.bytes_fetched
        report.complete = not report.unreadable
        self._record(scan_id, report)
        self.phase = "done"
        return report

    def _walk_error(self, path: str, exc: OSError | OriginUnavailable) -> None:
        log.warning("origin %s: cannot read %s: %s", self.origin.id, path, exc)
        if isinstance(exc, OriginUnavailable):
            # a folder the origin could not list now (not one it refuses for good: a link loop, a
            # forbidden folder): the files in it are not gone, so this scan removes nothing
            self._unlisted += 1

    def _given(self, entry: Entry) -> dict:
        """What the metadata source holds for a file (cleaned), {} without one."""
        if self.metadata is None:
            return {}
        local_path = getattr(self.origin, "local_path", None)
        try:
            where = str(local_path(entry.path)) if local_path is not None else None
        except ValueError:  # leads out of the origin: read (and refused) as the file
            return {}
        return clean(self.metadata.fields(self.origin.id, entry.path, where))

    def _timed_read(self, entry: Entry, changed: bool = False, given: dict | None = None
                    ) -> tuple[dict | Exception, float]:
        started = time.monotonic()
        result = self._read(entry, changed)
        if isinstance(result, dict):  # the source's fields over the file's; the stream's stay
            result = {**result, **(given or {}), "meta": fields_key(given or {})}
        return result, time.monotonic() - started

    def _read(self, entry: Entry, changed: bool = False) -> dict | MalformedAudio | OriginUnavailable | NotFound:
        """Tags of one file: by path for a local origin, through ranged reads for any other."""
        try:
            local_path = getattr(self.origin, "local_path", None)
            if local_path is not None:
                try:
                    where = str(local_path(entry.path))
                except ValueError as exc:  # swapped for a link out of the origin since the walk
                    return MalformedAudio("outside the origin", str(exc))
                return self.art.from_tags(self.read(where))
            from ..origins.rangefile import BLOCK_SIZE, RangeFile

            keep = self.headers is not None
            # a changed file is read as the tag reader asks: its audio is likely cached, and
            # delta sync reuses it rather than fetching a head that is mostly audio again
            head = HEADER_HEAD if keep and not changed else 0
            block = CHANGED_BLOCK if keep and changed else BLOCK_SIZE
            with RangeFile(self.origin, entry.path, entry.size, keep=keep, head=head, block_size=block) as source:
                try:
                    tags = self.art.from_tags(self.read(source))
                    if self.headers is not None:
                        region = audio_region(source, entry.size, tags["format"])
                        self.headers.keep(self.origin, entry, source.fetched, region)
                finally:
                    with self._lock:  # the scan's tag-reading threads
                        self.bytes_fetched += source.bytes_fetched
                return tags
        except MalformedAudio as exc:  # kept until the batch is written: without the frames it holds
            return exc.with_traceback(None)
        except (OriginUnavailable, NotFound) as exc:  # the origin failed, not the file
            return exc.with_traceback(None)
        except Exception as exc:  # the point: whatever a file makes the reader raise costs that file only
            log.debug("reading the tags of %s:%s failed", self.origin.id, entry.path, exc_info=exc)
            return MalformedAudio("parser failure", f"{type(exc).__name__}: {exc}"[:500])

    def _known(self, entry: Entry, meta: str = "") -> tuple[str, int, bool] | None:
        """(table, row id, unchanged?) for a path already in the index; ``meta``: the key of what the
        metadata source gives the file now (a change there is a change of the track)."""
        row = self.conn.execute(
            "SELECT id, size, mtime_ns, version, meta FROM tracks WHERE origin_id = ? AND real_path = ?",
            (self.origin.id, entry.path),
        ).fetchone()
        if row is not None:
            # a version (an ETag) catches a replaced object of the same size and second; an
            # index made before versions were kept has '' there: it is filled in, not a change
            unchanged = ((row[1], row[2]) == (entry.size, entry.mtime_ns) and row[3] in ("", entry.version)
                         and row[4] == meta)
            if unchanged and row[3] != entry.version:
                self.conn.execute("UPDATE tracks SET version = ? WHERE id = ?", (entry.version, row[0]))
            return "tracks", row[0], unchanged
        row = self.conn.execute(
            "SELECT id, size, mtime_ns FROM skipped WHERE origin_id = ? AND real_path = ?",
            (self.origin.id, entry.path),
        ).fetchone()
        if row is not None:
            return "skipped", row[0], (row[1], row[2]) == (entry.size, entry.mtime_ns)
        return None

    # -- writing ----------------------------------------------------------
    def _begin(self) -> int:
        with self.index.transaction():
            self.index.ensure_origin(self.origin.id, self.origin.kind, self.origin.location)
            cur = self.conn.execute(
                "INSERT INTO scans (origin_id, started_at) VALUES (?, ?)", (self.origin.id, time.time())
            )
            return int(cur.lastrowid)

    def _prepare_tree(self, tree: TreeWriter) -> None:
        """A template different from the one the tree was built with rebuilds the tree."""
        if self.index.get_meta("template") == self.template.source:
            return
        with self.index.transaction():
            placed = tree.rebuild()
            self.index.set_meta("template", self.template.source)
        self._committed(tree)
        if placed:
            log.info("template changed: virtual tree rebuilt with %d files", placed)

    def _flush(self, pending, seen_ids, tree, scan_id, report, current, last: bool = False) -> None:
        now = time.time()
        with self.index.transaction():
            for table in ("tracks", "skipped"):
                ids = [(scan_id, rid) for t, rid in seen_ids if t == table]
                self.conn.executemany(f"UPDATE {table} SET scan_id = ? WHERE id = ?", ids)
            seen_ids.clear()
            while pending:
                item = pending.popleft()
                result, seconds = item.result.result()
                if seconds > report.slowest_seconds:
                    report.slowest_seconds, report.slowest_path = seconds, item.entry.path
                self._write(item, result, tree, scan_id, now, report)
            self.art.write(scan_id, wait=last)
        self._committed(tree)
        if self.progress:
            self.progress(report, current)

    def _committed(self, tree: TreeWriter) -> None:
        """Hand what the transaction just committed to ``on_commit`` (nothing when it changed nothing)."""
        if self.on_commit is None:
            return
        commit, self._commit = self._commit, Commit(TreeChanges())
        commit.tree = tree.changes.take()
        if commit:
            self.on_commit(commit)

    def _write(self, item: _Pending, result, tree: TreeWriter, scan_id: int, now: float,
               report: ScanReport) -> None:
        entry = item.entry
        key = (self.origin.id, entry.path)
        if isinstance(result, (OriginUnavailable, NotFound)):
            # not recorded as malformed; the file is tried again next scan, and this scan
            # does not count as complete (nothing is removed on its word)
            report.unreadable += 1
            log.warning("could not read %s:%s from its origin: %s", *key, result)
            if item.track_id is not None:
                self.conn.execute("UPDATE tracks SET scan_id = ? WHERE id = ?", (scan_id, item.track_id))
            return
        report.parsed += 1
        if isinstance(result, MalformedAudio):
            report.skipped += 1
            report.skipped_reasons[result.reason] = report.skipped_reasons.get(result.reason, 0) + 1
            log.warning("skipped %s:%s: %s", *key, result)
            if item.track_id is not None:  # a good file turned bad: it leaves the tree
                tree.remove(item.track_id)
                self.conn.execute("DELETE FROM tracks WHERE id = ?", (item.track_id,))
                self._commit.removed.append(entry.path)
            self.conn.execute(
                "INSERT INTO skipped (origin_id, real_path, size, mtime_ns, reason, detail, scan_id,"
                " seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(origin_id, real_path) DO UPDATE"
                " SET size=excluded.size, mtime_ns=excluded.mtime_ns, reason=excluded.reason,"
                " detail=excluded.detail, scan_id=excluded.scan_id, seen_at=excluded.seen_at",
                (*key, entry.size, entry.mtime_ns, result.reason, result.detail, scan_id, now),
            )
            return
        self.conn.execute("DELETE FROM skipped WHERE origin_id = ? AND real_path = ?", key)
        values = {name: result.get(name) for name in TRACK_FIELDS}
        row = {**values, "origin_id": self.origin.id, "real_path": entry.path, "size": entry.size,
               "mtime_ns": entry.mtime_ns, "version": entry.version, "meta": result.get("meta", ""),
               "scan_id": scan_id, "indexed_at": now}
        if item.track_id is None:
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            cur = self.conn.execute(f"INSERT INTO tracks ({cols}) VALUES ({marks})", list(row.values()))
            track_id = int(cur.lastrowid)
            report.added += 1
            self._commit.added.append((entry.path, entry.size))
        else:
            track_id = item.track_id
            sets = ", ".join(f"{name} = ?" for name in row)
            self.conn.execute(f"UPDATE tracks SET {sets} WHERE id = ?", [*row.values(), track_id])
            report.updated += 1
            self._commit.modified.append((entry.path, entry.size))
        tree.place(track_id, row)
        self.art.track_written(track_id, entry.path, result)

    def _finish(self, scan_id: int, tree: TreeWriter, report: ScanReport) -> None:
        """After a complete walk: files not seen by it are gone from the origin."""
        with self.index.transaction():
            gone = self.conn.execute(
                "SELECT id, real_path FROM tracks WHERE origin_id = ? AND scan_id != ?",
                (self.origin.id, scan_id),
            ).fetchall()
            for track_id, real_path in gone:
                tree.remove(track_id)
                self.conn.execute("DELETE FROM tracks WHERE id = ?", (track_id,))
                self._commit.removed.append(real_path)
            self.conn.execute(
                "DELETE FROM skipped WHERE origin_id = ? AND scan_id != ?", (self.origin.id, scan_id)
            )
            report.removed = len(gone)
        self._committed(tree)
        report.skipped_reasons = dict(
            self.conn.execute(
                "SELECT reason, COUNT(*) FROM skipped WHERE origin_id = ? GROUP BY reason",
                (self.origin.id,),
            ).fetchall()
        )
        report.skipped = sum(report.skipped_reasons.values())

    def _record(self, scan_id: int, report: ScanReport) -> None:
        """Store the counts; only a complete walk counts as finished."""
        with self.index.transaction():
            self.conn.execute(
                "UPDATE scans SET finished_at = ?, stats = ? WHERE id = ?",
                (time.time() if report.complete else None, json.dumps(asdict(report)), scan_id),
            )
