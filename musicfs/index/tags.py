"""Reading tags and stream info with mutagen, one file at a time.

:func:`read_tags` returns the FR-6 fields of a file or raises
:class:`MalformedAudio` with a short reason; the scanner records the reason and
carries on (NFR-7.4). It runs in worker threads: mutagen is blocking I/O.

A library holds hostile files too, and mutagen on hostile bytes can raise
almost anything (``RecursionError`` on nested MP4 atoms, ``OverflowError``,
``MemoryError``), read whatever a header asks for, or spin. So it reads each
file within the budgets of :mod:`musicfs.index.budget`: at most
:data:`READ_LIMIT` bytes of the file (the tags and stream headers of any sane
file fit; FLAC itself caps a metadata block at 16 MiB) and :data:`CPU_LIMIT`
seconds of CPU. Whatever the parser raises then becomes a
:class:`MalformedAudio` (an origin's failure stays the origin's); the file is
skipped with one log line, and the scan goes on.
"""

from __future__ import annotations

import logging
import os
import re
from struct import error as struct_error  # mutagen lets these through on garbage input
from typing import Any, BinaryIO

import mutagen
from mutagen.id3 import ID3
from mutagen.mp4 import MP4Tags

from .budget import BudgetedFile, Watchdog
from .pictures import front_picture

log = logging.getLogger(__name__)

READ_LIMIT = 16 * 1024 * 1024  # bytes of one file a tag reader may read in all
CPU_LIMIT = 3.0  # seconds of CPU reading one file's tags may cost (a sane file takes milliseconds)
TEXT_LIMIT = 4096  # characters of one tag value kept; a multi-MB "title" is not a title
MAX_SECONDS = 1e9  # a longer "duration" (31 years) comes from a damaged header

AUDIO_EXTENSIONS = frozenset(
    {".flac", ".mp3", ".ogg", ".oga", ".opus", ".wav", ".m4a", ".mp4", ".aac", ".aif", ".aiff"}
)

# mutagen class name -> canonical format (also the extension shown in the mount)
_FORMATS = {
    "FLAC": "flac", "MP3": "mp3", "EasyMP3": "mp3", "OggVorbis": "ogg", "OggOpus": "opus",
    "OggFLAC": "ogg", "WAVE": "wav", "MP4": "m4a", "EasyMP4": "m4a", "AIFF": "aiff",
}

_ID3_FRAMES = {
    "title": "TIT2", "artist": "TPE1", "album": "TALB", "album_artist": "TPE2",
    "genre": "TCON", "date": "TDRC", "tracknumber": "TRCK", "discnumber": "TPOS",
}
_MP4_ATOMS = {
    "title": "\xa9nam", "artist": "\xa9ART", "album": "\xa9alb", "album_artist": "aART",
    "genre": "\xa9gen", "date": "\xa9day",
}
_VORBIS_KEYS = {
    "title": ("title",), "artist": ("artist",), "album": ("album",),
    "album_artist": ("albumartist", "album artist", "album_artist"), "genre": ("genre",),
    "date": ("date", "year", "originaldate"), "tracknumber": ("tracknumber", "track"),
    "discnumber": ("discnumber", "disc"),
}
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_LEADING_INT = re.compile(r"\s*(\d{1,12})(?!\d)")  # longer numbers are garbage (and overflow SQLite)


