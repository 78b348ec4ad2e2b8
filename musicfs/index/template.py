"""Path templates: how tags become ``Artist/Album (Year) [FLAC]/01 - Title.flac``.

Grammar (the MusicFS design, plus ``$albumartist``)::

    template   = segment ("/" segment)*
    segment    = (literal | variable)+
    variable   = "$" identifier | "${" identifier "}"
    identifier = artist | albumartist | album | title | track | year | genre
               | format | format_upper | disc

``$$`` is a literal dollar sign. Every segment but the last is a directory; the
last is the file name, which always ends in the track's real extension (it is
appended when the template's last segment does not already end in ``.$format``).

Missing values fall back so that no component is ever empty:

=============  ===================================================
variable       when the tag is missing
=============  ===================================================
artist         album artist, else ``Unknown Artist``
albumartist    artist, else ``Unknown Artist``
album          ``Unknown Album``
title          the file name of the real path, without extension
track          ``00`` (always zero-padded to two digits)
disc           ``1``
year           empty; a ``()`` or ``[]`` group left empty is removed
genre          ``Unknown Genre``
=============  ===================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import TemplateError
from .names import clean_value, legal_name

DEFAULT_TEMPLATE = "$artist/$album ($year) [$format_upper]/$track - $title.$format"

VARIABLES = frozenset(
    {"artist", "albumartist", "album", "title", "track", "year", "genre", "format",
     "format_upper", "disc"}
)

_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)|\$")
_EMPTY_GROUP = re.compile(r"\(\s*\)|\[\s*\]|\{\s*\}")
_SPACES = re.compile(r"\s{2,}")


@dataclass(frozen=True)
class _Var:
    name: str


Part = str | _Var


def _parse_segment(segment: str, template: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    pos = 0
    for match in _TOKEN.finditer(segment):
        if match.start() > pos:
            parts.append(segment[pos:match.start()])
        token = match.group(0)
        if token == "$$":
            parts.append("$")
        else:
            name = match.group(1) if match.group(1) is not None else match.group(2)
            if not name:
                raise TemplateError(f"template {template!r}: '$' must be followed by a variable name")
            if name not in VARIABLES:
                known = ", ".join(sorted(VARIABLES))
                raise TemplateError(f"template {template!r}: unknown variable ${name} (known: {known})")
            parts.append(_Var(name))
        pos = match.end()
    if pos < len(segment):
        parts.append(segment[pos:])
    return tuple(parts)


def _fmt_number(value: object, width: int, default: str) -> str:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return str(number).zfill(width) if number >= 0 else default


class _Values(dict):
    """The template variables of one track, each worked out when a template first asks for it.

    Cleaning a tag value (NFC, control characters, ``/``) is most of the cost of
    placing a track; a template uses a few of the variables, so the others are
    never computed (a bulk load of a million tracks spends its time on SQL).
    """

    def __init__(self, track: Mapping[str, object]):
        super().__init__()
        self.track = track

    def _text(self, key: str) -> str:
        value = self.track.get(key)
        return clean_value(str(value)) if value not in (None, "") else ""

    def _artist(self) -> str:
        return self._text("artist")

    def _albumartist(self) -> str:
        return self._text("album_artist") or self._text("albumartist")

    def __missing__(self, name: str) -> str:
        track = self.track
        if name == "artist":
            value = self._artist() or self._albumartist() or "Unknown Artist"
        elif name == "albumartist":
            value = self._albumartist() or self._artist() or "Unknown Artist"
        elif name == "album":
            value = self._text("album") or "Unknown Album"
        elif name == "title":
            stem = PurePosixPath(str(track.get("real_path", ""))).stem
            value = self._text("title") or clean_value(stem) or "Unknown Title"
        elif name == "track":
            value = _fmt_number(track.get("track"), 2, "00")
        elif name == "disc":
            value = _fmt_number(track.get("disc"), 1, "1")
        elif name == "year":
            year = _fmt_number(track.get("year"), 4, "")
            value = year if year != "0000" else ""
        elif name == "genre":
            value = self._text("genre") or "Unknown Genre"
        elif name == "format":
            value = (self._text("format").lower()
                     or PurePosixPath(str(track.get("real_path", ""))).suffix[1:].lower())
        elif name == "format_upper":
            value = self["format"].upper()
        else:
            raise KeyError(name)
        self[name] = value
        return value


def template_values(track: Mapping[str, object]) -> dict[str, str]:
    """The value of every template variable for one track, fallbacks applied."""
    values = _Values(track)
    return {name: values[name] for name in ("artist", "albumartist", "album", "title", "track", "disc",
                                             "year", "genre", "format", "format_upper")}


class PathTemplate:
    """A parsed template; :meth:`render` turns a track's tags into legal path components."""

    def __init__(self, template: str = DEFAULT_TEMPLATE):
        if not template or not template.strip():
            raise TemplateError("template is empty")
        if template.startswith("/") or template.endswith("/"):
            raise TemplateError(f"template {template!r}: must not start or end with '/'")
        segments = template.split("/")
        if any(not s.strip() for s in segments):
            raise TemplateError(f"template {template!r}: has an empty path segment ('//')")
        self.source = template
        self._segments = tuple(_parse_segment(s, template) for s in segments)
        last = self._segments[-1]
        self._has_extension = (
            len(last) >= 2 and last[-1] == _Var("format") and isinstance(last[-2], str)
            and last[-2].endswith(".")
        )
        self._file_segment = self._strip_ext(last) if self._has_extension else last

    @staticmethod
    def _strip_ext(last: tuple[Part, ...]) -> tuple[Part, ...]:
        head = last[:-2]
        tail = last[-2][:-1]  # the literal before $format, without its final "."
        return head + ((tail,) if tail else ())

    @property
    def depth(self) -> int:
        """Number of components a rendered path has (directories plus the file)."""
        return len(self._segments)

    @staticmethod
    def _fill(parts: tuple[Part, ...], values: Mapping[str, str]) -> str:
        text = "".join(values[p.name] if isinstance(p, _Var) else p for p in parts)
        text = _EMPTY_GROUP.sub("", text)
        return _SPACES.sub(" ", text).strip()

    def render(self, track: Mapping[str, object]) -> tuple[str, ...]:
        """Legal components of the track's virtual path, the file name last."""
        values = _Values(track)
        dirs = tuple(legal_name(self._fill(seg, values)) for seg in self._segments[:-1])
        ext = "." + values["format"] if values["format"] else ""
        name = legal_name(self._fill(self._file_segment, values), extension=ext)
        return dirs + (name,)

    def __repr__(self) -> str:
        return f"PathTemplate({self.source!r})"
