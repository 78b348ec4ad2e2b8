"""The FUSE ``Operations``: translate kernel requests and delegate.

Node lookups go to the :class:`~musicfs.vfs.resolver.Resolver`, bytes to the
reader, generated files to :class:`~musicfs.vfs.hidden.HiddenFiles`. Every
handler is wrapped by :func:`_op`, the one place where exceptions become errno
values: a known error answers its errno (one log line when it is EIO), anything
unexpected answers EIO with one log record carrying its traceback, and nothing
takes the filesystem down (pyfuse3 itself only catches ``FUSEError``: any other
exception would end ``pyfuse3.main`` and with it the mount). Mutations answer
EROFS.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import pyfuse3
import trio

from ..errors import MusicFSError, NotFound, OriginUnavailable, errno_for
from ..index.library import LibraryIndex
from ..index.schema import ROOT_ID
from ..vfs.hidden import HIDDEN_DIR_NAME, HiddenFiles
from ..vfs.rawview import RAW_DIR_NAME, RawNode, RawView
from ..vfs.resolver import Node, Resolver
from .attrs import AttrPolicy, generated_attributes, node_attributes
from .inodes import InodeTable

log = logging.getLogger(__name__)

XATTR_PREFIX = "user.musicfs."
XATTR_FIELDS = ("title", "artist", "album", "album_artist", "genre", "year", "track", "disc",
                "duration_ms", "bitrate", "sample_rate", "format")
_PAGE = 256


class OpRecorder(Protocol):
    """Told how long each handler took (the metrics' latency histogram); it runs on every request."""

    def observe(self, op: str, seconds: float) -> None: ...


def _op(func: Callable) -> Callable:
    """Count the call, time it, and map any exception to a FUSEError (the only errno mapping)."""
    name = func.__name__
    clock = time.perf_counter

    @functools.wraps(func)
    async def wrapper(self: Operations, *args: Any) -> Any:
        started = clock()
        self.op_counts[name] += 1
        self.in_flight += 1
        try:
            return await func(self, *args)
        except pyfuse3.FUSEError:
            self.error_counts[name] += 1
            raise
        except (MusicFSError, OSError) as exc:  # an expected failure: its message says it all
            self.error_counts[name] += 1
            code = errno_for(exc)
            if code == errno.EIO:  # an origin that cannot serve is logged by the origins' health, once
                log.log(logging.INFO if isinstance(exc, OriginUnavailable) else logging.ERROR,
                        "%s%r failed: %s: %s", name, args[:2], type(exc).__name__, exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception as exc:  # a bug: answer EIO, keep serving, and keep the traceback to fix it
            self.error_counts[name] += 1
            log.error("%s%r failed unexpectedly: %s: %s", name, args[:2], type(exc).__name__, exc,
                      exc_info=exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self.in_flight -= 1
            if self.recorder is not None:
                self.recorder.observe(name, clock() - started)

    return wrapper


def _read_only(func: Callable) -> Callable:
    @functools.wraps(func)
    async def wrapper(self: Operations, *args: Any) -> Any:
        self.op_counts[func.__name__] += 1
        raise pyfuse3.FUSEError(errno.EROFS)

    return wrapper


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, index: LibraryIndex, reader, hidden: HiddenFiles, policy: AttrPolicy,
                 raw: RawView | None = None, inodes: InodeTable | None = None, *,
                 recorder: OpRecorder | None = None, resolver: Resolver | None = None):
        """``inodes`` and ``resolver`` (with its kept listings) are shared with whoever tells the
        kernel what a rescan changed; ``recorder`` hears each handler's duration (mutations,
        refused at once, are counted but not timed)."""
        super().__init__()
        self.index = index
        self.raw = raw
        self.resolver = resolver if resolver is not None else Resolver(index.conn)
        self.reader = reader
        self.hidden = hidden
        self.policy = policy
        self.inodes = inodes if inodes is not None else InodeTable()
        self.op_counts: Counter[str] = Counter()
        self.error_counts: Counter[str] = Counter()
        self.in_flight = 0  # requests being answered now (a shutdown lets them finish)
        self.recorder = recorder
        self._handles: dict[int, Any] = {}
        self._handle_inodes: dict[int, int] = {}  # fh -> the tracked inode it holds (CAS-2)
        self._fh = itertools.count(1)

    # -- helpers ----------------------------------------------------------
    def _node(self, inode: int) -> Node:
        return self.inodes.get(inode) or self.resolver.get(inode)

    async def _hidden_attr(self, inode: int) -> pyfuse3.EntryAttributes:
        now = time.time_ns()
        if inode == self.hidden.dir_inode:
            return generated_attributes(inode, 0, self.policy, is_dir=True, mtime_ns=now)
        item = self.hidden.by_inode(inode)
        if item is None:
            raise NotFound(f"no hidden inode {inode}")
        size = len(await self._render(item))
        return generated_attributes(inode, size, self.policy, is_dir=False, mtime_ns=now)

    @staticmethod
    async def _render(item) -> bytes:
        """A generated file's bytes, built in a worker thread: status runs SQL and gathers every
        component's statistics, work that must not hold the loop (ASYNC-3)."""
        return await trio.to_thread.run_sync(item.render)

    def _is_raw(self, inode: int) -> bool:
        return self.raw is not None and self.raw.is_raw(inode)

    def _raw_attr(self, node: RawNode) -> pyfuse3.EntryAttributes:
        attr = generated_attributes(node.inode, node.size, self.policy, is_dir=node.is_dir,
                                    mtime_ns=node.mtime_ns or self.policy.dir_mtime_ns)
        attr.entry_timeout = attr.attr_timeout = self.raw.ttl
        return attr

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        self.inodes.remember(node)
        return node_attributes(node, self.policy)

    # -- names and attributes ---------------------------------------------
    @_op
    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        if parent_inode == ROOT_ID and text == HIDDEN_DIR_NAME:
            return await self._hidden_attr(self.hidden.dir_inode)
        if parent_inode == ROOT_ID and text == RAW_DIR_NAME and self.raw is not None:
            return self._raw_attr(self.raw.root)
        if self._is_raw(parent_inode):
            return self._raw_attr(await self.raw.lookup(parent_inode, text))
        if parent_inode == self.hidden.dir_inode:
            item = self.hidden.by_name(text)
            if item is None:
                raise NotFound(text)
            return await self._hidden_attr(item.inode)
        return self._entry(self.resolver.lookup(parent_inode, text))

    @_op
    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        if self._is_raw(inode):
            return self._raw_attr(self.raw.get(inode))
        if self.hidden.is_hidden(inode):
            return await self._hidden_attr(inode)
        return node_attributes(self._node(inode), self.policy)

    @_op
    async def forget(self, inode_list) -> None:
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    @_op
    async def statfs(self, ctx=None) -> pyfuse3.StatvfsData:
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

    # -- directories ------------------------------------------------------
    @_op
    async def opendir(self, inode: int, ctx=None) -> int:
        if inode == self.hidden.dir_inode:
            return inode
        if self._is_raw(inode):
            if not self.raw.get(inode).is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode
        if not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode  # listings page straight from the index: no per-handle state

    @_op
    async def readdir(self, fh: int, start_id: int, token) -> None:
        if self._is_raw(fh):  # offsets are positions in the (TTL-cached) listing
            children = await self.raw.children(fh)
            for position, child in enumerate(children[start_id:], start=start_id + 1):
                if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self._raw_attr(child), position):
                    return
            return
        if fh == self.hidden.dir_inode:
            items = [item for item in self.hidden.files() if item.inode > start_id]
            attrs = [await self._hidden_attr(item.inode) for item in items]
            for item, attr in zip(items, attrs):
                if not pyfuse3.readdir_reply(token, item.name.encode(), attr, item.inode):
                    return
            return
        # /.musicfs is never listed: lookup finds it, readdir does not show it (CAS-3)
        after = start_id
        while True:
            page = self.resolver.children(fh, after, _PAGE)
            for node in page:
                if not pyfuse3.readdir_reply(token, os.fsencode(node.name),
                                             node_attributes(node, self.policy), node.id):
                    return
                self.inodes.remember(node)  # readdirplus counts as a lookup
                after = node.id
            if len(page) < _PAGE:
                break

    @_op
    async def releasedir(self, fh: int) -> None:
        return None

    # -- files ------------------------------------------------------------
    @_op
    async def open(self, inode: int, flags: int, ctx=None) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = next(self._fh)
        if self._is_raw(inode):
            node = self.raw.get(inode)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            self._handles[fh] = await self.reader.open(self.raw.track(node))
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        if self.hidden.is_hidden(inode):
            item = self.hidden.by_inode(inode)
            if item is None:
                raise pyfuse3.FUSEError(errno.EISDIR if inode == self.hidden.dir_inode else errno.ENOENT)
            self._handles[fh] = await self._render(item)  # a snapshot: reads see one consistent document
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        track = self.index.track(node.track_id)
        if track is None:
            raise NotFound(f"track of inode {inode} left the index")
        handle = self._handles[fh] = await self.reader.open(track)
        self.inodes.opened(node)  # kept until released, even if the kernel forgets it first
        self._handle_inodes[fh] = inode
        # the kernel keeps what it read of an unchanged file, unless those bytes failed a check
        # (a reader whose handles do not say, the plain pass-through one, checks nothing)
        return pyfuse3.FileInfo(fh=fh, keep_cache=handle.keep_cache)

    @_op
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if isinstance(handle, bytes):
            return handle[off:off + size]
        return await self.reader.read(handle, off, size)

    @_op
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        inode = self._handle_inodes.pop(fh, None)
        if inode is not None:
            self.inodes.released(inode)
        if handle is not None and not isinstance(handle, bytes):
            self.reader.release(handle)

    @_op
    async def flush(self, fh: int) -> None:
        return None

    # -- extended attributes ----------------------------------------------
    def _xattrs(self, inode: int) -> dict[str, str]:
        if self._is_raw(inode):
            node = self.raw.get(inode)
            if node.origin_id is None:
                return {}
            return {XATTR_PREFIX + "origin": node.origin_id, XATTR_PREFIX + "real_path": node.path}
        if self.hidden.is_hidden(inode):
            return {}
        node = self._node(inode)
        if node.is_dir:
            return {XATTR_PREFIX + "path": self.resolver.path_of(node.id)}
        track = self.index.track(node.track_id) or {}
        values = {XATTR_PREFIX + f: str(track[f]) for f in XATTR_FIELDS if track.get(f) not in (None, "")}
        values[XATTR_PREFIX + "origin"] = str(track.get("origin_id", ""))
        values[XATTR_PREFIX + "real_path"] = str(track.get("real_path", ""))
        return values

    @_op
    async def getxattr(self, inode: int, name: bytes, ctx=None) -> bytes:
        value = self._xattrs(inode).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value.encode("utf-8", "surrogateescape")  # a raw path need not be UTF-8

    @_op
    async def listxattr(self, inode: int, ctx=None) -> list[bytes]:
        return [name.encode() for name in sorted(self._xattrs(inode))]

    # -- everything that would change something: read-only ----------------
    @_read_only
    async def setattr(self, inode, attr, fields, fh, ctx): ...
    @_read_only
    async def mknod(self, parent_inode, name, mode, rdev, ctx): ...
    @_read_only
    async def mkdir(self, parent_inode, name, mode, ctx): ...
    @_read_only
    async def unlink(self, parent_inode, name, ctx): ...
    @_read_only
    async def rmdir(self, parent_inode, name, ctx): ...
    @_read_only
    async def symlink(self, parent_inode, name, target, ctx): ...
    @_read_only
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx): ...
    @_read_only
    async def link(self, inode, new_parent_inode, new_name, ctx): ...
    @_read_only
    async def create(self, parent_inode, name, mode, flags, ctx): ...
    @_read_only
    async def write(self, fh, off, buf): ...
    @_read_only
    async def setxattr(self, inode, name, value, ctx): ...
    @_read_only
    async def removexattr(self, inode, name, ctx): ...

    def busy(self) -> bool:
        """True while a request is being answered or a file is open (a graceful shutdown waits)."""
        return bool(self.in_flight or self._handles)

    def statistics(self) -> dict[str, Any]:
        return {
            "ops": dict(self.op_counts),
            "errors": dict(self.error_counts),
            "open_handles": len(self._handles),
            "in_flight": self.in_flight,
            **self.inodes.statistics(),
        }