class MalformedAudio(Exception):
    """The file is not audio mutagen can read; ``reason`` is short, ``detail`` is the cause."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _first(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value)[:TEXT_LIMIT]  # kept as tagged; names are cleaned by the template, not here
    text = _SURROGATE.sub("\ufffd", text)  # a half-decoded UTF-16 pair is not text SQLite can store
    return text if text.strip() else None


def _leading_int(value: str | None) -> int | None:
    if not value:
        return None
    match = _LEADING_INT.match(value)
    return int(match.group(1)) if match else None


def _raw_tags(tags: Any) -> dict[str, str | None]:
    """The text of each tag we care about, whatever the container."""
    if tags is None:
        return {}
    if isinstance(tags, ID3):
        out = {}
        for key, frame_id in _ID3_FRAMES.items():
            frame = tags.get(frame_id) or (tags.get("TYER") if key == "date" else None)
            out[key] = _first(frame.text) if frame is not None else None
        return out
    if isinstance(tags, MP4Tags):
        out = {key: _first(tags.get(atom)) for key, atom in _MP4_ATOMS.items()}
        for key, atom in (("tracknumber", "trkn"), ("discnumber", "disk")):
            pair = tags.get(atom)
            out[key] = str(pair[0][0]) if pair and pair[0] and pair[0][0] else None
        return out
    lowered: dict[str, Any] = {}
    for key, value in tags.items():  # Vorbis comments: case-insensitive keys
        lowered.setdefault(str(key).lower(), value)
    return {
        key: next((_first(lowered[k]) for k in names if k in lowered), None)
        for key, names in _VORBIS_KEYS.items()
    }


WATCHDOG = Watchdog(CPU_LIMIT)


def _parse(guard: BudgetedFile) -> Any:
    """``mutagen.File`` on the budgeted file; any failure becomes :class:`MalformedAudio`.

    Parsers wrap exceptions in their own (MP4 turns anything into
    ``MP4MetadataError``), so the file's own record of a refusal or an origin
    failure decides first. Anything else a parser raises on hostile bytes is
    the file's fault, whatever its type: the file is skipped, the scan goes on.
    The error is raised once the parser's exception is gone: chained to it, it
    would keep the parser's frames alive, and with them whatever they had read
    (16 MiB per file), for as long as the scanner keeps the result.
    """
    try:
        WATCHDOG.start(guard)
        try:
            return mutagen.File(guard)
        finally:
            WATCHDOG.stop(guard)
    except Exception as exc:  # the point: no parser failure may end a scan
        failure = _failure(guard, exc)
    failure.__traceback__ = None
    raise failure


def _failure(guard: BudgetedFile, exc: Exception) -> Exception:
    """What a parser's exception means: the origin's error, or why the file is malformed."""
    if guard.origin_error is not None:
        return guard.origin_error
    if guard.refused is not None:
        return MalformedAudio(*guard.refused)
    if isinstance(exc, OSError):
        return MalformedAudio("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}")
    message = str(exc).replace(repr(guard.name), "file").replace(str(guard.name), "file")
    if isinstance(exc, (mutagen.MutagenError, ValueError, EOFError, IndexError, KeyError, struct_error)):
        if isinstance(exc, struct_error) or not message:  # a header points past the data that exists
            message = f"truncated or inconsistent header{f' ({message})' if message else ''}"
        return MalformedAudio("corrupt audio", message[:500])
    # not an error mutagen means to raise: a parser bug met on hostile bytes
    log.debug("tag parser failed on %s", guard.name, exc_info=exc)
    return MalformedAudio("parser failure", f"{type(exc).__name__}: {message}"[:500])


def read_tags(path: str | os.PathLike[str] | BinaryIO) -> dict[str, Any]:
    """FR-6 fields of an audio file, and under ``picture`` the bytes of its embedded front cover
    (or None: :mod:`musicfs.index.artwork`); raises :class:`MalformedAudio`.

    ``path`` is a local path, or a seekable binary file object with ``name`` and
    ``size`` (a remote file read through ranged requests). An origin failing
    while it is read is not a malformed file: that error passes through.
    """
    is_file = hasattr(path, "read")
    name = path.name if is_file else os.fspath(path)
    try:
        source = path if is_file else open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise MalformedAudio("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    try:
        size = path.size if is_file else os.fstat(source.fileno()).st_size
        if size == 0:
            raise MalformedAudio("empty file", "0 bytes")
        audio = _parse(BudgetedFile(source, str(name), size, READ_LIMIT))
    finally:
        if not is_file:
            source.close()
    if audio is None:
        raise MalformedAudio("unrecognised format", "no audio header mutagen knows")
    info = getattr(audio, "info", None)
    length = getattr(info, "length", 0) or 0
    kind = _FORMATS.get(type(audio).__name__)
    # Opus always decodes at 48 kHz; mutagen gives no sample rate for it
    sample_rate = int(getattr(info, "sample_rate", 0) or (48000 if kind == "opus" else 0))
    if not length > 0 or sample_rate <= 0:  # also NaN
        raise MalformedAudio("no audio stream", f"{type(audio).__name__} header without audio frames")
    if not length < MAX_SECONDS:  # also infinity: the header's numbers are not a stream's
        raise MalformedAudio("corrupt audio", f"the stream header claims {length:g} s of audio")
    raw = _raw_tags(audio.tags)
    date = raw.get("date")
    ext = os.path.splitext(str(name))[1].lower().lstrip(".")
    return {
        "title": raw.get("title"),
        "artist": raw.get("artist"),
        "album": raw.get("album"),
        "album_artist": raw.get("album_artist"),
        "genre": raw.get("genre"),
        "year": _leading_int(date[:4]) if date else None,
        "track": _leading_int(raw.get("tracknumber")),
        "disc": _leading_int(raw.get("discnumber")),
        "duration_ms": int(round(length * 1000)),
        "bitrate": min(int(getattr(info, "bitrate", 0) or 0), 1 << 40),
        "sample_rate": min(sample_rate, 1 << 40),
        "format": kind or ext or "audio",
        "picture": front_picture(audio),
    }

