"""The daemon's life: clean stops on signals, one daemon per mountpoint and index, stale mounts
recovered, background mode with pid files and ``musicfs umount``.

Every process a test starts is killed and every mountpoint unmounted in ``finally`` blocks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conformance.expected import assign, forget_assignment, sha256_of, walk_dirs, walk_files
from musicfs import daemon
from tests.harness import musicfs_cmd


@contextmanager
def cleanup(*mountpoints: Path):
    """Yields a list to put Popen objects and pids in; kills them and unmounts at the end."""
    spawned: list = []
    try:
        yield spawned
    finally:
        for item in spawned:
            if isinstance(item, subprocess.Popen):
                if item.poll() is None:
                    item.kill()
                    item.wait(10)
            elif running(item) and _is_our_daemon(item, mountpoints):
                os.kill(item, signal.SIGKILL)  # only that daemon: the pid may have been reused
        for mountpoint in mountpoints:
            if daemon.is_mounted(mountpoint):
                daemon.fusermount_unmount(mountpoint, lazy=True)
            if daemon.is_mounted(mountpoint):
                daemon.abort_connection(mountpoint)
                daemon.fusermount_unmount(mountpoint, lazy=True)


def _is_our_daemon(pid: int, mountpoints: tuple[Path, ...]) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [os.fsdecode(a) for a in f.read().split(b"\0")]
    except OSError:
        return False
    return "musicfs.cli.main" in argv and any(str(m) in argv for m in mountpoints)


def mount_args(state: Path, index: Path, origin: Path, cache: Path, mountpoint: Path,
               foreground: bool = True) -> list[str]:
    return musicfs_cmd("--state-dir", str(state), "mount", *(["--foreground"] if foreground else []),
                       "--index", str(index), "--cache-dir", str(cache), "--origin", str(origin),
                       str(mountpoint))


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    """Wait for a process that should exit by itself; fail (it is killed later) if it does not."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args} did not exit within {timeout} s")
    return proc.returncode, out


