"""Reading a file's tags and stream info, one file at a time, with the reader of its format.

:func:`read_tags` returns the FR-6 fields of a file or raises
:class:`MalformedAudio` with a short reason; the scanner records the reason and
carries on (NFR-7.4). It runs in worker threads: readers do blocking I/O.

The reader is the one of the file's format, chosen by its extension
(:mod:`musicfs.index.formats`): mutagen for the built-in formats, a plugin's for
others. A library holds hostile files too, and a parser on hostile bytes can
raise almost anything (``RecursionError`` on nested MP4 atoms, ``OverflowError``,
``MemoryError``), read whatever a header asks for, or spin; a plugin's reader may
also simply be wrong. So every reader reads each file within the budgets of
:mod:`musicfs.index.budget`: at most :data:`READ_LIMIT` bytes of the file (the
tags and stream headers of any sane file fit; FLAC itself caps a metadata block
at 16 MiB) and :data:`CPU_LIMIT` seconds of CPU. Whatever the reader raises then
becomes a :class:`MalformedAudio` (an origin's failure stays the origin's), and
what it returns is checked as mutagen's is (a stream with a duration, text within
:data:`TEXT_LIMIT`): a file breaking any of it is skipped with one log line, and
the scan goes on.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, BinaryIO

from .budget import BudgetedFile, Watchdog
from .formats import WORD, AudioFields, AudioFile, FormatSet, MalformedAudio, Reader, installed, suffix

log = logging.getLogger(__name__)

READ_LIMIT = 16 * 1024 * 1024  # bytes of one file a tag reader may read in all
CPU_LIMIT = 3.0  # seconds of CPU reading one file's tags may cost (a sane file takes milliseconds)
TEXT_LIMIT = 4096  # characters of one tag value kept; a multi-MB "title" is not a title
MAX_SECONDS = 1e9  # a longer "duration" (31 years) comes from a damaged header
NUMBER_LIMIT = 10**12  # a tag's number at or past this is garbage (and overflows SQLite)
RATE_LIMIT = 1 << 40  # bitrates and sample rates are cut here

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TEXT = ("title", "artist", "album", "album_artist", "genre")
_NUMBERS = ("year", "track", "disc")

WATCHDOG = Watchdog(CPU_LIMIT)

def clean_text(text: str) -> str | None:
    """A tag's text as the index keeps it: cut at :data:`TEXT_LIMIT`, None when blank."""
    text = text[:TEXT_LIMIT]  # kept as tagged; names are cleaned by the template, not here
    text = _SURROGATE.sub("\ufffd", text)  # a half-decoded UTF-16 pair is not text SQLite can store
    return text if text.strip() else None


def describe(file: AudioFile, exc: BaseException) -> str:
    """An exception's message without the file's path (the skip record names the file)."""
    return str(exc).replace(repr(file.name), "file").replace(str(file.name), "file")


def _parse(reader: Reader, guard: BudgetedFile) -> AudioFields:
    """The reader on the budgeted file; any failure becomes :class:`MalformedAudio`.

    Parsers wrap exceptions in their own (MP4 turns anything into
    ``MP4MetadataError``), so the file's own record of a refusal or an origin
    failure decides first. Anything else a reader raises on hostile bytes is
    the file's fault, whatever its type: the file is skipped, the scan goes on.
    The error is raised once the reader's exception is gone, chained to
    nothing: it would keep the parser's frames alive, and with them whatever
    they had read (16 MiB per file), for as long as the scanner keeps the result.
    """
    try:
        WATCHDOG.start(guard)
        try:
            return reader.format.read(guard)
        finally:
            WATCHDOG.stop(guard)
    except Exception as exc:  # the point: no reader's failure, mutagen's or a plugin's, may end a scan
        failure = _failure(reader, guard, exc)
    failure.__traceback__ = failure.__context__ = failure.__cause__ = None
    raise failure


