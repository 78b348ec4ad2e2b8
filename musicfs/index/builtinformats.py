"""The built-in audio formats, all read with mutagen: FLAC, MP3, Ogg Vorbis, Opus, WAV, MP4/M4A, AIFF.

Each is an :class:`~musicfs.index.formats.AudioFormat` found through the ``musicfs.formats`` entry
points like a plugin's; they share one reader. It lets mutagen tell the container from the
bytes (``mutagen.File``, which also weighs the name), as a file named ``.ogg`` may hold Opus, so
the format a track gets is the stream's (:data:`_FORMATS`), or the file's extension for a stream
mutagen names otherwise. Tags are taken from whichever container holds them: ID3 (MP3, and the
ID3 chunk of WAV and AIFF), MP4 atoms, Vorbis comments.

mutagen raises its own errors on a damaged file, and also ``ValueError``, ``struct.error``,
``EOFError``... (a header pointing past the data): those make the file "corrupt audio". Anything
else it raises is a parser bug met on hostile bytes, which :func:`musicfs.index.tags.read_tags`
reports as the reader's failure.
"""

from __future__ import annotations

import re
from struct import error as struct_error  # mutagen lets these through on garbage input
from typing import Any

import mutagen
from mutagen.id3 import ID3
from mutagen.mp4 import MP4Tags

from .formats import AudioFields, AudioFile, AudioFormat, MalformedAudio, suffix
from .pictures import front_picture
from .tags import MAX_SECONDS, clean_text, describe

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
_LEADING_INT = re.compile(r"\s*(\d{1,12})(?!\d)")  # longer numbers are garbage (and overflow SQLite)
# what mutagen raises on a damaged file (beside its own errors)
_DAMAGED = (mutagen.MutagenError, ValueError, EOFError, IndexError, KeyError, struct_error)


def _first(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else clean_text(str(value))


def _leading_int(value: str | None) -> int | None:
    """The number a tag starts with ("3/12" is 3), or None."""
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


def _open(file: AudioFile) -> Any:
    """``mutagen.File`` on ``file``; a damaged file is :class:`MalformedAudio` ("corrupt audio").
    Raised once mutagen's exception is gone: chained to it, it would keep the parser's frames
    alive, and with them whatever they had read."""
    try:
        return mutagen.File(file)
    except OSError:  # the file could not be read (an OSError may be a ValueError too): read_tags says so
        raise
    except _DAMAGED as exc:
        message = describe(file, exc)
        if isinstance(exc, struct_error) or not message:  # a header points past the data that exists
            message = f"truncated or inconsistent header{f' ({message})' if message else ''}"
        failure = MalformedAudio("corrupt audio", message[:500])
    raise failure


def read_with_mutagen(file: AudioFile) -> AudioFields:
    """What mutagen finds in ``file``: the stream of the container its bytes are, the tags of
    whichever tag container that holds, and its front cover."""
    audio = _open(file)
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
    return AudioFields(
        title=raw.get("title"),
        artist=raw.get("artist"),
        album=raw.get("album"),
        album_artist=raw.get("album_artist"),
        genre=raw.get("genre"),
        year=_leading_int(date[:4]) if date else None,
        track=_leading_int(raw.get("tracknumber")),
        disc=_leading_int(raw.get("discnumber")),
        duration_ms=length * 1000,
        bitrate=int(getattr(info, "bitrate", 0) or 0),
        sample_rate=sample_rate,
        picture=front_picture(audio),
        format=kind or suffix(str(file.name)).lstrip(".") or None,  # a stream mutagen names otherwise
    )


class MutagenFormat(AudioFormat):
    """A built-in format: read with mutagen, whichever container the bytes turn out to be."""

    def read(self, file: AudioFile) -> AudioFields:
        return read_with_mutagen(file)


def _builtin(name: str, *extensions: str) -> type[MutagenFormat]:
    """A built-in format's class: its ``name`` (the extension shown) and its files' extensions."""
    return type(name.capitalize(), (MutagenFormat,), {"name": name, "extensions": extensions,
                                                      "__module__": __name__})


# what the entry points (and formats.BUILTIN) name
Flac = _builtin("flac", "flac")
Mp3 = _builtin("mp3", "mp3")
Ogg = _builtin("ogg", "ogg", "oga")
Opus = _builtin("opus", "opus")
Wav = _builtin("wav", "wav")
M4a = _builtin("m4a", "m4a", "mp4", "aac")
Aiff = _builtin("aiff", "aiff", "aif")
