"""Album covers: the ``cover.jpg`` (or ``cover.png``...) each album directory of the tag tree shows.

A directory shows a cover when its tracks have front artwork
(:func:`musicfs.index.artwork.album_cover`): listed first, found by lookup, and
never a name a track can take (tracks are named with their audio extension).
The file's inode is derived from the image's row id, not from the directory:
the same picture shown by two directories is one inode, and a directory whose
cover changed shows a new inode, so the kernel never serves the old picture's
pages for the new one (the content of an inode never changes, its pages are
kept). Names are looked up again after a second, so a rescan that changed a
cover shows it at once without telling the kernel anything.

Bytes come from the content cache (:class:`~musicfs.store.artwork.ArtShelf`):
readable offline; an image not there is read from its origin, within the
mount's read timeout, else the open fails with EIO.
"""

from __future__ import annotations

import sqlite3

import pyfuse3
import trio

from ...errors import NotADirectory, NotFound, OriginUnavailable
from ...index import artwork
from ...index.artwork import Cover
from ...store.artwork import ArtShelf
from ...vfs.hidden import HIDDEN_BASE
from ..attrs import AttrPolicy, generated_attributes
from .base import OpenFile, Reply, Snapshot

COVERS_BASE = HIDDEN_BASE + (4 << 40)
ENTRY_TIMEOUT = 1.0  # seconds the kernel keeps a cover's name: a rescan's new cover shows this soon
XATTR_PREFIX = "user.musicfs."


class CoverNamespace:
    """The cover files' inodes; entered from the tag tree's directories, never by a name in the root."""

    inode_base = root_inode = COVERS_BASE

    def __init__(self, conn: sqlite3.Connection, shelf: ArtShelf, policy: AttrPolicy, *,
                 read_timeout: float = 5.0):
        self.conn = conn  # the index, read on the loop as the tree's resolver reads it
        self.shelf = shelf
        self.policy = policy
        self.read_timeout = read_timeout

    # -- entered from the tag tree -------------------------------------------------------
    def cover_of(self, dir_id: int) -> Cover | None:
        return artwork.album_cover(self.conn, dir_id)

    def entry(self, cover: Cover) -> tuple[str, pyfuse3.EntryAttributes]:
        """The cover's name in its directory, and its attributes."""
        return cover.image.file_name, self._attributes(cover)

    def lookup_in(self, dir_id: int, name: str) -> pyfuse3.EntryAttributes:
        cover = self.cover_of(dir_id)
        if cover is None or cover.image.file_name != name:
            raise NotFound(name)
        return self._attributes(cover)

    def _attributes(self, cover: Cover) -> pyfuse3.EntryAttributes:
        attr = generated_attributes(COVERS_BASE + cover.id, cover.image.size, self.policy, is_dir=False,
                                    mtime_ns=self.policy.dir_mtime_ns)
        attr.entry_timeout = ENTRY_TIMEOUT
        attr.attr_timeout = self.policy.attr_timeout  # an inode's content never changes
        return attr

    def _cover(self, inode: int) -> Cover:
        found = artwork.cover(self.conn, inode - COVERS_BASE)
        if found is None:
            raise NotFound(f"cover inode {inode} is no longer shown")
        return found

    # -- the namespace ---------------------------------------------------------------------
    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        raise NotADirectory(name)

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        return self._attributes(self._cover(inode))

    async def opendir(self, inode: int) -> bool:
        raise NotADirectory(self._cover(inode).image.file_name)

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        raise NotADirectory(self._cover(inode).image.file_name)

    async def open(self, inode: int) -> OpenFile:
        cover = self._cover(inode)
        data = await trio.to_thread.run_sync(self.shelf.load, cover.image.address)
        if data is None:
            sources = artwork.sources(self.conn, cover.id)
            with trio.move_on_after(self.read_timeout):
                data = await trio.to_thread.run_sync(self.shelf.fetch, cover.image.address, sources,
                                                     abandon_on_cancel=True)
        if data is None:
            raise OriginUnavailable(f"the cover {cover.image.address} is not cached and no origin gave it")
        return Snapshot(data, keep_cache=True, direct_io=False)

    async def xattrs(self, inode: int) -> dict[str, str]:
        image = self._cover(inode).image
        return {XATTR_PREFIX + "mime": image.mime, XATTR_PREFIX + "width": str(image.width),
                XATTR_PREFIX + "height": str(image.height), XATTR_PREFIX + "address": image.address}
