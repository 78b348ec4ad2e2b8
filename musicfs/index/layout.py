"""Where a track's audio lies in its file, apart from its tags: what a retag leaves alone.

A tagger (beets, Picard) rewrites a file's tags and leaves its audio as it was,
byte for byte, only moved: a longer comment makes the tags at the head longer.
Knowing the audio region of two versions of a file lets a rescan check that
their audio is the same, and reuse the chunks the old version is cached in
(delta sync). Each format says where its audio is:

* FLAC: after the last metadata block (an ID3v2 tag before ``fLaC`` is
  skipped). STREAMINFO's total samples and MD5 of the decoded audio are the
  audio's fingerprint: a retag keeps them, a re-encode of other audio does not.
* MP3 (any file starting with ID3v2): after the ID3v2 tags, before an ID3v1
  tag and an APEv2 tag at the end.
* Ogg (Vorbis, Opus, FLAC in Ogg): from the first page with a granule
  position (the pages of the headers, comments included, have none) to the end.
* MP4: the payload of the ``mdat`` atom. WAV: the ``data`` chunk.

Anything else, or a file whose structure does not add up, has no region
(None), and a changed version of it is fetched in full. Every walk is bounded
(blocks, pages, atoms and bytes read), so a hostile file costs little.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

MAX_STEPS = 4096  # metadata blocks, pages or atoms walked at most
MAX_HEAD = 64 * 1024 * 1024  # the audio must start within this many bytes


@dataclass(frozen=True)
class AudioRegion:
    start: int  # first byte of the audio
    end: int  # one past its last byte
    fingerprint: str = ""  # what the format says of the audio itself (FLAC: samples and MD5), or ""

    @property
    def length(self) -> int:
        return self.end - self.start


def audio_region(source: BinaryIO, size: int, fmt: str) -> AudioRegion | None:
    """The audio region of a file of ``size`` bytes in format ``fmt`` (the index's name), or None."""
    try:
        if fmt == "flac":
            region = _flac(source, size)
        elif fmt == "mp3":
            region = _mp3(source, size)
        elif fmt in ("ogg", "opus"):
            region = _ogg(source, size)
        elif fmt == "m4a":
            region = _mp4(source, size)
        elif fmt == "wav":
            region = _wav(source, size)
        else:
            return None
    except (struct.error, ValueError):
        return None
    if region is None or not 0 <= region.start < region.end <= size or region.start > MAX_HEAD:
        return None
    return region


def _read(source: BinaryIO, offset: int, length: int) -> bytes:
    source.seek(offset)
    data = source.read(length)
    if len(data) != length:
        raise ValueError("short read")
    return data


def _id3v2_end(source: BinaryIO, size: int, offset: int = 0) -> int:
    """Where the ID3v2 tags starting at ``offset`` end (``offset`` itself if there are none)."""
    for _ in range(MAX_STEPS):
        if offset + 10 > size:
            return offset
        head = _read(source, offset, 10)
        if head[:3] != b"ID3":
            return offset
        length = 0
        for byte in head[6:10]:  # syncsafe: 7 bits a byte
            if byte & 0x80:
                raise ValueError("bad ID3v2 size")
            length = (length << 7) | byte
        offset += 10 + length + (10 if head[5] & 0x10 else 0)  # a footer follows when flagged
    raise ValueError("too many ID3v2 tags")


def _tail_tags_start(source: BinaryIO, size: int) -> int:
    """Where the tags at the end of a file begin: an ID3v1 tag, and an APEv2 tag before it."""
    end = size
    if end >= 128 and _read(source, end - 128, 3) == b"TAG":
        end -= 128
    if end >= 32:
        footer = _read(source, end - 32, 32)
        if footer[:8] == b"APETAGEX":
            length, _items, flags = struct.unpack("<III", footer[12:24])
            header = 32 if flags & 0x80000000 else 0
            end -= length + header
    if end < 0:
        raise ValueError("tags at the end larger than the file")
    return end


def _flac(source: BinaryIO, size: int) -> AudioRegion | None:
    offset = _id3v2_end(source, size)
    if _read(source, offset, 4) != b"fLaC":
        return None
    offset += 4
    fingerprint = ""
    for _ in range(MAX_STEPS):
        head = _read(source, offset, 4)
        last, kind = head[0] & 0x80, head[0] & 0x7F
        length = int.from_bytes(head[1:4], "big")
        if kind == 0:  # STREAMINFO: total samples (36 bits) and the audio's MD5
            info = _read(source, offset + 4, 34)
            samples = int.from_bytes(info[13:18], "big") & 0xFFFFFFFFF
            fingerprint = f"flac:{samples}:{info[18:34].hex()}"
        offset += 4 + length
        if last:
            return AudioRegion(offset, _tail_tags_start(source, size), fingerprint)
    return None


def _mp3(source: BinaryIO, size: int) -> AudioRegion:
    return AudioRegion(_id3v2_end(source, size), _tail_tags_start(source, size))


def _ogg(source: BinaryIO, size: int) -> AudioRegion | None:
    offset = 0
    for _ in range(MAX_STEPS):
        head = _read(source, offset, 27)
        if head[:4] != b"OggS":
            return None
        granule = struct.unpack("<q", head[6:14])[0]
        segments = head[26]
        body = sum(_read(source, offset + 27, segments))
        if granule not in (0, -1):  # the first page carrying audio
            return AudioRegion(offset, size)
        offset += 27 + segments + body
        if offset >= size:
            return None
    return None


def _mp4(source: BinaryIO, size: int) -> AudioRegion | None:
    offset = 0
    for _ in range(MAX_STEPS):
        if offset + 8 > size:
            return None
        length, kind = struct.unpack(">I4s", _read(source, offset, 8))
        header = 8
        if length == 1:  # a 64-bit size follows
            length = struct.unpack(">Q", _read(source, offset + 8, 8))[0]
            header = 16
        elif length == 0:  # to the end of the file
            length = size - offset
        if length < header:
            return None
        if kind == b"mdat":
            return AudioRegion(offset + header, offset + length)
        offset += length
    return None


def _wav(source: BinaryIO, size: int) -> AudioRegion | None:
    if _read(source, 0, 4) != b"RIFF" or _read(source, 8, 4) != b"WAVE":
        return None
    offset = 12
    for _ in range(MAX_STEPS):
        kind, length = struct.unpack("<4sI", _read(source, offset, 8))
        if kind == b"data":
            return AudioRegion(offset + 8, min(size, offset + 8 + length))
        offset += 8 + length + (length & 1)
    return None
