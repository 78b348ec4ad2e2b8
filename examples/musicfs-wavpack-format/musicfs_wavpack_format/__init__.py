"""A musicfs audio format: WavPack (``.wv``), its stream read with mutagen and its APEv2 tags.

WavPack keeps its tags in an APEv2 tag at the end of the file: text items with case-insensitive
keys (``Title``, ``Album Artist``, ``Track`` as "3/12"...) and binary items, among them the
front cover, ``Cover Art (Front)``, which holds the image's file name, a NUL, then the image.

musicfs gives :meth:`WavPackFormat.read` the file within its read budget and CPU watchdog, and
checks what it returns; a damaged file is said to be one (``MalformedAudio("corrupt audio")``)
rather than left to come out as the reader's failure.
"""

from __future__ import annotations

import re
import struct

import mutagen
from mutagen.apev2 import BINARY, TEXT, APEv2
from mutagen.wavpack import WavPack

from musicfs.index.formats import AudioFields, AudioFile, AudioFormat, MalformedAudio

# musicfs's fields -> the APEv2 keys taggers write them under (the first one present wins)
KEYS = {"title": ("Title",), "artist": ("Artist",), "album": ("Album",),
        "album_artist": ("Album Artist", "AlbumArtist", "Album_Artist"), "genre": ("Genre",)}
NUMBERS = {"year": ("Year", "Date"), "track": ("Track", "TrackNumber"), "disc": ("Disc", "DiscNumber")}
COVER = "Cover Art (Front)"
_LEADING_INT = re.compile(r"\s*(\d{1,9})(?!\d)")
# what mutagen raises on a file that is not WavPack, or is cut short
_DAMAGED = (mutagen.MutagenError, ValueError, EOFError, IndexError, KeyError, struct.error, ZeroDivisionError)


class WavPackFormat(AudioFormat):
    name = "wv"
    extensions = ("wv",)

    def read(self, file: AudioFile) -> AudioFields:
        try:
            audio = WavPack(file)
        except OSError:  # the file could not be read: musicfs says so
            raise
        except _DAMAGED as exc:
            raise MalformedAudio("corrupt audio", f"{type(exc).__name__}: {exc}"[:300]) from None
        length = audio.info.length
        tags = audio.tags
        audio_bytes = file.size - _tag_bytes(file)
        return AudioFields(
            **{field: _text(tags, keys) for field, keys in KEYS.items()},
            year=_number(tags, NUMBERS["year"]),
            track=_number(tags, NUMBERS["track"]),
            disc=_number(tags, NUMBERS["disc"]),
            duration_ms=length * 1000,
            # WavPack's header has no bitrate: the stream's average, its tags (and cover) left out
            bitrate=round(audio_bytes * 8 / length) if length > 0 and audio_bytes > 0 else 0,
            sample_rate=audio.info.sample_rate,
            picture=_cover(tags),
        )


def _tag_bytes(file: AudioFile) -> int:
    """How many bytes at the end of the file are tags: an APEv2 tag (its 32-byte footer says how
    large it is, and whether a header precedes it), and an ID3v1 tag after it, if any."""
    end = 0
    if file.size >= 128:
        file.seek(file.size - 128)
        end = 128 if file.read(3) == b"TAG" else 0
    if file.size - end < 32:
        return end
    file.seek(file.size - end - 32)
    footer = file.read(32)
    if footer[:8] != b"APETAGEX":
        return end
    size, _items, flags = struct.unpack("<III", footer[12:24])
    return min(file.size, end + size + (32 if flags & (1 << 31) else 0))


def _text(tags: APEv2 | None, keys: tuple[str, ...]) -> str | None:
    """The first value of the first text item of ``keys`` (APEv2 keeps several values NUL-separated)."""
    for key in keys:
        value = tags.get(key) if tags is not None else None
        if value is not None and value.kind == TEXT:
            return str(value).split("\0")[0]
    return None


def _number(tags: APEv2 | None, keys: tuple[str, ...]) -> int | None:
    """The number a text item starts with ("3/12" is 3, "2001-05-01" is 2001), or None."""
    match = _LEADING_INT.match(_text(tags, keys) or "")
    return int(match.group(1)) if match else None


def _cover(tags: APEv2 | None) -> bytes | None:
    """The image of the front cover item: what follows the file name and its NUL."""
    value = tags.get(COVER) if tags is not None else None
    if value is None or value.kind != BINARY:
        return None
    _name, separator, image = bytes(value.value).partition(b"\0")
    return image if separator and image else None
