"""The contract every origin kind passes unchanged: the built-in ones and every plugin's.

A test module for an origin kind subclasses :class:`OriginContract` and
provides one fixture, ``make_origin(files) -> Origin``, that puts ``files``
(path -> bytes) into a fresh instance of that kind and returns an origin
reading it. Nothing here knows which kind it is testing. A kind that says it
is ``writable`` is held to :meth:`Origin.put`'s guarantees (the write tests
skip for others, which must refuse writes with ``OriginReadOnly``). A plugin
author runs it with pytest::

    from musicfs.testing.origin_contract import OriginContract

    class TestMyOrigin(OriginContract):
        @pytest.fixture
        def make_origin(self, tmp_path):
            def make(files):
                ...  # put files where a new MyOrigin reads them
                return MyOrigin("mine", ...)
            return make
"""

from __future__ import annotations

import random

import pytest

from musicfs.errors import NotFound

from .write_contract import WriteContract

PAGE_FILES = 23  # more than one page wherever a kind pages its listings


def library() -> dict[str, bytes]:
    rng = random.Random(42)
    files = {
        "a.flac": rng.randbytes(300_000),
        "dir/b.mp3": rng.randbytes(5_000),
        "dir/sub/c.ogg": rng.randbytes(70_000),
        "dir/empty.wav": b"",
        "ünï cödé/d é.flac": rng.randbytes(1_234),
    }
    for i in range(PAGE_FILES):
        files[f"many/track {i:02d}.flac"] = rng.randbytes(100 + i)
    return files


class OriginContract(WriteContract):
    # a kind whose listings come in pages (set by its test class, with a page smaller than PAGE_FILES):
    # the big folder must then take more than one page, or the paging is not tested at all
    pages_listings = False

    @pytest.fixture
    def files(self):
        return library()

    @pytest.fixture
    def origin(self, make_origin, files):
        origin = make_origin(files)
        yield origin
        origin.close()

    def test_stat(self, origin, files):
        for path, data in files.items():
            entry = origin.stat(path)
            assert entry.path == path and entry.size == len(data)
            assert entry.version_key == origin.stat(path).version_key

    def test_stat_of_a_missing_file_is_not_found(self, origin):
        with pytest.raises(NotFound):
            origin.stat("no/such/file.flac")

    def test_list_root(self, origin):
        page = origin.list_page("")
        names = [e.path for e in page.files]
        while page.next_token:
            page = origin.list_page("", page.next_token)
            names += [e.path for e in page.files]
        assert names == ["a.flac"]
        assert sorted(origin.list_page("").dirs) == ["dir", "many", "ünï cödé"]

    def test_listing_pages_through_a_big_folder(self, origin, files):
        seen, token, pages = [], None, 0
        while True:
            page = origin.list_page("many/", token)
            seen += [e.path for e in page.files]
            pages += 1
            token = page.next_token
            if token is None:
                break
        assert sorted(seen) == sorted(p for p in files if p.startswith("many/"))
        assert len(seen) == len(set(seen))
        if self.pages_listings:
            assert pages > 1, f"{len(seen)} files came in one page: the paging was not exercised"

    def test_walk_finds_every_file_once(self, origin, files):
        walked = [e.path for e in origin.walk()]
        assert sorted(walked) == sorted(files)
        assert len(walked) == len(set(walked))
        sizes = {e.path: e.size for e in origin.walk()}
        assert sizes == {p: len(d) for p, d in files.items()}

    @pytest.mark.parametrize(("offset", "size"), [(0, 10), (0, 300_000), (1000, 65536), (299_990, 100),
                                                    (300_000, 10), (400_000, 10), (5, 0)])
    def test_read_range(self, origin, files, offset, size):
        data = files["a.flac"]
        assert origin.read_range("a.flac", offset, size) == data[offset:offset + size]

    def test_read_of_unicode_and_empty_files(self, origin, files):
        assert origin.read_range("ünï cödé/d é.flac", 0, 10_000) == files["ünï cödé/d é.flac"]
        assert origin.read_range("dir/empty.wav", 0, 100) == b""

    def test_read_of_a_missing_file_is_not_found(self, origin):
        with pytest.raises(NotFound):
            origin.read_range("missing.flac", 0, 10)

    def test_health_and_location(self, origin):
        origin.health()
        assert origin.location and origin.kind


def add_hostile_links(root, outside) -> None:
    """Links in ``root`` to ``real/a.flac`` inside it, and out of it to ``outside`` (whose
    ``secret.flac`` they name, as the parent's ``outside`` folder), chains, a folder, loops."""
    (root / "inside.flac").symlink_to("real/a.flac")
    (root / "abs.flac").symlink_to(outside / "secret.flac")
    (root / "rel.flac").symlink_to("../outside/secret.flac")
    (root / "chain.flac").symlink_to("rel.flac")
    (root / "outdir").symlink_to(outside)
    (root / "loop-a.flac").symlink_to("loop-b.flac")
    (root / "loop-b.flac").symlink_to("loop-a.flac")
    (root / "self").symlink_to(".")
