"""``/.offline`` on a real mount: exactly what plays with the network gone (OFF-1).

One mount of a small local library (three albums of 16-second FLAC tracks, ~1.4 MB each), prefetch
off so that only what the test reads is cached, and a cache limit chosen so that reading the last
album evicts part of the first:

* cold, ``/.offline`` is empty (and, like every special folder, not listed in the root);
* an album read whole shows, with its artist, as the tree's own files (same inode, same size);
  an album with two tracks read whole and the head of the third does not;
* the last album read whole pushes the first one's oldest chunks out: the first goes, the last
  shows;
* the origin taken away (its folder renamed), every file listed reads back with exactly the
  origin's bytes (the kernel's pages of it dropped first, so the reads reach the daemon);
* ``musicfs cache clear``: nothing is left to show.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from conformance.expected import sha256_of
from conformance.test_control_cli import ok_json
from conformance.test_events import config_file
from fixtures.audio import AudioSpec, encode, sample_rates
from fixtures.tags import TagPlan, write_tags
from tests.harness import NO_PREFETCH, mount_library, mount_status, mounted_tracks, settled

OFFLINE = ".offline"
ALBUMS = {("A", "One"): 3, ("A", "Two"): 3, ("B", "Three"): 2}
SECONDS = 16.0  # ~1.4 MB of FLAC: several fill blocks, so reading a head caches only a head
HEAD_AT_MOST = 3 * 512 * 1024  # what reading a track's first 4 KiB may cache (~280 KB here; read-ahead)
WAIT = 10.0  # seconds for a change to show (the view is worked out again at most once a second)


def write_library(root: Path) -> dict[str, int]:
    """ALBUMS as tagged FLAC files under ``root``: real path -> size."""
    sizes = {}
    rate = sample_rates("flac", 2)[-1]
    for key, ((artist, album), count) in enumerate(ALBUMS.items()):
        for n in range(1, count + 1):
            real = f"{artist}/{album}/{n:02d}.flac"
            target = root / real
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode(AudioSpec(key * 10 + n, SECONDS, rate, 2), "flac"))
            write_tags(target, "flac", TagPlan("vorbis", {"title": f"{album} {n}", "artist": artist,
                                                          "albumartist": artist, "album": album,
                                                          "year": 2001 + key, "track": n}))
            sizes[real] = target.stat().st_size
    return sizes


def shown(offline: Path) -> set[str]:
    """Every file under ``/.offline``, relative to it."""
    found = set()
    for dirpath, _, filenames in os.walk(offline):
        found |= {os.path.relpath(os.path.join(dirpath, name), offline) for name in filenames}
    return found


def shows_soon(offline: Path, expected: set[str]) -> None:
    deadline = time.monotonic() + WAIT
    while (now := shown(offline)) != expected:
        assert time.monotonic() < deadline, f"/.offline shows {sorted(now)}, expected {sorted(expected)}"
        time.sleep(0.1)


@pytest.mark.req("OFF-1")
def test_offline_shows_exactly_what_plays_without_the_origin(tmp_path):
    lib = tmp_path / "lib"
    sizes = write_library(lib)
    albums = {album: sorted(real for real in sizes if f"/{album}/" in real) for _, album in ALBUMS}
    expected = {real: sha256_of(lib / real) for real in sizes}
    # room for One, Two's first two tracks and a head; Three then goes over by less than its own
    # size, which is less than One's: part of One goes (its chunks are the oldest), nothing else
    limit = sum(sizes[r] for r in albums["One"] + albums["Two"][:2]) + HEAD_AT_MOST
    assert 0 < sum(sizes[r] for r in albums["Three"]) - HEAD_AT_MOST < sum(sizes[r] for r in albums["One"])
    config = config_file(tmp_path / "musicfs.toml", {"lib": lib}, cache_size=str(limit))
    with mount_library(config=config, work=tmp_path / "work", extra_args=NO_PREFETCH) as mounted:
        mnt = mounted.mountpoint
        offline = mnt / OFFLINE
        tracks = mounted_tracks(mnt)
        relative = {real: str(path.relative_to(mnt)) for real, path in tracks.items()}
        assert OFFLINE not in os.listdir(mnt)
        assert stat.S_ISDIR(os.stat(offline).st_mode) and stat.S_IMODE(os.stat(offline).st_mode) == 0o555
        assert os.listdir(offline) == []  # a cold cache: nothing plays offline

        for real in albums["One"] + albums["Two"][:2]:
            assert sha256_of(tracks[real]) == expected[real], real
        with open(tracks[albums["Two"][2]], "rb") as f:  # only the head of Two's last track
            assert f.read(4096) == (lib / albums["Two"][2]).read_bytes()[:4096]
        settled(mnt)
        shows_soon(offline, {relative[r] for r in albums["One"]})
        artist, one = Path(relative[albums["One"][0]]).parts[:2]
        assert os.listdir(offline) == [artist] and os.listdir(offline / artist) == [one]
        for real in albums["One"]:  # the tree's own file: same inode, same size
            inside, in_tree = os.stat(offline / relative[real]), os.stat(tracks[real])
            assert (inside.st_ino, inside.st_size) == (in_tree.st_ino, sizes[real])
        assert os.getxattr(offline / relative[albums["One"][0]], "user.musicfs.real_path").decode() == \
            albums["One"][0]
        status = mount_status(mnt)
        assert status["cache"]["evictions"] == 0 and status["offline"]["albums"] == 1
        assert status["offline"]["tracks"] == 5  # One's three, Two's first two: whole, but Two is not

        for real in albums["Three"]:  # over the limit: One's chunks, the oldest, go
            assert sha256_of(tracks[real]) == expected[real], real
        settled(mnt)
        shows_soon(offline, {relative[r] for r in albums["Three"]})
        assert mount_status(mnt)["cache"]["evictions"] > 0

        lib.rename(tmp_path / "gone")  # the origin is gone: what /.offline lists still plays
        listed = shown(offline)
        assert listed, "nothing left to read offline"
        by_path = {path: real for real, path in relative.items()}
        for path in sorted(listed):
            with open(offline / path, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the reads reach the daemon
            assert sha256_of(offline / path) == expected[by_path[path]], path

        cleared = ok_json(mounted.state_dir, "cache", "clear")
        assert cleared["manifests"] >= len(listed)
        shows_soon(offline, set())
        assert os.listdir(offline) == []
