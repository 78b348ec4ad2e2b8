"""Album artwork: which picture is a track's front cover, and how the index records it.

Why here, below the services: the scanner finds the pictures (in the tags it
reads anyway, or in an image file beside the tracks), and the index keeps one
row per image and one per track that shows it; the mount reads those rows to
show each album directory's ``cover.jpg``. The bytes themselves go to the
content cache (:mod:`musicfs.store.artwork`), under the image's content
address, so an image embedded in twelve tracks is one image, stored once.

Rules, in one place (the parsers that apply them, mutagen's and Pillow's, are
in :mod:`musicfs.index.pictures`, which a mount never imports):

* A track's front cover is its embedded picture of type 3 (front cover); a file
  whose pictures are all of type 0 ("other", what many taggers write) gives its
  first one. Other types (back cover, artist, ...) are not the cover.
* Without one, an image file beside the track on the origin is its cover:
  ``cover.*``, then ``folder.*``, then ``front.*`` (case ignored; JPEG and PNG
  before other formats).
* An image is what Pillow identifies as JPEG, PNG, GIF, WebP or BMP from its
  header, at most :data:`IMAGE_LIMIT` bytes; anything else is not a cover, and
  costs the track nothing but its cover.
* An album directory shows the cover most of its tracks have (ties: the first
  track's), named ``cover.`` plus the format's extension.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

FRONT = "front"  # the only art type shown today (the table has room for 'back' and others)
EMBEDDED = "embedded"  # artwork.source of a picture inside the track
FOLDER = "folder"  # artwork.source of an image file beside the track
IMAGE_LIMIT = 16 * 1024 * 1024  # bytes: a larger "cover" is not kept nor shown
SIDECAR_STEMS = ("cover", "folder", "front")  # in order of preference
_COMMON = ("jpg", "jpeg", "png")
_OTHER = ("webp", "gif", "bmp")
# Pillow's format name -> (MIME type, the extension the cover file is named with)
FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "GIF": ("image/gif", "gif"),
           "WEBP": ("image/webp", "webp"), "BMP": ("image/bmp", "bmp")}
EXTENSIONS = dict(FORMATS.values())
COVER_NAMES = frozenset(f"cover.{ext}" for ext in EXTENSIONS.values())  # what an album directory may show


@dataclass(frozen=True)
class Image:
    """An image as the index knows it: its content address, format and size."""

    address: str  # xxh3-128 of the bytes: the content cache's name for them
    mime: str
    size: int
    width: int
    height: int

    @property
    def file_name(self) -> str:
        return f"cover.{EXTENSIONS.get(self.mime, 'img')}"


@dataclass(frozen=True)
class Cover:
    """An image shown as a cover file: its row id (the file's inode is derived from it)."""

    id: int
    image: Image


class ArtSink(Protocol):
    """Where the scanner hands the bytes of each image it found (the content cache). Returns
    whether they are kept; never raises for a cache that cannot keep them."""

    def keep(self, address: str, data: bytes) -> bool: ...


def sidecar_rank(path: str) -> int | None:
    """How good a cover the image file at ``path`` is (lower is better), or None if it is none."""
    stem, dot, extension = path.rpartition("/")[2].lower().rpartition(".")
    if not dot or stem not in SIDECAR_STEMS or extension not in _COMMON + _OTHER:
        return None
    return 2 * SIDECAR_STEMS.index(stem) + (extension in _OTHER)


def folder_of(path: str) -> str:
    """The folder of a path inside its origin ('' for the top)."""
    return path.rpartition("/")[0]


# -- the index's rows -------------------------------------------------------------------------
def image_id(conn: sqlite3.Connection, image: Image) -> int:
    """The row of ``image`` in ``images``, made if new (one row per content address)."""
    conn.execute("INSERT INTO images (address, mime, size, width, height) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT(address) DO NOTHING",
                 (image.address, image.mime, image.size, image.width, image.height))
    return conn.execute("SELECT id FROM images WHERE address = ?", (image.address,)).fetchone()[0]


def set_embedded(conn: sqlite3.Connection, track_id: int, image: Image | None) -> None:
    """A track was read: its art is what it embeds now (a folder image is given back by
    :func:`assign_folder_art` for the track's folder)."""
    conn.execute("DELETE FROM artwork WHERE track_id = ?", (track_id,))
    if image is not None:
        conn.execute("INSERT INTO artwork (track_id, art_type, image_id, source) VALUES (?, ?, ?, ?)",
                     (track_id, FRONT, image_id(conn, image), EMBEDDED))


def record_sidecar(conn: sqlite3.Connection, origin_id: str, path: str, size: int, mtime_ns: int,
                   version: str, image: Image | None, scan_id: int) -> None:
    """An image file beside the tracks was read (``image`` None: it is not an image we show)."""
    found = image_id(conn, image) if image is not None else None
    conn.execute(
        "INSERT INTO sidecars (origin_id, real_path, folder, rank, size, mtime_ns, version, image_id, scan_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(origin_id, real_path) DO UPDATE SET"
        " size = excluded.size, mtime_ns = excluded.mtime_ns, version = excluded.version,"
        " image_id = excluded.image_id, scan_id = excluded.scan_id",
        (origin_id, path, folder_of(path), sidecar_rank(path), size, mtime_ns, version, found, scan_id))


def known_sidecar(conn: sqlite3.Connection, origin_id: str, path: str) -> tuple[int, int, int, str] | None:
    """(row id, size, mtime_ns, version) of an image file read before, or None."""
    return conn.execute("SELECT id, size, mtime_ns, version FROM sidecars WHERE origin_id = ? AND real_path = ?",
                        (origin_id, path)).fetchone()


def drop_unseen_sidecars(conn: sqlite3.Connection, origin_id: str, scan_id: int) -> set[str]:
    """After a complete walk: forget the image files it did not see; returns their folders."""
    rows = conn.execute("DELETE FROM sidecars WHERE origin_id = ? AND scan_id != ? RETURNING folder",
                        (origin_id, scan_id)).fetchall()
    return {row[0] for row in rows}


def assign_folder_art(conn: sqlite3.Connection, origin_id: str, folders: Iterable[str]) -> None:
    """Give the tracks of each folder that embed no cover the folder's best image file, if any."""
    for folder in folders:
        prefix = f"{folder}/" if folder else ""
        # the folder's own tracks: paths in [prefix, prefix + 0xff...) with no '/' after the prefix
        in_folder = ("origin_id = ? AND real_path >= ? AND real_path < ? AND instr(substr(real_path, ?), '/') = 0")
        args = (origin_id, prefix, prefix + "\U0010ffff", len(prefix) + 1)
        conn.execute(f"DELETE FROM artwork WHERE source = '{FOLDER}' AND track_id IN"
                     f" (SELECT id FROM tracks WHERE {in_folder})", args)
        best = conn.execute("SELECT image_id FROM sidecars WHERE origin_id = ? AND folder = ?"
                            " AND image_id IS NOT NULL ORDER BY rank, real_path LIMIT 1",
                            (origin_id, folder)).fetchone()
        if best is not None:
            conn.execute(f"INSERT OR IGNORE INTO artwork (track_id, art_type, image_id, source)"
                         f" SELECT id, '{FRONT}', ?, '{FOLDER}' FROM tracks WHERE {in_folder}",
                         (best[0], *args))


def drop_orphans(conn: sqlite3.Connection) -> list[str]:
    """Remove images no track and no image file shows any more; returns their addresses."""
    rows = conn.execute(
        "DELETE FROM images WHERE id NOT IN (SELECT image_id FROM artwork)"
        " AND id NOT IN (SELECT image_id FROM sidecars WHERE image_id IS NOT NULL) RETURNING address"
    ).fetchall()
    return [row[0] for row in rows]


def album_cover(conn: sqlite3.Connection, dir_id: int) -> Cover | None:
    """The cover a directory shows: the front image most of its tracks have, or None."""
    row = conn.execute(
        "SELECT i.id, i.address, i.mime, i.size, i.width, i.height FROM nodes n"
        " JOIN artwork a ON a.track_id = n.track_id AND a.art_type = ?"
        " JOIN images i ON i.id = a.image_id WHERE n.parent = ? AND n.kind = 'file'"
        " GROUP BY i.id ORDER BY COUNT(*) DESC, MIN(n.id) LIMIT 1", (FRONT, dir_id)).fetchone()
    return Cover(row[0], Image(*row[1:])) if row is not None else None


def cover(conn: sqlite3.Connection, cover_id: int) -> Cover | None:
    row = conn.execute("SELECT id, address, mime, size, width, height FROM images WHERE id = ?",
                       (cover_id,)).fetchone()
    return Cover(row[0], Image(*row[1:])) if row is not None else None


@dataclass(frozen=True)
class Source:
    """Where an image's bytes can be read again: a track that embeds it, or an image file."""

    origin_id: str
    real_path: str
    size: int
    embedded: bool


def sources(conn: sqlite3.Connection, cover_id: int, limit: int = 4) -> list[Source]:
    """A few places holding the image, image files first (reading one costs its bytes only)."""
    rows = conn.execute(
        "SELECT origin_id, real_path, size, 0 FROM sidecars WHERE image_id = ?"
        " UNION ALL SELECT t.origin_id, t.real_path, t.size, 1 FROM artwork a JOIN tracks t"
        " ON t.id = a.track_id WHERE a.image_id = ? AND a.source = ? LIMIT ?",
        (cover_id, cover_id, EMBEDDED, limit)).fetchall()
    return [Source(row[0], row[1], row[2], bool(row[3])) for row in rows]


def statistics(conn: sqlite3.Connection) -> dict[str, int]:
    images, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM images").fetchone()
    tracks = conn.execute("SELECT COUNT(*) FROM artwork").fetchone()[0]
    return {"images": images, "image_bytes": size, "tracks_with_art": tracks}
