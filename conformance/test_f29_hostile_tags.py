"""FAULT-29: path-hostile tag values each become one legal path component on a real mount.

Tags drawn by hypothesis (``/``, NUL, ``.``, ``..``, control characters C0 and
C1, leading dots, trailing spaces and dots, values of hundreds of bytes,
combining and right-to-left characters, bidirectional overrides) are written
by mutagen into real files of every container; some get bytes no tagger would
write (invalid UTF-8, lone UTF-16 surrogates), put in place of a placeholder.
Origin file names are hostile too (they name a track without a title). Each
library is scanned and mounted for real, then walked: every entry is one legal
component (never ``.``/``..``, no ``/`` or NUL, at most 255 bytes, valid UTF-8
in NFC), listed once, at the depth the template gives (a value never adds or
removes a level), resolving inside the mount, and every track's bytes are
the origin file's.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conformance.hostile import assert_tree_is_legal, containers, judge, tagged
from fixtures.tags import replace_tag_bytes
from musicfs.index.template import PathTemplate
from tests.harness import mount_library

HOSTILE = [".", "..", "...", "/", "//", "../..", "../../etc/passwd", "/etc/passwd", "\x00", "a\x00b",
           ".hidden", " .lead", "trailing. ", "trailing...", "   ", "\t\n\r", "\x07bell\x1b[31m",
           "\x85\x9fC1", "\u202egalf.flac", "\u2066iso\u2069", "e\u0301", "\u0301\u0301", "Bjo\u0308rk",
           "Björk", "שלום", "مرحبا", "\ufeffbom\u200b", "x" * 300, "é" * 200, "🎵" * 70, "ß" * 254 + "é",
           "AC/DC", "AC\\DC", "$artist", "()", "[]", "-rf", "*?<>|:"]

characters = st.characters(blacklist_categories=("Cs",))  # mutagen cannot write a lone surrogate
value = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet=st.sampled_from("./\\ \x00\x01\x1f\x7f\x85\u0301\u202e\u200f\ufeff.a"), max_size=12),
    st.text(alphabet=characters, max_size=90),
    st.text(alphabet=characters, min_size=1, max_size=8).map(lambda s: s * 40),  # past 255 bytes
)
tag_sets = st.fixed_dictionaries({"title": value, "artist": value, "album": value},
                                 optional={"albumartist": value, "genre": value})
RAW = b"\xff\xfe/\x00..\xc3(\x80/\xed\xa0\x80\x01"  # invalid UTF-8 holding '/', NUL, '..' and a CESU surrogate
UTF16 = b"\x00\xd8/\x00.\x00.\x00\x00\xdc\x00\x00"  # lone surrogates, '/', '..', NUL in UTF-16-LE
HOSTILE_NAMES = ["...flac", ".. .flac", "..\\..\\evil.flac", " .flac", "a\x01b\x7fc.flac", "-rf *.flac",
                 "x" * 240 + ".flac"]


def _values_for(fmt: str, style: str, values: dict) -> dict:
    """What the container can hold: ID3 splits values at NUL; empty values are dropped by taggers."""
    out = {}
    for key, text in values.items():
        if style.startswith("id3"):
            text = text.split("\x00")[0]
        if text:
            out[key] = text
    return out


@pytest.mark.req("FAULT-29", "FS-3")
# each example is a real mount: a few of them, and no shrinking (dozens more mounts); a failure
# prints every value drawn, which is enough to rebuild the library
@settings(max_examples=3, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_f29_hostile_tag_values_become_one_legal_component_each(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("tags")
    root = work / "library"
    files, n = [], 0
    for fmt, style in containers():
        for copy in range(2):
            n += 1
            values = _values_for(fmt, style, data.draw(tag_sets, label=f"{style}.{fmt} #{copy}"))
            rel = f"drawn/{n:02d}.{fmt}"
            tagged(root / rel, fmt, style, {**values, "track": n}, key=n)
            files.append(rel)
        # one more whose title is bytes no tagger writes (the reader replaces or drops them)
        n += 1
        rel = f"raw/{n:02d}.{fmt}"
        wide = style == "id3v2.3"  # ID3v2.3 text is UTF-16
        marker = "Q" * (len(UTF16) // 2 if wide else len(RAW))
        tagged(root / rel, fmt, style, {"title": marker, "artist": "Raw Bytes", "track": n}, key=n)
        replace_tag_bytes(root / rel, fmt, marker.encode("utf-16-le" if wide else "utf-8"),
                          UTF16 if wide else RAW)
        files.append(rel)
    fmt, style = containers()[0]
    for name in HOSTILE_NAMES:  # no title: the origin's file name names the track
        rel = f"names/{name[:-5]}.{fmt}"
        tagged(root / rel, fmt, style, {"artist": "Named By File"}, key=len(files))
        files.append(rel)

    with mount_library(origin=root, work=work / "m") as mounted:
        indexed, skipped = judge(mounted, root, sorted(files), file_seconds=10)
        assert not skipped, f"valid files with hostile tags were skipped: {skipped}"
        shown = assert_tree_is_legal(mounted.mountpoint)
        assert len(shown) == len(files)
        depth = PathTemplate().depth
        for real, path in indexed.items():
            rel = path.relative_to(mounted.mountpoint)
            assert len(rel.parts) == depth, f"{real}: {rel} is not {depth} components deep"
        assert mounted.alive()
