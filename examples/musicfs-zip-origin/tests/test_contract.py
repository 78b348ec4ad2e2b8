"""The zip origin passes musicfs's origin contract: loose files at the top, each top folder an archive."""

from __future__ import annotations

import zipfile

import pytest
from musicfs_zip_origin import ZipOrigin

from musicfs.testing.origin_contract import OriginContract


class TestZipOrigin(OriginContract):
    @pytest.fixture
    def make_origin(self, tmp_path):
        def make(files):
            root = tmp_path / "purchases"
            root.mkdir()
            archives: dict[str, dict[str, bytes]] = {}
            for path, data in files.items():
                top, _, rest = path.partition("/")
                if rest:
                    archives.setdefault(top, {})[rest] = data
                else:
                    (root / path).write_bytes(data)
            for top, members in archives.items():  # one compressed archive, the others stored
                method = zipfile.ZIP_DEFLATED if top == "ünï cödé" else zipfile.ZIP_STORED
                with zipfile.ZipFile(root / f"{top}.zip", "w", method) as zf:
                    for name, data in members.items():
                        zf.writestr(name, data)
            return ZipOrigin("store", root)
        return make
