"""Daemons a test starts by hand rather than through :func:`tests.harness.start_mount`: a second
daemon that must be refused, a restart after a kill, a daemon run through a fault-injecting
launcher. Every process is killed and every mountpoint unmounted by :func:`cleanup`.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

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
               foreground: bool = True, *extra: str) -> list[str]:
    return musicfs_cmd("--state-dir", str(state), "mount", *(["--foreground"] if foreground else []),
                       "--index", str(index), "--cache-dir", str(cache), "--origin", str(origin),
                       *extra, str(mountpoint))


def launcher_cmd(faults: list[str], musicfs_args: list[str]) -> list[str]:
    """``musicfs`` run through :mod:`tests.faulty_daemon` with ``faults`` injected."""
    return [sys.executable, "-m", "tests.faulty_daemon", *(f"--fault={f}" for f in faults), "--",
            *musicfs_args]


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


def fd_count(pid: int) -> int:
    """How many file descriptors the process holds now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> Counter[str]:
    """What the process's descriptors point at, by kind: a file's path, or ``socket``, ``pipe``,
    ``anon_inode:[eventpoll]`` ... (the inode numbers left out, so two samples compare)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        kinds[target.split(":[", 1)[0] if ":[" in target and not target.startswith("anon_inode") else target] += 1
    return kinds


def open_files_limit(pid: int) -> tuple[int, int]:
    """The process's (soft, hard) RLIMIT_NOFILE, as /proc/<pid>/limits shows it."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open files limit for pid {pid}")


def integrity(database: Path) -> list[str]:
    """SQLite's ``PRAGMA integrity_check`` of a database file, read-only: ["ok"] when whole."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
