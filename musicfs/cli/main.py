"""``musicfs``: scan a library, mount it, and talk to a running daemon."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import NoReturn

from .. import daemon
from ..control.locate import mounts_of_index
from ..control.sockets import socket_path
from ..dirs import state_home
from ..errors import ConfigError, MusicFSError
from . import catalog, control, libraries, manager, plugins, search
from .common import (
    add_library_options,
    console,
    err_console,
    index_path,
    print_json,
    resolve_config,
    setup_logging,
)

log = logging.getLogger("musicfs.cli")  # not __name__: run as -m, that is "__main__"


class _Skipped:
    """Stands in for the parser of a command not invoked: takes every call, builds nothing.

    argparse builds each parser eagerly (~0.2 ms each, 35 of them); a command needs its own
    only, and ~6 ms of every command's ~80 went into building the others (CLI-1, MM-2)."""

    def __getattr__(self, name: str):
        return self._take

    def _take(self, *args, **kwargs) -> _Skipped:
        return self


class _OnlyCommand:
    """The top-level subcommands, built only for ``command`` (under its name or an alias)."""

    def __init__(self, sub: argparse._SubParsersAction, command: str):
        self._sub, self._command, self.found = sub, command, False

    def add_parser(self, name: str, **kwargs):
        if self._command != name and self._command not in kwargs.get("aliases", ()):
            return _Skipped()
        self.found = True
        return self._sub.add_parser(name, **kwargs)


def _command_in(argv: list[str]) -> str | None:
    """The subcommand ``argv`` invokes, read past the global options; None for help or none."""
    words = iter(argv)
    for word in words:
        if word == "--state-dir":
            next(words, None)
        elif word in ("-h", "--help", "--"):
            return None
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command``, only that subcommand's (an unknown one gets
    them all, for argparse's error)."""
    return (command is not None and _build(command)) or _build(None)


@functools.cache
def _build(command: str | None) -> argparse.ArgumentParser | None:
    """Built once per command a process: the manager's mount children parse with the manager's."""
    parser = argparse.ArgumentParser(prog="musicfs", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where indexes, pid and log files live (default {state_home()})")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = every = parser.add_subparsers(dest="command", required=True)
    if command is not None:
        sub = _OnlyCommand(every, command)
    scan = sub.add_parser("scan", help="index a library's tags and build its virtual tree")
    add_library_options(scan)
    _add_verbose(scan)
    scan.add_argument("--json", action="store_true", help="print the report as JSON")
    scan.add_argument("--batch-size", type=int, default=200, help=argparse.SUPPRESS)
    scan.set_defaults(func=cmd_scan)

    mount = sub.add_parser("mount", help="mount a library (scanning it first if it has no index)")
    add_library_options(mount)
    _add_verbose(mount)
    mount.add_argument("mountpoint", type=Path, nargs="?")
    mount.add_argument("--all", action="store_true", dest="all_libraries",
                       help="mount every library file's library (libraries/<name>.toml under the config directory)")
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    mount.add_argument("--rescan", action="store_true", help="scan for changes before mounting")
    mount.add_argument("--cache-dir", type=Path, help="content cache directory (overrides the config)")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users read the mount too (the kernel then enforces its modes)")
    mount.add_argument("--no-prefetch", action="store_true",
                       help="fetch nothing ahead of a listener (overrides [prefetch] enabled)")
    mount.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)
    mount.set_defaults(func=cmd_mount)

    umount = sub.add_parser("umount", help="unmount a musicfs mount and stop its daemon")
    umount.add_argument("mountpoint", type=Path, nargs="?")
    umount.add_argument("--all", action="store_true", dest="all_libraries",
                        help="unmount every library file's library that is mounted")
    umount.set_defaults(func=cmd_umount)

    control.add_commands(sub)  # status, cache, origin, events, shutdown: through a mount's control API
    search.add_commands(sub)  # search, collection: through the mount's API, else on the index file
    plugins.add_commands(sub)  # the origin kinds installed, and whether each loads
    libraries.add_commands(sub)  # library list: the library files and their state
    catalog.add_commands(sub)  # publish, catalog status: one scan, every machine
    # its mount children run this module's main, with the mount parser the manager built
    manager.add_commands(sub, lambda argv: main(argv), prepare=lambda: build_parser("mount"))

    unit = sub.add_parser("systemd-unit", help="print a systemd user service that keeps a mount mounted")
    unit.add_argument("name", help="the service's name (install it as musicfs-NAME.service)")
    add_library_options(unit)
    unit.add_argument("--cache-dir", type=Path, help="content cache directory (overrides the config)")
    unit.add_argument("mountpoint", type=Path)
    unit.set_defaults(func=cmd_systemd_unit)
    if isinstance(sub, _OnlyCommand) and not sub.found:
        return None
    return parser


