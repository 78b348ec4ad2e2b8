"""The local origin passes the origin contract (reads and writes); links, vanished folders and
refused permissions beyond it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import musicfs
from musicfs.errors import NotFound, OriginUnavailable
from musicfs.origins.local import LocalOrigin
from musicfs.origins.writes import TEMP_SUFFIX
from musicfs.testing.origin_contract import OriginContract, add_hostile_links
from musicfs.testing.write_contract import MiB, Source


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


def hostile_origin(tmp_path: Path) -> tuple[Path, Path, LocalOrigin]:
    """An origin over ``music`` holding ``real/a.flac`` and links out of it to ``outside/secret.flac``."""
    root, outside = tmp_path / "music", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "real" / "a.flac").write_bytes(b"inside")
    (outside / "secret.flac").write_bytes(b"outside")
    add_hostile_links(root, outside)
    return root, outside, LocalOrigin("local", root)


@pytest.mark.req("FAULT-31")
def test_links_are_followed_inside_the_root_only_and_loops_end(tmp_path):
    root, outside, origin = hostile_origin(tmp_path)

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


# -- writes --------------------------------------------------------------------------------------

def test_a_put_writes_a_hidden_temporary_file_beside_the_target(tmp_path):
    """Mid-put the folder holds the old file and one hidden, unique temporary file (no audio
    extension, so a scan passes it by); after it, the new file and nothing else."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "index.db").write_bytes(b"old")
    origin = LocalOrigin("local", tmp_path)
    seen = []
    source = Source(b"n" * (3 * MiB), during=lambda _n: seen.append(sorted(os.listdir(tmp_path / "dir"))),
                    during_at=MiB)
    origin.put("dir/index.db", source)
    ((temp, name),) = seen
    assert name == "index.db" and temp.startswith(".index.db.") and temp.endswith(TEMP_SUFFIX)
    assert os.listdir(tmp_path / "dir") == ["index.db"]
    assert (tmp_path / "dir" / "index.db").read_bytes() == b"n" * (3 * MiB)


def test_writes_follow_no_link_out_of_the_root(tmp_path):
    root, outside, origin = hostile_origin(tmp_path)
    for path in ("outdir/x.bin", "outdir/new/x.bin", "abs.flac", "rel.flac", "chain.flac"):
        with pytest.raises(ValueError):
            origin.put(path, Source(b"planted"))
        with pytest.raises(ValueError):
            origin.remove(path)
    assert sorted(os.listdir(outside)) == ["secret.flac"]
    assert (outside / "secret.flac").read_bytes() == b"outside"
    # a link inside the root is replaced itself, and removed itself: what it led to stays
    origin.put("inside.flac", Source(b"a file now"))
    assert not (root / "inside.flac").is_symlink() and (root / "inside.flac").read_bytes() == b"a file now"
    assert (root / "real" / "a.flac").read_bytes() == b"inside"
    (root / "again.flac").symlink_to("real/a.flac")
    origin.remove("again.flac")
    assert not os.path.lexists(root / "again.flac") and (root / "real" / "a.flac").read_bytes() == b"inside"


def test_a_put_into_a_vanished_folder_is_unavailable_and_makes_nothing(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    origin = LocalOrigin("nas", root)
    root.rmdir()  # a share that is not mounted: its folder must not be made again under the mountpoint
    with pytest.raises(OriginUnavailable, match="not reachable"):
        origin.put("index/snapshot.db", Source(b"x"))
    with pytest.raises(OriginUnavailable, match="not reachable"):
        origin.remove("index/snapshot.db")
    assert not root.exists()


def test_a_refused_permission_says_so(tmp_path):
    """A folder this user may not write in: the put fails saying so, and leaves nothing.
    Root ignores file modes, so as root the put runs in a child without that capability."""
    root = tmp_path / "music"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "old.db").write_bytes(b"old")
    (root / "locked").chmod(0o555)
    code = textwrap.dedent(f"""
        import io
        from musicfs.errors import OriginUnavailable
        from musicfs.origins.local import LocalOrigin
        origin = LocalOrigin("local", {str(root)!r})
        for call in (lambda: origin.put("locked/old.db", io.BytesIO(b"new")),
                     lambda: origin.put("locked/deeper/new.db", io.BytesIO(b"new")),
                     lambda: origin.remove("locked/old.db")):
            try:
                call()
                print("stored")
            except OriginUnavailable as exc:
                print(exc)
    """)
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root, and setpriv (util-linux) is missing to drop CAP_DAC_OVERRIDE")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(Path(musicfs.__file__).parents[1])}).stdout
    finally:
        (root / "locked").chmod(0o755)
    lines = out.splitlines()
    assert len(lines) == 3 and all("permission denied" in line and "may not write" in line for line in lines), out
    assert os.listdir(root / "locked") == ["old.db"] and (root / "locked" / "old.db").read_bytes() == b"old"
