"""The kernel keeps the tag tree's listings, and drops one as soon as a rescan changes it.

A listing answered by the daemon costs a request per page of entries; a big album listed
again costs them all again. The tree's directories are opened with ``FOPEN_CACHE_DIR``
(:mod:`musicfs.fuse.dircache`), so the kernel answers a listing it has seen itself, as it
does for a disk. What that must never cost is a stale listing: a rescan that adds or
removes a track tells the kernel, and the next listing shows the change at once.

Checked on a real mount: one folder of CROWD tracks (issue 18's wide directory), listed
again without a readdir reaching the daemon, as fast as the same folder on the origin's
disk (within 3x, issue 18's goal), then changed at the origin and rescanned.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import pytest

from fixtures.bigfile import write_wav
from musicfs.control.client import ControlClient
from tests.harness import mount_library, mount_status

CROWD = 3000
LISTINGS = 25
ALBUM = Path("Unknown Artist") / "Unknown Album [WAV]"  # where untagged WAV files go


def readdirs(mountpoint: Path) -> int:
    """READDIR requests the daemon has answered so far."""
    return mount_status(mountpoint)["fuse"]["ops"].get("readdir", 0)


def median_listing(folder: Path) -> float:
    times = []
    for _ in range(LISTINGS):
        started = time.perf_counter()
        names = os.listdir(folder)
        times.append(time.perf_counter() - started)
        assert names
    return statistics.median(times)


def rescan(mounted) -> dict:
    with ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as client:
        documents = list(client.stream("POST", "/v1/origins/local/rescan"))
    assert documents[-1]["phase"] == "complete", documents[-3:]
    return documents[-1]


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """A folder of CROWD small tracks, all in one album of the tag tree."""
    work = tmp_path_factory.mktemp("crowd")
    origin = work / "library"
    origin.mkdir()
    one = write_wav(work / "one.wav", 4096, seed=7)
    for i in range(CROWD):
        shutil.copyfile(one, origin / f"take {i:04d}.wav")
    return work, origin


@pytest.mark.req("FS-7")
@pytest.mark.alone
def test_the_kernel_keeps_a_listing_until_a_rescan_changes_it(crowd):
    work, origin = crowd
    with mount_library(origin=origin, work=work / "mount") as mounted:
        album = mounted.mountpoint / ALBUM
        first = sorted(os.listdir(album))
        assert len(first) == CROWD
        asked = readdirs(mounted.mountpoint)
        ours = median_listing(album)
        assert readdirs(mounted.mountpoint) == asked, (
            "listing the album again reached the daemon: the kernel did not keep the listing "
            "(is musicfs.fuse._replyopen built? see musicfs/fuse/dircache.py)")
        native = median_listing(origin)
        print(f"\nlisting {CROWD} entries again: {ours * 1000:.2f} ms through the mount, "
              f"{native * 1000:.2f} ms on the origin's disk ({ours / native:.2f}x)")
        assert ours <= 3 * native, f"a kept listing took {ours / native:.1f}x the origin's own"

        # the origin changes: one track added, one removed; a rescan, then at once the new listing
        shutil.copyfile(work / "one.wav", origin / "take new.wav")
        os.unlink(origin / "take 0001.wav")
        final = rescan(mounted)
        assert (final["added"], final["removed"]) == (1, 1), final
        after = sorted(os.listdir(album))
        assert readdirs(mounted.mountpoint) > asked, "the changed listing was not asked again"
        assert len(after) == CROWD
        assert [n for n in after if n not in first] == [n for n in after if "take new" in n]
        assert [n for n in first if n not in after] == [n for n in first if "take 0001" in n]
        asked = readdirs(mounted.mountpoint)
        assert sorted(os.listdir(album)) == after and readdirs(mounted.mountpoint) == asked, (
            "the new listing is kept as well")

        # a rescan that changes nothing in the album leaves its kept listing alone
        final = rescan(mounted)
        assert (final["added"], final["removed"]) == (0, 0), final
        assert sorted(os.listdir(album)) == after and readdirs(mounted.mountpoint) == asked
        assert mounted.alive()
