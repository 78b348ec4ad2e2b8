"""What every writable origin shares: reading a put's source, and naming its temporary files.

A put reads its source in bounded chunks (never all of it at once: a snapshot may be hundreds
of MB) through :func:`reading`, which also decides what a failure means for the caller. The
origin calls themselves never retry (:mod:`musicfs.origins.retry` does, by calling again), so a
put that fails must leave its source where another attempt can start from:

* a source that can be rewound (a file, ``io.BytesIO``) is put back where it was when the put
  began, and the error is raised as it is: calling ``put`` again stores the whole of it;
* one that cannot (a pipe, a stream being compressed) and was partly read makes the failure a
  :class:`~musicfs.errors.NotRepeatable`, which the retry helper never repeats: a second
  attempt would store only the rest.

The source's own errors are carried past the origin's handling of its own ones (an ``OSError``
from a file being read is not the origin's connection breaking) and raised as they were.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from ..errors import NotRepeatable

CHUNK = 1 << 20  # bytes asked of a source at once by origins that stream it themselves
TEMP_SUFFIX = ".musicfs-part"  # with a leading dot: hidden, and no audio extension a scan would take


class SourceFailed(Exception):
    """The source raised while being read: carried out of the origin's code, then raised as it was."""

    def __init__(self, error: Exception):
        super().__init__(f"the source failed: {type(error).__name__}: {error}")
        self.error = error


class Taken:
    """A put's source, read in chunks of at most the size asked for, counting what was taken."""

    def __init__(self, source: BinaryIO):
        self.source = source
        self.taken = 0

    def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes (``b""`` at the end); never the whole rest at once."""
        if size is None or size < 0:
            size = CHUNK
        try:
            data = self.source.read(size)
        except Exception as exc:  # the caller's source failed: not the origin's error
            raise SourceFailed(exc) from exc
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SourceFailed(TypeError(f"the source gave {type(data).__name__}, not bytes"))
        self.taken += len(data)
        return bytes(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False  # a transfer library must stream it, not seek around in it

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The source to its end, ``size`` bytes at a time."""
        while data := self.read(size):
            yield data


def _position(source: BinaryIO) -> int | None:
    """Where ``source`` stands, when it can be rewound there; None when it cannot."""
    try:
        return source.tell() if source.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def reading(source: BinaryIO, what: str) -> Iterator[Taken]:
    """Read ``source`` through the :class:`Taken` this yields; on failure, leave it repeatable.

    ``what`` names the put in a :class:`NotRepeatable`'s message. A failure before any byte was
    read, or of a source put back where it began, is raised as it is (a source's own error
    unwrapped from :class:`SourceFailed`).
    """
    start = _position(source)
    taken = Taken(source)
    try:
        yield taken
    except Exception as exc:
        error = exc.error if isinstance(exc, SourceFailed) else exc
        if taken.taken and not _rewind(source, start):
            raise NotRepeatable(f"{what}: failed after reading {taken.taken} bytes of a source that "
                                f"cannot be rewound, so it cannot be tried again: {error}") from error
        if error is exc:
            raise
        raise error from None


def _rewind(source: BinaryIO, start: int | None) -> bool:
    if start is None:
        return False
    try:
        source.seek(start)
    except (OSError, ValueError):
        return False
    return True


def file_name(path: str) -> str:
    """The last part of a path a file is written at; ``ValueError`` when it names no file
    (empty, ending in '/', '.' or '..'). Whether the path stays inside the origin is each
    kind's own check, the one its reads make."""
    name = path.rpartition("/")[2]
    if name in ("", ".", ".."):
        raise ValueError(f"not a path of a file: {path!r}")
    return name


def temp_name(name: str) -> str:
    """A fresh name beside ``name`` to write into before renaming it over ``name``.

    Hidden (a leading dot), unique (64 random bits), recognisable by :data:`TEMP_SUFFIX`, and
    within the 255 bytes a name may have whatever ``name``'s length.
    """
    stem = name.encode("utf-8", "surrogateescape")[:160].decode("utf-8", "ignore")
    return f".{stem}.{os.urandom(8).hex()}{TEMP_SUFFIX}"
