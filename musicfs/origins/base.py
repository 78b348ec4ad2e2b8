"""The one interface every origin implements, and the registry of origin kinds.

An origin is somewhere the bytes of a library live: a folder, a bucket, a
server. musicfs asks it five things and nothing else:

* ``stat(path)``: size, mtime and version of one file (``NotFound`` if absent),
* ``list_page(prefix, token)``: one page of files and sub-folders directly
  under ``prefix``, plus a token for the next page,
* ``read_range(path, offset, size)``: up to ``size`` bytes at ``offset``,
* ``health()``: a quick probe; raises when the origin cannot be reached,
* ``close()``.

A kind whose class says ``writable = True`` also stores and deletes files:
``put(path, source)`` replaces a file atomically, ``remove(path)`` deletes one
(see :meth:`Origin.put`); every other kind refuses both with
:class:`~musicfs.errors.OriginReadOnly`.

All of them block (they are called in worker threads, with the retry schedule
of :mod:`musicfs.origins.retry`). Paths are '/'-separated, relative to the
origin's root, without a leading '/'. Errors: :class:`~musicfs.errors.NotFound`
for a missing file (never retried); anything else counts as the origin being
unavailable and may be retried; :class:`OriginBusy` carries a server's
``Retry-After``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar

from .. import plugins
from ..errors import ConfigError, OriginReadOnly, OriginUnavailable
from ..plugins import Provider


@dataclass(frozen=True)
class Entry:
    """One file an origin lists."""

    path: str  # '/'-separated, relative to the origin root
    size: int
    mtime_ns: int
    version: str = ""  # an ETag or similar; empty when size and mtime are the version

    @property
    def version_key(self) -> str:
        return self.version or f"{self.size}:{self.mtime_ns}"


@dataclass(frozen=True)
class Checksum:
    """A checksum of a whole file that its origin vouches for (an S3 ETag is the MD5 of the body)."""

    algorithm: str  # a hashlib name
    hexdigest: str
    source: str  # where it comes from, for messages ("ETag")


@dataclass(frozen=True)
class Page:
    files: list[Entry]
    dirs: list[str]  # names of sub-folders (not paths)
    next_token: str | None = None


class OriginBusy(OriginUnavailable):
    """The origin asked us to slow down (429/503); ``retry_after`` seconds, if it said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def check_seconds(options: dict[str, Any], key: str, fail: Callable[[str], Exception]) -> None:
    """A config option holding a positive number of seconds (when given); ``fail`` builds the error."""
    if key not in options:
        return
    value = options[key]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise fail(f"{key} must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise fail(f"{key} must be more than 0 seconds, not {value}")


class Origin(ABC):
    kind: ClassVar[str]
    required: ClassVar[frozenset[str]] = frozenset()  # config keys this kind needs
    optional: ClassVar[frozenset[str]] = frozenset()  # config keys it may take
    writable: ClassVar[bool] = False  # put and remove store and delete files (else they refuse)

    def __init__(self, origin_id: str):
        self.id = origin_id

    @property
    @abstractmethod
    def location(self) -> str:
        """Where it is, for status output: never holds a secret."""

    @abstractmethod
    def stat(self, path: str) -> Entry: ...

    @abstractmethod
    def list_page(self, prefix: str = "", token: str | None = None) -> Page: ...

    @abstractmethod
    def read_range(self, path: str, offset: int, size: int) -> bytes: ...

    @abstractmethod
    def health(self) -> None:
        """Return if the origin answers; raise :class:`OriginUnavailable` (or OSError) if not."""

    @classmethod
    def from_options(cls, origin_id: str, options: dict[str, Any]) -> Origin:
        """An origin from its ``[[origins]]`` table (without ``id``, ``type``, ``priority``,
        ``cache``); the keys were checked against :attr:`required` and :attr:`optional`."""
        return cls(origin_id, **options)

    def close(self) -> None:
        return None

    def put(self, path: str, source: BinaryIO) -> None:
        """Store the bytes of ``source``, read to its end, as the file at ``path``. Blocking.

        What every writable kind guarantees:

        * ``path`` is checked as reads check it (a path leading out of the origin is refused
          with ``ValueError``, and so is one naming no file); folders it names are created.
        * Atomic: whoever reads ``path`` meanwhile (:meth:`stat`, :meth:`read_range`, another
          machine) finds the old file whole or the new one whole, never part of either.
        * Streamed: ``source`` is read in chunks of a few MiB (``source.read(n)``), never all
          of it at once; it may be hundreds of MB.
        * A failure midway (the origin's or ``source``'s own error) leaves the old file as it
          was and nothing partial behind: no temporary file, no unfinished upload (one the
          origin can no longer be reached to remove is logged with its name).
        * A failure leaves the call repeatable: a source that can be rewound (``seekable()``)
          is put back where it stood and the error raised as it is, so calling again (as
          :mod:`musicfs.origins.retry` does) stores all of it; one that cannot, once partly
          read, makes it :class:`~musicfs.errors.NotRepeatable`, which is never retried.
        * Errors are the origin's: :class:`~musicfs.errors.OriginUnavailable` with a message
          naming the origin and what failed (a refused permission says so); ``source``'s own
          errors are raised as they are.

        This default refuses: the kind is read-only (:class:`~musicfs.errors.OriginReadOnly`).
        """
        raise OriginReadOnly(self.id, self.kind, "store", path)

    def remove(self, path: str) -> None:
        """Delete the file at ``path``; one that does not exist is no error. Blocking.

        ``path`` is checked as for :meth:`put`; folders are left as they are. This default
        refuses: the kind is read-only (:class:`~musicfs.errors.OriginReadOnly`).
        """
        raise OriginReadOnly(self.id, self.kind, "remove", path)

    def whole_checksum(self, version: str) -> Checksum | None:
        """The checksum of a whole file this origin vouches for, given the file's ``version``
        (from :meth:`stat` or a listing), or None when it offers none. A cache checks a
        file against it once all of it has arrived."""
        return None

    def statistics(self) -> dict:
        """Counters of this origin's own (connections opened, credentials reloaded...), for status."""
        return {}

    def list_all(self, prefix: str = "") -> tuple[list[Entry], list[str]]:
        """Every file and sub-folder directly under ``prefix``, all pages of it."""
        token, files, dirs = None, [], []
        while True:
            page = self.list_page(prefix, token)
            files += page.files
            dirs += page.dirs
            token = page.next_token
            if token is None:
                return files, dirs

    def walk(self, on_error=None) -> Iterator[Entry]:
        """Every file, folder by folder in sorted order, built on :meth:`list_page`."""
        stack = [""]
        while stack:
            prefix = stack.pop()
            try:
                files, dirs = self.list_all(prefix)
            except (OriginUnavailable, OSError) as exc:
                if on_error:
                    on_error(prefix or ".", exc)
                continue
            yield from sorted(files, key=lambda e: e.path)
            stack.extend(f"{prefix}{name}/" for name in sorted(dirs, reverse=True))


ORIGIN_GROUP = "musicfs.origins"  # the entry-point group origin kinds are found in, built-in ones too
# where the built-in kinds are when musicfs runs from a source tree that was never installed (no
# entry points at all); an installed musicfs finds them in ORIGIN_GROUP like any plugin
BUILTIN = (("local", "musicfs.origins.local:LocalOrigin"), ("s3", "musicfs.origins.s3:S3Origin"),
           ("sftp", "musicfs.origins.sftp:SftpOrigin"))
_KINDS: dict[str, type[Origin]] = {}  # kinds loaded so far (a kind's module is imported when a config uses it)


def providers() -> dict[str, Provider]:
    """Every origin kind installed, by name (imports nothing of theirs)."""
    return plugins.providers(ORIGIN_GROUP, BUILTIN)


def register(cls: type[Origin]) -> type[Origin]:
    """Class decorator: make an origin kind available under ``cls.kind`` without an entry point
    (tests that define a kind of their own)."""
    _KINDS[cls.kind] = cls
    return cls


def kind_names() -> list[str]:
    return sorted(set(providers()) | set(_KINDS))


def kind_class(kind: str) -> type[Origin]:
    """The class of an origin kind, importing its module on first use.

    A kind that cannot be loaded (its package fails to import, or what it names is no origin
    of that kind) is a :class:`~musicfs.errors.ConfigError` naming the kind, the package it
    comes from and the error: a library that uses it does not mount, the others are not
    concerned (nothing is loaded before a config asks for it).
    """
    cls = _KINDS.get(kind)
    if cls is not None:
        return cls
    # a built-in kind is loaded without reading every installed package's entry points (~30 ms a
    # command); its name is musicfs's own, which no plugin can take over
    builtin = dict(BUILTIN).get(kind)
    provider = (plugins.Provider(ORIGIN_GROUP, kind, builtin, "musicfs", "", "built in") if builtin
                else providers().get(kind))
    if provider is None:
        raise ConfigError(f"unknown origin type {kind!r} (known: {', '.join(kind_names())})")
    cls = load(provider)
    _KINDS[kind] = cls
    return cls


def load(provider: Provider) -> type[Origin]:
    """Import what ``provider`` names and check that it is an origin of its kind."""
    what = f"origin type {provider.name!r}"
    cls = plugins.load(provider, Origin, what)
    if getattr(cls, "kind", None) != provider.name:
        raise ConfigError(f"{what} ({provider.describe()}): its class says its kind is "
                          f"{getattr(cls, 'kind', None)!r}")
    return cls


def kinds() -> dict[str, type[Origin]]:
    """Every kind that can be loaded here (imports them all: for tools and tests)."""
    for kind in providers():
        try:
            kind_class(kind)
        except ConfigError:
            pass
    return dict(_KINDS)


def create(origin_id: str, kind: str, options: dict[str, Any]) -> Origin:
    return kind_class(kind).from_options(origin_id, options)


@dataclass
class Health:
    """What the federation knows of one origin: healthy, degraded or unhealthy."""

    state: str = "unknown"
    latency_ms: float | None = None
    error: str | None = None
    checked_at: float | None = None
    failures: int = 0
    history: list[str] = field(default_factory=list)
