"""The tag tree: the library's directories and tracks as the index lays them out.

Names and listings come from the :class:`~musicfs.vfs.resolver.Resolver` (with
its kept listings), bytes from the reader. Every entry handed to the kernel
(lookup, and readdirplus, which counts as one) is remembered in the shared
:class:`~musicfs.fuse.inodes.InodeTable`, and every open handle holds its node
until released, even past the kernel's FORGET (CAS-2): getattr and open of a
held inode then need no query, and a live rescan knows which entries to tell
the kernel about. Other namespaces whose entries *are* tree files (search
results) go through :meth:`node` and :meth:`remember` so those counts stay
exact whatever path the kernel took to the inode.
"""

from __future__ import annotations

import pyfuse3

from ...errors import IsADirectory, NotADirectory, NotFound
from ...index.library import LibraryIndex
from ...index.schema import ROOT_ID
from ...vfs.access import AccessTracker
from ...vfs.node import Node
from ...vfs.prefetch import Prefetcher
from ...vfs.resolver import Resolver
from ..attrs import AttrPolicy, node_attributes
from ..inodes import InodeTable
from .base import OpenFile, ReaderFile, Reply
from .covers import CoverNamespace

XATTR_PREFIX = "user.musicfs."
XATTR_FIELDS = ("title", "artist", "album", "album_artist", "genre", "year", "track", "disc",
                "duration_ms", "bitrate", "sample_rate", "format")
_PAGE = 256  # children fetched per query while a listing pages


class TreeNamespace:
    root_inode = ROOT_ID

    def __init__(self, index: LibraryIndex, resolver: Resolver, reader, inodes: InodeTable,
                 policy: AttrPolicy, covers: CoverNamespace | None = None, access: AccessTracker | None = None,
                 prefetch: Prefetcher | None = None):
        """``covers``: the album covers its directories show (none without it); ``access``: where
        each open of a track is recorded (CAS-4); ``prefetch``: told of each open and close."""
        self.index = index
        self.resolver = resolver
        self.reader = reader
        self.inodes = inodes
        self.policy = policy
        self.covers = covers
        self.access = access
        self.prefetch = prefetch

    # -- shared with the namespaces whose entries are tree files -------------
    def node(self, inode: int) -> Node:
        """The node of ``inode``: the kept one while the kernel holds it, else the index's."""
        return self.inodes.get(inode) or self.resolver.get(inode)

    def remember(self, node: Node) -> None:
        """``node`` was handed to the kernel as an entry: one lookup more to be forgotten."""
        self.inodes.remember(node)

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        return node_attributes(node, self.policy)

    # -- the namespace -------------------------------------------------------
    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        try:
            node = self.resolver.lookup(parent, name)
        except NotFound:
            if self.covers is None or not name.startswith("cover."):
                raise
            return self.covers.lookup_in(parent, name)
        self.remember(node)
        return self.attributes(node)

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        return self.attributes(self.node(inode))

    async def opendir(self, inode: int) -> bool:
        node = self.node(inode)
        if not node.is_dir:
            raise NotADirectory(node.name)
        # listings page straight from the index (offsets are node ids): no per-handle state. The
        # kernel may keep them: every commit that adds, removes or changes a node tells it
        # (musicfs.fuse.invalidate), and so does a new catalog
        return True

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        # the root lists the library only: /.musicfs and the other special directories are
        # found by lookup, never listed (CAS-3)
        after = start
        if start == 0 and self.covers is not None:  # the album's cover first, at offset 1 (node
            # ids of children start above the root's 1, so the tracks follow from there)
            cover = self.covers.cover_of(inode)
            if cover is not None:
                name, attributes = self.covers.entry(cover)
                if not reply(name, attributes, 1):
                    return
        while True:
            page = self.resolver.children(inode, after, _PAGE)
            for node in page:
                if not reply(node.name, self.attributes(node), node.id):
                    return
                self.remember(node)  # readdirplus counts as a lookup
                after = node.id
            if len(page) < _PAGE:
                return

    async def open(self, inode: int) -> OpenFile:
        node = self.node(inode)
        if node.is_dir:
            raise IsADirectory(node.name)
        track = self.index.track(node.track_id)
        if track is None:
            raise NotFound(f"track of inode {inode} left the index")
        handle = await self.reader.open(track)
        self.inodes.opened(node)  # kept until released, even if the kernel forgets it first
        access, prefetch = self.access, self.prefetch
        if access is not None:
            access.opened(node.track_id, self.resolver.path_of(node.id))
        if prefetch is not None:  # after the access: what it learns from is this open's past
            prefetch.opened(node)

        def released(bytes_read: int) -> None:
            self.inodes.released(inode)
            if access is not None:
                access.closed(node.track_id, bytes_read)
            if prefetch is not None:
                prefetch.closed(node.track_id)

        # the kernel keeps what it read of an unchanged file, unless those bytes failed a check
        # (the plain pass-through reader checks nothing: its handles always say keep)
        return ReaderFile(self.reader, handle, keep_cache=handle.keep_cache, on_release=released)

    async def xattrs(self, inode: int) -> dict[str, str]:
        node = self.node(inode)
        if node.is_dir:
            return {XATTR_PREFIX + "path": self.resolver.path_of(node.id)}
        track = self.index.track(node.track_id) or {}
        values = {XATTR_PREFIX + f: str(track[f]) for f in XATTR_FIELDS if track.get(f) not in (None, "")}
        values[XATTR_PREFIX + "origin"] = str(track.get("origin_id", ""))
        values[XATTR_PREFIX + "real_path"] = str(track.get("real_path", ""))
        return values

    def statfs(self) -> pyfuse3.StatvfsData:
        """The library's totals: its bytes as used blocks, its nodes as files; nothing free."""
        stats = pyfuse3.StatvfsData()
        row = self.index.conn.execute(
            "SELECT (SELECT COALESCE(SUM(size), 0) FROM tracks), (SELECT MAX(id) FROM nodes)"
        ).fetchone()
        stats.f_bsize = stats.f_frsize = 4096
        stats.f_blocks = (row[0] + 4095) // 4096
        stats.f_bfree = stats.f_bavail = 0
        stats.f_files = row[1] or 1
        stats.f_ffree = stats.f_favail = 0
        stats.f_namemax = 255
        return stats
