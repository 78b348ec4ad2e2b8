"""``musicfs search`` and ``musicfs collection add|list|remove``: a library's search, from a shell.

Which library: the mount named by ``--mount``, the library of ``--config`` or
``--index``, or else the only mount running (or, with none, the only index in
the state directory). Where a daemon serves that library the command asks it
(its API), so it sees what the mount shows and never writes the index behind
the daemon's back; otherwise it opens the index file itself and runs the same
engine, so a library can be searched while it is not mounted.

Both ways answer the same documents (``--json`` prints them as they are) and
refuse alike: a malformed query or a bad collection name is the parser's own
message on stderr, one line, exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import daemon
from ..control.locate import ControlError, find_mount, mounts_of_index
from ..dirs import state_home
from ..errors import IndexError_, QueryError
from .common import console, err_console, print_json

if TYPE_CHECKING:
    import sqlite3

    from ..control.client import ControlClient
    from ..search.collections import CollectionStore
    from ..search.engine import SearchEngine

T = TypeVar("T")
DEFAULT_LIMIT = 20  # rows a terminal shows at once; the API's own default is 100


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``search`` and ``collection`` on the ``musicfs`` parser's subcommands."""
    search = sub.add_parser("search", help="find tracks: words, \"phrases\", artist:, album:, title:, genre:, "
                                           "format:, origin:, year:1990..1999, -exclude",
                            description="Search a library's tracks (README, \"Search\", has the query "
                                        "language). Several words may be given unquoted.")
    search.add_argument("query", nargs="+", metavar="QUERY", help="what to look for")
    search.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                        help=f"at most N tracks (default {DEFAULT_LIMIT})")
    search.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N (pages)")
    search.add_argument("--field", action="append", default=[], metavar="F", dest="fields",
                        help="look for plain words only in this field (repeat for several): title, artist, "
                             "album_artist, album, genre, year, format, path")
    search.add_argument("--origin", metavar="ID", help="only tracks held by this origin")
    _library(search, json_help="print the answer as JSON (the API's document)")
    search.set_defaults(func=cmd_search)

    collection = sub.add_parser("collection", help="saved searches, shown as /.collections/NAME/").add_subparsers(
        dest="collection_command", required=True)
    add = collection.add_parser("add", help="save QUERY as the collection NAME")
    add.add_argument("name", metavar="NAME")
    add.add_argument("query", metavar="QUERY")
    _library(add)
    add.set_defaults(func=cmd_collection_add)
    listing = collection.add_parser("list", help="every collection: name, query, where it comes from")
    _library(listing)
    listing.set_defaults(func=cmd_collection_list)
    remove = collection.add_parser("remove", help="remove the collection NAME (one from the config stays)")
    remove.add_argument("name", metavar="NAME")
    _library(remove)
    remove.set_defaults(func=cmd_collection_remove)


def _library(parser: argparse.ArgumentParser, json_help: str = "print the answer as JSON") -> None:
    which = parser.add_argument_group("which library (default: the only mount running, else the only index)")
    which.add_argument("--mount", type=Path, metavar="MOUNTPOINT", help="ask the daemon serving MOUNTPOINT")
    which.add_argument("--config", "-c", type=Path, help="the library of this TOML config")
    which.add_argument("--index", type=Path, help="the library of this index file")
    parser.add_argument("--json", action="store_true", help=json_help)


# -- where the answer comes from ---------------------------------------------------


@dataclass(frozen=True)
class Library:
    """A running daemon's pid-file record, or an index file no daemon serves."""

    mount: dict | None = None
    index: Path | None = None

    def describe(self) -> str:
        return f"from the mount at {self.mount['mountpoint']}" if self.mount else f"from the index {self.index}"


def locate(args: argparse.Namespace) -> Library:
    state = args.state_dir or state_home()
    if args.mount is not None:
        return Library(mount=find_mount(state, args.mount))
    if args.index is not None or args.config is not None:
        if args.index is not None and args.config is not None:
            raise ControlError("give either --config or --index, not both")
        index = args.index
        if index is None:
            from ..config import load_config  # here: a search through a daemon reads no config

            index = load_config(args.config).resolved_index_path(args.state_dir)
        serving = mounts_of_index(state, index)
        return Library(mount=serving[0]) if serving else Library(index=index)
    mounts = [m for m in daemon.running_mounts(state) if m.get("socket")]
    if len(mounts) > 1:
        raise ControlError("several mounts are running; name one with --mount: "
                           + ", ".join(m["mountpoint"] for m in mounts))
    if mounts:
        return Library(mount=mounts[0])
    indexes = sorted((state / "libraries").glob("*.db"))
    if len(indexes) == 1:
        return Library(index=indexes[0])
    raise ControlError("no musicfs mount is running" + (
        f" and {len(indexes)} libraries are indexed in {state / 'libraries'}" if indexes else "")
        + "; say which library with --mount, --config or --index")


