"""The commands that drive a running mount through its control API.

``musicfs status``, ``cache stats|clear``, ``origin list|health|rescan``,
``prefetch``, ``pin``/``pin list``/``unpin``, ``events`` and ``shutdown``: each finds the daemon (the one serving
MOUNTPOINT, or the only one running), makes its request with
:class:`~musicfs.control.client.ControlClient`, and prints the answer: with
``--json`` exactly as the API gave it, otherwise as tables in human units
(:mod:`musicfs.cli.render`). Nothing is computed here. A daemon that is not
there or does not answer is a :class:`ControlError`: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import daemon
from ..control.locate import ControlError, find_mount
from ..dirs import state_home
from .common import console, err_console, print_json

if TYPE_CHECKING:
    from ..control.client import ControlClient


def _render():
    """The rendering module (rich tables and units), imported by the commands that print."""
    from . import render

    return render


SHUTDOWN_GRACE = 15.0  # seconds beyond the drain time that `musicfs shutdown` waits for the unmount


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the control commands on the ``musicfs`` parser's subcommands."""
    status = sub.add_parser("status", help="what every running mount (or MOUNTPOINT's) is doing")
    _common(status)
    status.set_defaults(func=cmd_status)

    cache = sub.add_parser("cache", help="a running mount's chunk cache").add_subparsers(
        dest="cache_command", required=True)
    stats = cache.add_parser("stats", help="hits, misses, size and limit, dedup, evictions, per tier")
    _common(stats)
    stats.set_defaults(func=cmd_cache_stats)
    clear = cache.add_parser("clear", help="remove cached files (never those being read)")
    clear.add_argument("--origin", help="only this origin's files (chunks other origins share stay)")
    clear.add_argument("--tier", help="only this tier: chunks (files read) or headers (what tag scans read)")
    clear.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    _common(clear)
    clear.set_defaults(func=cmd_cache_clear)

    origin = sub.add_parser("origin", help="a running mount's origins").add_subparsers(
        dest="origin_command", required=True)
    listing = origin.add_parser("list", help="every origin: kind, health, tracks, size, last sync")
    _common(listing)
    listing.set_defaults(func=cmd_origin_list)
    health = origin.add_parser("health", help="one origin's health in detail")
    health.add_argument("origin_id", metavar="ID")
    _common(health)
    health.set_defaults(func=cmd_origin_health)
    rescan = origin.add_parser("rescan", help="rescan an origin in the running mount (progress as it goes)")
    rescan.add_argument("origin_id", metavar="ID")
    _common(rescan, json_help="print the progress documents as NDJSON")
    rescan.set_defaults(func=cmd_origin_rescan)

    prefetch = sub.add_parser("prefetch", help="fetch files, folders or a search's hits into a running mount's "
                                               "cache (progress as it goes)")
    prefetch.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                          help="files or folders inside the mount (or paths relative to its root)")
    prefetch.add_argument("--query", "-q", metavar="Q", help="the tracks this search finds instead")
    prefetch.add_argument("--strategy", choices=("metadata", "headers", "full"), default="full",
                          help="full (default): whole files; headers: each file's head; metadata: nothing "
                               "(the index has the tags)")
    prefetch.add_argument("--mount", type=Path, metavar="MOUNTPOINT", dest="mountpoint",
                          help="the mount to ask (may be left out while only one runs, or when PATHs are in it)")
    prefetch.add_argument("--json", action="store_true", help="print the progress documents as NDJSON")
    prefetch.set_defaults(func=cmd_prefetch)

    pin = sub.add_parser("pin", help="keep files, folders or a search's hits whole in a running mount's cache, "
                                     "never evicted (fetched now, progress as it goes); `musicfs pin list` lists pins")
    _named(pin, "pin")
    pin.set_defaults(func=cmd_pin)
    unpin = sub.add_parser("unpin", help="let pinned files go (evicted like any other from then on)")
    _named(unpin, "unpin")
    unpin.set_defaults(func=cmd_unpin)

    events = sub.add_parser("events", help="follow a running mount's events until interrupted")
    events.add_argument("--type", action="append", default=[], metavar="T",
                        help="only events of this type (repeat for several; default: the file, origin, "
                             "sync and eviction events)")
    events.add_argument("--origin", metavar="ID", help="only events of this origin")
    _common(events, json_help="print the events as NDJSON")
    events.set_defaults(func=cmd_events)

    shutdown = sub.add_parser("shutdown", help="unmount a running mount through its daemon")
    shutdown.add_argument("--force", action="store_true", help="unmount now, without waiting for reads")
    shutdown.add_argument("--drain-timeout", type=float, default=5.0, metavar="S",
                          help="seconds reads under way get to finish (default 5)")
    _common(shutdown)
    shutdown.set_defaults(func=cmd_shutdown)


