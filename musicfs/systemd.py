"""Running under systemd: readiness, status and watchdog notifications, and the user unit.

The notification protocol is one datagram per message to the Unix socket
named by ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in the abstract
namespace), newline-separated ``KEY=value`` lines. It is small enough that
libsystemd is not needed:

* ``READY=1`` once the mount *answers*: the kernel mount exists and a stat
  of its root, made by this daemon through the kernel, came back. Until
  then systemd holds units ordered after this one (a music player, say);
* ``STATUS=...`` with the mount's state (``systemctl status`` shows it);
* ``STOPPING=1`` as soon as an unmount is asked for (signal, API, umount);
* ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` while the trio loop runs,
  when that variable is set (and ``$WATCHDOG_PID``, if set, is this
  process). A loop stuck in a blocking call stops the pings, and systemd
  restarts the service, which is what ``WatchdogSec=`` is for.

Sending never blocks (a full socket drops the message, logged once) and
never fails the mount; without ``$NOTIFY_SOCKET`` nothing is sent at all.
:func:`unit_text` writes the user service that runs a mount this way.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import trio

from .lifecycle import Lifecycle

log = logging.getLogger(__name__)

STATUS_EVERY = 5.0  # seconds between state checks when no watchdog asks for more often


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        """``address``: the notify socket (None: not run by systemd, send nothing)."""
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.sent: list[str] = []  # the first field of each message sent, for status and tests
        self._sock: socket.socket | None = None
        self._failed = False
        self._ready = self._stopping = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """What systemd gave this process: the socket, and the watchdog period if it is ours."""
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one message; False when it could not be sent (logged once, never raised)."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode("utf-8", "replace"), target)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd on %s: %s (the service manager may not see this "
                            "daemon's state)", self.address, exc)
                self._failed = True
            return False
        self.sent.append(fields[0])
        return True

    def ready(self, status: str) -> None:
        if not self._ready:
            self._ready = True
            self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "unmounting") -> None:
        if not self._stopping:
            self._stopping = True
            self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run(self, lifecycle: Lifecycle, mountpoint: Path) -> None:
        """READY once the mount answers, then STATUS on each change and watchdog pings, STOPPING at the end.

        Started in the mount's nursery after the kernel mount exists; the mount
        answers (``lifecycle.answering``) once ``pyfuse3.main`` serves requests.
        """
        if not self.enabled:
            return
        self.notify("STATUS=mounting")
        async with trio.open_nursery() as nursery:  # the mount answers, or is stopped before it does
            async def first(waiting) -> None:
                await waiting()
                nursery.cancel_scope.cancel()
            nursery.start_soon(first, lifecycle.answering.wait)
            nursery.start_soon(first, lifecycle.wait_shutdown)
        if not lifecycle.answering.is_set():
            self.stopping("unmounting before the mount answered")
            return
        state = lifecycle.state
        self.ready(f"{state}: {mountpoint}")
        every = min(STATUS_EVERY, max(0.05, self.watchdog_usec / 2e6)) if self.watchdog_usec else STATUS_EVERY
        while True:
            if self.watchdog_usec:
                self.notify("WATCHDOG=1")
            with trio.move_on_after(every):
                request = await lifecycle.wait_shutdown()
                self.stopping(f"unmounting (asked by {request.reason})")
                return
            if lifecycle.state != state:
                state = lifecycle.state
                self.notify(f"STATUS={state}: {mountpoint}")


# -- the user service unit ------------------------------------------------------------------------

_UNIT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def unit_name_ok(name: str) -> bool:
    return bool(_UNIT_NAME.match(name))


def quote(arg: str) -> str:
    """One argument of an ``Exec*=`` line, as systemd reads it (quotes, specifiers, variables)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./$-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def musicfs_program() -> list[str]:
    """This installation's ``musicfs`` command, by absolute path (its venv's script, or its python -m)."""
    script = Path(sys.executable).with_name("musicfs")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "musicfs.cli.main"]


def mount_unit(name: str, *, state_dir: Path, library: list[str], index: Path, cache_dir: Path,
               mountpoint: Path, watchdog_sec: int = 30) -> str:
    """The user service for one mount; ``library`` is ``["--config", FILE]`` or ``["--origin", DIR]``.

    Every location is resolved now and written out (state, index, cache), so
    the service uses the same files as the commands a user types, without
    reading ``$HOME`` or ``$PATH`` to find them.
    """
    program = musicfs_program()
    common = [*program, "--state-dir", str(state_dir)]
    start = [*common, "mount", "--foreground", *library, "--index", str(index), "--cache-dir", str(cache_dir),
             str(mountpoint)]
    return unit_text(name, start=start, stop=[*common, "umount", str(mountpoint)], mountpoint=mountpoint,
                     watchdog_sec=watchdog_sec)


def unit_text(name: str, *, start: list[str], stop: list[str], mountpoint: Path, watchdog_sec: int = 30) -> str:
    """A user service that mounts with ``start`` (a foreground mount) and unmounts with ``stop``.

    Every path in the commands is absolute and every location is given on
    the command line, so the service depends neither on ``$PATH`` nor on
    ``$HOME``. ``Type=notify``: the unit is active once the mount answers.
    """
    where = str(mountpoint).replace("%", "%%")
    return f"""\
# musicfs user service "{name}": keeps {mountpoint} mounted.
# Install:  save as ~/.config/systemd/user/musicfs-{name}.service, then
#           systemctl --user daemon-reload && systemctl --user enable --now musicfs-{name}
# Logs:     journalctl --user -u musicfs-{name}
# Paths below were resolved when this was printed: print it again after moving the index or cache.

[Unit]
Description=musicfs: music library mounted at {where}

[Service]
Type=notify
NotifyAccess=main
ExecStart={" ".join(quote(a) for a in start)}
# a clean unmount: the daemon stops serving, unmounts and exits (nothing to do if it already has)
ExecStop=-{" ".join(quote(a) for a in stop)}
# a first mount scans the library before it is ready, which can take long on a large one
TimeoutStartSec=30min
TimeoutStopSec=30s
WatchdogSec={watchdog_sec}s
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=default.target
"""


def manager_unit(*, state_dir: Path) -> str:
    """The user service for the manager (:mod:`musicfs.manager`): ``musicfs mount`` and
    ``musicfs mount --all`` then hand their mounts to it.

    ``KillMode=mixed``: on stop, SIGTERM goes to the manager alone, which unmounts its
    mounts one by one and waits for them; only what is left after ``TimeoutStopSec`` is
    killed. ``NotifyAccess=main``: the mounts it starts are not the service's voice.
    """
    program = [*musicfs_program(), "--state-dir", str(state_dir)]
    return f"""\
# musicfs manager: starts the mounts that `musicfs mount` hands it, each in a process of its own.
# Install:  save as ~/.config/systemd/user/musicfs-manager.service, then
#           systemctl --user daemon-reload && systemctl --user enable --now musicfs-manager
# Logs:     journalctl --user -u musicfs-manager (each mount keeps its own log, see musicfs manager status)

[Unit]
Description=musicfs manager: mounts music libraries

[Service]
Type=notify
NotifyAccess=main
ExecStart={" ".join(quote(a) for a in [*program, "manager", "run"])}
# once it is ready: every library file's library (libraries/<name>.toml with [library] mountpoint)
ExecStartPost=-{" ".join(quote(a) for a in [*program, "mount", "--all"])}
KillMode=mixed
TimeoutStopSec=60s
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=default.target
"""
