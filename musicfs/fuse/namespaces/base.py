"""The one interface every kind of directory in the mount implements, and the open files they hand out.

The mount holds several kinds of directory: the tag tree, the generated files
of ``/.musicfs``, the raw views of ``/.origins``, query results under
``/.search`` and ``/.collections``. Each kind is one :class:`Namespace`, owning
a range of inode numbers; the :class:`~musicfs.fuse.namespaces.router.Router`
picks the namespace once from the inode, so the FUSE handlers translate and
delegate without knowing which kind they serve.

Namespaces speak in names (``str``), inodes and musicfs errors
(:mod:`musicfs.errors`); turning those into bytes and errno values is the
handlers' job, done in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pyfuse3

Reply = Callable[[str, pyfuse3.EntryAttributes, int], bool]
"""``reply(name, attributes, next_offset) -> bool``: hands one directory entry to the kernel;
False when its buffer is full (the entry was *not* taken, the listing stops there)."""


class OpenFile(Protocol):
    """What an open file handle reads from, until its release."""

    keep_cache: bool  # the kernel may keep the pages it read of this file across opens
    direct_io: bool  # every read reaches the daemon (content generated at open)

    async def read(self, offset: int, size: int) -> bytes | memoryview: ...  # a view: pyfuse3 replies from any buffer

    def release(self) -> None: ...


class Namespace(Protocol):
    """One kind of directory: its entries, attributes, listings, files and extended attributes.

    ``root_inode`` is the namespace's own top directory (the mount's root for the
    tag tree, ``/.musicfs`` for the generated files...). Every method gets inodes
    of this namespace only, except :meth:`lookup` and :meth:`readdir`, whose
    entries may belong to another (a search hit is the tag tree's file).
    """

    root_inode: int

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes: ...

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes: ...

    async def opendir(self, inode: int) -> bool:
        """Raise :class:`~musicfs.errors.NotADirectory` unless ``inode`` is a directory; True if
        the kernel may keep its listing: this daemon tells it when the listing changes."""

    async def readdir(self, inode: int, start: int, reply: Reply) -> None:
        """Entries after offset ``start``, each with the offset that follows it, until ``reply``
        says the kernel's buffer is full."""

    async def open(self, inode: int) -> OpenFile: ...

    async def xattrs(self, inode: int) -> dict[str, str]: ...


class RangeNamespace(Namespace, Protocol):
    """A namespace owning the inodes from ``inode_base`` up to the next namespace's base."""

    inode_base: int


class SpecialNamespace(RangeNamespace, Protocol):
    """A namespace reached by a name in the root (``.musicfs``...)."""

    dir_name: str


@dataclass
class Snapshot:
    """A generated file's bytes, taken at open: every read of the handle sees one document."""

    data: bytes
    keep_cache: bool = False
    direct_io: bool = True

    async def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    def release(self) -> None:
        return None


class ReaderFile:
    """A track opened through the reader; ``on_release`` runs first when the handle goes, with the
    bytes read through it (the tag tree's open-handle count, CAS-2; listening activity, CAS-4)."""

    direct_io = False

    def __init__(self, reader, handle, *, keep_cache: bool, on_release: Callable[[int], None] | None = None):
        self.reader = reader
        self.handle = handle
        self.keep_cache = keep_cache
        self._on_release = on_release
        self.bytes_read = 0

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        data = await self.reader.read(self.handle, offset, size)
        self.bytes_read += len(data)
        return data

    def release(self) -> None:
        if self._on_release is not None:
            self._on_release(self.bytes_read)
        self.reader.release(self.handle)