def _named(parser: argparse.ArgumentParser, verb: str) -> None:
    """The arguments naming files, as ``musicfs prefetch`` takes them."""
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="files or folders inside the mount (or paths relative to its root)")
    parser.add_argument("--query", "-q", metavar="Q", help=f"{verb} the tracks this search finds instead")
    parser.add_argument("--mount", type=Path, metavar="MOUNTPOINT", dest="mountpoint",
                        help="the mount to ask (may be left out while only one runs, or when PATHs are in it)")
    parser.add_argument("--json", action="store_true", help="print the API's answers as JSON")


def _common(parser: argparse.ArgumentParser, json_help: str = "print the API's answer as JSON") -> None:
    parser.add_argument("mountpoint", type=Path, nargs="?", metavar="MOUNTPOINT",
                        help="the mount to ask (may be left out while only one runs)")
    parser.add_argument("--json", action="store_true", help=json_help)


def _state(args: argparse.Namespace) -> Path:
    return args.state_dir or state_home()


def _connect(socket: str) -> ControlClient:
    """The HTTP client, imported here: commands that never talk to a daemon do not pay for it."""
    from ..control.client import ControlClient

    return ControlClient(Path(socket))


def _client(args: argparse.Namespace) -> tuple[dict, ControlClient]:
    info = find_mount(_state(args), args.mountpoint)
    return info, _connect(info["socket"])


def _ask(args: argparse.Namespace, call: Callable[[ControlClient], Any]) -> Any:
    _, client = _client(args)
    with client:
        return call(client)


# -- status -------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Every running mount's /v1/status (or MOUNTPOINT's); a list with --json."""
    state = _state(args)
    mounts = ([find_mount(state, args.mountpoint)] if args.mountpoint
              else [m for m in daemon.running_mounts(state) if m.get("socket")])
    if not mounts:
        raise ControlError("no musicfs mount is running")
    reports = []
    for info in mounts:
        try:
            with _connect(info["socket"]) as client:
                reports.append(client.get("/v1/status"))
        except ControlError as exc:
            if args.mountpoint:
                raise
            reports.append({"mountpoint": info["mountpoint"], "pid": info["pid"], "error": str(exc)})
    if args.json:
        print_json(reports)
    else:
        for report in reports:
            console.print(_render().status_heading(report), soft_wrap=True)
            console.print(_render().status_table(report))
    return 1 if any("error" in r for r in reports) else 0


# -- cache --------------------------------------------------------------------


def cmd_cache_stats(args: argparse.Namespace) -> int:
    stats = _ask(args, lambda c: c.get("/v1/cache"))
    if args.json:
        print_json(stats)
    else:
        console.print(_render().cache_table(stats))
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    body = {"origin": args.origin, "tier": args.tier, "dry_run": args.dry_run}
    result = _ask(args, lambda c: c.post("/v1/cache/clear", {k: v for k, v in body.items() if v is not None}))
    if args.json:
        print_json(result)
    else:
        _say(_render().clear_line(result))
    return 0


# -- origins ------------------------------------------------------------------


def cmd_origin_list(args: argparse.Namespace) -> int:
    origins = _ask(args, lambda c: c.get("/v1/origins"))
    if args.json:
        print_json(origins)
    else:
        console.print(_render().origins_table(origins))
    return 0


def cmd_origin_health(args: argparse.Namespace) -> int:
    origin = _ask(args, lambda c: c.get(f"/v1/origins/{quote(args.origin_id, safe='')}"))
    if args.json:
        print_json(origin)
    else:
        console.print(_render().origin_table(origin))
    return 0


