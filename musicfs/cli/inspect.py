"""``musicfs-inspect``: look inside an index (and later caches and origins) without a daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table
from rich.tree import Tree

from ..errors import MusicFSError
from ..index.library import LibraryIndex
from ..vfs.resolver import Node, Resolver
from .common import (add_library_options, console, err_console, index_path, print_json,
                     resolve_config, setup_logging)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except MusicFSError as exc:
        err_console.print(f"[red]musicfs-inspect: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