def probe(origin) -> str | None:
    """Why ``origin`` does not answer a health probe now, or None when it does.

    Any failure means "not reachable now" (a mount goes ahead on its cache), but
    one that is not an origin error is a bug somewhere below: it is logged with
    its traceback instead of ending the command.
    """
    try:
        origin.health()
    except (MusicFSError, OSError) as exc:
        return str(exc)
    except Exception as exc:  # the point: an unforeseen failure must not stop a mount; logged in full
        log.exception("origin %s: the health probe failed unexpectedly", origin.id)
        return f"unexpected {type(exc).__name__}"
    return None


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the command too (``musicfs mount -v ...``); SUPPRESS keeps a ``-v`` given before it."""
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log lines (-vv: debug)")


def run_scans(config, path: Path, *, show_progress: bool, batch_size: int = 200,
              cache_dir: Path | None = None) -> list:
    """Scan every origin of ``config`` into the index at ``path``; with ``cache_dir`` (whose lock
    the caller holds), what is read for tags is kept in that cache's header tier."""
    with contextlib.ExitStack() as stack:
        sinks: dict = {}
        artwork = None
        if cache_dir is not None:
            from ..store.artwork import ArtShelf
            from ..store.cache import ContentCache
            from ..store.delta import DeltaSync, ScanKeeper
            from ..store.headers import HeaderTier

            cache = ContentCache(cache_dir, config.cache_size, lambda *events: None)
            stack.callback(cache.close)
            sinks = ScanKeeper(HeaderTier(cache, config.header_limit), DeltaSync(cache)).sinks(
                config.header_origins())
            artwork = ArtShelf(cache, config.artwork_limit)
        return _scan_origins(config, path, show_progress, batch_size, sinks, artwork)


def _scan_origins(config, path: Path, show_progress: bool, batch_size: int, sinks: dict, artwork) -> list:
    # imported here: a mount of an existing index needs neither mutagen nor progress bars
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..index.library import LibraryIndex
    from ..index.scanner import Scanner, ScanReport
    from ..origins.base import create

    reports = []
    metadata = config.metadata_source()  # tags from a metadata plugin instead of the files' (or None)
    with LibraryIndex(path) as index, contextlib.closing(metadata) if metadata else contextlib.nullcontext():
        for origin_cfg in config.origins:
            origin = create(origin_cfg.id, origin_cfg.type, origin_cfg.options)
            problem = probe(origin)
            if problem is not None:
                err_console.print(f"[yellow]origin {origin.id} is not reachable ({problem}); not scanned")
                origin.close()
                continue
            with Progress(TextColumn("[bold]scanning {task.fields[origin]}"), BarColumn(),
                          TextColumn("{task.completed} files"), TimeElapsedColumn(),
                          console=err_console.rich, disable=not show_progress, transient=True) as bar:
                task = bar.add_task("scan", total=None, origin=origin.id)

                def progress(report: ScanReport, current: str | None, task=task) -> None:
                    bar.update(task, completed=report.seen)

                scanner = Scanner(index, origin, config.path_template(), workers=config.scan_workers,
                                  batch_size=batch_size, progress=progress, headers=sinks.get(origin.id),
                                  artwork=artwork, metadata=metadata)
                try:
                    reports.append(scanner.run())
                finally:
                    origin.close()
    return reports


def _publish_after_scan(config, path: Path) -> None:
    """``[catalog] publish = true``: a scan is followed by a publish (said on stderr)."""
    from ..catalog.publish import publish
    from ..origins.base import create

    origin_cfg = next(o for o in config.origins if o.id == config.catalog.origin)
    origin = create(origin_cfg.id, origin_cfg.type, origin_cfg.options)
    try:
        report = publish(path, origin, config.catalog, config.library_name())
    finally:
        origin.close()
    err_console.print(f"published the catalog: {report.pointer.tracks} tracks, snapshot {report.pointer.hash[:12]}"
                      f" ({'uploaded' if report.uploaded else 'the same as before'})", markup=False, highlight=False)


