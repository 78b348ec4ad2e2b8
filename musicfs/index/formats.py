"""Audio formats: which files are audio, what each is called in the mount, and who reads its tags.

Why plugins: a library holds formats musicfs was not written for (WavPack, Monkey's Audio, DSD),
and the reader of one is a few dozen lines on a library that already parses it. A format is a
subclass of :class:`AudioFormat` found through the ``musicfs.formats`` entry-point group, the
built-in ones (all read with mutagen: :mod:`musicfs.index.builtinformats`) too::

    [project.entry-points."musicfs.formats"]
    wv = "musicfs_wavpack_format:WavPackFormat"

It has a canonical :attr:`~AudioFormat.name` (the extension the mount shows, ``$format`` in path
templates), the :attr:`~AudioFormat.extensions` of its files, and a reader,
:meth:`~AudioFormat.read`, that takes the file (seekable, binary, with ``name`` and ``size``) and
returns :class:`AudioFields`, or raises :class:`MalformedAudio` for a file it refuses.
:func:`musicfs.index.tags.read_tags` picks the format by the file's extension and runs its reader
within the read budget and CPU watchdog every reader gets; whatever a reader raises or returns
costs that file only (skipped, with the reason), never the scan.

Loading: on the first scan of a process (a mount that only serves an index imports none of this),
each format is imported once. One that fails to import, or is no format, is logged once with its
name, package and error; its files are then not audio to this process, and every other format
reads on. A built-in format's name and extensions stay musicfs's own: a plugin cannot take them
over (logged).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from .. import plugins
from ..errors import ConfigError
from ..plugins import Provider

log = logging.getLogger(__name__)

FORMAT_GROUP = "musicfs.formats"
# where the built-in formats are when musicfs runs from a source tree that was never installed;
# an installed musicfs finds them in FORMAT_GROUP like any plugin's
BUILTIN = (("flac", "musicfs.index.builtinformats:Flac"), ("mp3", "musicfs.index.builtinformats:Mp3"),
           ("ogg", "musicfs.index.builtinformats:Ogg"), ("opus", "musicfs.index.builtinformats:Opus"),
           ("wav", "musicfs.index.builtinformats:Wav"), ("m4a", "musicfs.index.builtinformats:M4a"),
           ("aiff", "musicfs.index.builtinformats:Aiff"))
WORD = re.compile(r"[a-z0-9]{1,16}")  # a format's name and extensions: shown as a file's extension


class MalformedAudio(Exception):
    """The file is not audio its format's reader can read; ``reason`` is short, ``detail`` is the cause."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class AudioFields:
    """What a reader found in one file (FR-6): its tags, its stream, its embedded front cover.

    Text is kept as tagged (musicfs cuts it at its limit and cleans names itself); numbers of
    tags are whole numbers or None. ``duration_ms`` must be more than 0 and ``sample_rate`` too,
    or the file has no audio stream. ``format``: None for the format's own name; a reader that
    tells streams apart by their bytes names the one it found (an Opus stream in an ``.ogg``
    file is ``opus``)."""

    title: str | None = None
    artist: str | None = None
    album: str | None = None
    album_artist: str | None = None
    genre: str | None = None
    year: int | None = None
    track: int | None = None
    disc: int | None = None
    duration_ms: float  # rounded when stored
    bitrate: int = 0  # bits per second, 0 when unknown
    sample_rate: int
    picture: bytes | None = None  # the front cover's bytes, as embedded
    format: str | None = None


class AudioFile(Protocol):
    """The file a reader is given: at most the read budget of it may be read, and a read past the
    budget raises (let it through: the file is refused, and says why)."""

    name: str  # the file's path in its origin
    size: int

    def read(self, size: int | None = -1) -> bytes: ...

    def seek(self, offset: int, whence: int = 0) -> int: ...

    def tell(self) -> int: ...


class AudioFormat(ABC):
    """One audio format. Instantiated once a process, without arguments; :meth:`read` is called
    from several scan threads at once."""

    name: ClassVar[str]  # lowercase letters and digits: the extension shown in the mount
    extensions: ClassVar[tuple[str, ...]]  # of its files, without the dot ("wv")

    @abstractmethod
    def read(self, file: AudioFile) -> AudioFields:
        """The fields of ``file``; :class:`MalformedAudio` for a file that is not this format's
        audio (``MalformedAudio("corrupt audio", why)``). Anything else raised is reported as
        the reader's failure on that file."""


