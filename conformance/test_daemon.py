"""The daemon's life: clean stops on signals (FAULT-26), one daemon per mountpoint, index and
cache (FAULT-27), stale mounts recovered after a kill (FAULT-25), background mode with pid files
and ``musicfs umount``.

Every process a test starts is killed and every mountpoint unmounted in ``finally`` blocks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from chaos.checks import assert_cache_sound
from conformance.daemons import cleanup, finish, integrity, mount_args, running, wait_serving
from conformance.expected import assign, forget_assignment, sha256_of, walk_dirs, walk_files
from musicfs import daemon
from tests.harness import musicfs_cmd, settled


def check_tracks(mountpoint: Path, good_files: list[dict]) -> None:
    forget_assignment(mountpoint)
    for path, entry in assign(mountpoint, good_files).items():
        assert sha256_of(mountpoint / path) == entry["sha256"], path
    forget_assignment(mountpoint)


def wal_bytes(database: Path) -> int:
    """Bytes in the database's WAL: what the next open would have to recover (0: none)."""
    wal = Path(f"{database}-wal")
    return wal.stat().st_size if wal.exists() else 0


def expected_by_path(good_files: list[dict]) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in good_files}


def chunk_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "chunks").rglob("*") if p.is_file() and
                  not p.name.startswith("."))


RECOVERY_WORDS = ("checking library index", "reconcil", "recovered", "damaged", "stale")


@pytest.mark.req("FAULT-26")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_f26_graceful_signal_unmounts_exits_0_and_leaves_nothing_to_recover(
        mount_factory, sample_library, good_files, tmp_path, signum):
    """SIGTERM/SIGINT: clean unmount, exit 0, both SQLite files checkpointed (no WAL left), and a
    second mount of the same state logs no recovery of any kind."""
    mounted = mount_factory(origin=sample_library[0], work=tmp_path / "first", extra_args=("-v",))
    pidfile = daemon.RunFiles.for_mountpoint(mounted.state_dir, mounted.mountpoint).pid
    assert json.loads(pidfile.read_text())["pid"] == mounted.pid
    check_tracks(mounted.mountpoint, good_files)  # the cache fills: chunks.db is written to

    mounted.proc.send_signal(signum)
    assert mounted.proc.wait(15) == 0, mounted.log_text()
    assert not daemon.is_mounted(mounted.mountpoint)
    assert not pidfile.exists(), "the pid file outlived the daemon"
    assert os.listdir(mounted.mountpoint) == [], "the mountpoint is not back to the empty folder"
    first_log = mounted.log_text()
    assert "Traceback" not in first_log
    chunk_index = mounted.cache_dir / "chunks.db"
    for database in (mounted.index, chunk_index):
        assert database.exists(), database
        assert wal_bytes(database) == 0, f"{database.name}: the stop left a WAL for the next mount to recover"
        assert integrity(database) == ["ok"], database
    assert_cache_sound(mounted.cache_dir, expected_by_path(good_files), sample_library[0])

    again = mount_factory(origin=sample_library[0], work=tmp_path / "first", index=mounted.index,
                          cache_dir=mounted.cache_dir, extra_args=("-v",))
    log = again.log_text()[len(first_log):]  # the same log file: only the second run's lines
    assert "mounted" in log, log
    found = [line for line in log.splitlines() if any(w in line.lower() for w in RECOVERY_WORDS)]
    assert not found, f"the mount after a clean stop recovered something: {found}"
    check_tracks(again.mountpoint, good_files)
    assert again.log_text().count("Traceback") == 0