def _failure(reader: Reader, guard: BudgetedFile, exc: Exception) -> Exception:
    """What a reader's exception means: the origin's error, or why the file is malformed."""
    if guard.origin_error is not None:
        return guard.origin_error
    if guard.refused is not None:
        return MalformedAudio(*guard.refused)
    if isinstance(exc, MalformedAudio):  # the reader's own verdict
        return exc
    if isinstance(exc, OSError):
        return MalformedAudio("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}")
    # not an error the reader means to raise: a parser bug met on hostile bytes, or a plugin's bug
    log.debug("the %s reader (%s) failed on %s", reader.format.name, reader.provider.describe(), guard.name,
              exc_info=exc)
    detail = f"{type(exc).__name__}: {describe(guard, exc)}"
    if not reader.builtin:
        detail = f"{detail[:400]} (format {reader.format.name!r}, {reader.provider.describe()})"
    return MalformedAudio("parser failure", detail[:500])


def _garbage(reader: Reader, what: str) -> MalformedAudio:
    return MalformedAudio("parser failure", f"the {reader.format.name!r} reader ({reader.provider.describe()}) "
                                            f"returned {what}"[:500])


def _checked(reader: Reader, found: object) -> dict[str, Any]:
    """What the reader returned, held to what the index stores; :class:`MalformedAudio` for a file
    without a stream, or for a reader that returned what no file holds."""
    if not isinstance(found, AudioFields):
        raise _garbage(reader, f"{type(found).__name__} instead of AudioFields")
    out: dict[str, Any] = {}
    for name in _TEXT:
        value = getattr(found, name)
        if value is not None and not isinstance(value, str):
            raise _garbage(reader, f"{name} of type {type(value).__name__}")
        out[name] = clean_text(value) if value is not None else None
    for name in ("bitrate", "sample_rate", *_NUMBERS):
        value = getattr(found, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _garbage(reader, f"{name} of type {type(value).__name__}")
    for name in _NUMBERS:
        value = getattr(found, name)
        out[name] = value if value is not None and 0 <= value < NUMBER_LIMIT else None
    duration, rate = found.duration_ms, found.sample_rate
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise _garbage(reader, f"duration_ms of type {type(duration).__name__}")
    if rate is None or not duration > 0 or rate <= 0:  # also NaN
        raise MalformedAudio("no audio stream", f"the {reader.format.name!r} reader found no audio frames "
                                                f"({duration!r} ms at {rate!r} Hz)")
    if not duration < MAX_SECONDS * 1000:  # also infinity
        raise MalformedAudio("corrupt audio", f"the stream header claims {duration / 1000:g} s of audio")
    picture = found.picture
    if picture is not None and not isinstance(picture, bytes):
        raise _garbage(reader, f"picture of type {type(picture).__name__}")
    kind = found.format if found.format is not None else reader.format.name
    if not (isinstance(kind, str) and WORD.fullmatch(kind)):
        raise _garbage(reader, f"format {kind!r}, not a name of lowercase letters and digits")
    return {**out, "duration_ms": int(round(duration)), "bitrate": min(max(found.bitrate or 0, 0), RATE_LIMIT),
            "sample_rate": min(rate, RATE_LIMIT), "format": kind, "picture": picture or None}


def read_tags(path: str | os.PathLike[str] | BinaryIO, formats: FormatSet | None = None) -> dict[str, Any]:
    """FR-6 fields of an audio file (those of :class:`AudioFields`; ``format``: its format's name), and under
    ``picture`` the bytes of its embedded front cover (or None: :mod:`musicfs.index.artwork`);
    raises :class:`MalformedAudio`.

    ``path`` is a local path, or a seekable binary file object with ``name`` and
    ``size`` (a remote file read through ranged requests). An origin failing
    while it is read is not a malformed file: that error passes through.
    ``formats``: the formats to read with (default: those installed).
    """
    is_file = hasattr(path, "read")
    name = str(path.name if is_file else os.fspath(path))
    reader = (formats or installed()).for_path(name)
    if reader is None:
        raise MalformedAudio("unrecognised format",
                             f"no audio format reads {suffix(name) or 'files without an extension'}")
    try:
        source = path if is_file else open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise MalformedAudio("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    try:
        size = path.size if is_file else os.fstat(source.fileno()).st_size
        if size == 0:
            raise MalformedAudio("empty file", "0 bytes")
        found = _parse(reader, BudgetedFile(source, name, size, READ_LIMIT))
    finally:
        if not is_file:
            source.close()
    return _checked(reader, found)

