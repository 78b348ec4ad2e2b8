"""``musicfs publish`` and ``musicfs catalog status``: one scan, every machine (musicfs.catalog).

One machine scans the library and publishes its index into one of the library's origins;
the others mount from it (``[catalog] origin = "..."`` in their config) without scanning.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from ..errors import ConfigError
from .common import add_library_options, console, index_path, print_json, resolve_config


def add_commands(sub: argparse._SubParsersAction) -> None:
    publish = sub.add_parser("publish", help="publish the library's index into its [catalog] origin, for "
                                             "other machines to mount without scanning")
    add_library_options(publish)
    publish.add_argument("--dry-run", action="store_true", help="make the snapshot and say what would be "
                                                                "published, without writing to the origin")
    publish.add_argument("--json", action="store_true", help="print the report as JSON")
    publish.set_defaults(func=cmd_publish)
    catalog = sub.add_parser("catalog", help="the published catalog of a library").add_subparsers(
        dest="catalog_command", required=True)
    status = catalog.add_parser("status", help="the catalog this machine's index holds, and the latest published")
    add_library_options(status)
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(func=cmd_catalog_status)
    poll = catalog.add_parser("poll", help="have a mount from a catalog look at the pointer now, and take a "
                                           "new catalog")
    poll.add_argument("mountpoint", nargs="?", help="the mount (default: the only one running)")
    poll.add_argument("--json", action="store_true", help="print the answer as JSON")
    poll.set_defaults(func=cmd_catalog_poll)


def _catalog_origin(config):
    """The [catalog] settings and the origin they name (created, to be closed by the caller)."""
    from ..origins.base import create

    if config.catalog is None:
        raise ConfigError("this library has no [catalog] section: say which origin its catalog lives in "
                          "([catalog] origin = \"...\")")
    origin_cfg = next(o for o in config.origins if o.id == config.catalog.origin)
    return config.catalog, create(origin_cfg.id, origin_cfg.type, origin_cfg.options)


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def cmd_publish(args: argparse.Namespace) -> int:
    from ..catalog.publish import publish

    config = resolve_config(args)
    settings, origin = _catalog_origin(config)
    try:
        report = publish(index_path(args, config), origin, settings, config.library_name(), dry_run=args.dry_run)
    finally:
        origin.close()
    if args.json:
        print_json({**asdict(report), "origin": settings.origin, "prefix": settings.prefix})
        return 0
    pointer = report.pointer
    what = ("would publish" if report.dry_run else
            "published" if report.uploaded else "published (the same snapshot was there already)")
    console.print(f"{what} {pointer.tracks:,} tracks of library {pointer.library!r} into origin "
                  f"{settings.origin!r} under {settings.prefix}/: snapshot {pointer.hash[:16]}..., "
                  f"{pointer.size:,} bytes ({pointer.db_size:,} uncompressed)"
                  f"{', signed' if pointer.signature else ''}, in {report.seconds:.1f} s", markup=False,
                  highlight=False)
    for path in report.removed:
        console.print(f"removed the old snapshot {path}", markup=False, highlight=False)
    return 0


def cmd_catalog_status(args: argparse.Namespace) -> int:
    """Exit 0 when this machine holds the latest catalog, 1 otherwise (or when it cannot tell)."""
    from ..catalog.fetch import CatalogReader, InUse
    from ..errors import MusicFSError

    config = resolve_config(args, origin_must_exist=False)
    settings, origin = _catalog_origin(config)
    path = index_path(args, config)
    in_use = InUse.load(path) if path.exists() else None
    latest, problem = None, None
    try:
        latest = CatalogReader(origin, settings).latest()
    except MusicFSError as exc:  # unreachable, none published, refused: each said as it is
        problem = str(exc)
    finally:
        origin.close()
    current = in_use is not None and latest is not None and in_use.pointer.hash == latest.pointer.hash
    report = {"origin": settings.origin, "prefix": settings.prefix, "index": str(path),
              "in_use": asdict(in_use) if in_use else None,
              "latest": asdict(latest.pointer) if latest else None, "latest_problem": problem,
              "up_to_date": current, "mount": _mount_view(args, path)}
    if args.json:
        print_json(report)
        return 0 if current else 1
    if in_use is None:
        console.print("this machine holds no catalog of this library yet", markup=False)
    else:
        p = in_use.pointer
        console.print(f"in use: {p.hash[:16]}..., {p.tracks:,} tracks, published {_when(p.created)}, "
                      f"installed {_when(in_use.installed_at)}", markup=False, highlight=False)
    mount = report["mount"]
    if mount is not None:
        console.print(f"mounted at {mount['mountpoint']}: {mount['polls']} looks at the pointer, every "
                      f"{mount['poll_seconds']:g} s; the last {_when(mount['last_poll_at'])}: {mount['last_result']}",
                      markup=False, highlight=False)
    if latest is not None:
        p = latest.pointer
        console.print(f"latest: {p.hash[:16]}..., {p.tracks:,} tracks, published {_when(p.created)}"
                      f"{' (in use)' if current else ''}", markup=False, highlight=False)
    else:
        console.print(f"latest: unknown: {problem}", markup=False, highlight=False)
    return 0 if current else 1


def _mount_view(args: argparse.Namespace, index) -> dict | None:
    """What the daemon serving ``index`` says of its catalog (its polls), or None when none runs."""
    from pathlib import Path

    from ..control.client import ControlClient
    from ..control.locate import ControlError, mounts_of_index
    from ..dirs import state_home

    for info in mounts_of_index(args.state_dir or state_home(), index):
        try:
            with ControlClient(Path(info["socket"])) as client:
                return {"mountpoint": info["mountpoint"], **client.get("/v1/catalog")}
        except ControlError:  # not a mount from the catalog (404), or not answering: nothing to add
            return None
    return None


def cmd_catalog_poll(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..control.client import ControlClient
    from ..control.locate import find_mount
    from ..dirs import state_home

    info = find_mount(args.state_dir or state_home(), Path(args.mountpoint) if args.mountpoint else None)
    with ControlClient(Path(info["socket"])) as client:
        answer = client.post("/v1/catalog/poll")
    if args.json:
        print_json(answer)
    else:
        console.print(f"{info['mountpoint']}: {answer['result']}", markup=False, highlight=False)
    return 0