@contextmanager
def _daemon(library: Library) -> Iterator[ControlClient]:
    """The daemon's API; its refusals (a 400: a bad query or name) as the engine's own words."""
    from ..control.client import ControlClient, Refused

    assert library.mount is not None
    with ControlClient(Path(library.mount["socket"])) as client:
        try:
            yield client
        except Refused as exc:
            if exc.status in (400, 404) and exc.detail:
                raise QueryError(exc.detail) from None
            raise


def _on_file(index: Path, work: Callable[[sqlite3.Connection], T], *, writes: bool = False) -> T:
    """``work`` on the index file itself, no daemon involved.

    Opened for writing first, so that an index made before search existed gains its
    search table (the migration); an index another process is writing (a scan) is
    read as it stands instead, unless ``work`` itself writes.
    """
    import sqlite3

    from ..index.db import schema_version
    from ..index.library import LibraryIndex
    from ..index.schema import LATEST

    if not index.exists():
        raise IndexError_(f"no index at {index}: scan the library first (musicfs scan)")
    try:
        library = LibraryIndex(index)
    except sqlite3.OperationalError as exc:  # locked by a writer, or a file this user may only read
        if writes:
            raise IndexError_(f"cannot write the index {index} now ({exc}); try again when its scan "
                              "is over") from None
        library = LibraryIndex(index, readonly=True)
    with library:
        conn = library.conn
        conn.row_factory = None  # the engine reads plain tuples
        if schema_version(conn) < LATEST:
            raise IndexError_(f"the index {index} predates search and is being written now (it is upgraded "
                              "when next opened for writing); try again when its scan is over")
        try:
            return work(conn)
        except sqlite3.DatabaseError as exc:  # the file's fault (damaged, locked too long), not the query's
            raise IndexError_(f"the index {index} could not be read: {exc}") from None


def _engine(conn: sqlite3.Connection) -> SearchEngine:
    from ..search.engine import SearchEngine

    return SearchEngine(conn)


def _store(conn: sqlite3.Connection) -> CollectionStore:
    from ..search.collections import CollectionStore

    return CollectionStore(conn)


# -- commands ---------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    """Exit 0 with the page (even an empty one); 2 for a query the language refuses."""
    text = " ".join(args.query)
    if args.limit < 0 or args.offset < 0:
        raise QueryError("--limit and --offset must not be negative")
    library = locate(args)
    if library.mount is not None:
        with _daemon(library) as client:
            page = client.search(text, limit=args.limit, offset=args.offset, fields=args.fields, origin=args.origin)
    else:
        assert library.index is not None
        page = _on_file(library.index, lambda conn: _engine(conn).search(
            text, limit=args.limit, offset=args.offset, fields=args.fields, origin=args.origin).as_dict())
    if args.json:
        print_json(page)
        return 0
    from . import render

    for note in page.get("notes", []):
        err_console.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)
    if page.get("results"):
        console.print(render.search_table(page, library.mount["mountpoint"] if library.mount else None))
    console.print(render.search_summary(page, library.describe()), markup=False, highlight=False,
                  soft_wrap=True)
    return 0


def cmd_collection_add(args: argparse.Namespace) -> int:
    library = locate(args)
    if library.mount is not None:
        with _daemon(library) as client:
            saved = client.add_collection(args.name, args.query)
    else:
        assert library.index is not None
        saved = _on_file(library.index, lambda conn: _store(conn).add(args.name, args.query).as_dict(),
                         writes=True)
    return _said(args, saved, f"collection {saved['name']!r} saved: /.collections/{saved['name']}/ "
                              f"lists {saved['query']}")


def cmd_collection_list(args: argparse.Namespace) -> int:
    library = locate(args)
    if library.mount is not None:
        with _daemon(library) as client:
            collections = client.collections()
    else:
        assert library.index is not None
        collections = _on_file(library.index, lambda conn: [c.as_dict() for c in _store(conn).list()])
    if args.json:
        print_json(collections)
    elif collections:
        from . import render

        console.print(render.collections_table(collections))
    else:
        console.print("no collections (musicfs collection add NAME QUERY saves one)", markup=False)
    return 0


def cmd_collection_remove(args: argparse.Namespace) -> int:
    library = locate(args)
    if library.mount is not None:
        with _daemon(library) as client:
            removed = client.remove_collection(args.name)
    else:
        assert library.index is not None
        removed = _on_file(library.index, lambda conn: _store(conn).remove(args.name).as_dict(), writes=True)
    return _said(args, removed, f"collection {removed['name']!r} removed")


def _said(args: argparse.Namespace, document: dict[str, Any], line: str) -> int:
    if args.json:
        print_json(document)
    else:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0
