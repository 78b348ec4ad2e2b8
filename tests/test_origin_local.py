"""The local origin passes the origin contract."""

from __future__ import annotations

import pytest

from musicfs.errors import NotFound, OriginUnavailable
from musicfs.origins.local import LocalOrigin
from musicfs.testing.origin_contract import OriginContract, add_hostile_links


class TestLocalOrigin(OriginContract):
    @pytest.fixture
    def make_origin(self, tmp_path):
        def make(files):
            root = tmp_path / "origin"
            for path, data in files.items():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(data)
            return LocalOrigin("local", root)
        return make


def test_a_vanished_folder_is_unavailable_not_missing(tmp_path):
    root = tmp_path / "share"
    (root / "x").mkdir(parents=True)
    origin = LocalOrigin("nas", root)
    origin.health()
    root.rename(tmp_path / "gone")
    with pytest.raises(OriginUnavailable):
        origin.health()
    with pytest.raises(OriginUnavailable):
        origin.read_range("x/y.flac", 0, 1)


def test_paths_cannot_climb_out(tmp_path):
    origin = LocalOrigin("local", tmp_path)
    with pytest.raises(ValueError):
        origin.local_path("../etc/passwd")


@pytest.mark.req("FAULT-31")
def test_links_are_followed_inside_the_root_only_and_loops_end(tmp_path):
    root, outside = tmp_path / "music", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "real" / "a.flac").write_bytes(b"inside")
    (outside / "secret.flac").write_bytes(b"outside")
    add_hostile_links(root, outside)
    origin = LocalOrigin("local", root)

    page = origin.list_page("")
    assert [(e.path, e.size) for e in page.files] == [("inside.flac", 6)]
    assert page.dirs == ["real"]
    errors = {}
    walked = [e.path for e in origin.walk(on_error=lambda path, exc: errors.setdefault(path, exc))]
    assert walked == ["inside.flac", "real/a.flac"]
    assert sorted(errors) == ["abs.flac", "chain.flac", "loop-a.flac", "loop-b.flac", "outdir", "rel.flac"]
    assert "outside the origin" in str(errors["abs.flac"])
    assert origin.read_range("inside.flac", 0, 100) == b"inside"
    for path in ("abs.flac", "rel.flac", "chain.flac", "outdir/secret.flac", "../outside/secret.flac",
                 str(outside / "secret.flac")):
        with pytest.raises(ValueError):
            origin.local_path(path)
        with pytest.raises(NotFound):  # no file of this origin: not retried, ENOENT to a reader
            origin.read_range(path, 0, 100)
        with pytest.raises(NotFound):
            origin.stat(path)
    with pytest.raises(OSError):
        origin.read_range("loop-a.flac", 0, 100)  # ELOOP, not a hang
