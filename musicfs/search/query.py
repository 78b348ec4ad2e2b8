"""The search query language: what a user types, parsed into a :class:`Query`.

::

    metal                     words: every one must match, each as a prefix (type-ahead)
    "enter sandman"           a phrase: these words, in this order, whole
    artist:metallica          a field: artist (or album artist), album, title, genre, format
    album:"master of puppets" a field with a phrase
    origin:nas                tracks held by that origin (its id from the config)
    year:1991  year:1990..1999  year:..1979  year:2000..
    -live  -"remastered"  -genre:podcast  -origin:b2   exclude

Why a language of our own rather than FTS5's: a user's text must never be
able to reach SQLite as syntax. Every word and phrase goes into the FTS5
expression as a quoted string (``"`` doubled), so ``*``, ``^``, ``:``,
``NEAR``, ``AND``, parentheses and any Unicode are plain text; only the few
constructs above exist, and a malformed one answers a :class:`QueryError`
naming the problem (never an SQLite message). Words with no letter or digit
(``!!!``, ``-``) are dropped, as the tokenizer would find nothing in them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import QueryError
from ..index.fts import origin_token

MAX_QUERY_CHARS = 1000
MAX_TERMS = 32
# a field a user names -> the search table's columns it looks in
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "artist": ("artist", "album_artist"),
    "album": ("album",),
    "title": ("title",),
    "genre": ("genre",),
    "format": ("format",),
    "albumartist": ("album_artist",),
    "path": ("path",),
}
FILTER_FIELDS = ("origin", "year")
KNOWN_FIELDS = tuple(TEXT_FIELDS) + FILTER_FIELDS
# the columns an API caller may restrict plain words to (``fields=``)
COLUMNS = ("title", "artist", "album_artist", "album", "genre", "year", "format", "path")
MIN_YEAR, MAX_YEAR = 0, 9999
_FIELD = re.compile(r"([A-Za-z_]+):")
_YEAR = re.compile(r"^(\d{1,4})?(\.\.)?(\d{1,4})?$")


FILTER_COLUMNS = ("format", "origin")  # what these match narrows the set; it says nothing of relevance


@dataclass(frozen=True)
class Term:
    """A word or phrase to match, anywhere or in one field's columns."""

    text: str
    phrase: bool = False  # a quoted phrase matches whole words; a word matches as a prefix
    columns: tuple[str, ...] = ()  # () = any column the user sees (or the caller's ``fields``)
    negated: bool = False

    @property
    def is_filter(self) -> bool:
        return bool(self.columns) and all(c in FILTER_COLUMNS for c in self.columns)

    def expression(self, default_columns: tuple[str, ...] = ()) -> str:
        quoted = '"' + self.text.replace('"', '""') + '"' + ("" if self.phrase else "*")
        columns = self.columns or default_columns
        if columns:
            return f"{{{' '.join(columns)}}} : {quoted}"
        return f"- {{origin}} : {quoted}"  # the origin column holds ids as hex: never a word's match


def _origins_expression(origins: tuple[str, ...] | list[str]) -> str:
    """Any of these origins, as one FTS5 group."""
    alternatives = " OR ".join(f'{{origin}} : "{origin_token(o)}"' for o in origins)
    return f"({alternatives})" if len(origins) > 1 else alternatives


@dataclass(frozen=True)
class YearRange:
    low: int | None
    high: int | None
    negated: bool = False


@dataclass(frozen=True)
class Query:
    text: str
    terms: tuple[Term, ...] = ()
    years: tuple[YearRange, ...] = ()
    origins: tuple[str, ...] = ()  # any of these
    excluded_origins: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)  # what was ignored, and why

    @property
    def positive(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if not t.negated)

    @property
    def negative(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.negated)

    @property
    def ranked(self) -> bool:
        """True when some word says what is relevant (filters alone leave nothing to rank by)."""
        return any(not t.is_filter for t in self.positive)

    def match(self, fields: tuple[str, ...] = (), origin: str | None = None,
              years_present: tuple[int, int] | None = None) -> str:
        """The whole query as one FTS5 expression; the API's ``origin`` narrows it further.

        Years and origins are columns of the table too, so every query, filters
        included, is answered from it alone. A year range becomes the years it
        spans, bounded by ``years_present`` (the library's lowest and highest year):
        ``..1979`` is not two thousand alternatives. With nothing positive to look
        for, the query starts from every track (each has an origin token, all of
        which start with ``o``).
        """
        groups = [t.expression(fields) for t in self.positive]
        if self.origins:
            groups.append(_origins_expression(self.origins))
        if origin is not None:
            groups.append(_origins_expression([origin]))
        groups += [_years_expression(r, years_present) for r in self.years if not r.negated]
        expression = " AND ".join(groups) if groups else ALL
        for term in self.negative:
            expression = f"{expression} NOT {term.expression(fields)}"
        if self.excluded_origins:
            expression = f"{expression} NOT {_origins_expression(self.excluded_origins)}"
        for years in self.years:
            if years.negated:
                expression = f"{expression} NOT {_years_expression(years, years_present)}"
        return expression


