"""Metadata sources: a track's tags taken from somewhere other than its file (a beets library).

Why: a library curated in a tagger's database (beets, after MusicBrainz matching) has better
tags there than in the files, and writing them back to every file is what a user may not want
(seeding, checksums, a read-only share). A source is a plugin found through the
``musicfs.metadata`` entry-point group and named in the config, with its own options::

    [metadata]
    source = "beets"
    library = "~/.config/beets/library.db"

How a scan uses it: at the start of each scan the source reads what it holds again
(:meth:`MetadataSource.refresh`); for every audio file the scanner asks it for the fields it
has for that file (:data:`FIELDS`, or None: the file's own tags stand). Those replace the
file's values; duration, bitrate, sample rate and format always come from the file. What the
source gave is remembered per track as a key (:func:`fields_key`), so a rescan that finds the
source changed for a file (``beet modify``) reads that file again even though the file itself
did not change; every other file stays untouched.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .. import plugins
from ..errors import ConfigError

METADATA_GROUP = "musicfs.metadata"
FIELDS = ("title", "artist", "album", "album_artist", "genre", "year", "track", "disc")
_INTEGERS = ("year", "track", "disc")


class MetadataSource(ABC):
    """A plugin's source of tags. Called from the scan's threads: it must be safe to call from
    several at once after :meth:`refresh` (read-only lookups)."""

    name: ClassVar[str]
    required: ClassVar[frozenset[str]] = frozenset()  # options this source needs
    optional: ClassVar[frozenset[str]] = frozenset()  # options it may take

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MetadataSource:
        return cls(**options)

    def refresh(self) -> None:  # noqa: B027 - most sources read what they hold each time: nothing to do
        """Read the source again: each scan begins with it (blocking, in the scan's thread)."""

    @abstractmethod
    def fields(self, origin_id: str, real_path: str, local_path: str | None) -> dict[str, Any] | None:
        """The fields of :data:`FIELDS` the source holds for a file (others are ignored), or None
        when it knows nothing of it. ``local_path``: where the file is on this machine, for an
        origin that is a folder (None for a bucket or a server)."""

    def close(self) -> None:
        return None


def clean(fields: dict[str, Any] | None) -> dict[str, Any]:
    """The usable part of what a source gave: known fields with a value, numbers as numbers."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = (fields or {}).get(name)
        if value is None or value == "":
            continue
        if name in _INTEGERS:  # a tagger's 0 is "unknown" (beets' year, track and disc)
            try:
                value = int(value)
            except (TypeError, ValueError):
                continue
            if value <= 0:
                continue
        out[name] = value if name in _INTEGERS else str(value)
    return out


def fields_key(fields: dict[str, Any]) -> str:
    """What a track remembers of the fields a source gave it: '' for none."""
    if not fields:
        return ""
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def providers() -> dict[str, plugins.Provider]:
    return plugins.providers(METADATA_GROUP)


def source_class(name: str) -> type[MetadataSource]:
    """The class of a metadata source, imported now; ConfigError naming the package and the error."""
    provider = providers().get(name)
    if provider is None:
        known = ", ".join(sorted(providers())) or "none installed"
        raise ConfigError(f"unknown metadata source {name!r} (known: {known})")
    cls = plugins.load(provider, MetadataSource, f"metadata source {name!r}")
    if getattr(cls, "name", None) != name:
        raise ConfigError(f"metadata source {name!r} ({provider.describe()}): its class says its name is "
                          f"{getattr(cls, 'name', None)!r}")
    return cls
