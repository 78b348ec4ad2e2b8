"""``musicfs``: scan a library, mount it, and talk to a running daemon."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import daemon
from ..config import state_home
from ..control.sockets import socket_path
from ..errors import MusicFSError
from ..index.library import LibraryIndex
from ..mount import MountSettings, serve
from ..origins.base import create
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicfs", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where indexes, pid and log files live (default {state_home()})")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="index a library's tags and build its virtual tree")
    add_library_options(scan)
    _add_verbose(scan)
    scan.add_argument("--json", action="store_true", help="print the report as JSON")
    scan.add_argument("--batch-size", type=int, default=200, help=argparse.SUPPRESS)
    scan.set_defaults(func=cmd_scan)

    mount = sub.add_parser("mount", help="mount a library (scanning it first if it has no index)")
    add_library_options(mount)
    _add_verbose(mount)
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    mount.add_argument("--rescan", action="store_true", help="scan for changes before mounting")
    mount.add_argument("--cache-dir", type=Path, help="content cache directory (overrides the config)")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users read the mount too (the kernel then enforces its modes)")
    mount.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)
    mount.set_defaults(func=cmd_mount)

    umount = sub.add_parser("umount", help="unmount a musicfs mount and stop its daemon")
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(func=cmd_umount)

    status = sub.add_parser("status", help="what every running mount is doing")
    status.add_argument("mountpoint", type=Path, nargs="?", help="only this mount")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
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


def run_scans(config, path: Path, *, show_progress: bool, batch_size: int = 200) -> list:
    """Scan every origin of ``config`` into the index at ``path``."""
    # imported here: a mount of an existing index needs neither mutagen nor progress bars
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..index.scanner import Scanner, ScanReport

    reports = []
    with LibraryIndex(path) as index:
        for origin_cfg in config.origins:
            origin = create(origin_cfg.id, origin_cfg.type, origin_cfg.options)
            problem = probe(origin)
            if problem is not None:
                err_console.print(f"[yellow]origin {origin.id} is not reachable ({problem}); not scanned")
                origin.close()
                continue
            with Progress(TextColumn("[bold]scanning {task.fields[origin]}"), BarColumn(),
                          TextColumn("{task.completed} files"), TimeElapsedColumn(),
                          console=err_console, disable=not show_progress, transient=True) as bar:
                task = bar.add_task("scan", total=None, origin=origin.id)

                def progress(report: ScanReport, current: str | None, task=task) -> None:
                    bar.update(task, completed=report.seen)

                scanner = Scanner(index, origin, config.path_template(), workers=config.scan_workers,
                                  batch_size=batch_size, progress=progress)
                try:
                    reports.append(scanner.run())
                finally:
                    origin.close()
    return reports


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
    config = resolve_config(args)
    path = index_path(args, config)
    reports = run_scans(config, path, show_progress=sys.stderr.isatty() and not args.json,
                        batch_size=args.batch_size)
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


def _prepare_index(config, path: Path, rescan: bool) -> None:
    """Scan when the index is missing, unfinished, made with another template, or asked to."""
    needs_scan = rescan or not path.exists()
    if not needs_scan:
        with LibraryIndex(path) as index:
            needs_scan = not index.is_complete() or index.get_meta("template") != config.template
    if needs_scan:
        reports = run_scans(config, path, show_progress=sys.stderr.isatty())
        for report in reports:
            err_console.print(f"scanned {report.origin_id}: {report.added} new, {report.updated} updated,"
                              f" {report.unchanged} unchanged, {report.removed} removed,"
                              f" {report.skipped} skipped ({report.seconds:.1f} s)")


def _unreachable(config) -> list[str]:
    """Origins that do not answer a health probe now (a mount goes ahead on its cache)."""
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
    config = resolve_config(args, origin_must_exist=False)
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
    locks = _locks(path, cache_dir, files, mountpoint)
    _acquire(locks)  # before anything is scanned: a second daemon must not touch the first's index
    try:
        unreachable = _unreachable(config)
        if unreachable and not path.exists():
            raise daemon.DaemonError(f"origin {unreachable[0]} is not reachable and there is no index to"
                                     " mount from yet")
        for origin_id in unreachable:
            err_console.print(f"[yellow]origin {origin_id} is not reachable: serving what is cached")
        _prepare_index(config, path, args.rescan)
        if not args.foreground:
            for lock in locks:  # the daemon takes them again itself
                lock.release()
            argv = [*(["--state-dir", str(state)] if args.state_dir else []), *(["-v"] * args.verbose),
                    "mount", "--foreground", "--index", str(path), *_library_argv(args),
                    "--cache-dir", str(cache_dir), *(["--allow-other"] if allow_other else []),
                    str(mountpoint)]
            pid = daemon.start_background(argv, files, mountpoint)
            console.print(f"musicfs pid {pid} mounted {mountpoint} (log: {files.log})")
            return 0
        daemon.raise_open_files_limit()
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


def _library_argv(args: argparse.Namespace) -> list[str]:
    if args.config:
        return ["--config", str(args.config.resolve())]
    return ["--origin", str(args.origin.resolve())]


def cmd_umount(args: argparse.Namespace) -> int:
    state = args.state_dir or state_home()
    mountpoint = daemon.canonical(args.mountpoint)
    files = daemon.RunFiles.for_mountpoint(state, mountpoint)
    console.print(daemon.stop(files, mountpoint))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Reads each running mount's /.musicfs/status.json (the daemon generates it on read)."""
    state = args.state_dir or state_home()
    mounts = daemon.running_mounts(state)
    if args.mountpoint:
        wanted = str(daemon.canonical(args.mountpoint))
        mounts = [m for m in mounts if m["mountpoint"] == wanted]
        if not mounts:
            raise daemon.DaemonError(f"no musicfs daemon serves {args.mountpoint}")
    reports = []
    for mount in mounts:
        status_file = Path(mount["mountpoint"]) / ".musicfs" / "status.json"
        try:
            reports.append(json.loads(status_file.read_text()))
        except (OSError, ValueError) as exc:
            reports.append({"mountpoint": mount["mountpoint"], "pid": mount["pid"], "error": str(exc)})
    if args.json:
        print_json(reports)
        return 0
    if not reports:
        console.print("no musicfs mounts are running")
        return 0
    for report in reports:
        render_status(report)
    return 0


def render_status(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{report['mountpoint']}  (pid {report['pid']})", show_header=False)
    if "error" in report:
        table.add_row("[red]not answering", report["error"])
        console.print(table)
        return
    index, cache = report["index"], report.get("cache", {})
    table.add_row("tracks", f"{index['tracks']} in {index['directories']} folders, {index['bytes']} bytes")
    table.add_row("skipped", f"{index['skipped']} malformed files (see .musicfs/errors.json)")
    age = index.get("age_seconds")
    table.add_row("index", f"{index['path']} (scanned {age:.0f} s ago)" if age is not None else index["path"])
    for origin in report.get("origins", []):
        colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}.get(origin["state"], "white")
        table.add_row(f"origin {origin['id']}",
                      f"[{colour}]{origin['state']}[/] {origin.get('kind', '')} {origin.get('location', '')}")
    if cache:
        table.add_row("cache", f"{cache['bytes']} of {cache['limit_bytes']} bytes, {cache['hits']} hits, "
                               f"{cache['misses']} misses, {cache['corruptions']} corrupt chunks refetched")
    table.add_row("uptime", f"{report['uptime_seconds']:.0f} s")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except MusicFSError as exc:
        err_console.print(f"[red]musicfs: {exc}")
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
