"""Library files on real mounts: ``musicfs mount --all``, ``musicfs library list``, ``musicfs umount --all``
(issue 16, LIB-1).

Three files under ``$XDG_CONFIG_HOME/musicfs/libraries``: two good libraries (local folders) and
one whose origin type does not exist. ``--all`` mounts the two, names the bad file with its line
and reason, and exits 1; the list shows each one's state; ``umount --all`` unmounts both.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from fixtures.media import short_track
from musicfs import daemon
from tests.harness import mounted_tracks, musicfs_cmd


def run(env: dict, state, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(musicfs_cmd("--state-dir", str(state), *args), capture_output=True, text=True,
                          timeout=180, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


@pytest.mark.req("LIB-1")
def test_every_library_file_mounts_with_all_and_a_bad_one_costs_only_itself(tmp_path):
    home, state = tmp_path / "config", tmp_path / "state"
    folder = home / "musicfs" / "libraries"
    folder.mkdir(parents=True)
    mountpoints = {}
    for name in ("jazz", "rock"):
        music = tmp_path / name
        short_track(music, f"{name.title()} Band/Album/01.flac", "flac", len(mountpoints) + 1, album="Album",
                    cover=None)
        mountpoints[name] = tmp_path / "mnt" / name
        (folder / f"{name}.toml").write_text(
            f'[library]\nmountpoint = "{mountpoints[name]}"\n\n'
            f'[cache]\ndir = "{tmp_path / "cache" / name}"\n\n'
            f'[[origins]]\nid = "{name}"\ntype = "local"\npath = "{music}"\n')
    (folder / "broken.toml").write_text(f'[library]\nmountpoint = "{tmp_path / "mnt" / "broken"}"\n\n'
                                        '[[origins]]\nid = "x"\ntype = "ftp"\npath = "/x"\n')
    env = {"XDG_CONFIG_HOME": str(home)}
    try:
        mounted = run(env, state, "mount", "--all")
        assert mounted.returncode == 1, (mounted.stdout, mounted.stderr)
        assert "library broken:" in mounted.stderr and "broken.toml:6: unknown origin type 'ftp'" in mounted.stderr
        for name, mountpoint in mountpoints.items():
            assert daemon.is_mounted(mountpoint), (name, mounted.stderr)
            assert set(mounted_tracks(mountpoint)) == {f"{name.title()} Band/Album/01.flac"}  # its own library

        listed = {item["name"]: item for item in json.loads(run(env, state, "library", "list", "--json").stdout)}
        assert listed["jazz"]["state"].startswith("mounted (pid") and listed["rock"]["state"].startswith("mounted")
        assert listed["broken"]["state"] == "unusable" and "unknown origin type" in listed["broken"]["problem"]
        again = run(env, state, "mount", "--all")  # the mounted ones are said to be, not mounted twice
        assert "is mounted already" in again.stdout and again.returncode == 1

        unmounted = run(env, state, "umount", "--all")
        assert unmounted.returncode == 0, unmounted.stderr
        assert not any(daemon.is_mounted(m) for m in mountpoints.values())
        listed = {item["name"]: item for item in json.loads(run(env, state, "library", "list", "--json").stdout)}
        assert listed["jazz"]["state"] == "not mounted"
    finally:
        run(env, state, "umount", "--all")
        for mountpoint in mountpoints.values():
            if daemon.is_mounted(mountpoint):
                daemon.fusermount_unmount(mountpoint, lazy=True)


@pytest.mark.req("LIB-1")
def test_all_with_a_mountpoint_or_no_library_files_says_why(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "empty")}
    none = run(env, tmp_path / "state", "mount", "--all")
    assert none.returncode == 1 and "no library files in" in none.stderr
    both = run(env, tmp_path / "state", "mount", "--all", str(tmp_path))
    assert both.returncode == 2 and "--all mounts the library files' libraries" in both.stderr
