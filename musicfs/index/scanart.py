"""The artwork part of a scan: covers found in tags and in image files beside the tracks.

Apart from the scanner so that its walk stays about tags. What it does, in the
scan's order:

* In a tag-reading thread, :meth:`ScanArt.from_tags` takes the embedded front
  cover out of what the tag reader returned, identifies it, and hands its bytes
  to the sink (the content cache) at once: only the image's small description
  waits for the batch to be written, never its bytes.
* The walk hands over every image file named like a cover (:meth:`found`). One
  unchanged since the last scan is not read again; any other is read whole (a
  cover is a few hundred KiB) by the scan's threads.
* In each batch's transaction, tracks get their embedded cover and image files
  their rows; the folders where something changed are noted.
* After the walk, the tracks of those folders that embed nothing get the
  folder's image file, images nothing shows any more are dropped, and the sink
  is told it may let their bytes go.

A picture or image file that is not an image costs the track its cover only;
an image file the origin fails to deliver keeps its old row and is read again
next scan.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from ..errors import NotFound, OriginUnavailable
from ..origins.base import Entry, Origin
from . import artwork, pictures
from .artwork import IMAGE_LIMIT, Image

log = logging.getLogger(__name__)


class ArtKeeper(artwork.ArtSink, Protocol):
    def release(self, addresses: list[str]) -> None:
        """Images the index no longer shows: their bytes may go."""


class ScanArt:
    def __init__(self, conn: sqlite3.Connection, origin: Origin, sink: ArtKeeper | None):
        self.conn = conn
        self.origin = origin
        self.sink = sink
        self._pending: deque[tuple[Entry, Future]] = deque()  # image files being read
        self._seen: list[int] = []  # rows of image files unchanged this scan
        self._touched: set[str] = set()  # folders whose tracks' covers may have changed
        self.images_read = 0

    # -- in the tag-reading threads --------------------------------------------------------
    def from_tags(self, tags: dict[str, Any]) -> dict[str, Any]:
        """``tags`` with its picture's bytes replaced by the image's description (``artwork``)."""
        picture = tags.pop("picture", None)
        tags["artwork"] = self._keep(picture) if picture else None
        return tags

    def _keep(self, data: bytes) -> Image | None:
        try:
            image = pictures.identify(data)
        except Exception as exc:  # the point: hostile bytes cost the cover, never the track (logged)
            log.warning("a picture in %s was not read: %s: %s", self.origin.id, type(exc).__name__, exc)
            return None
        if image is not None and self.sink is not None:
            self.sink.keep(image.address, data)  # not kept (a full cache): read from the origin
        return image

    def _read_file(self, entry: Entry) -> Image | None | OriginUnavailable | NotFound | OSError:
        if entry.size > IMAGE_LIMIT or entry.size == 0:
            return None
        try:
            data = self.origin.read_range(entry.path, 0, entry.size)
        except (OriginUnavailable, NotFound, OSError) as exc:
            return exc.with_traceback(None)
        return self._keep(data)

    # -- the walk ----------------------------------------------------------------------------
    def found(self, entry: Entry, pool: ThreadPoolExecutor) -> None:
        """The walk met an image file named like a cover."""
        known = artwork.known_sidecar(self.conn, self.origin.id, entry.path)
        if known is not None and (known[1], known[2], known[3]) == (entry.size, entry.mtime_ns, entry.version):
            self._seen.append(known[0])
            return
        self._pending.append((entry, pool.submit(self._read_file, entry)))

    def cancel(self) -> None:
        for _, future in self._pending:
            future.cancel()

    # -- inside a batch's transaction -------------------------------------------------------
    def track_written(self, track_id: int, real_path: str, tags: dict[str, Any]) -> None:
        artwork.set_embedded(self.conn, track_id, tags.get("artwork"))
        self._touched.add(artwork.folder_of(real_path))

    def write(self, scan_id: int, wait: bool) -> None:
        """Record the image files read so far (``wait``: all of them, the walk is over)."""
        self.conn.executemany("UPDATE sidecars SET scan_id = ? WHERE id = ?", [(scan_id, i) for i in self._seen])
        self._seen.clear()
        while self._pending and (wait or self._pending[0][1].done()):
            entry, future = self._pending.popleft()
            result = future.result()
            if isinstance(result, (OriginUnavailable, NotFound, OSError)):
                log.warning("could not read the image %s:%s: %s", self.origin.id, entry.path, result)
                self.conn.execute("UPDATE sidecars SET scan_id = ? WHERE origin_id = ? AND real_path = ?",
                                  (scan_id, self.origin.id, entry.path))
                continue
            self.images_read += 1
            artwork.record_sidecar(self.conn, self.origin.id, entry.path, entry.size, entry.mtime_ns,
                                   entry.version, result, scan_id)
            self._touched.add(artwork.folder_of(entry.path))

    # -- after the walk ----------------------------------------------------------------------
    def finish(self, scan_id: int, complete: bool, transaction: Callable[[], Any]) -> None:
        """Give folders' images to their tracks and drop the images nothing shows."""
        with transaction():
            if complete:
                self._touched |= artwork.drop_unseen_sidecars(self.conn, self.origin.id, scan_id)
            artwork.assign_folder_art(self.conn, self.origin.id, sorted(self._touched))
            gone = artwork.drop_orphans(self.conn)
        self._touched.clear()
        if gone and self.sink is not None:
            self.sink.release(gone)
