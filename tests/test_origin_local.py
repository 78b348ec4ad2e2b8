"""The local origin passes the origin contract."""

from __future__ import annotations

import pytest

from musicfs.errors import OriginUnavailable
from musicfs.origins.local import LocalOrigin
from tests.origin_contract import OriginContract


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
