"""The systemd user service (PH-4.3): the unit ``musicfs systemd-unit`` prints, run the way systemd runs it.

There is no service manager in the test: the test plays its part. It binds
a notification socket of its own, starts the unit's ``ExecStart`` with
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set, reads the datagrams, and at the
moment ``READY=1`` arrives checks that the mount answers; then it runs the
unit's ``ExecStop`` (which sends SIGTERM) and expects ``STOPPING=1`` and a
clean unmount. ``systemd-analyze verify`` checks the unit itself where that
command exists (the Makefile installs systemd's tools).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from musicfs import daemon
from musicfs.control.client import ControlClient
from tests.harness import MountedLibrary, musicfs_cmd, unmount

WATCHDOG_USEC = 2_000_000  # pings every second


def make_unit(tmp_path: Path, origin: Path) -> tuple[str, Path]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    out = subprocess.run(musicfs_cmd("--state-dir", str(tmp_path / "state"), "systemd-unit", "library",
                                     "--origin", str(origin), "--cache-dir", str(tmp_path / "cache"),
                                     str(mountpoint)),
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout, mountpoint


def directive(unit: str, key: str) -> str:
    (value,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]
    return value


@pytest.mark.req("PH-4.3")
def test_unit_is_a_notify_service_with_absolute_paths(sample_library, tmp_path):
    unit, mountpoint = make_unit(tmp_path, sample_library[0])
    assert directive(unit, "Type") == "notify" and directive(unit, "NotifyAccess") == "main"
    assert directive(unit, "Restart") == "on-failure" and directive(unit, "WatchdogSec") == "30s"
    start = shlex.split(directive(unit, "ExecStart"))
    stop = shlex.split(directive(unit, "ExecStop").removeprefix("-"))
    for command in (start, stop):
        assert Path(command[0]).is_absolute() and os.access(command[0], os.X_OK)
        assert all(Path(arg).is_absolute() for arg in command if "/" in arg), command
    assert "--foreground" in start and start[-1] == str(mountpoint)
    assert stop[-2:] == ["umount", str(mountpoint)]
    for where in ("--state-dir", "--index", "--cache-dir"):  # every location given: no $HOME lookups
        assert where in start
    settings = "\n".join(line for line in unit.splitlines() if not line.startswith("#"))
    assert "$" not in settings.replace("$$", "") and "~" not in settings and "%h" not in settings


@pytest.mark.req("PH-4.3")
def test_unit_passes_systemd_analyze_verify(sample_library, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (make setup installs systemd's tools)")
    unit, _ = make_unit(tmp_path, sample_library[0])
    path = tmp_path / "musicfs-library.service"
    path.write_text(unit)
    runtime = tmp_path / "runtime"  # a user manager's runtime dir; verify needs one, nothing runs there
    runtime.mkdir(mode=0o700)
    result = subprocess.run(["systemd-analyze", "--user", "verify", str(path)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    broken = tmp_path / "musicfs-broken.service"  # the check can fail: a unit whose program is missing
    broken.write_text(unit.replace(f"ExecStart={shlex.split(directive(unit, 'ExecStart'))[0]}",
                                   "ExecStart=/nonexistent/musicfs"))
    result = subprocess.run(["systemd-analyze", "--user", "verify", str(broken)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode != 0 and "/nonexistent/musicfs" in result.stderr


class Notifications:
    """The test's side of ``$NOTIFY_SOCKET``: every datagram, with when it arrived."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, list[str]]] = []

    def next(self, timeout: float) -> list[str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            fields = self.sock.recv(4096).decode().split("\n")
        except TimeoutError:
            return None
        self.received.append((time.monotonic(), fields))
        return fields

    def until(self, field: str, timeout: float, proc: subprocess.Popen) -> float:
        """Read until a message holds ``field``; when it arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.next(min(0.5, deadline - time.monotonic()))
            if fields is not None and field in fields:
                return self.received[-1][0]
            if fields is None and proc.poll() is not None:
                raise AssertionError(f"musicfs exited with {proc.returncode} before {field}")
        raise AssertionError(f"no {field} within {timeout} s; got {[f for _, f in self.received]}")

    def firsts(self) -> list[str]:
        return [fields[0] for _, fields in self.received]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.req("PH-4.3")
def test_notify_ready_once_mounted_watchdog_then_stopping(sample_library, tmp_path):
    unit, mountpoint = make_unit(tmp_path, sample_library[0])
    start = shlex.split(directive(unit, "ExecStart"))
    stop = shlex.split(directive(unit, "ExecStop").removeprefix("-"))
    state = Path(start[start.index("--state-dir") + 1])
    notes = Notifications(tmp_path / "notify.sock")
    log = tmp_path / "daemon.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(start, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "NOTIFY_SOCKET": str(notes.path),
                                     "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    mounted = MountedLibrary(mountpoint, state, Path(start[start.index("--index") + 1]),
                             Path(start[start.index("--cache-dir") + 1]), sample_library[0], proc, log)
    try:
        notes.until("READY=1", 120, proc)
        # the moment READY arrives, the mount answers: the kernel mount is there, its root is musicfs'
        assert daemon.is_mounted(mountpoint)
        assert os.stat(mountpoint).st_dev != os.stat(mountpoint.parent).st_dev and os.listdir(mountpoint)
        with ControlClient.for_mount(state, mountpoint) as api:
            assert api.get("/v1/status")["state"] == "ready"
        (ready,) = [fields for _, fields in notes.received if "READY=1" in fields]
        assert any(f.startswith("STATUS=ready") for f in ready), ready
        assert "WATCHDOG=1" not in notes.firsts()[:-1]  # nothing pinged before it was ready

        # watchdog pings, at least every WATCHDOG_USEC (systemd's limit), while the loop runs; timed
        # from a window in which the test does nothing but wait for them (so arrival = reading)
        while notes.next(0.001) is not None:
            pass
        window = time.monotonic()
        while time.monotonic() < window + 4.5:
            notes.next(window + 4.5 - time.monotonic())
        pings = [at for at, fields in notes.received if fields == ["WATCHDOG=1"] and at > window]
        assert len(pings) >= 3, notes.firsts()
        assert max(b - a for a, b in zip(pings, pings[1:])) < WATCHDOG_USEC / 1e6

        # ExecStop: SIGTERM to the daemon; it says STOPPING, unmounts and leaves cleanly
        stopped = subprocess.run(stop, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(30) == 0
        while notes.next(0.2) is not None:
            pass
        firsts = notes.firsts()
        assert "STOPPING=1" in firsts and firsts.count("READY=1") == 1
        assert firsts.index("STOPPING=1") > firsts.index("READY=1")
        assert not daemon.is_mounted(mountpoint)
        assert "Traceback" not in mounted.log_text()
    finally:
        unmount(mounted)
        notes.close()
