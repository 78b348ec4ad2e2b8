"""Legal file names for the virtual tree.

Tag values are arbitrary text: they may hold ``/``, NUL, control characters,
a leading dot, the names ``.`` and ``..``, two Unicode normal forms of the same
word, or hundreds of bytes. Every component that reaches the tree goes through
:func:`clean_value` (for a single tag value inside a component) and then
:func:`legal_name` (for the finished component), so the kernel and every
client always see a name they can handle:

* no ``/`` and no NUL (``/`` becomes ``_``; NUL and other control characters,
  C0 and C1, are dropped, and so are the bidirectional overrides and isolates
  that would let a name display as something else (U+202E makes
  ``evil`` + U+202E + ``galf.flac`` show as ``evilcalf.flag``),
* never ``.`` or ``..``, never a leading dot (hidden files are reserved for
  musicfs' own ``/.musicfs``),
* NFC normal form, so ``Björk`` typed either way lands in one directory,
* at most 255 bytes of UTF-8, cut on a character boundary, keeping the file
  extension when there is one.
"""

from __future__ import annotations

import re
import unicodedata

NAME_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")


def clean_value(value: str) -> str:
    """Make one tag value safe to embed in a path component."""
    if value.isascii() and value.isprintable() and "/" not in value and "  " not in value and (
            not value or (value[0] != " " and value[-1] != " ")):
        return value  # the common case, already clean: NFC, no control character, single spaces
    value = unicodedata.normalize("NFC", value)
    value = _CONTROL.sub("", value)
    value = value.replace("/", "_")
    return _SPACES.sub(" ", value).strip()


def truncate_utf8(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` bytes of UTF-8 without splitting a character."""
    raw = text.encode("utf-8", "surrogateescape")  # an origin's own name may hold undecodable bytes
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def legal_name(name: str, *, extension: str = "", fallback: str = "Unknown") -> str:
    """Return ``name`` (plus ``extension``, e.g. ``".flac"``) as a legal, normalised component.

    The extension is kept whole when the name is cut to :data:`NAME_MAX` bytes,
    so a long title still ends in ``.flac``.
    """
    stem = clean_value(name)
    if stem.startswith("."):
        stem = "_" + stem[1:]
    if not stem:
        stem = fallback
    ext = clean_value(extension)
    stem = truncate_utf8(stem, NAME_MAX - len(ext.encode("utf-8"))).rstrip()
    return stem + ext


def with_suffix_number(name: str, number: int, extension: str = "") -> str:
    """Disambiguate ``name`` by a number, keeping the extension and the length limit.

    ``with_suffix_number("01 - Intro.flac", 2, ".flac")`` gives ``"01 - Intro (2).flac"``.
    """
    stem = name[: -len(extension)] if extension and name.endswith(extension) else name
    tag = f" ({number})"
    limit = NAME_MAX - len(tag.encode("utf-8")) - len(extension.encode("utf-8"))
    return truncate_utf8(stem, limit).rstrip() + tag + extension


def is_legal(name: str) -> bool:
    """True when ``name`` obeys every rule :func:`legal_name` enforces."""
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and "/" not in name
        and "\x00" not in name
        and len(name.encode("utf-8")) <= NAME_MAX
        and unicodedata.is_normalized("NFC", name)
    )