ALL = '{origin} : "o"*'  # every track shown
NOTHING = '{origin} : "x"'  # no track: origin tokens all start with "o"


def _years_expression(years: YearRange, present: tuple[int, int] | None) -> str:
    low, high = present if present is not None else (MIN_YEAR, MIN_YEAR - 1)
    if years.low is not None:
        low = max(low, years.low)
    if years.high is not None:
        high = min(high, years.high)
    if low > high:
        return NOTHING
    alternatives = " OR ".join(f'{{year}} : "{year}"' for year in range(low, high + 1))
    return f"({alternatives})"


def check_fields(fields: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    unknown = [f for f in fields if f not in COLUMNS]
    if unknown:
        raise QueryError(f"unknown field {unknown[0]!r} to search in (known: {', '.join(COLUMNS)})")
    return tuple(dict.fromkeys(fields))


def _year(value: str, negated: bool) -> YearRange:
    match = _YEAR.match(value)
    if not value or match is None or (match.group(2) is None and match.group(3) is not None):
        raise QueryError(f"year:{value} is not a year or a range (year:1994, year:1990..1999, year:..1979)")
    low, dots, high = match.groups()
    if dots is None:
        year = int(low)
        return YearRange(year, year, negated)
    if low is None and high is None:
        raise QueryError("year:.. needs at least one end (year:1990.., year:..1999)")
    lo, hi = (int(low) if low else None), (int(high) if high else None)
    if lo is not None and hi is not None and lo > hi:
        raise QueryError(f"year:{value} runs backwards: {lo} is after {hi}")
    return YearRange(lo, hi, negated)


class _Reader:
    """Splits the text into (negated, field, value, quoted) items, with positions for errors."""

    def __init__(self, text: str):
        self.text = text
        self.at = 0

    def items(self):
        text = self.text
        while True:
            while self.at < len(text) and text[self.at].isspace():
                self.at += 1
            if self.at >= len(text):
                return
            start = self.at
            negated = text[self.at] == "-" and self.at + 1 < len(text) and not text[self.at + 1].isspace()
            if negated:
                self.at += 1
            name = None
            match = _FIELD.match(text, self.at)
            if match is not None:
                name = match.group(1).lower()
                if name not in KNOWN_FIELDS:
                    raise QueryError(f"unknown field {match.group(1)!r} at position {self.at + 1}"
                                     f" (known: {', '.join(KNOWN_FIELDS)}); quote it to search for the"
                                     f" text itself: \"{match.group(0)}\"")
                self.at = match.end()
            value, quoted = self._value(start)
            if name is not None and not value.strip():
                raise QueryError(f"{name}: at position {start + 1} needs a value, e.g. {name}:{_example(name)}")
            yield negated, name, value, quoted

    def _value(self, start: int) -> tuple[str, bool]:
        text = self.text
        if self.at < len(text) and text[self.at] == '"':
            close = text.find('"', self.at + 1)
            if close < 0:
                raise QueryError(f"unbalanced quote: the \" at position {self.at + 1} is never closed")
            value = text[self.at + 1:close]
            self.at = close + 1
            return value, True
        end = self.at
        while end < len(text) and not text[end].isspace():
            if text[end] == '"':
                raise QueryError(f"a quote inside a word at position {end + 1}: put a space before it,"
                                 " or quote the whole phrase")
            end += 1
        value, self.at = text[self.at:end], end
        return value, False


def _example(name: str) -> str:
    return {"year": "1994", "origin": "nas", "format": "flac"}.get(name, "word")


def parse(text: str) -> Query:
    """Parse ``text``; raise :class:`QueryError` saying what is wrong with it."""
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query too long: {len(text)} characters (at most {MAX_QUERY_CHARS})")
    if "\x00" in text:
        raise QueryError("query contains a NUL character")
    terms: list[Term] = []
    years: list[YearRange] = []
    origins: list[str] = []
    excluded: list[str] = []
    notes: list[str] = []
    for negated, name, value, quoted in _Reader(text).items():
        if name == "year":
            years.append(_year(value.strip(), negated))
        elif name == "origin":
            (excluded if negated else origins).append(value.strip())
        else:
            if not any(ch.isalnum() for ch in value):
                notes.append(f"ignored {value!r}: no letter or digit to search for")
                continue
            terms.append(Term(value, phrase=quoted, columns=TEXT_FIELDS[name] if name else (), negated=negated))
        if len(terms) + len(years) + len(origins) + len(excluded) > MAX_TERMS:
            raise QueryError(f"too many terms: at most {MAX_TERMS}")
    query = Query(text, tuple(terms), tuple(years), tuple(origins), tuple(excluded), tuple(notes))
    if not (query.positive or query.negative or years or origins or excluded):
        raise QueryError("nothing to search for: type a word, a \"phrase\" or a field such as artist:name")
    return query
