"""A musicfs metadata source: the tags of a beets library database, matched to files by path.

beets keeps one row per track in its ``items`` table, with the file's absolute path (bytes) and
the fields it holds for it. The whole table is read once per scan (:meth:`refresh`), into a
dict by path: one query, and lookups from the scan's threads that read only that dict.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from musicfs.index.metadata import MetadataSource

log = logging.getLogger(__name__)

# musicfs's fields -> beets' item columns, the first one the library has (beets 2.x keeps a list
# of genres in ``genres``, joined by MULTI_SEPARATOR; older ones one ``genre``)
COLUMNS = {"title": ("title",), "artist": ("artist",), "album": ("album",), "album_artist": ("albumartist",),
           "genre": ("genre", "genres"), "year": ("year",), "track": ("track",), "disc": ("disc",)}
MULTI_SEPARATOR = "\\␀"


class BeetsMetadata(MetadataSource):
    name = "beets"
    required = frozenset({"library"})
    optional = frozenset({"directory"})

    def __init__(self, library: str, directory: str | None = None):
        """``library``: beets' database; ``directory``: beets' music directory, which the paths it
        keeps are relative to (beets 2 keeps them so); left out, a relative path is matched with the
        file's path in its origin (an origin whose folder is beets' directory)."""
        self.library = Path(library).expanduser()
        self.directory = Path(directory).expanduser() if directory else None
        self._items: dict[str, dict[str, Any]] = {}  # absolute path -> fields
        self._relative: dict[str, dict[str, Any]] = {}  # path relative to beets' directory -> fields

    def refresh(self) -> None:
        """Read every item of the library; a library that cannot be read is said once and leaves
        the files' own tags in place (a scan must not fail on it)."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.library}?mode=ro", uri=True)) as conn:
                have = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
                chosen = {name: next((c for c in columns if c in have), None) for name, columns in COLUMNS.items()}
                picked = [f"{column}" if column else "NULL" for column in chosen.values()]
                rows = conn.execute(f"SELECT path, {', '.join(picked)} FROM items").fetchall()
        except sqlite3.Error as exc:
            log.error("beets library %s cannot be read (%s): the files' own tags are used", self.library, exc)
            self._items = {}
            return
        items, relative = {}, {}
        for path, *values in rows:
            where = os.fsdecode(path) if isinstance(path, bytes) else str(path)
            fields = dict(zip(COLUMNS, values))
            if isinstance(fields["genre"], str):  # the first of a list of genres
                fields["genre"] = fields["genre"].split(MULTI_SEPARATOR)[0]
            if os.path.isabs(where):
                items[os.path.realpath(where)] = fields
            elif self.directory is not None:
                items[os.path.realpath(self.directory / where)] = fields
            else:
                relative[where] = fields
        self._items, self._relative = items, relative
        log.info("beets library %s: %d items", self.library, len(items) + len(relative))

    def fields(self, origin_id: str, real_path: str, local_path: str | None) -> dict[str, Any] | None:
        found = self._items.get(local_path) if local_path is not None else None
        return found if found is not None else self._relative.get(real_path)
