"""``musicfs manager start|stop|status|run|unit``: the process that mounts libraries fast.

While a manager runs for a state directory, ``musicfs mount`` (and ``mount --all``)
hand their mounts to it (:mod:`musicfs.manager`): the mount starts in a forked
child that already has every module imported. Without one, mounting works as it
always did.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import daemon
from ..control.locate import ControlError
from ..dirs import make_private, state_home
from .common import console, print_json

if TYPE_CHECKING:
    from ..control.manager_client import ManagerClient

START_TIMEOUT = 30.0  # seconds for a manager to answer once started
STOP_TIMEOUT = 75.0  # it gives each mount 15 s to unmount


def add_commands(sub: argparse._SubParsersAction, child_main: Callable[[list[str]], int],
                 prepare: Callable[[], None] = lambda: None) -> None:
    """``prepare`` runs in the manager before it serves: what every mount child would otherwise
    do for itself after the fork (building the ``mount`` command's parser)."""
    manager = sub.add_parser("manager", help="the manager that starts mounts fast (each in a process of its "
                                             "own)").add_subparsers(dest="manager_command", required=True)
    start = manager.add_parser("start", help="start the manager in the background; return once it answers")
    start.set_defaults(func=cmd_start)
    stop = manager.add_parser("stop", help="unmount the manager's mounts and stop it")
    stop.set_defaults(func=cmd_stop)
    status = manager.add_parser("status", help="the manager and the mounts it started (exit 1: none runs)")
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(func=cmd_status)
    run = manager.add_parser("run", help="be the manager in the foreground (for a systemd user service)")
    run.set_defaults(func=lambda args: cmd_run(args, child_main, prepare))
    unit = manager.add_parser("unit", help="print a systemd user service that runs the manager")
    unit.set_defaults(func=cmd_unit)


def _state(args: argparse.Namespace) -> Path:
    return (args.state_dir or state_home()).expanduser().absolute()


def _log(state: Path) -> Path:
    return state / "log" / "manager.log"


def cmd_run(args: argparse.Namespace, child_main: Callable[[list[str]], int],
            prepare: Callable[[], None] = lambda: None) -> int:
    from ..control.manager_client import manager_socket
    from ..manager import serve
    from ..systemd import Notifier

    state = _state(args)
    socket = manager_socket(state)
    notifier = Notifier.from_environment()
    prepare()
    try:
        serve(state, socket, child_main, on_ready=lambda: notifier.ready(f"serving on {socket}"))
    finally:
        notifier.close()
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from ..control.manager_client import ManagerClient, manager_socket

    state = _state(args)
    running = ManagerClient.running(state)
    if running is not None:
        with running:
            pid = running.status()["statistics"]["pid"]
        console.print(f"the musicfs manager runs already (pid {pid})")
        return 0
    log = _log(state)
    make_private(log.parent)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "musicfs.cli.main", "--state-dir", str(state),
                                 *(["-v"] * args.verbose), "manager", "run"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        client = ManagerClient.running(state)
        if client is not None:
            client.close()
            console.print(f"musicfs manager pid {proc.pid} (socket {manager_socket(state)}, log {log})")
            return 0
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise daemon.DaemonError("the manager exited before it answered:\n  " + "\n  ".join(tail))
        time.sleep(0.02)
    proc.terminate()
    raise daemon.DaemonError(f"the manager did not answer within {START_TIMEOUT:.0f} s; see {log}")


def cmd_stop(args: argparse.Namespace) -> int:
    from ..control.manager_client import ManagerClient

    client = ManagerClient.running(_state(args))
    if client is None:
        raise ControlError("no musicfs manager is running")
    with client:
        pid = client.status()["statistics"]["pid"]
        answer = client.shutdown()
    deadline = time.monotonic() + STOP_TIMEOUT
    while daemon.is_alive(pid):
        if time.monotonic() > deadline:
            raise daemon.DaemonError(f"the manager (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s")
        time.sleep(0.05)
    console.print(f"stopped the musicfs manager (pid {pid}) and its {answer['mounts']} mount(s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..control.manager_client import ManagerClient

    client = ManagerClient.running(_state(args))
    if client is None:
        if args.json:
            print_json({"running": False})
        else:
            console.print("no musicfs manager is running")
        return 1
    with client:
        report = client.status()
    if args.json:
        print_json({"running": True, **report})
        return 0
    from rich.table import Table
    from rich.text import Text

    stats = report["statistics"]
    table = Table(title=f"musicfs manager pid {stats['pid']}, up {stats['uptime_seconds']:.0f} s: "
                        f"{stats['running']} running, {stats['died']} died, {stats['restarted']} restarted")
    for column in ("library", "mountpoint", "pid", "state", "restarts", "log"):
        table.add_column(column, overflow="fold")
    for mount in report["mounts"]:
        state = mount["state"] + (f" ({mount['exit']})" if mount["exit"] else "")
        table.add_row(Text(mount["name"] or "-"), Text(mount["mountpoint"]), str(mount["pid"]), state,
                      str(mount["restarts"]), Text(mount["log"]))
    console.print(table)
    for module, error in stats["preload_failed"].items():
        console.print(Text(f"not preloaded: {module}: {error}"))
    return 0


def cmd_unit(args: argparse.Namespace) -> int:
    from ..systemd import manager_unit

    sys.stdout.write(manager_unit(state_dir=_state(args)))
    return 0


def hand_over(client: ManagerClient, *, argv: list[str], mountpoint: Path, files: daemon.RunFiles,
              name: str, restart: bool) -> Callable[[], int]:
    """Ask the manager to start the foreground mount ``argv``; what waits for it to mount.

    The environment and working directory go with the request: the mount sees what the
    user's shell gave this command (credentials of an S3 origin, say), not the manager's.
    """
    child = client.mount({"argv": argv, "mountpoint": str(mountpoint), "log": str(files.log),
                          "cwd": os.getcwd(), "env": dict(os.environ), "name": name, "restart": restart})
    pid = child["pid"]

    def mounted() -> int:
        daemon.wait_mounted(pid, files, mountpoint, poll=0.002)
        sys.stdout.write(f"musicfs pid {pid} mounted {mountpoint} (by the manager; log: {files.log})\n")
        return pid
    return mounted
