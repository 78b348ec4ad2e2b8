"""Mounting for real in tests: start a daemon, wait for it, always clean up.

Used by conformance/, chaos/ and perf/ alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from musicfs import daemon
from musicfs.index.artwork import COVER_NAMES


@dataclass
class MountedLibrary:
    mountpoint: Path
    state_dir: Path
    index: Path
    cache_dir: Path
    origin: Path | None
    proc: subprocess.Popen
    log: Path
    mount_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def musicfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "musicfs.cli.main", *args]


def scan(origin: Path, state_dir: Path, index: Path | None = None, *extra: str) -> subprocess.CompletedProcess:
    args = ["--state-dir", str(state_dir), "scan", "--origin", str(origin)]
    if index:
        args += ["--index", str(index)]
    return subprocess.run(musicfs_cmd(*args, *extra), capture_output=True, text=True, check=True)


def unmount(mounted: MountedLibrary, timeout: float = 15.0) -> None:
    if mounted.alive():
        mounted.proc.send_signal(signal.SIGTERM)
        try:
            mounted.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.abort_connection(mounted.mountpoint)  # frees a daemon blocked on its own mount
            mounted.proc.kill()
            mounted.proc.wait(10)
    if daemon.is_mounted(mounted.mountpoint):
        daemon.fusermount_unmount(mounted.mountpoint, lazy=True)


# for tests that count what reaches an origin: prefetch would fetch tracks nobody read yet beside
# the reads measured (its own tests: tests/test_prefetch.py, chaos/test_prefetch.py)
NO_PREFETCH = ("--no-prefetch",)


def start_mount(*, work: Path, origin: Path | None = None, config: Path | None = None,
                index: Path | None = None, cache_dir: Path | None = None, timeout: float = 120.0,
                extra_args: tuple[str, ...] = (),
                env: dict | None = None) -> MountedLibrary:
    work.mkdir(parents=True, exist_ok=True)
    mountpoint = work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    state = work / "state"
    log = work / "daemon.log"
    index = index or state / "index.db"
    cache_dir = cache_dir or work / "cache"
    library = ["--config", str(config)] if config else ["--origin", str(origin)]
    cmd = musicfs_cmd("--state-dir", str(state), "mount", "--foreground", "--index", str(index),
                      "--cache-dir", str(cache_dir), *library, *extra_args, str(mountpoint))
    started = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
    mounted = MountedLibrary(mountpoint, state, index, cache_dir, origin, proc, log)
    deadline = time.monotonic() + timeout
    files = daemon.RunFiles.for_mountpoint(state, mountpoint)
    while True:  # mounted by this daemon: its pid file names it (a stale mount would not)
        info = daemon.read_pidfile(files)
        if info and info.get("pid") == proc.pid and daemon.is_mounted(mountpoint):
            break
        if proc.poll() is not None:
            raise RuntimeError(f"musicfs exited with {proc.returncode}:\n{mounted.log_text()}")
        if time.monotonic() > deadline:
            unmount(mounted)
            raise RuntimeError(f"musicfs did not mount within {timeout} s:\n{mounted.log_text()}")
        time.sleep(0.002)
    os.stat(mountpoint)  # the first request answered: the mount is serving
    mounted.mount_seconds = time.perf_counter() - started
    return mounted


@contextmanager
def mount_library(**kwargs) -> Iterator[MountedLibrary]:
    mounted = start_mount(**kwargs)
    try:
        yield mounted
    finally:
        unmount(mounted)
        if daemon.is_mounted(mounted.mountpoint):
            daemon.abort_connection(mounted.mountpoint)
            daemon.fusermount_unmount(mounted.mountpoint, lazy=True)


def mounted_tracks(mountpoint: Path) -> dict[str, Path]:
    """real_path -> mounted path of every track in a mount (hidden folders left out)."""
    tracks = {}
    for dirpath, dirnames, filenames in os.walk(mountpoint):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name in COVER_NAMES:  # an album's cover, not a track
                continue
            path = Path(dirpath) / name
            tracks[os.getxattr(path, "user.musicfs.real_path").decode()] = path
    return tracks


def mount_status(mountpoint: Path) -> dict:
    """The mount's generated /.musicfs/status.json."""
    return json.loads((mountpoint / ".musicfs" / "status.json").read_text())


def settled(mountpoint: Path, timeout: float = 20.0) -> dict:
    """status.json once no fill is running (the last chunks of a read reach disk just after it)."""
    deadline = time.monotonic() + timeout
    while True:
        current = mount_status(mountpoint)
        reader = current["reader"]
        if reader["fills_started"] == reader["fills_completed"] + reader["fills_failed"] + reader["fills_stopped"]:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"fills still running after {timeout} s: {reader}")
        time.sleep(0.02)


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """A CLI refusal: exit 2, nothing on stdout, exactly one line on stderr holding ``words``."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and not result.stdout, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("musicfs: "), result.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def errno_of(call, *args) -> int | None:
    """The errno ``call(*args)`` fails with, None when it succeeds."""
    try:
        call(*args)
    except OSError as exc:
        return exc.errno
    return None


@contextmanager
def running_manager(state_dir: Path, env: dict | None = None) -> Iterator[int]:
    """``musicfs manager start`` for ``state_dir``; its pid. Afterwards ``manager stop``, and
    whatever is still there (the manager, a mount it started) is killed and unmounted."""
    environ = {**os.environ, **(env or {})}
    started = subprocess.run(musicfs_cmd("--state-dir", str(state_dir), "manager", "start"), capture_output=True,
                             text=True, timeout=60, env=environ, stdin=subprocess.DEVNULL)
    assert started.returncode == 0, (started.stdout, started.stderr)
    status = subprocess.run(musicfs_cmd("--state-dir", str(state_dir), "manager", "status", "--json"),
                            capture_output=True, text=True, timeout=30, env=environ)
    pid = json.loads(status.stdout)["statistics"]["pid"]
    try:
        yield pid
    finally:
        subprocess.run(musicfs_cmd("--state-dir", str(state_dir), "manager", "stop"), capture_output=True,
                       timeout=120, env=environ)
        leftovers = daemon.running_mounts(state_dir)
        for process in [pid, *(info["pid"] for info in leftovers)]:
            if daemon.is_alive(process):
                os.kill(process, signal.SIGKILL)
        for info in leftovers:
            if daemon.is_mounted(Path(info["mountpoint"])):
                daemon.abort_connection(Path(info["mountpoint"]))
                daemon.fusermount_unmount(Path(info["mountpoint"]), lazy=True)