@dataclass(frozen=True)
class Reader:
    """A loaded format and where it comes from (for messages)."""

    format: AudioFormat
    provider: Provider
    builtin: bool

    @property
    def extensions(self) -> tuple[str, ...]:
        """Those of its files as a path ends in them (".wv"), each once (it may spell them "wv" or ".WV")."""
        spelt = (extension.lower().removeprefix(".") for extension in self.format.extensions)
        return tuple(dict.fromkeys(f".{extension}" for extension in spelt))


@dataclass(frozen=True)
class FormatSet:
    """The formats a process reads, by extension (".flac"), and those that failed to load."""

    by_extension: Mapping[str, Reader]
    failed: Mapping[str, str]  # format name -> why it did not load

    @property
    def extensions(self) -> frozenset[str]:
        return frozenset(self.by_extension)

    def for_path(self, path: str) -> Reader | None:
        return self.by_extension.get(suffix(path))


def suffix(path: str) -> str:
    """What follows the last dot of a file's name, with the dot, in lowercase ("" without one): what
    the scanner matches extensions with (``...flac`` and ``.flac`` are FLAC files too)."""
    _, dot, extension = os.path.basename(path).rpartition(".")
    return f".{extension.lower()}" if dot else ""


def providers() -> dict[str, Provider]:
    """Every format installed, by name (imports nothing of theirs)."""
    return plugins.providers(FORMAT_GROUP, BUILTIN)


def load(provider: Provider) -> type[AudioFormat]:
    """Import what ``provider`` names and check that it is the format it says; ConfigError if not."""
    what = f"audio format {provider.name!r}"
    cls = plugins.load(provider, AudioFormat, what)
    label = f"{what} ({provider.describe()})"
    if getattr(cls, "name", None) != provider.name:
        raise ConfigError(f"{label}: its class says its name is {getattr(cls, 'name', None)!r}")
    if not WORD.fullmatch(provider.name):
        raise ConfigError(f"{label}: a name is lowercase letters and digits (it is a file's extension)")
    extensions = getattr(cls, "extensions", None)
    if isinstance(extensions, str) or not isinstance(extensions, Iterable) or not extensions:
        raise ConfigError(f"{label}: extensions must be a tuple of extensions, not {extensions!r}")
    for extension in extensions:
        if not (isinstance(extension, str) and WORD.fullmatch(extension.lower().removeprefix("."))):
            raise ConfigError(f"{label}: {extension!r} is not an extension (lowercase letters and digits)")
    return cls


def create(provider: Provider, builtin: bool = False) -> Reader:
    """The format ``provider`` names, loaded and made; ConfigError naming it, its package and why not."""
    cls = load(provider)
    try:
        return Reader(cls(), provider, builtin)
    except Exception as exc:  # the point: a plugin's constructor may fail in any way; said, with its name
        raise ConfigError(f"audio format {provider.name!r} ({provider.describe()}) cannot be created: "
                          f"{type(exc).__name__}: {exc}") from None


def build(candidates: Iterable[tuple[Provider, bool]]) -> FormatSet:
    """Load each (provider, built in?) in order; an extension goes to the first format claiming it.

    A format that does not load is logged with its name, package and error, and left out."""
    by_extension: dict[str, Reader] = {}
    failed: dict[str, str] = {}
    for provider, builtin in candidates:
        try:
            reader = create(provider, builtin)
        except ConfigError as exc:
            failed[provider.name] = str(exc)
            log.error("%s; its files are not indexed", exc)
            continue
        for extension in reader.extensions:
            held = by_extension.setdefault(extension, reader)
            if held is not reader:
                log.warning("audio format %r (%s) also claims %s files: they stay format %r's (%s)",
                            provider.name, provider.describe(), extension, held.format.name,
                            held.provider.describe())
    return FormatSet(by_extension, failed)


def builtins() -> list[tuple[Provider, bool]]:
    """The built-in formats, as :func:`build` takes them."""
    return [(Provider(FORMAT_GROUP, name, target, "musicfs", "", "built in"), True) for name, target in BUILTIN]


def candidates() -> list[tuple[Provider, bool]]:
    """The built-in formats first (musicfs's own, whatever a plugin names itself), then the
    plugins' by name."""
    found = providers()
    out = builtins()
    for name in sorted(found):
        provider = found[name]
        if name not in dict(BUILTIN):
            out.append((provider, False))
        elif provider.distribution != "musicfs":
            log.warning("audio format %r (%s) is not used: %r is a built-in format", name, provider.describe(),
                        name)
    return out


_lock = threading.Lock()
_installed: FormatSet | None = None


def installed() -> FormatSet:
    """The formats installed, loaded on first use (once a process: each failure is logged once)."""
    global _installed
    with _lock:
        if _installed is None:
            _installed = build(candidates())
        return _installed
