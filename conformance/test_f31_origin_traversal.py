"""FAULT-31: links and names on an origin never lead a mount outside the origin's root.

The origin folder holds, next to real music: absolute and relative links to a
tagged FLAC outside it (and to a folder outside it), a link to such a link,
links that loop (two files pointing at each other, a folder linking to itself
or its parent), a dangling link, files whose names look like traversal
(``..\\..\\evil.flac``, ``..%2F..%2Fetc.flac``), and one link inside the root,
which is followed. Served by a local origin and by OpenSSH's sshd (whose login
sees the whole machine, so the server itself would follow any link), and
mounted for real: the scan completes and shows only what is inside the root;
the raw view ``/.origins/<id>/`` lists only that too and answers ENOENT for the
rest; no byte of the outside file is ever served, not even when a file that
was indexed is swapped for a link to it; the chunk cache holds only
hash-named files; loops end.
"""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path

import pytest

from chaos.remote import write_origin
from conformance.expected import sha256_of, walk_files
from conformance.hostile import skip_lines, tagged
from tests.harness import NO_PREFETCH, mount_library, mounted_tracks
from tests.sshserver import ssh_server

SWAP = "good/swap.flac"
INSIDE = {"good/a.flac", SWAP, "inside-link.flac", "..\\..\\evil.flac", "..%2F..%2Fetc.flac",
          "....flac"}
ESCAPES = ("abs-escape.flac", "rel-escape.flac", "chain-escape.flac", "escape-dir", "rel-escape-dir")
LOOPS = ("loop-a.flac", "loop-b.flac")
NOT_SHOWN = (*ESCAPES, *LOOPS, "self", "parent/up", "dangling.flac")
CACHE_NAME = re.compile(r"[0-9a-f]{2}|[0-9a-f]{16}|[0-9a-f]{32}|chunks|packs|chunks\.db(-wal|-shm|-journal)?|musicfs\.lock")


def _layout(base: Path) -> tuple[Path, Path]:
    """Write the origin ``base/music`` and the folder ``base/outside`` it must never reach."""
    root, outside = base / "music", base / "outside"
    same = {"artist": "Traversal", "album": "Links", "track": 1}
    secret = tagged(outside / "secret.flac", "flac", "vorbis", {**same, "title": "Secret"}, key=66)
    tagged(outside / "folder" / "also.flac", "flac", "vorbis", {**same, "title": "Also Secret"}, key=67)
    tagged(root / "good" / "a.flac", "flac", "vorbis", {**same, "title": "Inside"}, key=1)
    swap = tagged(root / "good" / "swap.flac", "flac", "vorbis", {**same, "title": "Swap 1"}, key=66)
    assert swap.stat().st_size == secret.stat().st_size  # a swap the size check cannot tell apart
    for name in ("..\\..\\evil.flac", "..%2F..%2Fetc.flac", "....flac"):
        tagged(root / name, "flac", "vorbis", {**same, "title": name.replace(".", "dot")}, key=2)
    (root / "inside-link.flac").symlink_to("good/a.flac")
    (root / "abs-escape.flac").symlink_to(secret)
    (root / "rel-escape.flac").symlink_to("../outside/secret.flac")
    (root / "chain-escape.flac").symlink_to("rel-escape.flac")
    (root / "escape-dir").symlink_to(outside / "folder")
    (root / "rel-escape-dir").symlink_to("../outside/folder")
    (root / "loop-a.flac").symlink_to("loop-b.flac")
    (root / "loop-b.flac").symlink_to("loop-a.flac")
    (root / "self").symlink_to(".")
    (root / "parent").mkdir()
    (root / "parent" / "up").symlink_to("..")
    (root / "dangling.flac").symlink_to("nowhere.flac")
    return root, outside


def _judge(mounted, origin_id: str, root: Path, outside: Path, *, local: bool) -> None:
    mnt = mounted.mountpoint
    secret = {sha256_of(outside / "secret.flac"), sha256_of(outside / "folder" / "also.flac")}
    tracks = mounted_tracks(mnt)
    assert set(tracks) == INSIDE, f"the tag tree shows {sorted(tracks)}"

    raw = mnt / ".origins" / origin_id
    started = time.monotonic()
    listed = {str(Path(d, n).relative_to(raw)) for d, _dirs, names in os.walk(raw) for n in names}
    assert time.monotonic() - started < 30, "walking the raw view took too long (a loop?)"
    assert listed == INSIDE, f"the raw view lists {sorted(listed)}"
    assert sorted(os.listdir(raw / "parent")) == [], "a link to a folder was followed"
    for name in NOT_SHOWN:
        with pytest.raises(FileNotFoundError):
            os.stat(raw / name)
    for path in ("escape-dir/also.flac", "self/good/a.flac", "parent/up/good/a.flac"):
        with pytest.raises(FileNotFoundError):
            open(raw / path, "rb").close()

    # every byte served is an inside file's: read all of it, through both views (not the file
    # swapped below: it has to be uncached for the swap to matter)
    for rel in listed - {SWAP}:
        assert sha256_of(raw / rel) not in secret, f"{rel} serves the outside file"
        assert sha256_of(raw / rel) == sha256_of(root / rel), rel
    for real, path in tracks.items():
        if real != SWAP:
            assert sha256_of(path) == sha256_of(root / real), real

    # a file that was indexed, swapped for a link out of the root: refused, never the outside bytes
    stat = (root / SWAP).stat()
    os.utime(outside / "secret.flac", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (root / SWAP).unlink()
    (root / SWAP).symlink_to(outside / "secret.flac")
    for path in (tracks[SWAP], raw / SWAP):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ENOENT), exc
        else:
            raise AssertionError(f"{path}: a link out of the root was read ({len(data)} bytes)")

    # the cache holds chunks named by their hash, in packs with random names: nothing named after
    # the origin's files
    for dirpath, dirs, names in os.walk(mounted.cache_dir):
        for name in dirs + names:
            assert CACHE_NAME.fullmatch(name), f"{os.path.join(dirpath, name)}: not a content address"
    if local:  # the scan names each link it did not follow, once
        log = mounted.log_text()
        for name in (*ESCAPES, *LOOPS):
            lines = [ln for ln in log.splitlines() if f"cannot read {name}:" in ln]
            assert len(lines) == 1, f"{name}: {lines}"
        assert not any(skip_lines(log, name) for name in INSIDE)
    assert mounted.alive()


@pytest.mark.req("FAULT-31", "B2-6")
def test_f31_links_out_of_a_local_origin_are_never_followed(tmp_path):
    root, outside = _layout(tmp_path / "base")
    with mount_library(origin=root, work=tmp_path / "m", extra_args=NO_PREFETCH) as mounted:  # swap: uncached
        _judge(mounted, "local", root, outside, local=True)


@pytest.mark.req("FAULT-31", "B2-6")
def test_f31_links_out_of_an_sftp_origin_are_never_followed(tmp_path):
    with ssh_server() as server:
        root, outside = _layout(server.root / "base")
        config = tmp_path / "musicfs.toml"
        write_origin(config, "nas", "sftp", server.options(path=str(root)))
        with mount_library(config=config, work=tmp_path / "m") as mounted:
            _judge(mounted, "nas", root, outside, local=False)
            assert walk_files(mounted.mountpoint)
