"""The peers: the ways of serving the library (natively, through bindfs, rclone and musicfs),
each mounted over a place of its own and always unmounted, its processes stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from musicfs import daemon
from musicfs.index.artwork import COVER_NAMES
from tests.harness import mount_library, mount_status, settled

from .library import CROWD_ARTIST, CROWD_DIR, Library

PEERS = ("native", "bindfs", "rclone", "musicfs")
FUSE_PEERS = ("bindfs", "rclone", "musicfs")


@dataclass
class Mounted:
    """One peer serving the library: where, and which process (None: the kernel alone)."""

    root: Path
    pid: int | None
    large: list[Path]  # the long tracks, in the library's reading order
    crowd: Path  # the folder of crowd_tracks entries
    # musicfs: how many fills from the origin the daemon has started (its status document)
    origin_fills: Callable[[], int] | None = None


def _wait_mounted(mountpoint: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not daemon.is_mounted(mountpoint):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} did not mount within {timeout} s")
        time.sleep(0.01)
    os.stat(mountpoint)  # the first request answered: it serves


def _unmount(mountpoint: Path, proc: subprocess.Popen | None) -> None:
    """Unmount and stop the daemon, harder each step: unmount, SIGTERM, SIGKILL, lazy unmount."""
    if daemon.is_mounted(mountpoint):
        daemon.fusermount_unmount(mountpoint)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            daemon.abort_connection(mountpoint)
            proc.kill()
            proc.wait(10)
    if daemon.is_mounted(mountpoint):
        daemon.abort_connection(mountpoint)
        daemon.fusermount_unmount(mountpoint, lazy=True)


@contextlib.contextmanager
def _fuse_process(cmd: list[str], mountpoint: Path, log: Path, timeout: float = 60.0
                  ) -> Iterator[subprocess.Popen]:
    """Run a FUSE daemon in the foreground as our child, yield once it serves, always stop it."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_mounted(mountpoint, proc, log, timeout)
        yield proc
    finally:
        _unmount(mountpoint, proc)


def _same_layout(root: Path, library: Library, pid: int | None) -> Mounted:
    """A peer that shows the native folder as it is."""
    return Mounted(root, pid, [root / t.relpath for t in library.large], root / CROWD_DIR)


def _musicfs_layout(root: Path, library: Library, pid: int) -> Mounted:
    """Where musicfs' tag tree put the long tracks and the crowd album (found, not assumed)."""
    by_real = {}
    for artist in library.large_artists:
        for dirpath, _, names in os.walk(root / artist):
            for name in names:
                if name in COVER_NAMES:  # an album's cover, not a track
                    continue
                path = Path(dirpath) / name
                by_real[os.getxattr(path, "user.musicfs.real_path").decode()] = path
    missing = [t.relpath for t in library.large if t.relpath not in by_real]
    if missing:
        raise RuntimeError(f"musicfs does not serve {len(missing)} long track(s), e.g. {missing[0]}")
    albums = os.listdir(root / CROWD_ARTIST)
    if len(albums) != 1:
        raise RuntimeError(f"{CROWD_ARTIST} has {len(albums)} albums in musicfs, not one")
    return Mounted(root, pid, [by_real[t.relpath] for t in library.large],
                   root / CROWD_ARTIST / albums[0],
                   origin_fills=lambda: mount_status(root)["reader"]["fills_started"])


class Peer:
    """A way of serving the library. ``mount(place, cache)`` yields it served; a new ``cache``
    name is an empty cache, the same name again is the cache a previous mount filled."""

    name = ""
    binary: str | None = None

    def missing(self) -> str | None:
        """Why this peer cannot run here, or None."""
        if self.binary and shutil.which(self.binary) is None:
            return f"{self.binary} is not installed"
        return None

    def version(self) -> str:
        return ""

    def mount(self, library: Library, place: Path, cache: str) -> contextlib.AbstractContextManager[Mounted]:
        raise NotImplementedError


class NativePeer(Peer):
    name = "native"

    def version(self) -> str:
        return os.uname().release

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        yield _same_layout(library.root, library, None)


class BindfsPeer(Peer):
    name = binary = "bindfs"

    def version(self) -> str:
        out = subprocess.run(["bindfs", "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        mnt = place / "bindfs"
        with _fuse_process(["bindfs", "-f", "-r", str(library.root), str(mnt)], mnt,
                           place / "bindfs.log") as proc:
            yield _same_layout(mnt, library, proc.pid)


class RclonePeer(Peer):
    """``rclone mount`` of the folder as an on-the-fly local remote, with its VFS cache full."""

    name = binary = "rclone"

    def version(self) -> str:
        out = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=False)
        return out.stdout.splitlines()[0] if out.stdout else ""

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        mnt = place / "rclone"
        config = place / "rclone.conf"  # empty: no remote of the user's is read or touched
        config.touch()
        cmd = ["rclone", "mount", f":local:{library.root}", str(mnt), "--config", str(config),
               "--read-only", "--vfs-cache-mode", "full",
               "--cache-dir", str(place / f"rclone-cache-{cache}")]
        with _fuse_process(cmd, mnt, place / "rclone.log") as proc:
            yield _same_layout(mnt, library, proc.pid)


class MusicfsPeer(Peer):
    """The real daemon (as the tests mount it) over a local origin, default cache settings;
    the index scanned once at build time, the chunk cache a folder per ``cache`` name."""

    name = "musicfs"

    def version(self) -> str:
        from importlib.metadata import version

        return version("musicfs")

    @contextlib.contextmanager
    def mount(self, library: Library, place: Path, cache: str) -> Iterator[Mounted]:
        with mount_library(work=place / "musicfs", origin=library.root, index=library.index,
                           cache_dir=place / f"musicfs-cache-{cache}") as mounted:
            yield _musicfs_layout(mounted.mountpoint, library, mounted.pid)
            # the last chunks of a read reach the cache just after it: a remount over this
            # cache must find every one (an unmount mid-fill would leave a gap to fetch again)
            settled(mounted.mountpoint)


PEER_TYPES: dict[str, type[Peer]] = {"native": NativePeer, "bindfs": BindfsPeer,
                                     "rclone": RclonePeer, "musicfs": MusicfsPeer}
