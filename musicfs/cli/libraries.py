"""Libraries in one place: ``$XDG_CONFIG_HOME/musicfs/libraries/<name>.toml``, one library each.

Each file is an ordinary config plus ``mountpoint`` in its ``[library]`` table.
``musicfs mount --all`` mounts every one (each by its own daemon, as ``musicfs mount`` does),
``musicfs umount --all`` unmounts them, ``musicfs library list`` shows them with their state. A
file that cannot be read or used is said with its line and reason, and the others go on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import daemon
from ..dirs import libraries_dir, state_home
from ..errors import ConfigError, MusicFSError
from .common import console, err_console, print_json

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class Library:
    name: str  # the file's name without .toml
    file: Path
    config: Config | None = None
    problem: str | None = None  # why the file cannot be used

    @property
    def mountpoint(self) -> Path | None:
        return self.config.mountpoint if self.config is not None else None


def libraries() -> list[Library]:
    """Every library file, in name order, read; a bad one carries its problem instead of a config."""
    from ..config import load_config  # here: only the commands about library files read them

    found = []
    for file in sorted(libraries_dir().glob("*.toml")):
        library = Library(file.stem, file)
        try:
            library.config = load_config(file)
            if library.config.mountpoint is None:
                library.problem = f"{file}: [library] needs mountpoint = \"...\" to be mounted with --all"
        except ConfigError as exc:
            library.problem = str(exc)
        found.append(library)
    return found


def add_commands(sub: argparse._SubParsersAction) -> None:
    library = sub.add_parser("library", help="the library files (libraries/<name>.toml under the config "
                                             "directory)").add_subparsers(dest="library_command", required=True)
    listing = library.add_parser("list", help="every library file: its mountpoint and whether it is mounted")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(func=cmd_library_list)


def _state(library: Library, state: Path) -> str:
    if library.problem is not None:
        return "unusable"
    files = daemon.RunFiles.for_mountpoint(state, daemon.canonical(library.mountpoint))
    info = daemon.read_pidfile(files)
    return f"mounted (pid {info['pid']})" if info and daemon.is_mounted(library.mountpoint) else "not mounted"


def cmd_library_list(args: argparse.Namespace) -> int:
    state = args.state_dir or state_home()
    listed = [{"name": lib.name, "file": str(lib.file), "mountpoint": str(lib.mountpoint or ""),
               "state": _state(lib, state), "problem": lib.problem} for lib in libraries()]
    if args.json:
        print_json(listed)
        return 0
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"libraries in {libraries_dir()}")
    for column in ("name", "mountpoint", "state"):
        table.add_column(column, overflow="fold")
    for item in listed:
        table.add_row(Text(item["name"]), Text(item["mountpoint"]), Text(item["problem"] or item["state"]))
    console.print(table)
    return 0


def _say(text: str, where=err_console) -> None:
    """One line as it is: never wrapped, never read as markup (paths may hold "[")."""
    where.print(text, markup=False, highlight=False, soft_wrap=True)


def mount_all(args: argparse.Namespace, mount: Callable[[argparse.Namespace], int]) -> int:
    """Mount every library file's library that is not mounted yet with ``mount`` (``musicfs mount``'s
    own command: the one mount path); 1 if one could not be."""
    found = libraries()
    if not found:
        _say(f"musicfs: no library files in {libraries_dir()} (one <name>.toml each, with [library] mountpoint)")
        return 1
    failed = 0
    pending: list[Callable[[], int]] = []  # mounts handed to the manager, waited for together
    waiting: list[str] = []  # the library of each
    for library in found:
        if library.problem is not None:
            _say(f"musicfs: library {library.name}: {library.problem}")
            failed += 1
            continue
        mountpoint = daemon.canonical(library.mountpoint)
        if daemon.is_mounted(mountpoint):
            _say(f"{library.name}: {mountpoint} is mounted already", console)
            continue
        mountpoint.mkdir(parents=True, exist_ok=True)
        one = argparse.Namespace(**{**vars(args), "config": library.file, "origin": None, "index": None,
                                    "mountpoint": mountpoint, "foreground": False, "cache_dir": None,
                                    "debug_fuse": False, "all_libraries": False, "pending": pending,
                                    "library_name": library.name})
        try:
            mount(one)
        except MusicFSError as exc:  # this library only: the others still mount
            _say(f"musicfs: library {library.name}: {exc}")
            failed += 1
        waiting += [library.name] * (len(pending) - len(waiting))
    for name, mounted in zip(waiting, pending):
        try:
            mounted()
        except MusicFSError as exc:
            _say(f"musicfs: library {name}: {exc}")
            failed += 1
    return 1 if failed else 0


def umount_all(args: argparse.Namespace) -> int:
    state = args.state_dir or state_home()
    for library in libraries():
        if library.mountpoint is None:
            continue
        mountpoint = daemon.canonical(library.mountpoint)
        if daemon.is_mounted(mountpoint):
            _say(f"{library.name}: " + daemon.stop(daemon.RunFiles.for_mountpoint(state, mountpoint), mountpoint),
                 console)
    return 0
