"""Finding a track's embedded front cover, and telling what an image is (mutagen and Pillow).

Apart from :mod:`musicfs.index.artwork` so that a mount, which shows covers
from the index, imports neither parser: only scans (and a cover read again
from its origin) need them. The rules applied are that module's.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import struct
from collections.abc import Iterable
from typing import Any

import mutagen
import PIL.Image
from mutagen.flac import Picture
from mutagen.id3 import ID3
from mutagen.mp4 import MP4Tags

from ..digest import digest
from .artwork import FORMATS, IMAGE_LIMIT, Image

log = logging.getLogger(__name__)

_PICTURE_FRONT, _PICTURE_OTHER = 3, 0  # ID3 / FLAC picture types


def identify(data: bytes) -> Image | None:
    """The image ``data`` holds, or None if it is not one shown as a cover (logged at debug)."""
    if not data or len(data) > IMAGE_LIMIT:
        return None
    try:
        with PIL.Image.open(io.BytesIO(data), formats=list(FORMATS)) as picture:
            kind, (width, height) = picture.format, picture.size
    except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, OSError, ValueError,
            SyntaxError, struct.error) as exc:  # what Pillow raises on bytes that are no image
        log.debug("not an image: %s", exc)
        return None
    mime = FORMATS.get(kind or "", (None, None))[0]
    if mime is None:
        return None
    return Image(digest(data), mime, len(data), int(width), int(height))


def front_picture(audio: Any) -> bytes | None:
    """The front cover embedded in a parsed file (a ``mutagen.File``), or None."""
    pictures = list(_pictures(audio))
    for wanted in (_PICTURE_FRONT, _PICTURE_OTHER):
        for kind, data in pictures:
            if kind == wanted and data:
                return data
    return None


def _pictures(audio: Any) -> Iterable[tuple[int, bytes]]:
    for picture in getattr(audio, "pictures", None) or ():  # FLAC's PICTURE blocks
        yield int(picture.type), bytes(picture.data)
    tags = getattr(audio, "tags", None)
    if tags is None:
        return
    if isinstance(tags, ID3):  # MP3, and the ID3 chunk of WAV and AIFF
        for frame in tags.getall("APIC"):
            yield int(frame.type), bytes(frame.data)
    elif isinstance(tags, MP4Tags):  # 'covr' has no picture type: a front cover by convention
        for cover in tags.get("covr") or ():
            yield _PICTURE_FRONT, bytes(cover)
    elif hasattr(tags, "get"):  # Vorbis comments: FLAC PICTURE blocks, base64-encoded
        for value in tags.get("metadata_block_picture") or ():
            try:
                picture = Picture(base64.b64decode(value))
            except (binascii.Error, ValueError, struct.error, mutagen.MutagenError, IndexError) as exc:
                log.debug("a METADATA_BLOCK_PICTURE that is not a picture: %s", exc)
                continue
            yield int(picture.type), bytes(picture.data)