@pytest.mark.req("FAULT-27")
def test_f27_second_daemon_is_refused_and_the_first_keeps_serving(mount_factory, sample_library,
                                                                  good_files, tmp_path):
    """A second daemon on the same mountpoint, the same index or the same cache (each with
    everything else its own) is refused with a message naming what is in use and by whom;
    it changes nothing of the first's, which keeps serving the same bytes."""
    first = mount_factory(origin=sample_library[0])
    check_tracks(first.mountpoint, good_files)  # something in the cache to lose
    settled(first.mountpoint)
    chunks_before = chunk_files(first.cache_dir)
    log_before = first.log_text()
    other_mnt = tmp_path / "other-mnt"
    other_mnt.mkdir()
    origin = sample_library[0]
    with cleanup(other_mnt) as spawned:
        attempts = {
            "same mountpoint": mount_args(tmp_path / "s2", tmp_path / "s2" / "i.db", origin, tmp_path / "c2",
                                          first.mountpoint),
            "same mountpoint, background": mount_args(tmp_path / "s3", tmp_path / "s3" / "i.db", origin,
                                                      tmp_path / "c3", first.mountpoint, foreground=False),
            "same index": mount_args(tmp_path / "s4", first.index, origin, tmp_path / "c4", other_mnt),
            "same index, background": mount_args(tmp_path / "s5", first.index, origin, tmp_path / "c5",
                                                 other_mnt, foreground=False),
            "same cache": mount_args(tmp_path / "s6", tmp_path / "s6" / "i.db", origin, first.cache_dir,
                                     other_mnt),
        }
        for what, cmd in attempts.items():
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            spawned.append(proc)
            code, out = finish(proc)
            assert code != 0, f"{what}: a second daemon was accepted:\n{out}"
            message = " ".join(out.split())
            assert "Traceback" not in out, f"{what}: {out}"
            if what.startswith("same mountpoint"):
                assert "already mounted" in message and str(first.mountpoint) in message, message
            else:
                resource = "index" if what.startswith("same index") else "cache"
                assert f"{resource} " in message, message
                assert f"already in use by musicfs pid {first.pid}" in message, message
                assert not daemon.is_mounted(other_mnt)
        assert not (tmp_path / "s6" / "i.db").exists(), "the refused daemon scanned anyway"

        # the first one never noticed
        assert first.alive() and daemon.is_mounted(first.mountpoint)
        pidfile = daemon.RunFiles.for_mountpoint(first.state_dir, first.mountpoint).pid
        assert json.loads(pidfile.read_text())["pid"] == first.pid
        check_tracks(first.mountpoint, good_files)
        settled(first.mountpoint)
        assert chunk_files(first.cache_dir) == chunks_before, "a refused daemon changed the first's cache"
        assert first.log_text()[len(log_before):].count("ERROR") == 0, first.log_text()


@pytest.mark.req("FAULT-25", "NFR-8.2")
@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "background"])
def test_f25_stale_mount_left_by_sigkill_is_recovered(mount_factory, sample_library, good_files, tmp_path,
                                                      foreground):
    """After SIGKILL the mountpoint is stale (ENOTCONN); the next ``musicfs mount`` (in the
    foreground, or the background command users type) clears it, says so, and serves the same
    tree, inodes and bytes, with index and cache sound."""
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

    files = daemon.RunFiles.for_mountpoint(killed.state_dir, mnt)
    with cleanup(mnt) as spawned:
        cmd = mount_args(killed.state_dir, killed.index, sample_library[0], killed.cache_dir, mnt,
                         foreground=foreground)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        spawned.append(proc)
        if foreground:
            wait_serving(mnt, proc)
        else:
            code, out = finish(proc, timeout=120)
            assert code == 0, out
            spawned.append(daemon.read_pidfile(files)["pid"])
        assert {d: os.listdir(mnt / d) for d in walk_dirs(mnt)} == listing
        assert {p: os.stat(mnt / p).st_ino for p in walk_files(mnt)} == inodes
        check_tracks(mnt, good_files)

        if foreground:
            proc.send_signal(signal.SIGTERM)
            code, out = finish(proc)
            assert code == 0, out
        else:
            stopped = subprocess.run(musicfs_cmd("--state-dir", str(killed.state_dir), "umount", str(mnt)),
                                     capture_output=True, text=True, timeout=60)
            assert stopped.returncode == 0, stopped.stderr
        assert "recovered a stale mount" in " ".join(out.split())
        assert not daemon.is_mounted(mnt)
    assert integrity(killed.index) == ["ok"]
    assert_cache_sound(killed.cache_dir, expected_by_path(good_files), sample_library[0])


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
