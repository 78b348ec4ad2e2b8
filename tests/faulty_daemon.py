"""Run the real ``musicfs`` command with a fault injected into one component, for real-mount checks
of what a bug does to a running daemon (FAULT-40) and of what a failing origin leaves in a
traceback (FAULT-34).

    python -m tests.faulty_daemon --fault lookup=NAME [--fault ...] -- <musicfs arguments>

Faults (each may be given several times):

* ``lookup=NAME``: the tree resolver raises ``ValueError`` when asked for a name ``NAME``
  (a bug in name resolution: the kernel's LOOKUP request for that name must get EIO).
* ``read=REAL_PATH``: the cached reader raises ``ValueError`` for every read of the track whose
  path in its origin is ``REAL_PATH`` (a bug on the data path: READ must get EIO).
* ``origin=KIND``: every failure of a ``KIND`` origin's ranged read (``s3``, ``sftp``) escapes as
  a ``RuntimeError`` chained to the origin's own error, as an unforeseen bug in error handling
  would; whatever logs it prints a traceback holding the origin's error messages.

Everything else is the normal entry point (:func:`musicfs.cli.main.main`), so the process is a
real daemon: real FUSE, real origins, real logging.
"""

from __future__ import annotations

import argparse
import functools
import sys


class InjectedFault(ValueError):
    """Raised where a fault was injected; the name makes it easy to find in a log."""


def _break_lookup(names: set[str]) -> None:
    from musicfs.vfs.resolver import Resolver

    original = Resolver.lookup

    @functools.wraps(original)
    def lookup(self, parent, name, *args, **kwargs):
        if name in names:
            raise InjectedFault(f"injected fault: lookup of {name!r}")
        return original(self, parent, name, *args, **kwargs)

    Resolver.lookup = lookup


def _break_read(paths: set[str]) -> None:
    from musicfs.store.reader import CachedReader

    original = CachedReader.read

    @functools.wraps(original)
    async def read(self, handle, offset, size):
        if handle.state.real_path in paths:
            raise InjectedFault(f"injected fault: read of {handle.state.real_path!r} at {offset}")
        return await original(self, handle, offset, size)

    CachedReader.read = read


def _break_origin(kinds: set[str]) -> None:
    from musicfs.origins.base import kind_class

    for kind in kinds:
        cls = kind_class(kind)
        original = cls.read_range

        def read_range(self, path, offset, size, _original=original):
            try:
                return _original(self, path, offset, size)
            except Exception as exc:
                raise RuntimeError(f"injected fault: {self.kind} read of {path!r} failed") from exc

        cls.read_range = functools.wraps(original)(read_range)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faulty_daemon")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=ARG")
    parser.add_argument("musicfs", nargs=argparse.REMAINDER, help="-- then the musicfs arguments")
    args = parser.parse_args(argv)
    wanted: dict[str, set[str]] = {"lookup": set(), "read": set(), "origin": set()}
    for fault in args.fault:
        kind, _, value = fault.partition("=")
        if kind not in wanted or not value:
            parser.error(f"unknown fault {fault!r} (lookup=NAME, read=REAL_PATH, origin=KIND)")
        wanted[kind].add(value)
    if wanted["lookup"]:
        _break_lookup(wanted["lookup"])
    if wanted["read"]:
        _break_read(wanted["read"])
    if wanted["origin"]:
        _break_origin(wanted["origin"])
    rest = args.musicfs[1:] if args.musicfs[:1] == ["--"] else args.musicfs

    from musicfs.cli.main import main as musicfs_main

    return musicfs_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
