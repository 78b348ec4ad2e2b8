"""The FUSE ``Operations``: translate kernel requests and delegate.

Each handler turns the kernel's request into a call on the namespace that owns
the inode (chosen by the :class:`~musicfs.fuse.namespaces.router.Router`: the
tag tree, ``/.musicfs``, ``/.origins``...) and its answer back into what
pyfuse3 expects; it knows nothing of what the namespaces hold. What stays here
is what every request shares: the table of open file handles, the kernel's
FORGETs (lookup counts in the :class:`~musicfs.fuse.inodes.InodeTable`), and
:func:`_op`, the one place where exceptions become errno values: a known error
answers its errno (one log line when it is EIO), anything unexpected answers
EIO with one log record carrying its traceback, and nothing takes the
filesystem down (pyfuse3 itself only catches ``FUSEError``: any other
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

from ..errors import MusicFSError, OriginUnavailable, errno_for
from . import dircache
from .inodes import InodeTable
from .namespaces.base import OpenFile
from .namespaces.router import Router

log = logging.getLogger(__name__)


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

    def __init__(self, router: Router, inodes: InodeTable, *, recorder: OpRecorder | None = None):
        """``inodes`` is shared with the namespaces that hand out entries and with whoever tells
        the kernel what a rescan changed; ``recorder`` hears each handler's duration (mutations,
        refused at once, are counted but not timed)."""
        super().__init__()
        self.route = router
        self.inodes = inodes
        self.op_counts: Counter[str] = Counter()
        self.error_counts: Counter[str] = Counter()
        self.in_flight = 0  # requests being answered now (a shutdown lets them finish)
        self.recorder = recorder
        self._handles: dict[int, OpenFile] = {}
        self._fh = itertools.count(1)

    # -- names and attributes ---------------------------------------------
    @_op
    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        return await self.route.lookup(parent_inode, os.fsdecode(name))

    @_op
    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        return await self.route(inode).getattr(inode)

    @_op
    async def forget(self, inode_list) -> None:
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    @_op
    async def statfs(self, ctx=None) -> pyfuse3.StatvfsData:
        return self.route.tree.statfs()

    # -- directories ------------------------------------------------------
    @_op
    async def opendir(self, inode: int, ctx=None) -> int:
        keep = await self.route(inode).opendir(inode)
        # a listing is found again from its inode: no per-handle state
        return dircache.directory_handle(inode, keep)

    @_op
    async def readdir(self, fh: int, start_id: int, token) -> None:
        def reply(name: str, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
            # os.fsencode's own encoding, without its checks: a name here is always a str
            return pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"), attr, next_id)

        inode = dircache.inode_of(fh)
        await self.route(inode).readdir(inode, start_id, reply)

    @_op
    async def releasedir(self, fh: int) -> None:
        return None

    # -- files ------------------------------------------------------------
    @_op
    async def open(self, inode: int, flags: int, ctx=None) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        handle = await self.route(inode).open(inode)
        fh = next(self._fh)
        self._handles[fh] = handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=handle.keep_cache, direct_io=handle.direct_io)

    @_op
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await handle.read(off, size)

    @_op
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            handle.release()

    @_op
    async def flush(self, fh: int) -> None:
        return None

    # -- extended attributes ----------------------------------------------
    @_op
    async def getxattr(self, inode: int, name: bytes, ctx=None) -> bytes:
        value = (await self.route(inode).xattrs(inode)).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value.encode("utf-8", "surrogateescape")  # a raw path need not be UTF-8

    @_op
    async def listxattr(self, inode: int, ctx=None) -> list[bytes]:
        return [name.encode() for name in sorted(await self.route(inode).xattrs(inode))]

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