def cmd_origin_rescan(args: argparse.Namespace) -> int:
    """Exit 0 once the rescan is complete, 1 if it failed (its last document says why)."""
    _, client = _client(args)
    with client:
        last = follow_rescan(client, args.origin_id, as_json=args.json)
    return _rescan_status(args.origin_id, last, as_json=args.json)


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Exit 0 once every file named is fetched as asked, 1 if some failed (each says why)."""
    info, body = _naming(args)
    with _connect(info["socket"]) as client:
        documents = client.stream("POST", "/v1/prefetch", body={"strategy": args.strategy, **body})
        last = _follow_prefetch(documents, as_json=args.json)
    return 0 if last.get("done") and not last.get("failed") else 1


def _naming(args: argparse.Namespace) -> tuple[dict, dict]:
    """The mount to ask, and the body naming the files (``paths`` or ``query``)."""
    if bool(args.paths) == bool(args.query):
        raise ControlError("name PATHs or --query, one of them")
    mountpoint = args.mountpoint
    if mountpoint is None and args.paths:  # the mount the first path is in
        mountpoint = _mount_holding(_state(args), args.paths[0].absolute())
    info = find_mount(_state(args), mountpoint)
    root = Path(info["mountpoint"])
    return info, ({"query": args.query} if args.query else {"paths": [_virtual(path, root) for path in args.paths]})


def cmd_pin(args: argparse.Namespace) -> int:
    """``musicfs pin list [MOUNTPOINT]`` lists the pins (a file named list is pinned by its path in the
    mount, ``MOUNT/list``). Else:
    exit 0 once every file named is pinned and whole in the cache, 1 if some could not be fetched
    yet (pinned all the same: the daemon fetches them when it can), 2 if the pin was refused."""
    if args.paths and args.paths[0] == Path("list") and not args.query:
        return _pin_list(args)
    info, body = _naming(args)
    from ..control.client import Refused

    with _connect(info["socket"]) as client:
        try:
            last = _follow_prefetch(client.stream("POST", "/v1/pins", body=body), as_json=args.json, label="pin",
                                    verb="pinned")
        except Refused as exc:
            raise ControlError(exc.detail or str(exc)) from None
    if last.get("failed"):
        _say("musicfs: the files that failed stay pinned; the daemon fetches them after the next rescan "
             "or when their origin is back", err_console)
    return 0 if last.get("done") and not last.get("failed") else 1


def _pin_list(args: argparse.Namespace) -> int:
    if len(args.paths) > 2:
        raise ControlError("musicfs pin list takes at most a MOUNTPOINT")
    mountpoint = args.paths[1] if len(args.paths) == 2 else args.mountpoint
    info = find_mount(_state(args), mountpoint)
    with _connect(info["socket"]) as client:
        answer = client.get("/v1/pins")
    if args.json:
        print_json(answer)
    else:
        if answer.get("pins"):
            console.print(_render().pins_table(answer))
        console.print(_render().pins_summary(answer))
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    info, body = _naming(args)
    with _connect(info["socket"]) as client:
        answer = client.post("/v1/pins/remove", body=body)
    if args.json:
        print_json(answer)
    else:
        console.print(f"unpinned {answer['unpinned']} of the {answer['files']} files named "
                      "(their bytes stay cached until evicted)")
    return 0


def _mount_holding(state: Path, path: Path) -> Path | None:
    """The running mount whose mountpoint holds ``path``, if any."""
    for info in daemon.running_mounts(state):
        mountpoint = Path(info.get("mountpoint", ""))
        if mountpoint.is_absolute() and (path == mountpoint or mountpoint in path.parents):
            return mountpoint
    return None


def _virtual(path: Path, root: Path) -> str:
    """A path inside the mount as the API names it (from the mount's root); a relative path that
    does not exist here is taken as one already."""
    absolute = path.absolute()
    if absolute == root or root in absolute.parents:
        return absolute.relative_to(root).as_posix()
    if not path.is_absolute() and not path.exists():
        return path.as_posix()
    raise ControlError(f"{path} is not inside the mount at {root}")


def _follow_prefetch(documents: Iterator[dict], *, as_json: bool, label: str = "prefetch",
                     verb: str = "prefetched") -> dict:
    """NDJSON lines, or a progress bar (files, and bytes of the file under way) then a summary."""
    if as_json:
        return _print_lines(documents)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    last: dict = {}
    files: dict[str, dict] = {}  # path -> its last document (every file's first comes at once)
    with Progress(TextColumn(label, style="bold"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[current]}", markup=False),
                  console=err_console.rich, transient=True) as bar:
        task = bar.add_task("files", total=None, current="")
        for document in documents:
            last = document
            if document.get("done"):
                break
            files[document["path"]] = document
            done = sum(d["complete"] or d["error"] is not None for d in files.values())
            current = f"{document['path'][-50:]} {_render().size(document['cached'])}"
            bar.update(task, completed=done, total=len(files), current=current)
    failed = [d for d in files.values() if d["error"] is not None]
    for document in failed:
        _say(f"musicfs: {document['path']}: {document['error']}", err_console)
    if last.get("done"):
        newly = (f"; {last['pinned']} newly pinned, {_render().size(last['pinned_bytes'])} of the pins' room"
                 if "pinned" in last else "")
        console.print(f"{verb} {last['complete']} of {last['files']} files ({last['strategy']}): "
                      f"{_render().size(last['fetched'])} fetched" + (f", {last['failed']} failed" if last["failed"] else "")
                      + newly)
    return last


def _rescan_status(origin_id: str, last: dict, *, as_json: bool) -> int:
    if last.get("phase") == "complete":
        return 0
    if not as_json:
        _say(f"musicfs: the rescan of origin {origin_id} did not complete: "
             f"{last.get('error') or last.get('phase') or 'no progress came'}", err_console)
    return 1


def follow_rescan(client: ControlClient, origin_id: str, *, as_json: bool) -> dict:
    """Stream one origin's rescan: NDJSON lines, or a progress bar then a summary. The last document."""
    documents = _rescan(client, origin_id)
    if as_json:
        return _print_lines(documents)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    last: dict = {}

    with Progress(TextColumn(f"rescan {origin_id}", style="bold", markup=False),
                  TextColumn("{task.fields[phase]}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[current]}", markup=False),
                  console=err_console.rich, transient=True) as bar:
        task = bar.add_task("rescan", total=None, phase="", current="")
        for document in documents:
            phase, scanned, total, current = _render().progress_numbers(document)
            bar.update(task, completed=scanned, total=total, phase=phase, current=current[-50:])
            last = document
    console.print(_render().rescan_summary(origin_id, last))
    return last


# -- events -------------------------------------------------------------------


def cmd_events(args: argparse.Namespace) -> int:
    """Follow the feed until Ctrl-C (exit 0, quietly) or until the mount stops."""
    params: dict = {"type": args.type} if args.type else {}
    if args.origin:
        params["origin"] = args.origin
    _, client = _client(args)
    previous = signal.signal(signal.SIGINT, _leave_at_once)
    try:
        with client:
            for event in client.stream("GET", "/v1/events", params=params):
                if args.json:
                    _line(event)
                else:
                    console.print(_render().event_line(event), soft_wrap=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    _say("the event feed ended: the mount is stopping", err_console)
    return 0


def _leave_at_once(signum: int, frame: object) -> None:
    """Ctrl-C ends a follow at once, like ``tail -f``: what was printed is flushed, and nothing
    is left to tidy (the daemon drops the feed when its socket closes). Unwinding instead ran
    the HTTP client's cleanup from wherever the signal landed, which once hung for 10 s."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(0)


def _say(text: str, where: Any = console) -> None:
    """One plain line, as it is: never wrapped, never read as markup (paths may hold "[")."""
    where.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_lines(documents: Iterator[dict]) -> dict:
    """Each streamed document as one NDJSON line, as it comes; the last one."""
    last: dict = {}
    for document in documents:
        _line(document)
        last = document
    return last


def _line(document: dict) -> None:
    sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
    sys.stdout.flush()


# -- shutdown -----------------------------------------------------------------


def cmd_shutdown(args: argparse.Namespace) -> int:
    """Ask the daemon to unmount, then wait (drain time plus a grace) until it has."""
    info, client = _client(args)
    body = {"force": args.force, "drain_timeout_ms": round(max(0.0, args.drain_timeout) * 1000)}
    with client:
        answer = client.post("/v1/shutdown", body)
    unmounted = _wait_unmounted(_state(args), info, args.drain_timeout + SHUTDOWN_GRACE)
    if args.json:
        print_json({**answer, "mountpoint": info["mountpoint"], "unmounted": unmounted})
    else:
        _say(_render().shutdown_line(info["mountpoint"], answer, unmounted))
    return 0 if unmounted else 1


def _wait_unmounted(state: Path, info: dict, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.is_mounted(Path(info["mountpoint"])) and not any(
                m.get("pid") == info["pid"] for m in daemon.running_mounts(state)):
            return True
        time.sleep(0.05)
    return False


# -- `musicfs scan` of a mounted library --------------------------------------


def rescan_mounted(info: dict, index: Path, *, as_json: bool) -> int:
    """``musicfs scan`` of a library a daemon serves: that daemon rescans each of its origins.

    Writing its index from here would change it behind the mount's back.
    """
    done = []
    try:
        with _connect(info["socket"]) as client:
            origins = [o["id"] for o in client.get("/v1/origins")]
            if not as_json:
                _say(f"{info['mountpoint']} serves this library: its daemon rescans it", err_console)
            for origin_id in origins:
                last = _last(client, origin_id) if as_json else follow_rescan(client, origin_id, as_json=False)
                done.append({"origin": origin_id, **last})
    except ControlError as exc:
        raise ControlError(f"{info['mountpoint']} is mounted from {index} and its daemon did not rescan it "
                           f"({exc})") from None
    if as_json:
        print_json({"index": str(index), "mountpoint": info["mountpoint"], "rescans": done})
    return max((_rescan_status(d["origin"], d, as_json=as_json) for d in done), default=0)


def _last(client: ControlClient, origin_id: str) -> dict:
    last: dict = {}
    for document in _rescan(client, origin_id):
        last = document
    return last


def _rescan(client: ControlClient, origin_id: str) -> Iterator[dict]:
    return client.stream("POST", f"/v1/origins/{quote(origin_id, safe='')}/rescan")