def render_report(report, skipped: list) -> None:
    from rich.table import Table

    table = Table(title=f"scan of origin {report.origin_id!r} ({report.seconds:.2f} s)")
    table.add_column("result")
    table.add_column("files", justify="right")
    for label, value in (("indexed (new)", report.added), ("updated", report.updated),
                         ("unchanged", report.unchanged), ("removed", report.removed),
                         ("skipped (malformed)", report.skipped), ("not audio (ignored)", report.ignored)):
        table.add_row(label, str(value))
    console.print(table)
    if skipped:
        why = Table(title="skipped files")
        why.add_column("file")
        why.add_column("reason")
        why.add_column("detail")
        for item in skipped:
            why.add_row(item.real_path, item.reason, item.detail)
        console.print(why)


def cmd_scan(args: argparse.Namespace) -> int:
    from ..index.library import LibraryIndex  # imported where an index is opened: not by status & co. (CLI-1)

    config = resolve_config(args)
    if config.catalog is not None and config.catalog.mount:
        raise ConfigError("this library takes its index from its published catalog ([catalog] mount = true): "
                          "it is scanned on the machine that publishes it (there: mount = false)")
    path = index_path(args, config)
    serving = mounts_of_index(args.state_dir or state_home(), path)
    if serving:  # a daemon serves this index: it rescans, nobody writes the index behind its back
        return control.rescan_mounted(serving[0], path, as_json=args.json)
    cache_dir = config.resolved_cache_dir().expanduser().absolute()
    keeps = config.header_origins() or config.artwork_limit > 0
    lock = daemon.Lock(cache_dir / "musicfs.lock", f"cache {cache_dir}") if keeps else None
    try:  # tags' bytes and covers go to the cache unless another musicfs uses it
        if lock is not None:
            lock.acquire()
    except (daemon.DaemonError, OSError) as exc:
        err_console.print(f"[yellow]{exc}: the bytes read for tags, and covers, are not kept in it")
        lock = None
    try:
        reports = run_scans(config, path, show_progress=sys.stderr.isatty() and not args.json,
                            batch_size=args.batch_size, cache_dir=cache_dir if lock else None)
    finally:
        if lock is not None:
            lock.release()
    if config.catalog is not None and config.catalog.publish:  # the publishing machine keeps it current
        _publish_after_scan(config, path)
    with LibraryIndex(path, readonly=True) as index:
        skipped = index.skipped()
        if args.json:
            print_json({"index": str(path), "scans": [r.__dict__ for r in reports],
                        "skipped": [s.__dict__ for s in skipped]})
            return 0
    for report in reports:
        render_report(report, [s for s in skipped if s.origin_id == report.origin_id])
    console.print(f"index: {path}")
    return 0


def _needs_scan(config, path: Path, rescan: bool) -> bool:
    """The index is missing, unfinished, made with another template, or a scan is asked for."""
    from ..index.library import LibraryIndex

    if rescan or not path.exists():
        return True
    with LibraryIndex(path) as index:
        return not index.is_complete() or index.get_meta("template") != config.template


def _prepare_index(config, path: Path, rescan: bool, cache_dir: Path | None = None) -> None:
    """Scan when :func:`_needs_scan` says so."""
    if _needs_scan(config, path, rescan):
        reports = run_scans(config, path, show_progress=sys.stderr.isatty(), cache_dir=cache_dir)
        for report in reports:
            err_console.print(f"scanned {report.origin_id}: {report.added} new, {report.updated} updated,"
                              f" {report.unchanged} unchanged, {report.removed} removed,"
                              f" {report.skipped} skipped ({report.seconds:.1f} s)")