def wait_serving(mountpoint: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until a live (not stale) musicfs mount answers at ``mountpoint``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"musicfs exited with {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
        if daemon.is_mounted(mountpoint) and not daemon.is_stale(mountpoint):
            try:
                os.listdir(mountpoint)
                return
            except OSError:
                pass
        time.sleep(0.02)
    pytest.fail(f"nothing serving at {mountpoint} after {timeout} s")


def running(pid: int) -> bool:
    """The process exists and has not exited (an exited child not yet reaped is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def check_tracks(mountpoint: Path, good_files: list[dict]) -> None:
    forget_assignment(mountpoint)
    for path, entry in assign(mountpoint, good_files).items():
        assert sha256_of(mountpoint / path) == entry["sha256"], path
    forget_assignment(mountpoint)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(mount_factory, sample_library, signum):
    """SIGTERM and SIGINT unmount and exit 0 (README; no catalogue requirement states it yet)."""
    mounted = mount_factory(origin=sample_library[0])
    pidfile = daemon.RunFiles.for_mountpoint(mounted.state_dir, mounted.mountpoint).pid
    assert json.loads(pidfile.read_text())["pid"] == mounted.pid
    os.listdir(mounted.mountpoint)

    mounted.proc.send_signal(signum)
    assert mounted.proc.wait(15) == 0, mounted.log_text()
    assert not daemon.is_mounted(mounted.mountpoint)
    assert not pidfile.exists(), "the pid file outlived the daemon"
    assert os.listdir(mounted.mountpoint) == [], "the mountpoint is not back to the empty folder"
    assert "Traceback" not in mounted.log_text()


def test_second_daemon_is_refused(mount_factory, sample_library, good_files, tmp_path):
    """One daemon per mountpoint and per index (no catalogue requirement states it yet)."""
    first = mount_factory(origin=sample_library[0])
    other_mnt = tmp_path / "other-mnt"
    other_mnt.mkdir()
    origin = sample_library[0]
    with cleanup(other_mnt) as spawned:
        attempts = {
            "same mountpoint": mount_args(tmp_path / "s2", tmp_path / "s2" / "i.db", origin, tmp_path / "c2",
                                          first.mountpoint),
            "same mountpoint, background": mount_args(tmp_path / "s3", tmp_path / "s3" / "i.db", origin,
                                                      tmp_path / "c3", first.mountpoint, foreground=False),
            "same index": mount_args(first.state_dir, first.index, origin, tmp_path / "c4", other_mnt),
        }
        for what, cmd in attempts.items():
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            spawned.append(proc)
            code, out = finish(proc)
            assert code != 0, f"{what}: a second daemon was accepted:\n{out}"
            message = " ".join(out.split())
            if what.startswith("same mountpoint"):
                assert "already mounted" in message and str(first.mountpoint) in message, message
            else:
                assert f"already in use by musicfs pid {first.pid}" in message, message
                assert not daemon.is_mounted(other_mnt)

        # the first one never noticed
        assert first.alive() and daemon.is_mounted(first.mountpoint)
        pidfile = daemon.RunFiles.for_mountpoint(first.state_dir, first.mountpoint).pid
        assert json.loads(pidfile.read_text())["pid"] == first.pid
        check_tracks(first.mountpoint, good_files)


@pytest.mark.req("NFR-8.2")
def test_stale_mount_left_by_sigkill_is_recovered(mount_factory, sample_library, good_files, tmp_path):
    killed = mount_factory(origin=sample_library[0])
    mnt = killed.mountpoint
    check_tracks(mnt, good_files)  # fills the content cache too
    listing = {d: os.listdir(mnt / d) for d in walk_dirs(mnt)}
    inodes = {p: os.stat(mnt / p).st_ino for p in walk_files(mnt)}

    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(10)
    assert daemon.is_mounted(mnt) and daemon.is_stale(mnt), "killing the daemon should leave a stale mount"
    with pytest.raises(OSError):
        os.listdir(mnt)

    with cleanup(mnt) as spawned:
        proc = subprocess.Popen(mount_args(killed.state_dir, killed.index, sample_library[0], killed.cache_dir,
                                           mnt), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        spawned.append(proc)
        wait_serving(mnt, proc)
        assert {d: os.listdir(mnt / d) for d in walk_dirs(mnt)} == listing
        assert {p: os.stat(mnt / p).st_ino for p in walk_files(mnt)} == inodes
        check_tracks(mnt, good_files)

        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc)
        assert code == 0, out
        assert "recovered a stale mount" in " ".join(out.split())
        assert not daemon.is_mounted(mnt)


def test_background_mount_then_umount(sample_library, good_files, tmp_path):
    """Background mode and ``musicfs umount`` (README; no catalogue requirement states it yet)."""
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    mnt.mkdir()
    files = daemon.RunFiles.for_mountpoint(state, mnt)
    with cleanup(mnt) as spawned:
        cmd = mount_args(state, state / "index.db", sample_library[0], tmp_path / "cache", mnt, foreground=False)
        started = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
        info = daemon.read_pidfile(files)
        if info:
            spawned.append(info["pid"])
        assert started.returncode == 0, started.stderr
        assert info is not None, "no pid file after a background mount"
        assert f"musicfs pid {info['pid']} mounted" in " ".join(started.stdout.split())
        assert info["mountpoint"] == str(mnt) and daemon.is_mounted(mnt)
        assert running(info["pid"]), "the daemon did not outlive the command that started it"
        assert info["pid"] != os.getpid()
        assert len(walk_files(mnt)) == len(good_files)

        stopped = subprocess.run(musicfs_cmd("--state-dir", str(state), "umount", str(mnt)),
                                 check=False, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped musicfs pid {info['pid']}" in stopped.stdout
        assert not daemon.is_mounted(mnt) and not files.pid.exists()
        assert not running(info["pid"]), "the daemon is still running after musicfs umount"

        again = subprocess.run(musicfs_cmd("--state-dir", str(state), "umount", str(mnt)),
                               check=False, capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "nothing is mounted" in again.stderr


@pytest.mark.req("ASYNC-1")
def test_the_kernel_may_send_many_read_aheads_at_once(sample_mount):
    """The kernel's default of 12 background requests per mount would queue cold reads (ASYNC-2)."""
    control = Path("/sys/fs/fuse/connections") / daemon._fuse_connection(sample_mount.mountpoint)
    deadline = time.monotonic() + 10  # raised once the mount has answered its first request
    while int((control / "max_background").read_text()) != 128 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int((control / "max_background").read_text()) == 128
    assert int((control / "congestion_threshold").read_text()) == 96
