"""Path templates: every component legal, rendering deterministic, bad templates rejected."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicfs.errors import TemplateError
from musicfs.index.names import NAME_MAX, is_legal, legal_name, with_suffix_number
from musicfs.index.template import DEFAULT_TEMPLATE, PathTemplate

pytestmark = pytest.mark.req("FS-1", "FS-2", "FS-3")

tag_text = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from("./\\ \x00\x01\x7f\x85\u0301\u202e\u2066\ufeffa"), max_size=40),
    st.sampled_from([".", "..", "/", "a/b", ".hidden", "\x00", "x\x00y", " ", "é" * 200,
                     "Bjo\u0308rk", "Björk", "AC/DC", "$artist", "()", "[]"]),
)
numbers = st.one_of(st.none(), st.integers(min_value=-5, max_value=10**6), st.text(max_size=5))
tracks = st.fixed_dictionaries(
    {
        "title": tag_text, "artist": tag_text, "album": tag_text, "album_artist": tag_text,
        "genre": tag_text, "year": numbers, "track": numbers, "disc": numbers,
        "format": st.sampled_from(["flac", "mp3", "ogg", "opus", "wav", "m4a"]),
        "real_path": st.text(min_size=1, max_size=40).map(lambda s: s + ".flac"),
    }
)
templates = st.sampled_from([
    DEFAULT_TEMPLATE,
    "$albumartist/$album/$disc-$track $title",
    "$genre/$year/$artist - $title.$format",
    "${artist}/${album} [${format_upper}]/${track}. ${title}.$format",
    "$title",
])


@given(track=tracks, template=templates)
@settings(max_examples=400, deadline=None)
def test_every_component_is_legal(track, template):
    parts = PathTemplate(template).render(track)
    assert len(parts) == PathTemplate(template).depth
    for part in parts:
        assert is_legal(part), part
    assert parts[-1].endswith("." + track["format"])


@given(track=tracks)
@settings(max_examples=200, deadline=None)
def test_rendering_is_deterministic_and_normal_form_blind(track):
    template = PathTemplate()
    first = template.render(track)
    assert template.render(dict(track)) == first
    nfd = {k: unicodedata.normalize("NFD", v) if isinstance(v, str) and k != "format" else v
           for k, v in track.items()}
    assert template.render(nfd) == first


@given(name=st.text(max_size=400), number=st.integers(min_value=2, max_value=10**6))
@settings(max_examples=300, deadline=None)
def test_collision_suffix_stays_legal(name, number):
    base = legal_name(name, extension=".flac")
    numbered = with_suffix_number(base, number, ".flac")
    assert is_legal(numbered)
    assert numbered != base
    assert numbered.endswith(f" ({number}).flac")


def test_default_template_layout():
    track = {"artist": "Metallica", "album": "72 Seasons", "year": 2023, "track": 1,
             "title": "72 Seasons", "format": "flac", "real_path": "x/y.flac"}
    assert PathTemplate().render(track) == ("Metallica", "72 Seasons (2023) [FLAC]", "01 - 72 Seasons.flac")


def test_documented_fallbacks():
    parts = PathTemplate().render({"format": "mp3", "real_path": "in/coming/take 3.mp3"})
    assert parts == ("Unknown Artist", "Unknown Album [MP3]", "00 - take 3.mp3")
    parts = PathTemplate("$albumartist/$genre/$disc").render(
        {"artist": "Solo", "format": "ogg", "real_path": "a.ogg"})
    assert parts == ("Solo", "Unknown Genre", "1.ogg")


def test_hostile_values_are_cleaned():
    parts = PathTemplate("$artist/$album/$title").render(
        {"artist": "..", "album": ".hidden", "title": "a/b\x00c", "format": "flac", "real_path": "z.flac"})
    assert parts == ("_.", "_hidden", "a_bc.flac")
    controls = PathTemplate("$artist/$title").render(
        {"artist": "C1\x85\x9fend", "title": "evil\u202egalf\u2066x\u2069", "format": "flac", "real_path": "z.flac"})
    assert controls == ("C1end", "evilgalfx.flac")  # C1 controls and bidi overrides/isolates dropped
    long = PathTemplate().render({"title": "ü" * 300, "artist": "x" * 400, "format": "flac",
                                  "real_path": "z.flac"})
    assert all(len(p.encode()) <= NAME_MAX for p in long)
    assert long[-1].endswith(".flac")


@pytest.mark.parametrize("bad", ["", "/$artist", "$artist/", "$artist//$title", "$artst/$title",
                                 "$artist/$", "${}/x"])
def test_bad_templates_are_rejected(bad):
    with pytest.raises(TemplateError):
        PathTemplate(bad)


def test_dollar_escape_and_braces():
    parts = PathTemplate("$${artist}x/$title").render({"artist": "A", "title": "T", "format": "wav",
                                                        "real_path": "t.wav"})
    assert parts == ("${artist}x", "T.wav")
