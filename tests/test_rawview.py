"""Raw views list an origin's names as they are, each once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicfs.vfs.names import NAME_MAX
from musicfs.vfs.rawview import raw_name, unique_names


@pytest.mark.req("FAULT-30", "B2-6")
def test_an_object_and_a_folder_of_one_name_are_both_listed_once():
    # a bucket with the object "a" and objects under "a/"; names made legal that coincide
    entries = [("a", False, "a"), ("a", True, "a"), (raw_name(".."), True, ".."), (raw_name("_."), False, "_."),
               ("b.flac", False, "x/b.flac"), ("b.flac", False, "y/b.flac")]
    assert unique_names(entries) == ["a (2)", "a", "_.", "_. (2)", "b.flac", "b (2).flac"]


@pytest.mark.req("FAULT-30", "FAULT-29")
@given(st.lists(st.tuples(st.text(max_size=300), st.booleans()), max_size=30))
@settings(max_examples=200, deadline=None)
def test_raw_names_are_legal_and_unique(raw):
    entries = [(raw_name(name), is_dir, f"{n}/{name}") for n, (name, is_dir) in enumerate(raw)]
    names = unique_names(entries)
    assert len(set(names)) == len(names)
    for name in names:
        assert name not in ("", ".", "..") and "/" not in name and "\x00" not in name
        assert len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX
