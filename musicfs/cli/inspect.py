"""``musicfs-inspect``: look inside an index (and later caches and origins) without a daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.tree import Tree

from .. import daemon
from ..config import state_home
from ..errors import MusicFSError
from ..index.library import LibraryIndex
from ..store.inspect import chunk_summary, clear_cache, header_map, manifest_map, repair_chunks, verify_chunks
from ..vfs.resolver import Node, Resolver
from .common import (
    add_library_options,
    console,
    err_console,
    index_path,
    print_json,
    resolve_config,
    setup_logging,
)


def _open(args: argparse.Namespace) -> LibraryIndex:
    config = None if args.index else resolve_config(args)
    return LibraryIndex(index_path(args, config), readonly=True)


def cmd_index(args: argparse.Namespace) -> int:
    with _open(args) as index:
        stats = index.statistics()
    if args.json:
        print_json(stats)
        return 0
    table = Table(title=f"index {stats['index_path']}", show_header=False)
    for key in ("tracks", "bytes", "directories", "files", "skipped", "template",
                "last_scan_finished_at"):
        table.add_row(key, str(stats[key]))
    table.add_row("by format", ", ".join(f"{k}: {v}" for k, v in sorted(stats["by_format"].items())))
    table.add_row("skipped by reason",
                  ", ".join(f"{k}: {v}" for k, v in sorted(stats["skipped_by_reason"].items())) or "-")
    for origin in stats["origins"]:
        table.add_row(f"origin {origin['id']}", f"{origin['kind']} {origin['location']}")
    console.print(table)
    return 0


def cmd_skipped(args: argparse.Namespace) -> int:
    with _open(args) as index:
        skipped = index.skipped()
    if args.json:
        print_json([s.__dict__ for s in skipped])
        return 0
    table = Table(title=f"{len(skipped)} skipped files")
    for column in ("origin", "file", "reason", "detail"):
        table.add_column(column)
    for s in skipped:
        table.add_row(s.origin_id, s.real_path, s.reason, s.detail)
    console.print(table)
    return 0


def _as_dict(resolver: Resolver, node: Node, depth: int) -> dict:
    item = {"id": node.id, "name": node.name or "/", "kind": node.kind}
    if node.is_dir and depth > 0:
        item["children"] = [_as_dict(resolver, c, depth - 1) for c in resolver.iter_children(node.id)]
    elif not node.is_dir:
        item.update(size=node.size, track_id=node.track_id)
    return item


def _add(resolver: Resolver, branch: Tree, node: Node, depth: int) -> None:
    for child in resolver.iter_children(node.id):
        label = f"{child.name}/" if child.is_dir else f"{child.name}  [dim]({child.size} B, ino {child.id})"
        sub = branch.add(label)
        if child.is_dir and depth > 1:
            _add(resolver, sub, child, depth - 1)


def cmd_tree(args: argparse.Namespace) -> int:
    with _open(args) as index:
        resolver = Resolver(index.conn)
        node = resolver.resolve(args.path)
        if args.json:
            print_json(_as_dict(resolver, node, args.depth))
            return 0
        root = Tree(f"[bold]{args.path or '/'}[/] (ino {node.id})")
        if node.is_dir:
            _add(resolver, root, node, args.depth)
        console.print(root)
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return args.cache_dir
    return resolve_config(args).resolved_cache_dir()


def _state(args: argparse.Namespace) -> Path:
    return args.state_dir or state_home()


def cmd_chunks(args: argparse.Namespace) -> int:
    """Counts; with --verify every chunk checked (exit 1 if any is damaged or missing, or a folder of
    them cannot be listed); --repair
    then removes what is damaged, while no daemon uses the cache."""
    cache_dir = _cache_dir(args)
    lock = None
    if args.repair:
        lock = daemon.Lock(cache_dir / "musicfs.lock", f"cache {cache_dir}")
        try:
            lock.acquire()
        except daemon.DaemonError as exc:
            err_console.print(f"[red]musicfs-inspect: {exc}: unmount it first (a running mount "
                              f"checks every chunk it reads and fetches damaged ones again)")
            return 2
    try:
        summary = chunk_summary(cache_dir)
        if args.verify or args.repair:
            with Progress(TextColumn("verifying chunks"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          console=err_console.rich, disable=args.json or not sys.stderr.isatty()) as bar:
                task = bar.add_task("verify", total=summary["chunks_on_disk"])
                summary["verify"] = verify_chunks(cache_dir, lambda done, total: bar.update(task, completed=done))
            if args.repair:
                summary["repair"] = repair_chunks(cache_dir, summary["verify"])
    finally:
        if lock is not None:
            lock.release()
    damaged = "verify" in summary and bool(summary["verify"]["corrupt"] or summary["verify"]["missing"]
                                           or summary["verify"]["unlisted"])
    if args.json:
        print_json(summary)
        return 1 if damaged else 0
    table = Table(title=f"chunks in {cache_dir}", show_header=False)
    for key in ("chunks", "bytes", "chunks_on_disk", "bytes_on_disk", "packs", "files_on_disk", "disk_used",
                "manifests", "logical_bytes", "dedup_ratio", "pinned"):
        table.add_row(key, str(summary[key]))
    if "verify" in summary:
        table.add_row("verified", str(summary["verify"]["checked"]))
        table.add_row("corrupt", str(summary["verify"]["corrupt"]))
        table.add_row("missing (indexed, no file)", str(summary["verify"]["missing"]))
        if summary["verify"]["unlisted"]:  # a failing disk: what they hold was not checked
            table.add_row("folders that cannot be listed", ", ".join(summary["verify"]["unlisted"]))
    if "repair" in summary:
        table.add_row("repaired", f"{summary['repair']['chunks_removed']} chunks removed, "
                                  f"{summary['repair']['rows_dropped']} index rows dropped")
    console.print(table)
    return 1 if damaged else 0


def _locate(args: argparse.Namespace) -> tuple[Path, str, str]:
    """(cache dir, origin id, real path) of a mounted file or of a virtual path in a library."""
    mount = daemon.mount_of(args.path, _state(args))
    if mount is not None and not args.origin and not args.config:
        origin = os.getxattr(args.path, "user.musicfs.origin").decode()
        real = os.getxattr(args.path, "user.musicfs.real_path").decode()
        return Path(args.cache_dir or mount["cache_dir"]), origin, real
    with _open(args) as index:
        node = Resolver(index.conn).resolve(str(args.path))
        if node.is_dir:
            raise MusicFSError(f"{args.path} is a directory")
        track = index.track(node.track_id)
    return _cache_dir(args), track["origin_id"], track["real_path"]


def cmd_manifest(args: argparse.Namespace) -> int:
    cache_dir, origin, real = _locate(args)
    chunk_map = manifest_map(cache_dir, origin, real)
    header = header_map(cache_dir, origin, real)
    if chunk_map is None:
        if args.json:
            print_json({"origin": origin, "real_path": real, "chunks": None, "percent_cached": 0.0,
                        "header": header})
        else:
            console.print(f"{origin}:{real} has no chunk map yet: it has not been read through the cache")
            _print_header(header)
        return 0
    if args.json:
        print_json({**chunk_map, "header": header})
        return 0
    console.print(f"{origin}:{real}  {chunk_map['size']} bytes, {chunk_map['percent_cached']}% cached,"
                  f" version {chunk_map['version']}", soft_wrap=True)
    table = Table()
    for column in ("#", "offset", "size", "address", "cached"):
        table.add_column(column, justify="right" if column in ("#", "offset", "size") else "left")
    for i, chunk in enumerate(chunk_map["chunks"]):
        table.add_row(str(i), str(chunk["offset"]), str(chunk["size"]), chunk["address"],
                      "yes" if chunk["cached"] else "[red]no")
    console.print(table)
    _print_obtained(chunk_map)
    _print_header(header)
    return 0


def _print_obtained(chunk_map: dict) -> None:
    """How the version's content came to be: says whether a retag cost the origin the whole file."""
    if chunk_map["obtained"] == "delta":
        reused = chunk_map["reused_bytes"]
        console.print(f"obtained: rebuilt by delta sync from the previous version ({reused} bytes reused, "
                      f"{chunk_map['size'] - reused} fetched)", soft_wrap=True)
    else:
        console.print("obtained: fetched from the origin")


def _print_header(header: dict | None) -> None:
    """The header tier's part: which ranges of the file a tag scan read and the cache keeps."""
    if header is None:
        console.print("header tier: nothing kept for this file")
        return
    ranges, start, end = [], None, None
    for piece in header["pieces"]:
        if start is not None and piece["offset"] == end:
            end += piece["size"]
            continue
        if start is not None:
            ranges.append(f"{start}-{end}")
        start, end = piece["offset"], piece["offset"] + piece["size"]
    ranges.append(f"{start}-{end}")
    missing = sum(1 for piece in header["pieces"] if not piece["cached"])
    console.print(f"header tier: {header['bytes']} bytes in {len(header['pieces'])} pieces (bytes "
                  f"{', '.join(ranges)}) of version {header['version']}"
                  + (f"; {missing} pieces missing" if missing else ""), soft_wrap=True)


def cmd_cache(args: argparse.Namespace) -> int:
    cache_dir = _cache_dir(args)
    if args.action == "clear":
        result = clear_cache(cache_dir, dry_run=args.dry_run)
        if args.json:
            print_json(result)
        else:
            verb = "would remove" if args.dry_run else "removed"
            console.print(f"{verb} {result['chunks']} chunks ({result['bytes']} bytes) and "
                          f"{result['manifests']} chunk maps from {cache_dir}")
        return 0
    summary = chunk_summary(cache_dir)
    live = [m for m in daemon.running_mounts(_state(args)) if m.get("cache_dir") == str(cache_dir)]
    counters = {}
    for mount in live:  # a running daemon's counters come from its status file
        status_path = Path(mount["mountpoint"]) / ".musicfs" / "status.json"
        counters = json.loads(status_path.read_text()).get("cache", {})
    summary.update({k: counters.get(k) for k in ("hits", "misses", "hit_rate", "evictions", "corruptions",
                                                   "limit_bytes")})
    summary["daemon"] = live[0]["pid"] if live else None
    if args.json:
        print_json(summary)
        return 0
    table = Table(title=f"cache {cache_dir}", show_header=False)
    for key in ("bytes", "limit_bytes", "chunks", "manifests", "manifests_delta", "reused_bytes", "dedup_ratio",
                "hits", "misses", "hit_rate", "evictions", "corruptions", "daemon"):
        value = summary.get(key)
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicfs-inspect", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("index", cmd_index, "counts, origins and settings of an index"),
                             ("skipped", cmd_skipped, "files the scanner skipped, and why"),
                             ("tree", cmd_tree, "the virtual tree the mount will show")):
        cmd = sub.add_parser(name, help=text)
        add_library_options(cmd)
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=func)
        if name == "tree":
            cmd.add_argument("path", nargs="?", default="", help="virtual path to start at")
            cmd.add_argument("--depth", type=int, default=3, help="levels to show (default 3)")
    for name, func, text in (("chunks", cmd_chunks, "chunk count, bytes, dedup ratio (--verify checks all)"),
                             ("manifest", cmd_manifest, "the chunk map of a mounted file or virtual path"),
                             ("cache", cmd_cache, "cache size against its limit, hits, misses; 'clear'")):
        cmd = sub.add_parser(name, help=text)
        add_library_options(cmd)
        cmd.add_argument("--cache-dir", type=Path, help="cache directory (default: the library's)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=func)
        if name == "chunks":
            cmd.add_argument("--verify", action="store_true",
                             help="read and check every chunk (exit 1 if any is damaged or missing, "
                                  "or a folder of them cannot be listed)")
            cmd.add_argument("--repair", action="store_true",
                             help="verify, then remove damaged chunks (the mount must be stopped)")
        elif name == "manifest":
            cmd.add_argument("path", type=Path, help="a file in a mount, or a virtual path with --origin")
        else:
            cmd.add_argument("action", nargs="?", choices=("show", "clear"), default="show")
            cmd.add_argument("--dry-run", action="store_true", help="say what clear would remove")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except (MusicFSError, FileNotFoundError) as exc:
        err_console.print(f"[red]musicfs-inspect: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
