"""The ``musicfs`` commands that drive a running mount, run as a user runs them (B2-7, FR-18.1).

Each command is a real process talking to a real daemon over its socket;
its output (JSON with exact numbers, or tables in human units) is checked
against what the API itself answers, and its exit status against what
happened. With no daemon, or two and no MOUNTPOINT, each command says so in
one line and exits 2.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fixtures.bigfile import write_wav
from musicfs import daemon
from musicfs.control.client import ControlClient
from tests.harness import mount_library, mounted_tracks, musicfs_cmd, refused

QUIET_FOR = 12.0  # seconds of silence a followed feed outlives (longer than any idle timeout)


def cli(state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(musicfs_cmd("--state-dir", str(state), *args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ok_json(state: Path, *args: str):
    result = cli(state, *args, "--json")
    assert result.returncode == 0 and not result.stderr, result.stderr
    return json.loads(result.stdout)


def ok_text(state: Path, *args: str) -> str:
    result = cli(state, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout



class Follower:
    """``musicfs events`` running in the background; its stdout lines collected as they come."""

    def __init__(self, state: Path, *args: str):
        self.proc = subprocess.Popen(musicfs_cmd("--state-dir", str(state), "events", *args),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            assert self.proc.poll() is None, f"events exited {self.proc.returncode}: {self.proc.stderr.read()}"
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed within {timeout} s: {self.lines[-5:]}")

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        self._reader.join(5)
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def takes(folder: Path, count: int, size: int = 256 * 1024, seed: int = 0) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {f"take{i}.wav": write_wav(folder / f"take{i}.wav", size, seed=seed + i) for i in range(count)}


@pytest.mark.req("B2-7", "FR-18.1")
def test_the_commands_drive_a_running_mount(tmp_path):
    lib = tmp_path / "lib"
    files = takes(lib, 3)
    with mount_library(origin=lib, work=tmp_path / "work") as mounted, \
            ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as api:
        state, mnt = mounted.state_dir, str(daemon.canonical(mounted.mountpoint))
        follow_json = Follower(state, "--json")
        follow_text = Follower(state, "--type", "FileAccessed", mnt)
        followed_since = time.monotonic()
        try:
            # status: from the API, one document per running mount
            (status,) = ok_json(state, "status")
            assert (status["pid"], status["mountpoint"], status["state"]) == (mounted.pid, mnt, "ready")
            assert status["index"]["tracks"] == 3
            text = ok_text(state, "status", mnt)
            index = status["index"]
            assert mnt in text and "ready" in text and f"3 in {index['directories']} folders" in text
            assert "10.0 GB" in text and " kB" in text  # the cache's limit, the library's size

            tracks = mounted_tracks(mounted.mountpoint)
            for name, path in tracks.items():
                assert path.read_bytes() == files[name].read_bytes()

            # the cache: exact numbers in JSON, human units in the table
            deadline = time.monotonic() + 10
            while api.get("/v1/cache")["manifests"] < 3:  # the last fill saves its manifest just after
                assert time.monotonic() < deadline
                time.sleep(0.05)
            stats = ok_json(state, "cache", "stats")
            assert {k: stats[k] for k in ("bytes", "limit_bytes", "manifests", "chunks")} == \
                {k: api.get("/v1/cache")[k] for k in ("bytes", "limit_bytes", "manifests", "chunks")}
            assert stats["manifests"] == 3 and stats["limit_bytes"] == 10 * 10**9
            table = ok_text(state, "cache", "stats")
            assert "10.0 GB" in table and "hit rate" in table and " kB" in table
            dry = ok_json(state, "cache", "clear", "--dry-run")
            assert dry["dry_run"] and dry["manifests"] == 3 and dry["bytes_freed"] == 0
            assert api.get("/v1/cache")["manifests"] == 3
            assert "would clear 3 cached files" in ok_text(state, "cache", "clear", "--dry-run", "--origin",
                                                           "local")
            assert "cleared 3 cached files" in ok_text(state, "cache", "clear", "--origin", "local")
            assert api.get("/v1/cache")["manifests"] == 0
            refused(cli(state, "cache", "clear", "--tier", "metadata"), "400", "no cache tier 'metadata'")
            # a local origin's tags are read from it directly: its header tier stays empty
            assert "cleared 0 cached files" in ok_text(state, "cache", "clear", "--tier", "headers")
            assert api.get("/v1/cache")["tiers"]["headers"]["entries"] == 0

            # origins
            (origin,) = ok_json(state, "origin", "list")
            assert (origin["id"], origin["state"], origin["tracks"]) == ("local", "healthy", 3)
            listing = ok_text(state, "origin", "list")
            assert "local" in listing and "healthy" in listing and "ago" in listing
            health = ok_text(state, "origin", "health", "local", mnt)
            assert "healthy" in health and "probe latency" in health and " ms" in health
            refused(cli(state, "origin", "health", "nope"), "404", "no origin 'nope' (known: local)")

            # a rescan through the daemon: NDJSON progress, then a summary table
            write_wav(lib / "take3.wav", 256 * 1024, seed=3)
            result = cli(state, "origin", "rescan", "local", "--json")
            assert result.returncode == 0, result.stderr
            progress = [json.loads(line) for line in result.stdout.splitlines()]
            assert progress[-1]["phase"] == "complete" and progress[-1]["added"] == 1, progress
            assert "take3.wav" in mounted_tracks(mounted.mountpoint)
            summary = ok_text(state, "origin", "rescan", "local")
            assert "complete" in summary and "unchanged" in summary

            # `musicfs scan` of the mounted library asks its daemon instead of writing the index
            completed = api.get("/v1/status")["sync"]["completed"]
            scan = cli(state, "scan", "--origin", str(lib), "--index", str(mounted.index))
            assert scan.returncode == 0 and "serves this library" in scan.stderr, scan.stderr
            assert api.get("/v1/status")["sync"]["completed"] == completed + 1

            # a followed feed outlives a quiet spell, then shows what happens
            time.sleep(max(0.0, QUIET_FOR - (time.monotonic() - followed_since)))
            with open(tracks["take1.wav"], "rb") as f:
                f.read(10)
            line = follow_text.wait_for("take1.wav")
            assert "FileAccessed" in line and "local" in line and "kB" in line, line
            follow_json.wait_for('"path": "take1.wav"')
            documents = [json.loads(line) for line in follow_json.lines]
            assert {"type": "FileAdded", "path": "take3.wav"}.items() <= next(
                d for d in documents if d["type"] == "FileAdded").items()
            code, err = follow_text.interrupt()  # Ctrl-C: exit 0, quietly
            assert code == 0 and err == "", err
        finally:
            follow_text.kill()

        # shutdown: the daemon unmounts and exits; the feed still followed ends cleanly
        done = ok_json(state, "shutdown", "--drain-timeout", "2")
        assert done["unmounted"] is True and done["drain_timeout_ms"] == 2000 and done["mountpoint"] == mnt
        assert mounted.proc.wait(10) == 0 and not daemon.is_mounted(mounted.mountpoint)
        try:
            assert follow_json.proc.wait(10) == 0
            assert "the event feed ended" in follow_json.proc.stderr.read()
        finally:
            follow_json.kill()
        refused(cli(state, "status"), "no musicfs mount is running")
        inspected = subprocess.run([sys.executable, "-m", "musicfs.cli.inspect", "--state-dir", str(state),
                                    "index", "--index", str(mounted.index), "--json"],
                                   capture_output=True, text=True, timeout=60)
        assert inspected.returncode == 0 and json.loads(inspected.stdout)["tracks"] == 4, inspected.stderr
    assert "Traceback" not in mounted.log_text()


@pytest.mark.req("B2-7")
def test_no_daemon_or_two_daemons_and_no_mountpoint_is_one_clear_line(tmp_path):
    state = tmp_path / "work1" / "state"
    for command in (("status",), ("cache", "stats")):  # no daemon at all: one line, exit 2
        refused(cli(state, *command), "no musicfs mount is running")
    refused(cli(state, "events", str(tmp_path)), "no musicfs daemon serves", str(tmp_path))

    lib = tmp_path / "lib"
    takes(lib, 2, size=64 * 1024)
    second = tmp_path / "work2"
    second.mkdir()
    state.mkdir(parents=True)
    (second / "state").symlink_to(state, target_is_directory=True)  # both daemons: one state folder
    with mount_library(origin=lib, work=tmp_path / "work1") as one, \
            mount_library(origin=lib, work=second, index=tmp_path / "second.db") as two:
        mounts = [str(daemon.canonical(m.mountpoint)) for m in (one, two)]
        for command in (("cache", "stats"), ("origin", "rescan", "local"), ("events",), ("shutdown",)):
            line = refused(cli(state, *command), "several mounts are running; name one", *mounts)
            assert line.count(",") == 1
        assert one.alive() and two.alive()
        assert sorted(r["pid"] for r in ok_json(state, "status")) == sorted([one.pid, two.pid])
        (status,) = ok_json(state, "status", mounts[0])
        assert status["pid"] == one.pid
        assert ok_json(state, "shutdown", mounts[1])["unmounted"] is True
        assert two.proc.wait(10) == 0 and one.alive()
        assert ok_json(state, "origin", "list")[0]["tracks"] == 2  # one left: no MOUNTPOINT needed
