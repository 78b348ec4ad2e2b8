"""The exception tree of musicfs and the one place that maps it to errno.

Components raise these; the FUSE layer turns them into ``FUSEError`` through
:func:`errno_for`, so the mapping lives here and nowhere else.
"""

from __future__ import annotations

import errno


class MusicFSError(Exception):
    """Base of every error musicfs raises on purpose."""

    errno = errno.EIO


class ConfigError(MusicFSError):
    """A configuration file or option is invalid; the message names the line."""

    errno = errno.EINVAL

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(f"{where}{message}")


class TemplateError(MusicFSError):
    """A path template does not follow the grammar."""

    errno = errno.EINVAL


class IndexError_(MusicFSError):
    """The SQLite index is missing, locked or of an unknown schema."""


class NotFound(MusicFSError):
    errno = errno.ENOENT


class NotADirectory(MusicFSError):
    errno = errno.ENOTDIR


class IsADirectory(MusicFSError):
    errno = errno.EISDIR


class ReadOnly(MusicFSError):
    errno = errno.EROFS


class OriginReadOnly(ReadOnly):
    """An origin of a kind that takes no writes was asked to store or remove a file.

    A refusal another attempt would not change: never retried. Names the origin and its kind.
    """

    def __init__(self, origin_id: str, kind: str, operation: str, path: str):
        self.origin_id, self.kind = origin_id, kind
        super().__init__(f"origin {origin_id!r} ({kind}) is read-only: {kind} origins cannot "
                         f"{operation} files ({path!r})")


class OriginUnavailable(MusicFSError):
    """An origin could not serve a request in time; readers get EIO."""

    errno = errno.EIO


class NotRepeatable(MusicFSError):
    """A write failed after reading part of a source that cannot be rewound (a pipe, a stream
    being compressed): another attempt would store only the rest, so it is never retried. The
    caller starts again with a new source; the cause (the origin's error or the source's) is chained.
    """


class QueryError(MusicFSError):
    """A search query or a collection is malformed; the message names the problem."""

    errno = errno.EINVAL


class QueryTimeout(MusicFSError):
    """A search ran past its deadline and was stopped."""

    errno = errno.ETIMEDOUT


class NoRoom(MusicFSError):
    """A pin the cache cannot hold within the room pins may use: refused, nothing fetched or dropped."""

    errno = errno.ENOSPC

    def __init__(self, files: int, needed: int, held: int, room: int):
        self.files, self.needed, self.held, self.room = files, needed, held, room
        super().__init__(
            f"cannot pin {files} more file{'s' if files != 1 else ''}: they need {needed / 1e6:,.1f} MB and pins "
            f"already hold {held / 1e6:,.1f} MB of the {room / 1e6:,.1f} MB they may use ([cache] pins_size); "
            "nothing was fetched or dropped: unpin something, or give the cache more room")


class Uncacheable(MusicFSError):
    """Files of an origin that is never cached (``cache = "never"``) named where caching is the point
    (a pin): refused, nothing done."""

    errno = errno.EINVAL


def errno_for(exc: BaseException) -> int:
    """Return the errno a failed filesystem call should answer for ``exc``."""
    if isinstance(exc, MusicFSError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


class CatalogRefused(MusicFSError):
    """A published catalog (pointer or snapshot) that must not be used: another format version, a
    signature that does not verify, a hash or size that does not match. The catalog in use stays."""