def _prepare_index_apart(config, path: Path, rescan: bool, cache_dir: Path | None = None) -> None:
    """:func:`_prepare_index` in a forked child, for a mount that then serves from this process.

    A scan imports what serving never needs (sqlite_utils for the migrations, with numpy where
    it is installed; the tag readers; rich's progress bars: ~20 MB) and leaves its allocations
    in malloc's arenas; none of it can be given back, and a daemon idles for days (NFR-4.1).
    The child prints its own error, as :func:`main` would, and this process exits with its code.
    An index ready to serve as it is (the common case: a mount of a library scanned before) is
    seen from here, read-only, without a child.
    """
    from ..index.library import ready_to_serve

    if not rescan and ready_to_serve(path, config.template):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: scan, say how it went, and leave without running the parent's cleanup
        code = 1
        try:
            _prepare_index(config, path, rescan, cache_dir)
            code = 0
        except MusicFSError as exc:
            err_console.print(f"musicfs: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
            code = 2
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        raise SystemExit(code)


def _index_from_catalog(config, path: Path, rescan: bool) -> None:
    """Bring the index at ``path`` up to the latest published catalog (musicfs.catalog.fetch)."""
    from ..catalog.fetch import bring_up_to_date
    from ..origins.base import create

    if rescan:
        raise ConfigError("--rescan: this library is mounted from its published catalog ([catalog] mount = "
                          "true); it is scanned where it is published")
    settings = config.catalog
    origin_cfg = next(o for o in config.origins if o.id == settings.origin)
    origin = create(origin_cfg.id, origin_cfg.type, origin_cfg.options)
    try:
        outcome = bring_up_to_date(origin, settings, path)
    finally:
        origin.close()
    if outcome.problem:
        err_console.print(f"{outcome.problem}: mounting the catalog this machine has", style="yellow", markup=False)


def _unreachable(config) -> list[str]:
    """Origins that do not answer a health probe now (a mount goes ahead on its cache)."""
    from ..origins.base import create

    down = []
    for origin_cfg in config.origins:
        origin = create(origin_cfg.id, origin_cfg.type, origin_cfg.options)
        try:
            if probe(origin) is not None:
                down.append(origin_cfg.id)
        finally:
            origin.close()
    return down


def _locks(path: Path, cache_dir: Path, files: daemon.RunFiles, mountpoint: Path) -> list[daemon.Lock]:
    """One daemon per index, per chunk cache and per mountpoint (FAULT-27), in that order."""
    return [daemon.Lock(path.with_name(path.name + ".lock"), f"index {path}"),
            daemon.Lock(cache_dir / "musicfs.lock", f"cache {cache_dir}"),
            daemon.Lock(files.lock, f"mountpoint {mountpoint}")]


def _acquire(locks: list[daemon.Lock]) -> None:
    """Take every lock or none: a refusal releases what was already taken."""
    taken = []
    try:
        for lock in locks:
            lock.acquire()
            taken.append(lock)
    except BaseException:
        for lock in taken:
            lock.release()
        raise


def cmd_mount(args: argparse.Namespace) -> int:
    if getattr(args, "all_libraries", False):
        if args.mountpoint or args.config or args.origin or args.foreground:
            raise ConfigError("--all mounts the library files' libraries: no MOUNTPOINT, --config, --origin "
                              "or --foreground with it")
        return libraries.mount_all(args, cmd_mount)
    if args.mountpoint is None:
        raise ConfigError("say where to mount: MOUNTPOINT (or --all for the library files)")
    config = resolve_config(args, origin_must_exist=False)
    if args.no_prefetch:
        config = dataclasses.replace(config, prefetch=False)
    path = index_path(args, config)
    state = args.state_dir or state_home()
    mountpoint = daemon.canonical(args.mountpoint)
    files = daemon.RunFiles.for_mountpoint(state, mountpoint)
    cache_dir = (args.cache_dir or config.resolved_cache_dir()).expanduser().absolute()
    allow_other = args.allow_other or config.allow_other
    if daemon.recover_stale(mountpoint):
        err_console.print(f"[yellow]recovered a stale mount at {mountpoint} left by a stopped daemon")
    if daemon.is_mounted(mountpoint):
        raise daemon.DaemonError(f"{mountpoint} is already mounted")
    if not mountpoint.is_dir():
        raise daemon.DaemonError(f"mountpoint {mountpoint} is not a directory")
    if not args.foreground:
        client = _manager(state)
        if client is not None:  # the manager's child does all of what follows, as a foreground mount
            with client:
                mounted = manager.hand_over(
                    client, argv=["--state-dir", str(state), "mount",
                                  *_foreground_argv(args, path, cache_dir, allow_other, mountpoint)],
                    mountpoint=mountpoint, files=files, name=getattr(args, "library_name", None) or
                    config.library_name(), restart=config.restart)
            if isinstance(getattr(args, "pending", None), list):  # mount --all: waited for together
                args.pending.append(mounted)
            else:
                mounted()
            return 0
    locks = _locks(path, cache_dir, files, mountpoint)
    _acquire(locks)  # before anything is scanned: a second daemon must not touch the first's index
    try:
        unreachable = _unreachable(config)
        if unreachable and not path.exists():
            raise daemon.DaemonError(f"origin {unreachable[0]} is not reachable and there is no index to"
                                     " mount from yet")
        for origin_id in unreachable:
            err_console.print(f"[yellow]origin {origin_id} is not reachable: serving what is cached")
        if config.catalog is not None and config.catalog.mount:  # the publisher's index: never scanned here
            _index_from_catalog(config, path, args.rescan)
        elif args.foreground:  # this process serves next: the scan must leave nothing in it
            _prepare_index_apart(config, path, args.rescan, cache_dir)
        else:
            _prepare_index(config, path, args.rescan, cache_dir)
        if not args.foreground:
            for lock in locks:  # the daemon takes them again itself
                lock.release()
            argv = ["--state-dir", str(state), "mount",
                    *_foreground_argv(args, path, cache_dir, allow_other, mountpoint, rescan=False)]
            pid = daemon.start_background(argv, files, mountpoint)
            console.print(f"musicfs pid {pid} mounted {mountpoint} (log: {files.log})")
            return 0
        from ..mount import MountSettings, serve  # here: the other commands need no FUSE, no trio

        daemon.raise_open_files_limit()
        daemon.limit_malloc_arenas()  # before the mount's worker threads exist
        control = socket_path(state, files.pid.stem)
        settings = MountSettings(mountpoint=mountpoint, index_path=path, debug_fuse=args.debug_fuse,
                                 cache_dir=cache_dir, read_timeout=config.read_timeout,
                                 health_interval=config.health_interval, allow_other=allow_other,
                                 control_socket=control)
        serve(config, settings, on_mounted=lambda: daemon.write_pidfile(
            files, mountpoint, path.absolute(), cache_dir=str(cache_dir), socket=str(control)))
    finally:
        if args.foreground:
            files.pid.unlink(missing_ok=True)
        for lock in reversed(locks):
            lock.release()
    return 0


def _foreground_argv(args: argparse.Namespace, path: Path, cache_dir: Path, allow_other: bool,
                     mountpoint: Path, *, rescan: bool | None = None) -> list[str]:
    """``mount``'s arguments for the foreground daemon that serves what ``args`` asks for, every
    location resolved (it may run elsewhere: the manager's child). ``rescan``: whether it scans
    first (default: as asked)."""
    rescan = args.rescan if rescan is None else rescan
    return [*(["-v"] * args.verbose), "--foreground", "--index", str(path.absolute()),
            *_library_argv(args), "--cache-dir", str(cache_dir), *(["--allow-other"] if allow_other else []),
            *(["--no-prefetch"] if args.no_prefetch else []), *(["--rescan"] if rescan else []),
            str(mountpoint)]


def _manager(state: Path):
    """The manager of ``state`` if one answers (its client, imported here: a mount without one
    does not pay for it), else None."""
    from ..control.manager_client import ManagerClient

    return ManagerClient.running(state)


def _library_argv(args: argparse.Namespace) -> list[str]:
    if args.config:
        return ["--config", str(args.config.resolve())]
    return ["--origin", str(args.origin.resolve())]


def cmd_umount(args: argparse.Namespace) -> int:
    if args.all_libraries:
        return libraries.umount_all(args)
    if args.mountpoint is None:
        raise ConfigError("say which mount: MOUNTPOINT (or --all for the library files')")
    state = args.state_dir or state_home()
    mountpoint = daemon.canonical(args.mountpoint)
    files = daemon.RunFiles.for_mountpoint(state, mountpoint)
    console.print(daemon.stop(files, mountpoint))
    return 0


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    """Print the unit with every location resolved now (the same files ``musicfs mount`` would use)."""
    from ..systemd import mount_unit, unit_name_ok

    if not unit_name_ok(args.name):
        raise ConfigError(f"service name {args.name!r} may hold only letters, digits, '_', '.', ':', '-'")
    config = resolve_config(args, origin_must_exist=False)
    library = ["--config", str(args.config.expanduser().absolute())] if args.config else \
        ["--origin", str(args.origin.expanduser().absolute())]
    sys.stdout.write(mount_unit(
        args.name, state_dir=(args.state_dir or state_home()).expanduser().absolute(), library=library,
        index=index_path(args, config).expanduser().absolute(),
        cache_dir=(args.cache_dir or config.resolved_cache_dir()).expanduser().absolute(),
        mountpoint=daemon.canonical(args.mountpoint)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except MusicFSError as exc:  # one line, as it is (a path may hold "[" and must not wrap)
        err_console.print(f"musicfs: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted")
        return 130


def run() -> NoReturn:
    """The ``musicfs`` command: :func:`main`, then an exit that skips tearing the interpreter down.

    A normal exit finalizes every module and frees every object one by one: 10-26 ms of the
    ~100 each command took here (CLI-1, and MM-2's ``musicfs mount``), spent after the
    command's work is done. What matters of a normal exit is done here instead: logging's
    handlers are flushed and closed, stdout and stderr flushed. A command that leaves a
    thread running exits the normal way, which waits for it."""
    code = main()
    if threading.active_count() > 1:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away, a closed stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
