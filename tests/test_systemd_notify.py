"""The systemd notification protocol and unit quoting, against real sockets (no mount needed).

The real-mount check, with the daemon started from the unit, is
conformance/test_systemd.py; these cover what it does not reach: abstract
socket names, a watchdog meant for another process, no watchdog at all, a
socket nobody listens on, and arguments systemd would otherwise mangle.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import uuid

import trio

from musicfs.lifecycle import Lifecycle
from musicfs.systemd import Notifier, quote


def abstract_listener() -> tuple[socket.socket, str]:
    name = f"musicfs-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    return sock, "@" + name


def test_abstract_socket_and_watchdog_only_for_this_process():
    sock, address = abstract_listener()
    with sock:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000",
                                              "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_usec == 3_000_000
        assert notifier.notify("STATUS=hello", "X=1")
        assert sock.recv(100) == b"STATUS=hello\nX=1"
        notifier.close()
    other = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000",
                                       "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.enabled and other.watchdog_usec is None  # the watchdog is another process's
    assert Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "soon"}).watchdog_usec is None
    idle = Notifier.from_environment({})
    assert not idle.enabled and idle.notify("READY=1") is False and idle.sent == []


def test_without_watchdog_ready_then_stopping_and_no_pings(tmp_path):
    sock, address = abstract_listener()
    lifecycle = Lifecycle()
    lifecycle.mounted()
    lifecycle.answering.set()  # what the mount does once its own stat comes back
    notifier = Notifier(address, None)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier.run, lifecycle, tmp_path)
            await trio.sleep(0.3)
            lifecycle.request_shutdown(reason="api")

    with sock:
        trio.run(main)
        notifier.stopping()  # the mount's own call at the end: sent once only
        messages = []
        sock.settimeout(0.2)
        while True:
            try:
                messages.append(sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                break
    assert [m[0] for m in messages] == ["STATUS=mounting", "READY=1", "STOPPING=1"]
    assert messages[1][1] == f"STATUS=ready: {tmp_path}"
    assert messages[2][1] == "STATUS=unmounting (asked by api)"


def test_a_socket_nobody_listens_on_costs_one_warning(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone.sock"), 1_000_000)
    with caplog.at_level(logging.WARNING, logger="musicfs.systemd"):
        assert notifier.notify("READY=1") is False
        assert notifier.notify("WATCHDOG=1") is False
    assert len(caplog.records) == 1 and "cannot notify systemd" in caplog.records[0].getMessage()


def test_exec_arguments_survive_systemd_quoting():
    assert quote("/srv/music/a.flac") == "/srv/music/a.flac"
    assert quote("/mnt/My Music") == '"/mnt/My Music"'
    assert quote("/mnt/100%") == "/mnt/100%%"  # % starts a specifier
    assert quote("/mnt/$HOME") == "/mnt/$$HOME"  # $ starts a variable
    assert quote('/mnt/say "hi"\\') == '"/mnt/say \\"hi\\"\\\\"'
    # what systemd unquotes (like a shell, for these) is the argument itself, once %% and $$ are undone
    for arg in ("/mnt/My Music", '/mnt/say "hi"\\', "/plain"):
        (back,) = shlex.split(quote(arg))
        assert back == arg
